"""The colony's domain records: plain frozen data, no wire, no SQLite.

Everything above this module speaks these types: the stores turn them into
rows and back (``stores/``), the codec into protobuf messages and back
(``codec.py``), and the services, the status page and the commands work on
them alone. Closed sets are enums whose values are the strings the registry
and the audit log store, so a row reads the same to an auditor as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from coral_base.vocabulary import Action as Action
from coral_base.vocabulary import AgentHealth as AgentHealth
from coral_base.vocabulary import AgentKind as AgentKind
from coral_base.vocabulary import AgentState as AgentState
from coral_base.vocabulary import ArtifactKind as ArtifactKind
from coral_base.vocabulary import AuditKind as AuditKind
from coral_base.vocabulary import EnrollMethod as EnrollMethod
from coral_base.vocabulary import EventKind as EventKind
from coral_base.vocabulary import HealthState as HealthState
from coral_base.vocabulary import Outcome as Outcome
from coral_base.vocabulary import Provenance as Provenance
from coral_base.vocabulary import Scope as Scope
from coral_base.vocabulary import StopReason as StopReason

PROVENANCES: tuple[Provenance, ...] = (Provenance.EXPLICIT, Provenance.DISCOVERED, Provenance.OVERRIDDEN)  # known ones


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """One service as an agent describes it (mesh.v1 ServiceInfo, flattened)."""

    key: str
    component_name: str
    port: int = 0
    protocol: str = ""
    health_endpoint: str = ""
    service_type: str = ""
    provenance: Provenance = Provenance.UNKNOWN
    namespace: str = ""
    pod_name: str = ""
    pod_uid: str = ""
    container_name: str = ""
    pod_ip: str = ""
    node_name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    node_labels: Mapping[str, str] = field(default_factory=dict)
    overridden_fields: tuple[str, ...] = ()
    workload: str = ""
    health_state: HealthState = HealthState.UNKNOWN  # what the agent's probe says
    health_error: str = ""
    health_latency_ms: float = 0.0
    health_since: float = 0.0  # when the state last changed (agent's clock)
    health_interval_ms: int = 0


@dataclass(frozen=True, slots=True)
class StoredService:
    """A service as the registry keeps it: the agent's description and what the colony knows of it."""

    service: ServiceRecord
    agent_id: str
    stale: bool = False  # its agent is unreachable
    first_seen: float = 0.0
    last_seen: float = 0.0


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """An agent as it registers."""

    agent_id: str
    kind: AgentKind
    node_name: str = ""
    node_labels: Mapping[str, str] = field(default_factory=dict)
    version: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """An agent as the registry keeps it, with its service count."""

    agent: AgentRecord
    state: AgentState = AgentState.HEALTHY
    health: AgentHealth = AgentHealth.UNKNOWN  # the agent's own aggregate
    first_seen: float = 0.0
    last_heartbeat: float = 0.0
    services: int = 0
    enrollment: Enrollment | None = None  # None: it registered with the shared secret


@dataclass(frozen=True, slots=True)
class Enrollment:
    """A node bound to its agent's key: the certificates the colony accepts for it, and how it enrolled.

    The colony accepts the node's current certificate and, until it expires,
    the one before it (an agent's open streams outlive a renewal). A revoked
    enrollment accepts none and lets the node enroll again.
    """

    node_name: str
    agent_id: str
    key_sha256: str
    certificate_sha256: str
    not_after: float
    method: EnrollMethod
    enrolled_at: float
    renewed_at: float
    credential: str = ""  # the bootstrap token's or ServiceAccount's name: never a secret
    previous_certificate_sha256: str = ""
    revoked_at: float = 0.0  # 0: in force
    revoked_by: str = ""
    wireguard_public_key: str = ""  # the mesh (RFD 012): the node's key and address, when it comes
    mesh_address: str = ""

    def accepts(self, agent_id: str, fingerprint: str) -> bool:
        return (
            not self.revoked_at
            and agent_id == self.agent_id
            and fingerprint in (self.certificate_sha256, self.previous_certificate_sha256)
        )


@dataclass(frozen=True, slots=True)
class ServiceGroup:
    """Services under the agent that owns them (``coral services``)."""

    agent: AgentStatus
    services: tuple[StoredService, ...] = ()


@dataclass(frozen=True, slots=True)
class ServiceFilter:
    """Every filter given must match; ``name`` is a substring, ``name_exact`` the whole name."""

    agent_id: str = ""
    node: str = ""
    namespace: str = ""
    provenance: Provenance | None = None
    name: str = ""
    key: str = ""
    pod_name: str = ""
    name_exact: str = ""
    workload: str = ""  # exactly, e.g. Deployment/web
    pod_prefix: str = ""  # the pod name starts with it


@dataclass(frozen=True, slots=True)
class Applied:
    applied_sequence: int
    resync_required: bool = False
    refused_keys: tuple[str, ...] = ()


# -- the audit log ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditEntry:
    time: float
    kind: AuditKind
    action: str  # service.registered, agent.unreachable, added, operator.refused...
    actor: str = ""  # the agent id or operator name that caused it ("colony" for its own clock)
    agent_id: str = ""
    node_name: str = ""
    namespace: str = ""
    pod_name: str = ""
    service_name: str = ""
    service_key: str = ""
    provenance: str = ""  # a Provenance value, or "" when the entry is about no service
    detail: str = ""
    # When the agent says it happened, for an entry an agent reported (a discovery event); 0 for the colony's own.
    # ``time`` is always the colony's clock: it orders the log and decides retention, whatever an agent says.
    agent_time: float = 0.0


@dataclass(frozen=True, slots=True)
class LoggedEntry:
    """An audit entry as the log numbered it."""

    id: int
    entry: AuditEntry


DEFAULT_AUDIT_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class AuditTally:
    """Audit entries appended after an id, counted by what they record (the colony's metrics)."""

    last_id: int  # the newest entry counted: the next tally starts after it
    by_kind: Mapping[AuditKind, int]
    registrations: int  # agents registered (a first registration or a new session)
    operations: Mapping[tuple[str, str], int]  # (action, outcome) -> operations that ended so


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """The newest ``limit`` entries (0: the default) since ``since``, of one node and kind when given."""

    since: float = 0.0
    node: str = ""
    kind: AuditKind | None = None
    limit: int = 0


# -- mesh.v1 calls ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Registration:
    """A Register call: the agent, its full set, and the colony credentials it sent."""

    agent: AgentRecord
    services: tuple[ServiceRecord, ...]
    colony_id: str
    colony_secret: str
    partial: bool = False  # the first part of the set; deltas bring the rest


@dataclass(frozen=True, slots=True)
class EnrollCall:
    """An Enroll call: the node, the key's signing request, and the one credential it presents."""

    colony_id: str
    node_name: str
    csr_pem: bytes
    method: EnrollMethod | None  # None: no credential
    credential: str = field(repr=False)  # the secret or token itself: compared, never stored or logged
    version: str = ""


@dataclass(frozen=True, slots=True)
class BoundToken:
    """What the Kubernetes API says of a projected ServiceAccount token: whose it is, and where it is bound."""

    service_account: str  # system:serviceaccount:NAMESPACE:NAME
    node_name: str  # the node of the pod the token is bound to
    pod_name: str = ""

    def credential(self) -> str:
        """The enrollment's credential, as the registry and the audit log name it (never the token)."""
        namespace = self.service_account.split(":")[2] if self.service_account.count(":") == 3 else ""
        pod = f" pod {namespace}/{self.pod_name}" if self.pod_name else ""
        return f"{self.service_account}{pod}"


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """What Enroll and Renew answer."""

    agent_id: str
    certificate_pem: bytes
    ca_pem: bytes
    not_after: float
    renew_after: float
    agent_port: int


@dataclass(frozen=True, slots=True)
class Delta:
    """An UpdateServices call: numbered changes within the session, with the discovery events behind them."""

    agent_id: str
    session_token: str
    sequence: int
    upserts: tuple[ServiceRecord, ...] = ()
    removed: tuple[str, ...] = ()
    events: tuple[AuditEntry, ...] = ()  # the registry fills in the agent, actor, node and its own time
    completes_registration: bool = False  # the last part of a registration in parts


@dataclass(frozen=True, slots=True)
class SessionCall:
    """A Heartbeat or Deregister call: who, with which session (and, heartbeating, the agent's health)."""

    agent_id: str
    session_token: str
    health: AgentHealth | None = None


# -- operations ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OperationRequest:
    """What an operator asks (colony.v1 RunOperationRequest)."""

    action: Action
    target: str  # a service name or key, namespace/pod, or a workload (deploy/NAME)
    node: str = ""  # route a namespace/pod the registry does not list to this node's agent; or narrow the pods
    duration_s: float = 0.0
    filter: str = ""
    max_bytes: int = 0
    max_packets: int = 0
    frequency_hz: int = 0
    all_pods: bool = False  # every pod the target matches, rather than a refusal when it matches several
    namespace: str = ""  # a workload target's namespace (empty: wherever it is, if in one namespace only)

    def parameters(self) -> dict[str, object]:
        """The limits given (the audit's record of what was asked)."""
        values: dict[str, object] = {
            "duration_s": self.duration_s,
            "filter": self.filter,
            "max_bytes": self.max_bytes,
            "max_packets": self.max_packets,
            "frequency_hz": self.frequency_hz,
            "all_pods": self.all_pods,
            "namespace": self.namespace,
        }
        return {k: v for k, v in values.items() if v}

    @property
    def result_deadline_s(self) -> float:
        """How long its result may take: the duration (the node's hard cap when it names none) and a grace.

        The colony fails (and cancels on the node) an operation still silent
        then; the CLI's call gives up a little later.
        """
        return (self.duration_s or ASSUMED_DURATION_S) + RESULT_GRACE_S


RESULT_GRACE_S = 30.0  # beyond its duration, how long an operation may take to answer
ASSUMED_DURATION_S = 300.0  # an operation that names none runs the agent's default, at most its hard cap (300 s)


@dataclass(frozen=True, slots=True)
class OperationTarget:
    """The pod (and service) the colony resolved an operation's target to."""

    namespace: str = ""
    pod_name: str = ""
    pod_uid: str = ""
    service_key: str = ""  # empty when the operator named a pod
    service_name: str = ""
    provenance: Provenance = Provenance.UNKNOWN
    node_name: str = ""  # the node whose agent runs the operation


@dataclass(frozen=True, slots=True)
class ForwardedOperation:
    """An operation as the colony sends it down the owning agent's control stream."""

    request_id: str
    operator: str  # the token name: the audit identity
    request: OperationRequest
    target: OperationTarget


@dataclass(frozen=True, slots=True)
class Chunk:
    kind: ArtifactKind
    data: bytes


@dataclass(frozen=True, slots=True)
class Flow:
    protocol: str
    src: str
    src_port: int
    dst: str
    dst_port: int
    packets: int
    bytes: int
    first_seen_unix_ms: int
    last_seen_unix_ms: int


@dataclass(frozen=True, slots=True)
class OperationResult:
    outcome: Outcome
    error: str = ""  # why, naming the limit for a refusal
    duration_s: float = 0.0
    bytes: int = 0
    packets: int = 0
    dropped: int = 0
    flows: tuple[Flow, ...] = ()
    samples: int = 0
    engine: str = ""
    node_name: str = ""
    stopped_by: StopReason | None = None


OperationOutput = OperationTarget | Chunk | OperationResult


# -- callers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: its name, what it may do, and where."""

    name: str
    scopes: frozenset[Scope]
    namespaces: frozenset[str] = frozenset()  # empty: every namespace
    expires: float = 0.0  # 0: never

    def refusal(self, scope: Scope, *, namespace: str | None = None) -> str | None:
        """Why this caller may not use ``scope`` (in ``namespace``), or None when it may."""
        if scope not in self.scopes:
            has = ", ".join(sorted(self.scopes)) or "none"
            return f"token {self.name!r} lacks the {scope} scope (it has: {has})"
        if namespace is not None and self.namespaces and namespace not in self.namespaces:
            allowed = ", ".join(sorted(self.namespaces))
            return f"token {self.name!r} is limited to namespace(s) {allowed}: {namespace or '(none)'} is outside them"
        return None
