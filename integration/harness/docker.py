"""A private Docker engine (Debian's docker.io) and the offline inputs of the image build.

``make image-inputs`` (part of ``make setup``) bootstraps a Debian bookworm
root with debootstrap from Debian's archive and builds the project's wheels
with pip. ``import_base`` makes that root the local engine's image of the
Dockerfile's default base (``debian:bookworm-slim``), so tests build the
Dockerfile as a user does (``docker build .``, no build argument), with
``--network none``: the root already holds what the Dockerfile would
install, and nothing is pulled from a registry. dockerd runs with its own data root,
exec root and socket, no iptables and no bridge (containers run with
``--network none``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTFS_TAR = REPO / ".cache" / "docker" / "bookworm-rootfs.tar"
WHEELS = REPO / ".cache" / "wheels"
BASE_IMAGE = "debian:bookworm-slim"  # the Dockerfile's default BASE
DOCKER = "/usr/bin/docker"  # Debian's CLI, matching its daemon


class DockerError(Exception):
    pass


class PrivateDocker:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.socket = directory / "docker.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> PrivateDocker:
        for needed in (Path("/usr/sbin/dockerd"), Path(DOCKER)):
            if not needed.exists():
                raise DockerError(f"{needed} is missing: run `make setup` (Debian docker.io)")
        self.dir.mkdir(parents=True, exist_ok=True)
        log = (self.dir / "dockerd.log").open("ab")
        self.process = subprocess.Popen(
            [
                "/usr/sbin/dockerd", "--data-root", str(self.dir / "root"), "--exec-root", str(self.dir / "exec"),
                "-H", self.host, "--pidfile", str(self.dir / "docker.pid"), "--iptables=false", "--bridge=none",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 60
        while self.docker("info", check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise DockerError(f"dockerd did not start:\n{(self.dir / 'dockerd.log').read_text()[-3000:]}")
            time.sleep(0.2)
        return self

    def docker(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [DOCKER, "-H", self.host, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise DockerError(f"docker {' '.join(args)}: {done.stderr.strip()[-2000:]}")
        return done

    def import_base(self) -> str:
        """The locally bootstrapped Debian root under the default base's name (``make image-inputs`` made it)."""
        if not ROOTFS_TAR.exists():
            raise DockerError(f"{ROOTFS_TAR} is missing: run `make image-inputs` (part of `make setup`)")
        self.docker("import", str(ROOTFS_TAR), BASE_IMAGE)
        return BASE_IMAGE

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        with contextlib.suppress(FileNotFoundError):
            subprocess.run(["umount", "-R", str(self.dir / "root")], capture_output=True, check=False)
