"""The plain data that flows through discovery.

providers -> ``NodeSnapshot`` (``PodRecord`` / ``ContainerRecord`` /
``ListeningSocket``) -> discovery -> ``ServiceInfo`` + ``DiscoveryEvent``.
Everything here is a frozen dataclass with no behaviour beyond small derived
properties, so the decision logic can be tested without sockets or root.
Mappings inside records are never mutated after construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, NewType

from coral_base.vocabulary import EventKind as EventKind
from coral_base.vocabulary import HealthState as HealthState
from coral_base.vocabulary import Provenance as Provenance

PodUID = NewType("PodUID", str)
ContainerID = NewType("ContainerID", str)
SandboxID = NewType("SandboxID", str)
ServiceKey = NewType("ServiceKey", str)

Transport = Literal["TCP", "UDP"]  # a port's transport protocol (not typing.Protocol)


class ContainerState(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class DeclaredPort:
    """A port from the container annotation ``io.kubernetes.container.ports``."""

    port: int
    protocol: Transport = "TCP"
    name: str = ""


@dataclass(frozen=True, slots=True)
class ListeningSocket:
    """A socket in LISTEN state (TCP) or unconnected bound (UDP) in a pod netns."""

    port: int
    protocol: Transport
    address: str  # "0.0.0.0", "::", "127.0.0.1", ...
    inode: int = 0

    @property
    def loopback_only(self) -> bool:
        """True when only reachable from inside the pod (not on the pod IP)."""
        address = self.address
        return address.startswith(("127.", "::ffff:127.")) or address == "::1"


@dataclass(frozen=True, slots=True)
class ContainerRecord:
    id: ContainerID
    name: str
    state: ContainerState
    image: str = ""
    pid: int = 0  # main process on the host (hostPID), 0 when not running
    # kubelet's restart counter for this container name (CRI metadata.attempt): a restart makes a new
    # container with attempt + 1 and keeps the exited one, so a pod can list two instances of one name.
    attempt: int = 0
    started_at: float = 0.0  # wall clock, seconds; 0 when unknown or never started
    finished_at: float = 0.0  # wall clock, seconds; 0 unless exited
    exit_code: int | None = None  # None unless exited and known
    declared_ports: tuple[DeclaredPort, ...] = ()
    # Filled by the /proc provider: every host pid in the container's cgroup
    # and the process names (comm) seen there, e.g. ("redis-server",).
    pids: tuple[int, ...] = ()
    process_names: tuple[str, ...] = ()
    # Ports of the pod's netns that the /proc provider attributed to this
    # container (through socket inodes of its processes).
    listening: tuple[ListeningSocket, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PodProblem:
    """Something wrong in one pod's metadata: which key, why, and in which container when it is one's."""

    key: str  # the annotation or label, e.g. "coral.io/port", "io.kubernetes.container.ports"
    reason: str
    container: str = ""

    def render(self, pod: str) -> str:
        """``namespace/pod: [container c: ]key: reason``: the text events, logs and the cache keep."""
        where = f"container {self.container}: " if self.container else ""
        return f"{pod}: {where}{self.key}: {self.reason}"


@dataclass(frozen=True, slots=True)
class PodRecord:
    """A READY pod sandbox as the runtime (or the API fallback) sees it."""

    uid: PodUID
    name: str
    namespace: str
    sandbox_id: SandboxID
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    ip: str = ""
    netns_path: str = ""
    pid: int = 0  # sandbox (pause) process
    created_at_ns: int = 0
    containers: tuple[ContainerRecord, ...] = ()
    # Listening sockets of the pod netns not attributed to any container.
    unattributed_listening: tuple[ListeningSocket, ...] = ()
    # Workload owner ("Deployment/payments-api") when enrichment knows it.
    owner: str = ""
    host_network: bool = False
    # Problems a provider met reading this pod (e.g. malformed
    # io.kubernetes.container.ports JSON): reported as error events.
    provider_problems: tuple[PodProblem, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """Everything discovery knows about the node at one instant."""

    node_name: str
    pods: tuple[PodRecord, ...]
    taken_at: float  # wall clock, seconds
    source: Literal["cri", "kubernetes", "fixture"] = "cri"
    node_labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """One registrable service: (pod, container, port), or a portless pod entry."""

    key: ServiceKey
    name: str
    namespace: str
    pod_name: str
    pod_uid: PodUID
    container: str
    port: int | None
    protocol: Transport | None
    service_type: str
    provenance: Provenance
    health_endpoint: str = ""
    health_interval_s: float = 10.0
    pod_ip: str = ""
    node_name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    # Fields set by an annotation or override, e.g. ("name", "health_endpoint").
    overridden_fields: tuple[str, ...] = ()
    workload: str = ""  # the pod's owner, "Deployment/payments-api", when the Kubernetes API told it


# The fields compared to decide whether a service was "updated".
SERVICE_FIELDS: tuple[str, ...] = (
    "name",
    "namespace",
    "pod_name",
    "container",
    "port",
    "protocol",
    "service_type",
    "provenance",
    "health_endpoint",
    "health_interval_s",
    "pod_ip",
    "node_name",
    "labels",
    "overridden_fields",
    "workload",
)


@dataclass(frozen=True, slots=True)
class DiscoveryEvent:
    """One discovery decision, as logged and stored in ``discovery_events``."""

    kind: EventKind
    namespace: str
    pod_name: str
    pod_uid: PodUID | None = None
    key: ServiceKey | None = None
    service: str = ""  # the service's name when the event is about a service
    reason: str = ""
    fields: tuple[str, ...] = ()  # changed fields (updated) or offending keys (error)
    provenance: Provenance | None = None  # the service's (the new one's when updated, the old one's when removed)


@dataclass(frozen=True, slots=True)
class Health:
    """The latest probe verdict of one service (see cri_agent/health.py)."""

    key: ServiceKey
    state: HealthState
    since: float  # when the state last changed
    checked_at: float = 0.0
    latency_ms: float = 0.0
    last_error: str = ""
