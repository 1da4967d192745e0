"""A real Kubernetes control plane on loopback: etcd + kube-apiserver with RBAC.

kube-apiserver and kubectl come from ``make kube-binaries`` (built from the
k8s.io/kubernetes Go module, integration/kube); etcd from Debian. The API
server authenticates static tokens: ``admin`` (system:masters), the node
agent's and the chart's colony's ServiceAccount identities (bound to nothing
until a test applies the shipped RBAC) and ``nobody``; it also issues and
reviews real ServiceAccount tokens (TokenRequest, TokenReview), bound to pods
and their nodes. Authorization is RBAC only. No controller manager runs, so
admission plugins that need one are off.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

REPO = Path(__file__).resolve().parents[2]
KUBE_BIN = REPO / ".cache" / "kube" / "bin"
AGENT_USER = "system:serviceaccount:coral-system:coral-node-agent"
# The chart's colony (release coral-node-agent), as its pod's own token names it: it checks agents' tokens.
COLONY_USER = "system:serviceaccount:coral-system:coral-node-agent-colony"
TOKENS = {
    "admin": ("admin-token", "admin", "system:masters"),
    "agent": ("agent-token", AGENT_USER, "system:serviceaccounts,system:serviceaccounts:coral-system"),
    "colony": ("colony-token", COLONY_USER, "system:serviceaccounts,system:serviceaccounts:coral-system"),
    "nobody": ("nobody-token", "nobody", ""),
    "pods-only": ("pods-only-token", "pods-only", ""),  # tests bind it to a role without owners' rights
}


class ControlPlaneError(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def binary(name: str) -> Path:
    path = KUBE_BIN / name
    if not path.exists():
        raise ControlPlaneError(f"{path} is missing: run `make kube-binaries` (or `make setup`)")
    return path


class ControlPlane:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.etcd_port, self.etcd_peer = _free_port(), _free_port()
        self.port = _free_port()
        self.host = "127.0.0.1"  # where kube-apiserver listens (and advertises itself)
        self.etcd: subprocess.Popen[bytes] | None = None
        self.apiserver: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ca(self) -> Path:
        return self.dir / "certs" / "apiserver.crt"

    def kubeconfig(self, who: str) -> Path:
        """A kubeconfig for one of ``TOKENS``: ``admin``, ``agent``, ``colony``, ``nobody``, ``pods-only``."""
        path = self.dir / f"{who}.kubeconfig"
        if not path.exists():
            config = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {"server": self.url, "certificate-authority": str(self.ca)}}],
                "users": [{"name": who, "user": {"token": TOKENS[who][0]}}],
                "contexts": [{"name": who, "context": {"cluster": "test", "user": who}}],
                "current-context": who,
            }
            path.write_text(yaml.safe_dump(config))
        return path

    def kubectl(self, *args: str, who: str = "admin", input: str | None = None, check: bool = True) -> str:
        done = subprocess.run(
            [str(binary("kubectl")), "--kubeconfig", str(self.kubeconfig(who)), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and done.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def start(self) -> ControlPlane:
        self.start_etcd()
        self.start_apiserver()
        return self

    def start_etcd(self) -> None:
        etcd = shutil.which("etcd") or "/usr/bin/etcd"
        log = (self.dir / "etcd.log").open("ab")
        peer = f"http://127.0.0.1:{self.etcd_peer}"
        client = f"http://127.0.0.1:{self.etcd_port}"
        self.etcd = subprocess.Popen(
            [
                etcd, "--name", "t", "--data-dir", str(self.dir / "etcd"), "--logger=zap",
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", f"t={peer}",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )  # fmt: skip
        log.close()

    def start_apiserver(self) -> None:
        self._write_inputs()
        log = (self.dir / "apiserver.log").open("ab")
        self.apiserver = subprocess.Popen(
            [str(binary("kube-apiserver")), *self.apiserver_flags()],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        self.wait_ready()

    def apiserver_flags(self) -> list[str]:
        """RBAC only, static tokens, a self-signed serving certificate; no ServiceAccount admission."""
        return [
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--bind-address={self.host}", f"--advertise-address={self.host}", f"--secure-port={self.port}",
            f"--cert-dir={self.dir / 'certs'}",
            f"--token-auth-file={self.dir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={self.dir / 'sa.pub'}",
            f"--service-account-signing-key-file={self.dir / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--disable-admission-plugins=ServiceAccount",  # no controller manager creates `default` accounts
            "--enable-priority-and-fairness=false",
        ]  # fmt: skip

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the serving certificate appears with the server
        request = urllib.request.Request(
            f"{self.url}/readyz", headers={"Authorization": f"Bearer {TOKENS['admin'][0]}"}
        )
        while time.monotonic() < deadline:
            assert self.apiserver is not None
            if self.apiserver.poll() is not None:
                raise ControlPlaneError(f"kube-apiserver exited:\n{self.log('apiserver')[-3000:]}")
            try:
                with urllib.request.urlopen(request, context=context, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise ControlPlaneError(f"kube-apiserver not ready in {timeout}s:\n{self.log('apiserver')[-3000:]}")

    def stop_apiserver(self) -> None:
        """SIGTERM, and SIGKILL if open watches keep it from exiting within 10 s."""
        if self.apiserver is not None and self.apiserver.poll() is None:
            self.apiserver.terminate()
            try:
                self.apiserver.wait(10)
            except subprocess.TimeoutExpired:
                self.apiserver.kill()
                self.apiserver.wait(10)

    def stop(self) -> None:
        self.stop_apiserver()
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.terminate()
            self.etcd.wait(30)

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _write_inputs(self) -> None:
        if not (self.dir / "sa.key").exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            (self.dir / "sa.key").write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
            (self.dir / "sa.pub").write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        lines = [f'{token},{user},{user},"{groups}"' for token, user, groups in TOKENS.values()]
        (self.dir / "tokens.csv").write_text("\n".join(lines) + "\n")
