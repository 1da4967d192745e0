"""The agent's configuration: one typed model, merged from several sources.

Precedence, lowest to highest: built-in defaults < the YAML file
(``--config``) < environment (``CORAL_*``, nested with ``__``, plus
``NODE_NAME`` from the downward API) < command-line flags. Overrides from
``--override-file`` are appended after the file's own ``overrides``.
Keys use camelCase, as in docs/configuration.md (``includeNamespaces``); snake_case
is accepted too. Validation errors name the file and the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from coral_base.durations import parse_duration
from coral_base.errors import ConfigError
from cri_agent.discovery.rules import (
    DiscoveryRules,
    ExplicitService,
    FilterRules,
    HealthSpec,
    OverrideRule,
    Selector,
    ServiceSpec,
)
from cri_agent.paths import DEFAULT_CACHE, DEFAULT_CRI_SOCKET


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class _Duration(_Model):
    """Mixin: every field named *interval*/*timeout*/*backoff*/*duration* accepts a duration string."""

    @field_validator("*", mode="before")
    @classmethod
    def _durations(cls, value: Any, info: Any) -> Any:
        name: str = info.field_name
        if isinstance(value, str) and any(w in name.lower() for w in ("interval", "timeout", "backoff", "duration")):
            return parse_duration(value)
        return value


class CriSettings(_Duration):
    socket: Path = DEFAULT_CRI_SOCKET
    # Use runtime events (CRI GetContainerEvents, else containerd's event
    # service) for sub-second discovery; the resync stays the safety net.
    events: bool = True
    containerd_namespace: str = "k8s.io"
    timeout: float = 5.0


class KubernetesDiscovery(_Duration):
    include_namespaces: list[str] = []
    exclude_namespaces: list[str] = []
    include_labels: dict[str, str] = {}
    exclude_labels: dict[str, str] = {}
    # A light pass (CRI list + /proc) at least this often: listening ports change without runtime
    # events (nor, with events off, anything else).
    poll_interval: float = Field(default=30.0, gt=0)
    resync_interval: float = 300.0
    # The API server: enrichment (owners, node labels) and the fallback pod source. auto: in a cluster
    # (KUBERNETES_SERVICE_HOST) or with a kubeconfig; off: CRI and /proc only.
    api: Literal["auto", "on", "off"] = "auto"
    kubeconfig: Path | None = None
    forbidden_retry_interval: float = Field(default=300.0, gt=0)

    def api_enabled(self) -> bool:
        if self.api == "auto":
            return self.kubeconfig is not None or bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        return self.api == "on"


class DiscoverySettings(_Duration):
    cri: CriSettings = CriSettings()
    kubernetes: KubernetesDiscovery = KubernetesDiscovery()
    proc_root: Path = Path("/proc")
    health_interval: float = 10.0
    health_timeout: float = 2.0  # per probe
    health_concurrency: int = Field(default=32, ge=1, le=1024)  # probes in flight at most
    # Runtime events within this window collapse into one reconcile.
    coalesce_interval: float = 0.05


class AgentSection(_Model):
    mode: Literal["passive"] = "passive"
    id: str = "node-agent-{{ NODE_NAME }}"
    node_name: str = ""


class HealthEntry(_Duration):
    endpoint: str | None = None
    interval: float | None = None


class SelectorEntry(_Model):
    namespace: str | None = None
    pod_label: str | dict[str, str] | None = None  # "app=payments-api" or a mapping
    pod_name: str | None = None
    container: str | None = None

    def labels(self) -> dict[str, str]:
        if self.pod_label is None:
            return {}
        if isinstance(self.pod_label, dict):
            return dict(self.pod_label)
        return dict(_parse_label_pairs([self.pod_label], key="podLabel"))


class ServiceEntry(_Model):
    name: str | None = None
    type: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    health: HealthEntry = HealthEntry()


class OverrideEntry(_Model):
    selector: SelectorEntry
    service: ServiceEntry


class ExplicitServiceEntry(_Model):
    name: str
    port: int | None = Field(default=None, ge=1, le=65535)
    protocol: Literal["TCP", "UDP"] = "TCP"
    type: str = ""
    namespace: str = ""
    selector: SelectorEntry | None = None
    health: HealthEntry = HealthEntry()
    labels: dict[str, str] = {}


class CacheSettings(_Model):
    path: Path = DEFAULT_CACHE
    # discovery_events keeps at most this many rows and this many days.
    event_retention_rows: int = Field(default=100_000, ge=100)
    event_retention_days: float = Field(default=30.0, gt=0)


class ColonySettings(_Duration):
    """Where to register. No address: the agent only discovers into its cache."""

    address: str = ""  # host:port of the colony's mesh endpoint
    colony_id: str = ""
    secret: str = Field(default="", repr=False)  # prefer CORAL_COLONY__SECRET or secretFile
    secret_file: Path | None = None  # e.g. a mounted Kubernetes Secret
    heartbeat_interval: float = 15.0
    max_backoff: float = Field(default=30.0, gt=0)  # longest wait between reconnect attempts
    timeout: float = 5.0
    ca_file: Path | None = None  # the colony's ca.crt, pinned
    insecure: bool = False  # plaintext gRPC: only for a lab colony without TLS

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
            raise ConfigError(
                "colony.address is set but no colony secret: set CORAL_COLONY__SECRET or colony.secretFile"
            )
        try:
            return self.secret_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"colony secret file {self.secret_file} cannot be read: {exc.strerror}") from None


class OpsSettings(_Duration):
    """Guardrails of control operations (tap, profile, sample); see docs/security.md."""

    observe_only: bool = False  # refuse tap and profile; sample (flow counts, no payload) stays allowed
    default_duration: float = Field(default=60.0, gt=0)  # used when the operator gives none
    max_duration: float = Field(default=300.0, gt=0)  # hard cap: longer requests are refused
    max_concurrent: int = Field(default=2, ge=1)  # per node; and always one per pod
    rate_per_minute: int = Field(default=10, ge=1)  # per operator
    max_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    max_packets: int = Field(default=1_000_000, ge=1)
    max_frequency_hz: int = Field(default=99, ge=1, le=999)
    nice: int = Field(default=10, ge=0, le=19)  # capture and profiler processes run at this niceness


class LogSettings(_Model):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(BaseSettings):
    """The whole agent configuration (docs/configuration.md)."""

    model_config = SettingsConfigDict(
        env_prefix="CORAL_",
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
    )

    agent: AgentSection = AgentSection()
    discovery: DiscoverySettings = DiscoverySettings()
    overrides: list[OverrideEntry] = []
    services: list[ExplicitServiceEntry] = []
    cache: CacheSettings = CacheSettings()
    colony: ColonySettings = ColonySettings()
    ops: OpsSettings = OpsSettings()
    log: LogSettings = LogSettings()

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
            overrides=tuple(
                OverrideRule(
                    selector=_selector(entry.selector),
                    service=ServiceSpec(
                        name=entry.service.name,
                        type=entry.service.type,
                        port=entry.service.port,
                        health=HealthSpec(
                            endpoint=entry.service.health.endpoint,
                            interval_s=entry.service.health.interval,
                        ),
                    ),
                    source=f"overrides[{index}]",
                )
                for index, entry in enumerate(self.overrides)
            ),
            services=tuple(
                ExplicitService(
                    name=entry.name,
                    port=entry.port,
                    protocol=entry.protocol,
                    type=entry.type,
                    namespace=entry.namespace,
                    selector=_selector(entry.selector) if entry.selector else None,
                    health=HealthSpec(endpoint=entry.health.endpoint, interval_s=entry.health.interval),
                    labels=dict(entry.labels),
                )
                for entry in self.services
            ),
            default_health_interval_s=self.discovery.health_interval,
            node_name=self.node_name,
        )


def _selector(entry: SelectorEntry) -> Selector:
    return Selector(
        namespace=entry.namespace,
        pod_labels=entry.labels(),
        pod_name=entry.pod_name,
        container=entry.container,
    )


def _parse_label_pairs(pairs: list[str], *, key: str) -> list[tuple[str, str]]:
    parsed = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{key}: {pair!r} is not key=value (e.g. app=payments-api)")
        parsed.append((name.strip(), value.strip()))
    return parsed


def _read_yaml(path: Path, *, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found: check the path given to the agent") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: the top level must be a mapping")
    return data


def flags_to_settings(
    *,
    mode: str | None = None,
    include_namespaces: list[str] | None = None,
    exclude_namespaces: list[str] | None = None,
    include_labels: list[str] | None = None,
    exclude_labels: list[str] | None = None,
    cri_socket: Path | None = None,
    cache: Path | None = None,
    node_name: str | None = None,
    log_format: str | None = None,
    resync_interval: str | None = None,
    poll_interval: str | None = None,
    no_events: bool = False,
    observe_only: bool = False,
    kubeconfig: Path | None = None,
) -> dict[str, Any]:
    """Command-line flags as a nested settings mapping (only what was given)."""
    given: dict[str, Any] = {
        "agent.mode": mode,
        "agent.nodeName": node_name,
        "discovery.cri.socket": cri_socket,
        "discovery.cri.events": False if no_events else None,
        "discovery.kubernetes.includeNamespaces": include_namespaces,
        "discovery.kubernetes.excludeNamespaces": exclude_namespaces,
        "discovery.kubernetes.includeLabels": include_labels
        and dict(_parse_label_pairs(include_labels, key="--include-label")),
        "discovery.kubernetes.excludeLabels": exclude_labels
        and dict(_parse_label_pairs(exclude_labels, key="--exclude-label")),
        "discovery.kubernetes.resyncInterval": resync_interval,
        "discovery.kubernetes.pollInterval": poll_interval,
        "cache.path": cache,
        "log.format": log_format,
        "ops.observeOnly": True if observe_only else None,
        "discovery.kubernetes.kubeconfig": kubeconfig,
    }
    flags: dict[str, Any] = {}
    for path, value in given.items():
        if value is None or value == [] or value == "":
            continue
        *parents, leaf = path.split(".")
        node = flags
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return flags


def load_settings(
    config: Path | None = None,
    *,
    override_file: Path | None = None,
    flags: dict[str, Any] | None = None,
) -> Settings:
    """Merge defaults < file < env < flags and validate, or raise ConfigError."""
    file_data = _read_yaml(config, what="config file") if config else {}
    if override_file:
        extra = _read_yaml(override_file, what="override file")
        unknown = set(extra) - {"overrides", "services"}
        if unknown:
            raise ConfigError(
                f"override file {override_file}: unexpected keys {sorted(unknown)}; "
                "it may only hold `overrides` and `services`"
            )
        for key in ("overrides", "services"):
            file_data[key] = [*file_data.get(key, []), *extra.get(key, [])]

    _let_flags_replace_label_maps(file_data, flags or {})

    class _Sourced(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _FileSource(settings_cls, file_data))

    source = f"{config} (or CORAL_* environment)" if config else "flags/CORAL_* environment"
    try:
        return _Sourced(**(flags or {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid configuration in {source}: {problems}") from None


def _let_flags_replace_label_maps(file_data: dict[str, Any], flags: dict[str, Any]) -> None:
    """Sources are deep-merged; a label flag must replace the file's map, not extend it."""
    flag_k8s = flags.get("discovery", {}).get("kubernetes", {})
    file_k8s = file_data.get("discovery", {}).get("kubernetes", {})
    for key in ("includeLabels", "excludeLabels"):
        if key in flag_k8s and isinstance(file_k8s, dict):
            file_k8s.pop(key, None)


class _FileSource(PydanticBaseSettingsSource):
    """The YAML file's mapping as the lowest-precedence settings source."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data
