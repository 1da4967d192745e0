"""The closed sets both programs speak: one enum each, one meaning per word.

The values are the words users see (logs, the CLI, the status page) and
auditors read (SQLite columns), so they never change once shipped. Where a
set crosses the wire it is also a protobuf enum; each program's codec maps
between the two, and only there (see docs/architecture.md).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

E = TypeVar("E", bound=StrEnum)


def read_word(words: type[E], word: str | None, default: E) -> E:
    """``word`` as a member of ``words``; an empty word, or one an older or newer writer used, is ``default``."""
    try:
        return words(word) if word else default
    except ValueError:
        return default


class Provenance(StrEnum):
    """Why a service exists in the form it has (RFD 012)."""

    UNKNOWN = "unknown"  # the sender said none, or a word this version does not know (the colony's reading)
    EXPLICIT = "explicit"  # declared in the agent's config
    DISCOVERED = "discovered"  # discovered, defaults only
    OVERRIDDEN = "overridden"  # discovered, then >= 1 field set by annotation/override


class EventKind(StrEnum):
    """What a discovery pass decided about one pod or service."""

    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"
    SKIPPED = "skipped"
    ERROR = "error"


class HealthState(StrEnum):
    """A service's health: the verdict of the agent's probes on the pod IP."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"


class AgentHealth(StrEnum):
    """An agent's own aggregate: its conditions and its services' health, in one word."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"


class AgentState(StrEnum):
    """The colony's view of an agent: are its heartbeats arriving?"""

    HEALTHY = "healthy"
    UNREACHABLE = "unreachable"
    LEFT = "left"  # it deregistered: its services go when the grace window ends, unless it registers again


class AgentKind(StrEnum):
    NODE_AGENT = "node-agent"  # discovers a node's pods
    SINGLE_SERVICE = "single-service"  # RFD 011's agent beside one service


class Action(StrEnum):
    """An operation an operator can run on a pod."""

    TAP = "tap"  # packet capture: keeps payload
    PROFILE = "profile"  # CPU profile of the pod's processes: reads their memory
    SAMPLE = "sample"  # flow counts: no payload


class Outcome(StrEnum):
    """How an operation ended."""

    OK = "ok"
    REFUSED = "refused"  # a guardrail said no, before anything ran
    FAILED = "failed"  # it ran and broke
    CANCELLED = "cancelled"  # the operator or the stream went away


class StopReason(StrEnum):
    """What ended an operation that ran."""

    DURATION = "duration"
    MAX_BYTES = "max-bytes"
    MAX_PACKETS = "max-packets"
    CANCEL = "cancel"


class ArtifactKind(StrEnum):
    """The kind of bytes an operation streams back."""

    PCAP = "pcap"
    PPROF = "pprof"
    FOLDED = "folded"
    SVG = "svg"


class AuditKind(StrEnum):
    """The families of the colony's audit log."""

    REGISTRATION = "registration"
    DEREGISTRATION = "deregistration"
    DISCOVERY = "discovery"
    AGENT = "agent"
    AUTH = "auth"
    OPERATION = "operation"
    RETENTION = "retention"  # entries past the retention period were deleted


class Scope(StrEnum):
    """What a colony token may do. Operator tools (the CLI, an MCP server) check the same words."""

    READ = "read"  # agents, services, whoami
    AUDIT = "audit"  # the audit log
    OPERATE = "operate"  # tap, profile, sample
    ENROLL = "enroll"  # a bootstrap token: enrolls node agents, nothing else
    ADMIN = "admin"  # revoke agents' enrollments


class EnrollMethod(StrEnum):
    """How a node agent proved it may enroll (the credential behind its first certificate)."""

    SECRET = "secret"  # the colony's shared secret
    BOOTSTRAP_TOKEN = "bootstrap-token"  # `coral colony token create NAME --bootstrap`, which expires
    SERVICE_ACCOUNT = "service-account"  # its projected ServiceAccount token, checked with TokenReview


class WorkloadKind(StrEnum):
    """The controllers an operation may name every pod of (``coral tap deploy/NAME``), as their ``kind``."""

    DEPLOYMENT = "Deployment"
    STATEFUL_SET = "StatefulSet"
    DAEMON_SET = "DaemonSet"
    JOB = "Job"
    CRON_JOB = "CronJob"


# kubectl's words for them: short names, singular and plural resource names.
WORKLOAD_WORDS: dict[str, WorkloadKind] = {
    **dict.fromkeys(("deploy", "deployment", "deployments"), WorkloadKind.DEPLOYMENT),
    **dict.fromkeys(("sts", "statefulset", "statefulsets"), WorkloadKind.STATEFUL_SET),
    **dict.fromkeys(("ds", "daemonset", "daemonsets"), WorkloadKind.DAEMON_SET),
    **dict.fromkeys(("job", "jobs"), WorkloadKind.JOB),
    **dict.fromkeys(("cj", "cronjob", "cronjobs"), WorkloadKind.CRON_JOB),
}


def workload_of(target: str) -> tuple[WorkloadKind, str] | None:
    """(kind, name) of ``deploy/NAME`` and its kin; None for any other target."""
    word, _, name = target.partition("/")
    kind = WORKLOAD_WORDS.get(word.lower())
    return (kind, name) if kind and name and "/" not in name else None
