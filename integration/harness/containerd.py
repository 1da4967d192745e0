"""A private containerd with the CRI plugin, for tests and the walkthrough.

Own config, root, state, socket, runc root and CNI bridge network, all under
one directory (docs/development.md): it never touches the
host's ``/run/containerd/containerd.sock`` or ``/var/lib/containerd``.
``restrict_oom_score_adj = true`` is required on this VM (no
CAP_SYS_RESOURCE to lower it). The bridge gets a unique name and /22 in
10.250.0.0/16, with ``ipMasq: false`` and no default route, so pod traffic
never leaves the machine.

``stop()`` removes every sandbox through CRI, stops containerd, kills any
shim left for this instance, unmounts what remains under the directory,
deletes the bridge and the directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import grpc

from coral_base.wire.cri.runtime.v1 import api_pb2, api_pb2_grpc
from integration.harness.cgroups import remove_pod_cgroups
from integration.harness.images import ImageSet

READY_TIMEOUT_S = 20.0


class HarnessError(RuntimeError):
    pass


def _free_subnet() -> int:
    """The third octet of a free, aligned 10.250.x.0/22 (1,022 pod addresses)."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=False).stdout
    candidates = [n for n in range(100, 252, 4) if not any(f"10.250.{n + i}." in used for i in range(4))]
    if not candidates:
        raise HarnessError("no free 10.250.x.0/22 subnet for a CNI bridge")
    return random.choice(candidates)


class PrivateContainerd:
    def __init__(
        self,
        directory: Path,
        *,
        images: ImageSet,
        routes: Sequence[str] = (),
        hairpin: bool = False,
        launcher: Sequence[str] = (),
    ) -> None:
        """``routes``: extra destinations pods reach through the bridge (a Service CIDR); ``hairpin``:
        a pod may reach itself through a Service (the CNI bridge's hairpin mode); ``launcher``: a
        command prefix containerd runs under (``nsenter --mount=...``: a node's own mount namespace)."""
        self.dir = directory
        self.images = images
        self.routes = tuple(routes)
        self.hairpin = hairpin
        self.launcher = tuple(launcher)
        self.socket_path = directory / "containerd.sock"
        self.log_path = directory / "containerd.log"
        self.bridge = f"crd{random.randrange(16**4):04x}"
        self.subnet_index = _free_subnet()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def subnet(self) -> str:
        return f"10.250.{self.subnet_index}.0/22"

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> PrivateContainerd:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> PrivateContainerd:
        self._write_config()
        self._launch()
        for tar in (self.images.pause_tar, self.images.workload_tar):
            self.ctr("-n", "k8s.io", "images", "import", str(tar))
        return self

    def restart(self) -> None:
        """Start containerd again on the same root and socket (after ``kill``)."""
        self._launch()

    def kill(self) -> None:
        """SIGKILL containerd only: shims and pods keep running, as in a runtime crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(grpc.RpcError):
                self._remove_all_sandboxes()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._kill_shims()
        self._unmount_all()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers -----------------------------------------------------------------

    def _write_config(self) -> None:
        conf_dir = self.dir / "cni" / "conf"
        conf_dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "cni" / "ipam").mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "0.4.0",
            "name": f"coral-{self.bridge}",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": self.hairpin,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet}]],
                        "routes": [{"dst": route} for route in self.routes],
                        "dataDir": str(self.dir / "cni" / "ipam"),
                    },
                },
                {"type": "loopback"},
            ],
        }
        (conf_dir / "10-coral.conflist").write_text(json.dumps(conflist, indent=2))
        d = self.dir
        (d / "config.toml").write_text(
            f"""version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{self.socket_path}"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.images.pause_ref}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{conf_dir}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{d}/runc"
"""
        )

    def _launch(self) -> None:
        for binary in ("containerd", "ctr", "runc"):
            if shutil.which(binary) is None:
                raise HarnessError(f"{binary} not found: run `make setup`")
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.launcher, "containerd", "--config", str(self.dir / "config.toml")],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise HarnessError(f"containerd exited ({self.process.returncode}):\n{self.log_tail()}")
            if self.socket_path.exists() and self._cri_ready():
                return
            time.sleep(0.02)
        raise HarnessError(f"containerd not ready after {READY_TIMEOUT_S}s:\n{self.log_tail()}")

    def _cri_ready(self) -> bool:
        with grpc.insecure_channel(self.address) as channel:
            try:
                api_pb2_grpc.RuntimeServiceStub(channel).Version(api_pb2.VersionRequest(), timeout=1)
            except grpc.RpcError:
                return False
        return True

    def ctr(self, *args: str) -> str:
        result = subprocess.run(
            ["ctr", "--address", str(self.socket_path), *args], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise HarnessError(f"ctr {' '.join(args)} failed: {result.stderr.strip()}\n{self.log_tail()}")
        return result.stdout

    def _remove_all_sandboxes(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = api_pb2_grpc.RuntimeServiceStub(channel)
            for sandbox in stub.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10).items:
                stub.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=30)
                stub.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=30)
                remove_pod_cgroups(sandbox.metadata.uid)

    def _kill_shims(self) -> None:
        marker = str(self.socket_path).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline and marker in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)

    def _unmount_all(self) -> None:
        prefix = f"{self.dir}/"
        mounts = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                mounts.append(point)
        for point in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no containerd log)"
