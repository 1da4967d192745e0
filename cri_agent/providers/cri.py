"""The container runtime, read through the CRI socket (containerd by default).

``CriClient.pods()`` lists READY pod sandboxes and their containers and
returns ``PodRecord``s carrying kubelet's identity labels, the pod's labels
and annotations, declared ports, the pod IP, netns path and pids. Verbose
sandbox/container status is fetched once per sandbox/container (and again
only when a container changes state), never on every pass.

``CriClient.events()`` yields a hint whenever the runtime reports a change:
CRI ``GetContainerEvents`` where implemented, else containerd's own event
service on the same socket (containerd 1.6 answers UNIMPLEMENTED to the
former). Consumers treat events as "something changed" and re-list: the
payload is never trusted as state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

import grpc
import grpc.aio

from coral_base.errors import CoralError
from coral_base.wire.containerd.events import task_pb2
from coral_base.wire.containerd.services.events.v1 import events_pb2, events_pb2_grpc
from coral_base.wire.cri.runtime.v1 import api_pb2, api_pb2_grpc
from cri_agent.discovery.containers import deciding_instances
from cri_agent.errors import RuntimePermissionDenied, RuntimeUnavailable
from cri_agent.model import (
    ContainerID,
    ContainerRecord,
    ContainerState,
    DeclaredPort,
    PodProblem,
    PodRecord,
    PodUID,
    SandboxID,
)

log = logging.getLogger(__name__)

POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
CONTAINER_NAME = "io.kubernetes.container.name"
CONTAINER_PORTS = "io.kubernetes.container.ports"
# kubelet's own bookkeeping keys, not the pod's labels/annotations.
_KUBELET_LABELS = frozenset({POD_NAME, POD_NAMESPACE, POD_UID, CONTAINER_NAME})
_KUBELET_ANNOTATIONS = frozenset({"kubernetes.io/config.seen", "kubernetes.io/config.source"})

_STATES = {
    api_pb2.CONTAINER_CREATED: ContainerState.CREATED,
    api_pb2.CONTAINER_RUNNING: ContainerState.RUNNING,
    api_pb2.CONTAINER_EXITED: ContainerState.EXITED,
    api_pb2.CONTAINER_UNKNOWN: ContainerState.UNKNOWN,
}

# Verbose status calls in flight at once on a cold pass.
_STATUS_CONCURRENCY = 16

# containerd topics that can change a pod (not image pulls or snapshots).
_POD_TOPICS = ("/tasks/", "/containers/", "/sandboxes/")
_TASK_EXIT = "/tasks/exit"
SUBSCRIBED = "subscribed"
_SUBSCRIBED_AFTER_S = 0.2
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # what read() returns at the stream's end (not in the stubs)

# Reconnect fast after a runtime restart; the agent's own loop backs off.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class _Namespace(TypedDict, total=False):
    type: str
    path: str


class _VerboseInfo(TypedDict, total=False):
    """The JSON containerd puts under ``info`` of verbose status responses."""

    pid: int
    runtimeSpec: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RuntimeVersion:
    runtime_name: str
    runtime_version: str
    api_version: str


@dataclass(frozen=True, slots=True)
class _SandboxDetails:
    ip: str
    netns_path: str
    pid: int
    host_network: bool


@dataclass(frozen=True, slots=True)
class _ContainerStatus:
    """What one verbose ContainerStatus said of an instance in one state (asked once per state)."""

    pid: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    exit_code: int | None = None


@dataclass(frozen=True, slots=True)
class RuntimeEvent:
    """A change hint from the runtime: which object, and what happened."""

    source: str  # "cri" or "containerd"
    topic: str  # e.g. CONTAINER_STARTED_EVENT or /tasks/exit
    object_id: str = ""
    exited: bool = False  # a task (container or sandbox) exited: the runtime's state settles just after

    @classmethod
    def subscribed(cls, source: str) -> RuntimeEvent:
        """Not a change: the stream is open (so the agent can say so before anything happens)."""
        return cls(source=source, topic=SUBSCRIBED)


class CriClient:
    """Async CRI client over a unix socket. One instance per agent."""

    def __init__(self, socket: Path, *, timeout: float = 5.0, containerd_namespace: str = "k8s.io"):
        self.socket = socket
        self.timeout = timeout
        self.containerd_namespace = containerd_namespace
        self._channel: grpc.aio.Channel | None = None
        self._sandboxes: dict[str, _SandboxDetails] = {}
        self._container_status: dict[tuple[str, int], _ContainerStatus] = {}
        # Tasks whose exit the event stream reported, with their exit status when known. The CRI plugin
        # updates its state only after handling the same event: for a moment it still lists the sandbox
        # READY (the pod is gone) or the container RUNNING (it has exited, with this status).
        self._exited: dict[str, _ContainerStatus] = {}

    # -- connection -----------------------------------------------------------

    def _stub(self) -> api_pb2_grpc.RuntimeServiceStub:
        return api_pb2_grpc.RuntimeServiceStub(self._open())

    def _open(self) -> grpc.aio.Channel:
        self._check_socket()
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(f"unix://{self.socket}", options=_CHANNEL_OPTIONS)
        return self._channel

    def _check_socket(self) -> None:
        if not self.socket.exists():
            raise RuntimeUnavailable(
                f"CRI socket {self.socket} not found: mount the host's runtime socket or set --cri-socket"
            )
        if not os.access(self.socket, os.R_OK | os.W_OK):
            raise RuntimePermissionDenied(
                f"CRI socket {self.socket} is not accessible: run the agent as root or grant it the socket's group"
            )

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None

    async def version(self) -> RuntimeVersion:
        response = await self._call("Version", api_pb2.VersionRequest(version="v1"))
        return RuntimeVersion(
            runtime_name=response.runtime_name,
            runtime_version=response.runtime_version,
            api_version=response.runtime_api_version,
        )

    async def _call(self, method: str, request: Any) -> Any:
        rpc = getattr(self._stub(), method)
        try:
            return await rpc(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise self._translate(exc, method) from exc

    def _translate(self, exc: grpc.aio.AioRpcError, method: str) -> CoralError:
        code = exc.code()
        detail = exc.details() or ""
        if code == grpc.StatusCode.NOT_FOUND:
            return _NotFound(f"CRI {method}: {detail}")
        if code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in detail.lower():
            return RuntimePermissionDenied(
                f"CRI {method} on {self.socket} was refused ({detail}): run the agent "
                "as root or grant it the socket's group"
            )
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            # The channel may be stuck on a dead connection after a runtime restart.
            self._channel = None
            return RuntimeUnavailable(
                f"CRI {method} on {self.socket} failed ({code.name}: {detail}): "
                "the runtime is down or restarting; retrying"
            )
        return RuntimeUnavailable(f"CRI {method} on {self.socket} failed ({code.name}: {detail})")

    # -- snapshot -------------------------------------------------------------

    async def pods(self) -> list[PodRecord]:
        """Every READY pod sandbox with its containers, as PodRecords."""
        ready = api_pb2.PodSandboxFilter(state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_READY))
        sandboxes = (await self._call("ListPodSandbox", api_pb2.ListPodSandboxRequest(filter=ready))).items
        containers = (await self._call("ListContainers", api_pb2.ListContainersRequest())).containers
        by_sandbox: dict[str, list[Any]] = {}
        for container in containers:
            by_sandbox.setdefault(container.pod_sandbox_id, []).append(container)

        live = {sandbox.id for sandbox in sandboxes}
        for stale in set(self._sandboxes) - live:
            del self._sandboxes[stale]
        listed = live | {c.id for c in containers if c.state == api_pb2.CONTAINER_RUNNING}
        self._exited = {task: status for task, status in self._exited.items() if task in listed}
        sandboxes = [sandbox for sandbox in sandboxes if sandbox.id not in self._exited]
        live_containers = {(c.id, c.state) for c in containers}
        for key in set(self._container_status) - live_containers:
            del self._container_status[key]

        # Status calls run concurrently (bounded) so a first pass over a full
        # node, which has nothing cached yet, stays short.
        limit = asyncio.Semaphore(_STATUS_CONCURRENCY)

        async def pod_of(sandbox: Any) -> PodRecord | None:
            async with limit:
                details = await self._sandbox_details(sandbox.id)
            if details is None:
                return None  # went away between list and status
            records: list[tuple[ContainerRecord, str]] = []
            for container in by_sandbox.get(sandbox.id, []):
                if container.state == api_pb2.CONTAINER_UNKNOWN:
                    continue
                async with limit:
                    record, error = await self._container_record(container)
                records.append((record, error))
            deciding = deciding_instances(record for record, _ in records)
            problems = [PodProblem(CONTAINER_PORTS, error, r.name) for r, error in records if error and r in deciding]
            return _pod_record(sandbox, details, deciding, problems)

        found = await asyncio.gather(*(pod_of(sandbox) for sandbox in sandboxes))
        return [pod for pod in found if pod is not None]

    async def _sandbox_details(self, sandbox_id: str) -> _SandboxDetails | None:
        cached = self._sandboxes.get(sandbox_id)
        if cached is not None:
            return cached
        try:
            response = await self._call(
                "PodSandboxStatus",
                api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True),
            )
        except _NotFound:
            return None
        info = _verbose_info(response.info)
        status = response.status
        details = _SandboxDetails(
            ip=status.network.ip,
            netns_path=_netns_path(info),
            pid=int(info.get("pid", 0)),
            host_network=status.linux.namespaces.options.network == api_pb2.NODE,
        )
        if details.ip or details.host_network:
            # CNI may not have finished on a brand-new sandbox: do not cache
            # an IP-less answer for a pod network sandbox.
            self._sandboxes[sandbox_id] = details
        return details

    async def _container_record(self, container: Any) -> tuple[ContainerRecord, str]:
        state = _STATES.get(container.state, ContainerState.UNKNOWN)
        status = _ContainerStatus()
        if (exited := self._exited.get(container.id)) is not None and state == ContainerState.RUNNING:
            state, status = ContainerState.EXITED, exited
        elif state in (ContainerState.RUNNING, ContainerState.EXITED):
            status = await self._status_of(container.id, container.state)
        ports, error = parse_declared_ports(container.annotations.get(CONTAINER_PORTS, ""))
        record = ContainerRecord(
            id=ContainerID(container.id),
            name=container.metadata.name or container.labels.get(CONTAINER_NAME, ""),
            state=state,
            image=container.image.image,
            pid=status.pid,
            attempt=container.metadata.attempt,
            started_at=status.started_at,
            finished_at=status.finished_at,
            exit_code=status.exit_code,
            declared_ports=ports,
            labels=_strip(container.labels, _KUBELET_LABELS),
            annotations=dict(container.annotations),
        )
        return record, error

    async def _status_of(self, container_id: str, state: int) -> _ContainerStatus:
        """Pid and start time of a running instance, exit code and time of an exited one (cached per state)."""
        key = (container_id, state)
        if key not in self._container_status:
            try:
                response = await self._call(
                    "ContainerStatus", api_pb2.ContainerStatusRequest(container_id=container_id, verbose=True)
                )
            except _NotFound:
                self._container_status[key] = _ContainerStatus()
            else:
                status = response.status
                exited = status.state == api_pb2.CONTAINER_EXITED
                self._container_status[key] = _ContainerStatus(
                    pid=int(_verbose_info(response.info).get("pid", 0)) if not exited else 0,
                    started_at=status.started_at / 1e9,
                    finished_at=status.finished_at / 1e9 if exited else 0.0,
                    exit_code=status.exit_code if exited else None,
                )
        return self._container_status[key]

    # -- events ---------------------------------------------------------------

    async def events(self) -> AsyncIterator[RuntimeEvent]:
        """Change hints from the runtime until the stream breaks (then raises)."""
        try:
            async for event in self._cri_events():
                yield event
            return
        except _Unimplemented:
            log.debug("event=runtime.events source=containerd reason=%s", "CRI events unimplemented")
        async for event in self._containerd_events():
            yield event

    async def _cri_events(self) -> AsyncIterator[RuntimeEvent]:
        stream: Any = self._stub().GetContainerEvents(api_pb2.GetEventsRequest())
        try:
            async for response in _messages(stream):
                if response is None:
                    yield RuntimeEvent.subscribed("cri")
                    continue
                kind = response.container_event_type
                if kind == api_pb2.CONTAINER_STOPPED_EVENT:
                    self._exited[response.container_id] = _ContainerStatus()
                yield RuntimeEvent(
                    source="cri",
                    topic=api_pb2.ContainerEventType.Name(kind),
                    object_id=response.container_id,
                    exited=kind == api_pb2.CONTAINER_STOPPED_EVENT,
                )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise _Unimplemented from exc
            raise self._translate(exc, "GetContainerEvents") from exc
        finally:
            stream.cancel()

    async def _containerd_events(self) -> AsyncIterator[RuntimeEvent]:
        stub = events_pb2_grpc.EventsStub(self._open())
        request = events_pb2.SubscribeRequest(filters=[f"namespace=={self.containerd_namespace}"])
        stream: Any = stub.Subscribe(request)
        try:
            async for envelope in _messages(stream):
                if envelope is None:
                    yield RuntimeEvent.subscribed("containerd")
                elif envelope.topic == _TASK_EXIT:
                    exit_event = task_pb2.TaskExit.FromString(envelope.event.value)
                    if exit_event.id in ("", exit_event.container_id):  # the task itself, not an exec in it
                        self._exited[exit_event.container_id] = _ContainerStatus(
                            finished_at=exit_event.exited_at.ToNanoseconds() / 1e9, exit_code=exit_event.exit_status
                        )
                    yield RuntimeEvent(
                        source="containerd", topic=envelope.topic, object_id=exit_event.container_id, exited=True
                    )
                elif envelope.topic.startswith(_POD_TOPICS):
                    yield RuntimeEvent(source="containerd", topic=envelope.topic)
        except grpc.aio.AioRpcError as exc:
            raise self._translate(exc, "containerd events Subscribe") from exc
        finally:
            stream.cancel()


async def _messages(stream: Any) -> AsyncIterator[Any | None]:
    """A server stream's messages, after ``None`` once it has stayed open ``_SUBSCRIBED_AFTER_S`` without an error.

    Neither containerd's Subscribe nor CRI GetContainerEvents sends anything before the first event,
    while a refusal (UNIMPLEMENTED, UNAVAILABLE) comes at once: a quiet stream is a subscribed one.
    """
    first = asyncio.ensure_future(stream.read())
    try:
        done, _ = await asyncio.wait({first}, timeout=_SUBSCRIBED_AFTER_S)
        if not done:
            yield None
        message = await first
    finally:
        first.cancel()
    while message is not _EOF:
        yield message
        message = await stream.read()


class _Unimplemented(Exception):
    """The runtime does not implement CRI GetContainerEvents."""


class _NotFound(CoralError):
    """The sandbox or container vanished between a list and a status call."""


def parse_declared_ports(raw: str) -> tuple[tuple[DeclaredPort, ...], str]:
    """kubelet's ``io.kubernetes.container.ports`` JSON -> ports, and what is wrong with it ("" if nothing)."""
    if not raw:
        return (), ""
    try:
        entries = json.loads(raw)
        if not isinstance(entries, list):
            raise TypeError("not a list")
        ports = []
        for entry in entries:
            port = int(entry["containerPort"])
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} out of range")
            protocol = str(entry.get("protocol") or "TCP").upper()
            if protocol not in ("TCP", "UDP"):
                continue  # SCTP: not probed or registered
            ports.append(DeclaredPort(port=port, protocol=cast(Any, protocol), name=str(entry.get("name") or "")))
        return tuple(ports), ""
    except (ValueError, TypeError, KeyError) as exc:
        return (), f"malformed JSON ({exc})"


def _pod_record(
    sandbox: Any, details: _SandboxDetails, containers: list[ContainerRecord], problems: list[PodProblem]
) -> PodRecord:
    labels = sandbox.labels
    return PodRecord(
        uid=PodUID(labels.get(POD_UID) or sandbox.metadata.uid),
        name=labels.get(POD_NAME) or sandbox.metadata.name,
        namespace=labels.get(POD_NAMESPACE) or sandbox.metadata.namespace,
        sandbox_id=SandboxID(sandbox.id),
        labels=_strip(labels, _KUBELET_LABELS),
        annotations=_strip(sandbox.annotations, _KUBELET_ANNOTATIONS),
        ip=details.ip,
        netns_path=details.netns_path,
        pid=details.pid,
        created_at_ns=sandbox.created_at,
        containers=tuple(containers),
        host_network=details.host_network,
        provider_problems=tuple(problems),
    )


def _strip(values: Mapping[str, str], drop: frozenset[str]) -> dict[str, str]:
    return {k: v for k, v in values.items() if k not in drop}


def _verbose_info(info: Mapping[str, str]) -> _VerboseInfo:
    raw = info.get("info")
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {}
    return cast(_VerboseInfo, parsed) if isinstance(parsed, dict) else {}


def _netns_path(info: _VerboseInfo) -> str:
    spec = info.get("runtimeSpec") or {}
    namespaces: list[_Namespace] = (spec.get("linux") or {}).get("namespaces") or []
    for namespace in namespaces:
        if namespace.get("type") == "network":
            return namespace.get("path", "")
    return ""
