"""Creates pods through CRI exactly as kubelet does.

Same sandbox labels (``io.kubernetes.pod.{name,namespace,uid}``) plus the
pod's labels, same sandbox annotations (the pod's plus
``kubernetes.io/config.{seen,source}``), same container labels and
annotations (``io.kubernetes.container.ports`` as kubelet's JSON, omitted
when there are no ports), same cgroup parent
(``/kubepods/besteffort/pod<uid>``). The agent therefore sees what it would
see on a real node.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc

from coral_base.wire.cri.runtime.v1 import api_pb2, api_pb2_grpc
from integration.harness.cgroups import remove_pod_cgroups
from integration.harness.containerd import PrivateContainerd
from integration.harness.images import WORKLOAD_IMAGE


@dataclass(frozen=True, slots=True)
class PortSpec:
    container_port: int
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    name: str
    command: Sequence[str]
    ports: Sequence[PortSpec] = ()
    image: str = WORKLOAD_IMAGE


@dataclass(frozen=True, slots=True)
class Pod:
    uid: str
    name: str
    namespace: str
    sandbox_id: str
    container_ids: tuple[str, ...]
    ip: str
    labels: Mapping[str, str] = field(default_factory=dict)


def _ports_json(ports: Sequence[PortSpec]) -> str:
    entries: list[dict[str, Any]] = []
    for port in ports:
        entry: dict[str, Any] = {"containerPort": port.container_port, "protocol": port.protocol}
        if port.name:
            entry = {"name": port.name, **entry}
        entries.append(entry)
    return json.dumps(entries)


class PodFactory:
    """Creates and deletes pods on one runtime; deletes leftovers on ``close()``."""

    def __init__(self, runtime: PrivateContainerd) -> None:
        self.runtime = runtime
        self._channel = grpc.insecure_channel(runtime.address)
        self.stub = api_pb2_grpc.RuntimeServiceStub(self._channel)
        self.created: dict[str, Pod] = {}
        # What kubelet keeps to restart a container: the sandbox config and each container's spec and attempt.
        self._sandbox_configs: dict[str, Any] = {}
        self._specs: dict[tuple[str, str], tuple[ContainerSpec, int, str]] = {}

    def create_pod(
        self,
        name: str,
        *,
        namespace: str = "default",
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        containers: Sequence[ContainerSpec] = (ContainerSpec("app", ("sleep", "3600")),),
        uid: str | None = None,
        host_network: bool = False,
        init_containers: Sequence[ContainerSpec] = (),
    ) -> Pod:
        """A READY pod whose containers run; ``init_containers`` each run to completion first, as kubelet
        runs them (a hostNetwork pod gets no hostname: it shares the node's UTS namespace, as kubelet does)."""
        uid = uid or str(uuid.uuid4())
        pod_labels = dict(labels or {})
        sandbox_config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=0),
            hostname="" if host_network else name,
            log_directory=str(self.runtime.dir / "pods" / f"{namespace}_{name}_{uid}"),
            labels={
                **pod_labels,
                "io.kubernetes.pod.name": name,
                "io.kubernetes.pod.namespace": namespace,
                "io.kubernetes.pod.uid": uid,
            },
            annotations={
                **(annotations or {}),
                "kubernetes.io/config.seen": datetime.now(UTC).isoformat(),
                "kubernetes.io/config.source": "api",
            },
            linux=api_pb2.LinuxPodSandboxConfig(
                cgroup_parent=f"/kubepods/besteffort/pod{uid}",
                security_context=api_pb2.LinuxSandboxSecurityContext(
                    namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE if host_network else api_pb2.POD)
                ),
            ),
        )
        sandbox_id = self.stub.RunPodSandbox(
            api_pb2.RunPodSandboxRequest(config=sandbox_config), timeout=60
        ).pod_sandbox_id
        container_ids = []
        self._sandbox_configs[sandbox_id] = sandbox_config
        try:
            for spec in init_containers:
                init_id = self._start_container(sandbox_id, sandbox_config, spec, name, namespace, uid)
                self.wait_exited(init_id)
            for spec in containers:
                container_ids.append(self._start_container(sandbox_id, sandbox_config, spec, name, namespace, uid))
        except grpc.RpcError:
            self._remove_sandbox(sandbox_id, uid)
            raise
        status = self.stub.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id), timeout=10)
        pod = Pod(
            uid=uid,
            name=name,
            namespace=namespace,
            sandbox_id=sandbox_id,
            container_ids=tuple(container_ids),
            ip=status.status.network.ip,
            labels=pod_labels,
        )
        self.created[uid] = pod
        return pod

    def _start_container(
        self,
        sandbox_id: str,
        sandbox_config: Any,
        spec: ContainerSpec,
        pod: str,
        namespace: str,
        uid: str,
        attempt: int = 0,
    ) -> str:
        annotations = {
            "io.kubernetes.container.hash": hashlib.sha256(repr(spec).encode()).hexdigest()[:8],
            "io.kubernetes.container.restartCount": str(attempt),
            "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
            "io.kubernetes.container.terminationMessagePolicy": "File",
            "io.kubernetes.pod.terminationGracePeriod": "30",
        }
        if spec.ports:
            annotations["io.kubernetes.container.ports"] = _ports_json(spec.ports)
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=spec.name, attempt=attempt),
            image=api_pb2.ImageSpec(image=spec.image),
            command=list(spec.command),
            labels={
                "io.kubernetes.container.name": spec.name,
                "io.kubernetes.pod.name": pod,
                "io.kubernetes.pod.namespace": namespace,
                "io.kubernetes.pod.uid": uid,
            },
            annotations=annotations,
            log_path=f"{spec.name}/{attempt}.log",
        )
        container_id = self.stub.CreateContainer(
            api_pb2.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config),
            timeout=60,
        ).container_id
        self.stub.StartContainer(api_pb2.StartContainerRequest(container_id=container_id), timeout=60)
        self._specs[(sandbox_id, spec.name)] = (spec, attempt, str(container_id))
        return str(container_id)

    def restart_container(self, pod: Pod, name: str) -> str:
        """What kubelet does when a container dies: stop it, keep the exited instance, start attempt + 1."""
        spec, attempt, old = self._specs[(pod.sandbox_id, name)]
        self.stub.StopContainer(api_pb2.StopContainerRequest(container_id=old, timeout=0), timeout=30)
        return self._start_container(
            pod.sandbox_id,
            self._sandbox_configs[pod.sandbox_id],
            spec,
            pod.name,
            pod.namespace,
            pod.uid,
            attempt=attempt + 1,
        )

    def wait_exited(self, container_id: str, timeout: float = 30.0) -> int:
        """Wait for a container to exit; its exit code."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.stub.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=container_id), timeout=10)
            if status.status.state == api_pb2.CONTAINER_EXITED:
                return int(status.status.exit_code)
            if time.monotonic() > deadline:
                raise AssertionError(f"container {container_id} still runs after {timeout}s")
            time.sleep(0.05)

    def exec_in(self, container_id: str, *command: str) -> None:
        """A process run in a container and ended, as an exec probe does (``ctr task exec``)."""
        exec_id = f"probe-{uuid.uuid4().hex[:12]}"
        self.runtime.ctr("-n", "k8s.io", "task", "exec", "--exec-id", exec_id, container_id, *command)

    def stop_pod(self, pod: Pod) -> None:
        """StopPodSandbox only, as kubelet does when a pod ends (it removes the sandbox later)."""
        self.stub.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.sandbox_id), timeout=30)

    def stop_pod_gracefully(self, pod: Pod, grace_s: int = 5) -> None:
        """As kubelet deletes a pod: each container stopped with its grace (SIGTERM, SIGKILL ``grace_s``
        later), then the sandbox (StopPodSandbox alone kills at once)."""
        for container_id in pod.container_ids:
            request = api_pb2.StopContainerRequest(container_id=container_id, timeout=grace_s)
            self.stub.StopContainer(request, timeout=grace_s + 30)
        self.stop_pod(pod)

    def create_pods_concurrently(self, specs: Sequence[Mapping[str, Any]], workers: int = 4) -> list[Pod]:
        """``create_pod(**spec)`` for each spec, ``workers`` at a time (benchmarks, scale tests)."""
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda spec: self.create_pod(**spec), specs))

    def container_pid(self, container_id: str) -> int:
        """The container's main process on the host (verbose ContainerStatus)."""
        status = self.stub.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=container_id, verbose=True), timeout=10
        )
        return int(json.loads(status.info["info"])["pid"])

    def delete_pod(self, pod: Pod) -> None:
        self._remove_sandbox(pod.sandbox_id, pod.uid)
        self.created.pop(pod.uid, None)

    def _remove_sandbox(self, sandbox_id: str, uid: str) -> None:
        self._sandbox_configs.pop(sandbox_id, None)
        with contextlib.suppress(grpc.RpcError):
            self.stub.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
            self.stub.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
        remove_pod_cgroups(uid)

    def close(self, *, delete: bool = True) -> None:
        """Delete the pods this factory created (unless ``delete=False``) and hang up."""
        for pod in list(self.created.values()) if delete else []:
            self.delete_pod(pod)
        self._channel.close()


def wait_http(ip: str, port: int, path: str = "/", timeout: float = 10.0) -> bytes:
    """GET http://ip:port/path until it answers (pod IPs on our bridge, or loopback)."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    deadline = time.monotonic() + timeout
    while True:
        try:
            with direct.open(f"http://{ip}:{port}{path}", timeout=1) as response:
                return bytes(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
