"""The agent's configuration as typed, frozen data (docs/configuration.md).

Field names are the snake_case of the documented camelCase keys
(``includeNamespaces`` -> ``include_namespaces``). Nothing here reads a file,
the environment or a flag, and nothing checks a value: ``validation`` builds
these from checked input. Overrides and explicit services are held as the
discovery core's own rules (``OverrideRule``, ``ExplicitService``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from coral_base.errors import ConfigError
from cri_agent.discovery.rules import DiscoveryRules, ExplicitService, FilterRules, OverrideRule
from cri_agent.paths import DEFAULT_CACHE, DEFAULT_CRI_SOCKET


class AgentMode(StrEnum):
    PASSIVE = "passive"  # the only mode for now


class KubernetesApi(StrEnum):
    """Whether to use the API server: auto (in a cluster, or with a kubeconfig), on, off."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class AgentSection:
    mode: AgentMode = AgentMode.PASSIVE
    id: str = "node-agent-{{ NODE_NAME }}"
    node_name: str = ""


@dataclass(frozen=True, slots=True)
class CriSettings:
    socket: Path = DEFAULT_CRI_SOCKET
    # Use runtime events (CRI GetContainerEvents, else containerd's event
    # service) for sub-second discovery; the resync stays the safety net.
    events: bool = True
    containerd_namespace: str = "k8s.io"
    timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class KubernetesDiscovery:
    include_namespaces: tuple[str, ...] = ()
    exclude_namespaces: tuple[str, ...] = ()
    include_labels: Mapping[str, str] = field(default_factory=dict)
    exclude_labels: Mapping[str, str] = field(default_factory=dict)
    # A light pass (CRI list + /proc) at least this often: listening ports change without runtime
    # events (nor, with events off, anything else).
    poll_interval: float = 30.0
    resync_interval: float = 300.0
    # The API server: enrichment (owners, node labels) and the fallback pod source. auto: in a cluster
    # (KUBERNETES_SERVICE_HOST) or with a kubeconfig; off: CRI and /proc only.
    api: KubernetesApi = KubernetesApi.AUTO
    kubeconfig: Path | None = None
    forbidden_retry_interval: float = 300.0

    def api_enabled(self) -> bool:
        if self.api is KubernetesApi.AUTO:
            return self.kubeconfig is not None or bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        return self.api is KubernetesApi.ON


@dataclass(frozen=True, slots=True)
class DiscoverySettings:
    cri: CriSettings = CriSettings()
    kubernetes: KubernetesDiscovery = KubernetesDiscovery()
    proc_root: Path = Path("/proc")
    health_interval: float = 10.0
    health_timeout: float = 2.0  # per probe
    health_concurrency: int = 32  # probes in flight at most
    # Runtime events within this window collapse into one reconcile.
    coalesce_interval: float = 0.05


@dataclass(frozen=True, slots=True)
class CacheSettings:
    path: Path = DEFAULT_CACHE
    # discovery_events keeps at most this many rows and this many days.
    event_retention_rows: int = 100_000
    event_retention_days: float = 30.0
    # operations likewise (one row per control request, refused or not).
    operation_retention_rows: int = 10_000
    operation_retention_days: float = 90.0


@dataclass(frozen=True, slots=True)
class ColonySettings:
    """Where to register. No address: the agent only discovers into its cache."""

    address: str = ""  # host:port of the colony's mesh endpoint
    colony_id: str = ""
    secret: str = field(default="", repr=False)  # prefer CORAL_COLONY__SECRET or secretFile
    secret_file: Path | None = None  # e.g. a mounted Kubernetes Secret
    heartbeat_interval: float = 15.0
    max_backoff: float = 30.0  # longest wait between reconnect attempts
    timeout: float = 5.0
    ca_file: Path | None = None  # the colony's ca.crt, pinned
    insecure: bool = False  # plaintext gRPC: only for a lab colony without TLS
    # Enrollment: the agent enrolls once with one credential (the secret above, a bootstrap token, or its
    # projected ServiceAccount token) and is its certificate from then on.
    bootstrap_token_file: Path | None = None  # `coral colony token create NAME --bootstrap`
    service_account_token_file: Path | None = None  # a projected token with the colony's audience
    agent_address: str = ""  # the colony's agent endpoint; default: the address's host, the port it says

    def ca_pem(self) -> bytes | None:
        if self.insecure:
            return None
        if self.ca_file is None:
            raise ConfigError(
                "colony.address is set but colony.caFile is not: point it at the colony's ca.crt "
                "(or set colony.insecure: true for a lab colony without TLS)"
            )
        try:
            return self.ca_file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"colony CA file {self.ca_file} cannot be read: {exc.strerror}") from None

    def resolved_secret(self) -> str:
        if self.secret:
            return self.secret
        if self.secret_file is None:
            if self.bootstrap_token_file or self.service_account_token_file:
                return ""  # enrolls with the token; a colony that predates enrollment needs the secret
            raise ConfigError(
                "colony.address is set but no colony credential: set CORAL_COLONY__SECRET, colony.secretFile, "
                "colony.bootstrapTokenFile or colony.serviceAccountTokenFile"
            )
        try:
            return self.secret_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"colony secret file {self.secret_file} cannot be read: {exc.strerror}") from None


@dataclass(frozen=True, slots=True)
class OpsSettings:
    """Guardrails of control operations (tap, profile, sample); see docs/security.md."""

    observe_only: bool = False  # refuse tap and profile; sample (flow counts, no payload) stays allowed
    default_duration: float = 60.0  # used when the operator gives none
    max_duration: float = 300.0  # hard cap: longer requests are refused
    max_concurrent: int = 2  # per node; and always one per pod
    rate_per_minute: int = 10  # per operator
    max_bytes: int = 100 * 1024 * 1024
    max_packets: int = 1_000_000
    max_frequency_hz: int = 99
    nice: int = 10  # capture and profiler processes run at this niceness
    profile_max_bytes: int = 64 * 1024 * 1024  # perf.data of one profile (perf record --max-size)
    # Where perf.data is written while a profile runs; None: the cache's directory (on disk, not a
    # memory-backed /tmp that counts against the agent's memory limit).
    profile_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class LogSettings:
    format: LogFormat = LogFormat.TEXT
    level: LogLevel = LogLevel.INFO


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Prometheus metrics (docs/metrics.md). The agent opens no port unless ``listen`` is set."""

    listen: str = ""  # host:port, e.g. 0.0.0.0:9102; "": no listener (the default)


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole agent configuration (docs/configuration.md)."""

    agent: AgentSection = AgentSection()
    discovery: DiscoverySettings = DiscoverySettings()
    overrides: tuple[OverrideRule, ...] = ()  # in file order; each one's source is "overrides[i]"
    services: tuple[ExplicitService, ...] = ()
    cache: CacheSettings = CacheSettings()
    colony: ColonySettings = ColonySettings()
    ops: OpsSettings = OpsSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()

    @property
    def node_name(self) -> str:
        """``agent.nodeName``, else ``NODE_NAME`` (downward API), else the hostname."""
        return self.agent.node_name or os.environ.get("NODE_NAME") or os.uname().nodename

    @property
    def agent_id(self) -> str:
        return self.agent.id.replace("{{ NODE_NAME }}", self.node_name).replace("{{NODE_NAME}}", self.node_name)

    def rules(self) -> DiscoveryRules:
        """The pure discovery core's view of this configuration."""
        k8s = self.discovery.kubernetes
        return DiscoveryRules(
            filters=FilterRules(
                include_namespaces=frozenset(k8s.include_namespaces),
                exclude_namespaces=frozenset(k8s.exclude_namespaces),
                include_labels=dict(k8s.include_labels),
                exclude_labels=dict(k8s.exclude_labels),
            ),
            overrides=self.overrides,
            services=self.services,
            default_health_interval_s=self.discovery.health_interval,
            node_name=self.node_name,
        )
