"""A real single-node Kubernetes cluster on the harness's private containerd.

etcd and kube-apiserver (``ControlPlane``, with Node,RBAC authorization, a
client CA and ServiceAccount admission), kube-controller-manager (it signs
ServiceAccount tokens with the apiserver's key and publishes its CA),
kube-scheduler, kube-proxy (iptables mode), CoreDNS (cluster DNS, so
``coral-colony.coral-system.svc`` resolves in pods) and a kubelet with its
own identity: a client certificate ``system:node:<name>`` in group
``system:nodes`` signed by the apiserver's client CA, webhook
authentication and authorization (the apiserver calls it with a client
certificate of its own). The binaries come from ``make kube-binaries``.

Network: the containerd bridge is made up front with its gateway address
G (10.250.x.1). kube-apiserver, the kubelet and CoreDNS listen on G, which
every pod reaches on-link. The Service CIDR (10.251.x.0/24) is routed onto
the bridge *before* anything can send to a ClusterIP, so a packet kube-proxy
did not rewrite stays on the machine instead of following the default
route; pods route it through G. kube-proxy masquerades Service traffic, so
replies come back through the host. Nothing leaves the machine.

What the kubelet and kube-proxy change on the host, ``stop()`` undoes, also
after a failed test: processes, every sandbox (through containerd), the
``KUBE-*`` iptables chains and the jumps to them (v4 and v6), the route and
the bridge, the kubelet's cgroup root (``/coral-node-<bridge>`` in every
hierarchy: its pod cgroups never mix with other runs' ``/kubepods``), the
kernel tunables the kubelet sets, the ``/var/log/containers`` links, the
chart's agent cache ``/var/lib/coral`` (the harness creates it, marked) and
the directory. kubelet and kube-proxy own chain names in the host's network
namespace, so one real node runs per machine at a time (a lock file).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from integration.harness.cgroups import cgroup_mounts
from integration.harness.containerd import HarnessError, PrivateContainerd
from integration.harness.images import ImageSet
from integration.harness.kube import ControlPlane, _free_port, binary

LOCK = Path("/run/lock/coral-real-node.lock")
LOGS = Path(__file__).resolve().parents[2] / ".cache" / "artifacts" / "real-node"  # the last run's logs, kept
LOG_LINES_KEPT = 3000
AGENT_CACHE = Path("/var/lib/coral")  # the chart's hostPath for the agent's cache
HARNESS_MARK = ".made-by-coral-real-node"
CONTAINER_LOGS = Path("/var/log/containers")  # the kubelet links every container's log here
# What the kubelet sets on start (it would refuse to run with protectKernelDefaults): restored by stop().
KERNEL_TUNABLES = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
START_TIMEOUT_S = 90.0

_T = TypeVar("_T")


def wait_for(predicate: Callable[[], _T | None], *, timeout: float, what: str, interval: float = 0.25) -> _T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# -- PKI -----------------------------------------------------------------------


class Pki:
    """One CA: it signs the apiserver's and the kubelet's serving certificates and every client certificate."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coral-harness-ca")])
        now = datetime.datetime.now(datetime.UTC)
        self._name = name
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.ca = self.dir / "ca.crt"
        self.ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, name: str, common_name: str, *, groups: tuple[str, ...] = (), hosts: tuple[str, ...] = ()
    ) -> tuple[Path, Path]:
        """A certificate and key; with ``hosts`` a serving certificate, else a client one."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        subject += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in groups]
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if hosts:
            sans: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    sans.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            usage = ExtendedKeyUsageOID.SERVER_AUTH
        else:
            usage = ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_path, key_path = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_path.chmod(0o600)
        return cert_path, key_path


# -- the control plane, as a real cluster runs it ---------------------------------------


class NodeControlPlane(ControlPlane):
    """kube-apiserver on the bridge's gateway address: Node,RBAC, x509 clients, real ServiceAccounts."""

    def __init__(self, directory: Path, *, host: str, pki: Pki, service_cidr: str) -> None:
        super().__init__(directory)
        self.host = host
        self.pki = pki
        self.service_cidr = service_cidr
        first_service_ip = service_cidr.rsplit(".", 1)[0] + ".1"
        names = ("kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
        self.serving = pki.issue("apiserver", "kube-apiserver", hosts=(host, first_service_ip, "127.0.0.1", *names))
        # How the apiserver authenticates to the kubelet (logs, exec, port-forward, the summary API).
        self.kubelet_client = pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                        groups=("system:masters",))  # fmt: skip

    @property
    def ca(self) -> Path:
        return self.pki.ca

    def apiserver_flags(self) -> list[str]:
        return [
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--bind-address={self.host}", f"--advertise-address={self.host}", f"--secure-port={self.port}",
            f"--tls-cert-file={self.serving[0]}", f"--tls-private-key-file={self.serving[1]}",
            f"--client-ca-file={self.pki.ca}",
            f"--token-auth-file={self.dir / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={self.dir / 'sa.pub'}",
            f"--service-account-signing-key-file={self.dir / 'sa.key'}",
            f"--service-cluster-ip-range={self.service_cidr}",
            f"--kubelet-client-certificate={self.kubelet_client[0]}",
            f"--kubelet-client-key={self.kubelet_client[1]}",
            f"--kubelet-certificate-authority={self.pki.ca}",
            "--kubelet-preferred-address-types=InternalIP",
            "--enable-priority-and-fairness=false",
        ]  # fmt: skip


# -- the node ---------------------------------------------------------------------


class RealNode:
    """``with RealNode(dir, images=...) as node:`` a Ready single-node cluster; ``node.kubectl(...)``."""

    def __init__(self, directory: Path, *, images: ImageSet, name: str = "coral-node") -> None:
        self.dir = directory
        self.name = name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mount_holder: subprocess.Popen[bytes] | None = None
        self.mount_namespace: Path | None = None
        self._mount_namespace_id = 0
        self.containerd = PrivateContainerd(self.dir / "containerd", images=images, hairpin=True)
        index = self.containerd.subnet_index
        self.gateway = f"10.250.{index}.1"
        self.pod_cidr = self.containerd.subnet
        self.service_cidr = f"10.251.{index}.0/24"
        self.containerd.routes = (self.service_cidr,)
        self.pki = Pki(self.dir / "pki")
        self.plane = NodeControlPlane(
            self.dir / "plane", host=self.gateway, pki=self.pki, service_cidr=self.service_cidr
        )
        self.cgroup_root = f"/coral-node-{self.containerd.bridge}"
        self.kubelet_port = _free_port()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._lock: IO[str] | None = None
        self._tunables: dict[str, str] = {}
        self._routed = False
        self._made_container_logs = False

    # -- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> RealNode:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> RealNode:
        for name in ("kubelet", "kube-scheduler", "kube-controller-manager", "kube-proxy", "coredns"):
            binary(name)
        self._take_lock()
        self._prepare_host()
        self._enter_mount_namespace()
        self.plane.start()
        self.containerd.start()
        self._start_controllers()
        self._start_coredns()
        self._start_kubelet()
        self._start_kube_proxy()
        wait_for(self._node_ready, timeout=START_TIMEOUT_S, what=f"node {self.name} Ready\n{self.log_tail('kubelet')}")
        for namespace in ("default", "kube-system"):
            wait_for(
                lambda: self.kubectl("-n", namespace, "get", "serviceaccount", "default", check=False),  # noqa: B023
                timeout=START_TIMEOUT_S,
                what=f"the default ServiceAccount in {namespace}",
            )
        return self

    def stop(self) -> None:
        if self._lock is None:  # never started (another node holds the machine): touch nothing of the host
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        for name in ("kubelet", "kube-proxy", "coredns", "kube-scheduler", "kube-controller-manager"):
            self._stop_process(name)
        self._keep_logs()
        self.containerd.stop()  # every sandbox through CRI (CNI DEL), shims, the bridge
        self._leave_mount_namespace()  # and with it every mount containerd and the kubelet made
        _unmount_under(self.dir)
        self.plane.stop()
        if binary_exists("kube-proxy"):
            subprocess.run([str(binary("kube-proxy")), "--cleanup"], capture_output=True, timeout=60, check=False)
        remove_kube_chains()
        if self._routed:
            subprocess.run(["ip", "route", "del", self.service_cidr], capture_output=True, check=False)
            self._routed = False
        subprocess.run(["ip", "link", "del", self.containerd.bridge], capture_output=True, check=False)
        self._remove_cgroup_root()
        self._restore_tunables()
        self._remove_container_logs()
        if (AGENT_CACHE / HARNESS_MARK).exists():
            shutil.rmtree(AGENT_CACHE, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- what tests use ----------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> str:
        done = subprocess.run(
            [str(binary("kubectl")), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise HarnessError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout if done.returncode == 0 else ""

    def kubectl_json(self, *args: str) -> dict[str, object]:
        value = json.loads(self.kubectl(*args, "-o", "json"))
        assert isinstance(value, dict)
        return value

    @property
    def kubeconfig(self) -> Path:
        """The cluster administrator's kubeconfig."""
        return self.plane.kubeconfig("admin")

    def import_image(self, tar: Path) -> None:
        """An image tar (``docker save``, or OCI layout) into the node's containerd, where the kubelet finds it."""
        self.containerd.ctr("-n", "k8s.io", "images", "import", str(tar))

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.dir / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no {name} log)"

    # -- pieces ------------------------------------------------------------------------

    def _keep_logs(self) -> None:
        """The tail of every component's log into .cache/artifacts/real-node/, for a failure after teardown."""
        shutil.rmtree(LOGS, ignore_errors=True)
        LOGS.mkdir(parents=True, exist_ok=True)
        sources = [*self.dir.glob("*.log"), *self.plane.dir.glob("*.log"), self.containerd.log_path]
        for source in sources:
            with contextlib.suppress(OSError):
                lines = source.read_text(errors="replace").splitlines()[-LOG_LINES_KEPT:]
                (LOGS / source.name).write_text("\n".join(lines) + "\n")

    def _take_lock(self) -> None:
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        lock = LOCK.open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise HarnessError(f"another real node runs on this machine ({LOCK} is held): one at a time") from None
        self._lock = lock

    def _prepare_host(self) -> None:
        """The bridge with its gateway address, the Service CIDR routed onto it, the cgroup root, the cache."""
        bridge = self.containerd.bridge
        run(["ip", "link", "add", "name", bridge, "type", "bridge"])
        run(["ip", "addr", "add", f"{self.gateway}/22", "dev", bridge])
        run(["ip", "link", "set", bridge, "up"])
        # Before any packet can go to a ClusterIP: without kube-proxy's rewrite it stays on the bridge.
        run(["ip", "route", "add", self.service_cidr, "dev", bridge])
        self._routed = True
        for tunable in KERNEL_TUNABLES:
            with contextlib.suppress(OSError):
                self._tunables[tunable] = (Path("/proc/sys") / tunable).read_text().strip()
        for mount in cgroup_mounts():
            directory = mount / self.cgroup_root.lstrip("/")
            directory.mkdir(exist_ok=True)
            for inherited in ("cpuset.cpus", "cpuset.mems"):  # a v1 cpuset child starts empty
                if (mount / inherited).exists():
                    (directory / inherited).write_text((mount / inherited).read_text())
        if AGENT_CACHE.exists():
            if not (AGENT_CACHE / HARNESS_MARK).exists():
                raise HarnessError(f"{AGENT_CACHE} exists and is not the harness's: an agent's cache is there")
            shutil.rmtree(AGENT_CACHE)  # left by a run that did not tear down
        AGENT_CACHE.mkdir(parents=True)
        (AGENT_CACHE / HARNESS_MARK).write_text("the real-node test harness made this directory; it removes it\n")
        self._made_container_logs = not CONTAINER_LOGS.exists()

    def _enter_mount_namespace(self) -> None:
        """A mount namespace with ``/`` shared (as systemd makes it), held by a sleeping process."""
        self.mount_holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "unchanged", "sh", "-c",
             "mount --make-rshared / && echo ready && exec sleep infinity"],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        assert self.mount_holder.stdout is not None
        if self.mount_holder.stdout.readline().strip() != b"ready":
            raise HarnessError("could not make a mount namespace with a shared / for the node")
        self.mount_namespace = Path(f"/proc/{self.mount_holder.pid}/ns/mnt")
        self._mount_namespace_id = self.mount_namespace.stat().st_ino
        self.containerd.launcher = ("nsenter", f"--mount={self.mount_namespace}", "--")

    def _leave_mount_namespace(self) -> None:
        """Kill what still runs in the node's mount namespace, then its holder: the namespace and its mounts go."""
        if self.mount_holder is None:
            return
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.mount_holder.pid:
                continue
            try:
                inside = (entry / "ns" / "mnt").stat().st_ino == self._mount_namespace_id
            except OSError:
                continue
            if inside:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.mount_holder.pid, signal.SIGKILL)
        self.mount_holder.wait(10)
        self.mount_holder = None

    def _node_kubeconfig(self, name: str, cert: tuple[Path, Path]) -> Path:
        path = self.dir / f"{name}.kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "node", "cluster": {"server": self.plane.url, "certificate-authority": str(self.pki.ca)}}
            ],
            "users": [{"name": name, "user": {"client-certificate": str(cert[0]), "client-key": str(cert[1])}}],
            "contexts": [{"name": name, "context": {"cluster": "node", "user": name}}],
            "current-context": name,
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def _spawn(self, name: str, argv: list[str]) -> None:
        with (self.dir / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)

    def _stop_process(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    def _start_controllers(self) -> None:
        admin = str(self.kubeconfig)
        common = [
            f"--kubeconfig={admin}", f"--authentication-kubeconfig={admin}", f"--authorization-kubeconfig={admin}",
            "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false",
        ]  # fmt: skip
        self._spawn("kube-scheduler", [str(binary("kube-scheduler")), *common])
        self._spawn(
            "kube-controller-manager",
            [
                str(binary("kube-controller-manager")), *common,
                f"--service-account-private-key-file={self.plane.dir / 'sa.key'}",
                f"--root-ca-file={self.pki.ca}",
                f"--service-cluster-ip-range={self.service_cidr}",
                "--controllers=*,-nodeipam",
            ],
        )  # fmt: skip

    def _start_coredns(self) -> None:
        ready = _free_port()
        corefile = self.dir / "Corefile"
        corefile.write_text(
            f""".:53 {{
    bind {self.gateway}
    errors
    ready 127.0.0.1:{ready}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {self.kubeconfig} admin
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
}}
"""
        )
        self._spawn("coredns", [str(binary("coredns")), "-conf", str(corefile)])
        wait_for(lambda: _http_ok(f"http://127.0.0.1:{ready}/ready"), timeout=START_TIMEOUT_S,
                 what=f"CoreDNS ready\n{self.log_tail('coredns')}")  # fmt: skip

    def _start_kubelet(self) -> None:
        root = self.dir / "kubelet"
        (root / "pod-logs").mkdir(parents=True, exist_ok=True)
        client = self.pki.issue("kubelet-client", f"system:node:{self.name}", groups=("system:nodes",))
        serving = self.pki.issue("kubelet-serving", self.name, hosts=(self.gateway, self.name))
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.gateway,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": _free_port(),
            "tlsCertFile": str(serving[0]),
            "tlsPrivateKeyFile": str(serving[1]),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.pki.ca)},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",  # no systemd here
            "cgroupsPerQOS": True,
            "cgroupRoot": self.cgroup_root,
            "enforceNodeAllocatable": ["pods"],
            "failSwapOn": False,
            "containerRuntimeEndpoint": self.containerd.address,
            "imageServiceEndpoint": self.containerd.address,
            "clusterDNS": [self.gateway],
            "clusterDomain": "cluster.local",
            "podLogsDir": str(root / "pod-logs"),
            "evictionHard": {},
            "imageGCHighThresholdPercent": 100,  # nothing can be pulled again: never collect an imported image
            "imageGCLowThresholdPercent": 99,
            "localStorageCapacityIsolation": False,
            "serializeImagePulls": False,
        }
        (root / "config.yaml").write_text(yaml.safe_dump(config))
        self._spawn(
            "kubelet",
            [
                *self.containerd.launcher,
                str(binary("kubelet")),
                f"--kubeconfig={self._node_kubeconfig('kubelet', client)}",
                f"--config={root / 'config.yaml'}",
                f"--root-dir={root}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.gateway}",
                "--node-labels=topology.kubernetes.io/zone=harness-a,coral.io/test-node=true",
            ],
        )

    def _start_kube_proxy(self) -> None:
        self._spawn(
            "kube-proxy",
            [
                str(binary("kube-proxy")), f"--kubeconfig={self.kubeconfig}",
                f"--hostname-override={self.name}", f"--cluster-cidr={self.pod_cidr}", "--proxy-mode=iptables",
                "--masquerade-all",  # replies to Service traffic come back through the host, bridge netfilter or not
                f"--nodeport-addresses={self.gateway}/32",
                "--iptables-localhost-nodeports=false",  # else it sets route_localnet on every interface
                "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
                "--conntrack-tcp-timeout-close-wait=0",  # 0: leave the host's conntrack settings alone
                f"--metrics-bind-address=127.0.0.1:{_free_port()}", f"--healthz-bind-address=127.0.0.1:{_free_port()}",
            ],
        )  # fmt: skip

    def _node_ready(self) -> bool:
        for name in ("kubelet", "kube-proxy", "coredns", "kube-scheduler", "kube-controller-manager"):
            process = self.processes.get(name)
            if process is not None and process.poll() is not None:
                raise HarnessError(f"{name} exited ({process.returncode}):\n{self.log_tail(name)}")
        out = self.kubectl(
            "get", "node", self.name, "-o", 'jsonpath={.status.conditions[?(@.type=="Ready")].status}', check=False
        )
        return out.strip() == "True"

    def _remove_cgroup_root(self) -> None:
        for mount in cgroup_mounts():
            top = mount / self.cgroup_root.lstrip("/")
            if not top.is_dir():
                continue
            for directory in sorted(_walk_dirs(top), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    directory.rmdir()

    def _restore_tunables(self) -> None:
        for tunable, value in self._tunables.items():
            with contextlib.suppress(OSError):
                (Path("/proc/sys") / tunable).write_text(value)
        self._tunables.clear()

    def _remove_container_logs(self) -> None:
        if not CONTAINER_LOGS.is_dir():
            return
        prefix = str(self.dir)
        for link in CONTAINER_LOGS.iterdir():
            if link.is_symlink() and str(link.readlink()).startswith(prefix):
                link.unlink(missing_ok=True)
        if self._made_container_logs:
            with contextlib.suppress(OSError):
                CONTAINER_LOGS.rmdir()


# -- host helpers -------------------------------------------------------------------


def run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise HarnessError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def binary_exists(name: str) -> bool:
    try:
        binary(name)
    except Exception:
        return False
    return True


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _unmount_under(directory: Path) -> None:
    prefix = f"{directory}/"
    points = [
        line.split()[4].replace("\\040", " ")
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(prefix)
    ]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _walk_dirs(top: Path) -> Iterator[Path]:
    yield top
    for parent, names, _files in os.walk(top):
        for name in names:
            yield Path(parent) / name


def remove_kube_chains() -> None:
    """Every ``KUBE-*`` chain the kubelet and kube-proxy leave (KUBE-FIREWALL, the canaries…) and the jumps to them."""
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("filter", "nat", "mangle"):
            listing = subprocess.run([tool, "-w", "-t", table, "-S"], capture_output=True, text=True, check=False)
            lines = listing.stdout.splitlines()
            chains = [line.split()[1] for line in lines if line.startswith("-N KUBE-")]
            for line in lines:
                words = shlex.split(line)
                if (
                    words[:1] == ["-A"]
                    and not words[1].startswith("KUBE-")
                    and any(w.startswith("KUBE-") for w in words[2:])
                ):
                    subprocess.run([tool, "-w", "-t", table, "-D", *words[1:]], capture_output=True, check=False)
            for chain in chains:
                subprocess.run([tool, "-w", "-t", table, "-F", chain], capture_output=True, check=False)
            for chain in chains:
                subprocess.run([tool, "-w", "-t", table, "-X", chain], capture_output=True, check=False)
