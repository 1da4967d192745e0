"""An operation as the agent sees it: what the colony asks, what the agent answers.

Plain data, decoded from and encoded to ``agent.v1`` by ``colony_codec``
alone, so the guardrails and the runner never touch a protobuf field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coral_base.vocabulary import Action, ArtifactKind, Outcome, Provenance, StopReason

FlowKey = tuple[str, str, int, str, int]  # protocol, src, src port, dst, dst port


@dataclass(frozen=True, slots=True)
class OperationTarget:
    """The pod an operation runs on, as the colony resolved the operator's words."""

    namespace: str
    pod_name: str
    pod_uid: str = ""
    service_key: str = ""  # empty when the operator named a pod
    service_name: str = ""
    provenance: Provenance | None = None


@dataclass(frozen=True, slots=True)
class OperationRequest:
    request_id: str
    operator: str  # the token name: the audit identity
    action: Action | str  # a str is a word this agent does not know: the guardrails refuse it
    target: OperationTarget
    duration_s: float = 0.0  # 0: the agent's default
    filter: str = ""  # BPF filter (tap, sample)
    max_bytes: int = 0  # 0: the agent's ceiling
    max_packets: int = 0
    frequency_hz: int = 0  # profile; 0: 49


@dataclass(frozen=True, slots=True)
class Artifact:
    """A piece of an operation's output (pcap bytes, a profile)."""

    request_id: str
    kind: ArtifactKind
    data: bytes


@dataclass(slots=True)
class Flow:
    """Packets and bytes of one 5-tuple, as ``sample`` counts them."""

    key: FlowKey
    packets: int = 0
    bytes: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0


@dataclass(slots=True)
class OperationResult:
    """Filled in while the operation runs; sent once, at its end."""

    request_id: str
    node_name: str
    outcome: Outcome | None = None  # None while running
    error: str = ""  # why, naming the limit for a refusal
    duration_s: float = 0.0
    bytes: int = 0
    packets: int = 0
    dropped: int = 0  # packets the kernel dropped
    flows: list[Flow] = field(default_factory=list)  # sample
    samples: int = 0  # profile
    engine: str = ""
    stopped_by: StopReason | None = None
