"""The model built section by section from the layers: every key read, every value checked.

Fields are read in the model's order, so problems come in that order (one
run names them all), unknown keys after the known ones of their section.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cri_agent.config.layers import Layer, Section
from cri_agent.config.model import (
    AgentMode,
    AgentSection,
    CacheSettings,
    ColonySettings,
    CriSettings,
    DiscoverySettings,
    KubernetesApi,
    KubernetesDiscovery,
    LogFormat,
    LogLevel,
    LogSettings,
    MetricsSettings,
    OpsSettings,
    Settings,
)
from cri_agent.config.values import (
    Invalid,
    boolean,
    choice,
    duration,
    integer,
    label_pair,
    listen_address,
    number,
    optional,
    path,
    positive,
    size,
    text,
    transport,
)
from cri_agent.discovery.rules import ExplicitService, HealthSpec, OverrideRule, Selector, ServiceSpec


def build_settings(layers: Sequence[Layer]) -> tuple[Settings, list[str]]:
    """The settings the layers describe, and the problems found (none: the settings are valid)."""
    problems: list[str] = []
    root = Section("", layers, problems)
    settings = root.done(
        Settings(
            agent=_agent(root.section("agent")),
            discovery=_discovery(root.section("discovery")),
            overrides=tuple(_override(entry, index) for index, entry in root.items("overrides")),
            services=tuple(_explicit_service(entry) for _, entry in root.items("services")),
            cache=_cache(root.section("cache")),
            colony=_colony(root.section("colony")),
            ops=_ops(root.section("ops")),
            log=_log(root.section("log")),
            metrics=_metrics(root.section("metrics")),
        )
    )
    return settings, problems


def _agent(s: Section) -> AgentSection:
    d = AgentSection()
    return s.done(
        AgentSection(
            mode=s.value("mode", choice(AgentMode), d.mode),
            id=s.value("id", text, d.id),
            node_name=s.value("node_name", text, d.node_name),
        )
    )


def _discovery(s: Section) -> DiscoverySettings:
    d = DiscoverySettings()
    return s.done(
        DiscoverySettings(
            cri=_cri(s.section("cri")),
            kubernetes=_kubernetes(s.section("kubernetes")),
            proc_root=s.value("proc_root", path, d.proc_root),
            health_interval=s.value("health_interval", duration, d.health_interval),
            health_timeout=s.value("health_timeout", duration, d.health_timeout),
            health_concurrency=s.value("health_concurrency", integer(ge=1, le=1024), d.health_concurrency),
            coalesce_interval=s.value("coalesce_interval", duration, d.coalesce_interval),
        )
    )


def _cri(s: Section) -> CriSettings:
    d = CriSettings()
    return s.done(
        CriSettings(
            socket=s.value("socket", path, d.socket),
            events=s.value("events", boolean, d.events),
            containerd_namespace=s.value("containerd_namespace", text, d.containerd_namespace),
            timeout=s.value("timeout", duration, d.timeout),
        )
    )


def _kubernetes(s: Section) -> KubernetesDiscovery:
    d = KubernetesDiscovery()
    return s.done(
        KubernetesDiscovery(
            include_namespaces=s.strings("include_namespaces"),
            exclude_namespaces=s.strings("exclude_namespaces"),
            include_labels=s.mapping("include_labels"),
            exclude_labels=s.mapping("exclude_labels"),
            poll_interval=s.value("poll_interval", positive(duration), d.poll_interval),
            resync_interval=s.value("resync_interval", duration, d.resync_interval),
            api=s.value("api", choice(KubernetesApi), d.api),
            kubeconfig=s.value("kubeconfig", optional(path), d.kubeconfig),
            forbidden_retry_interval=s.value(
                "forbidden_retry_interval", positive(duration), d.forbidden_retry_interval
            ),
        )
    )


def _health(s: Section) -> HealthSpec:
    return s.done(
        HealthSpec(
            endpoint=s.value("endpoint", optional(text), None),
            interval_s=s.value("interval", optional(duration), None),
        )
    )


def _selector(s: Section) -> Selector:
    return s.done(
        Selector(
            namespace=s.value("namespace", optional(text), None),
            pod_labels=s.value("pod_label", _pod_labels, {}),
            pod_name=s.value("pod_name", optional(text), None),
            container=s.value("container", optional(text), None),
        )
    )


def _pod_labels(value: object) -> dict[str, str]:
    """``podLabel``: ``app=payments-api``, or a mapping of labels."""
    if value is None:
        return {}
    if isinstance(value, str):
        return dict([label_pair(str(value))])
    if isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return {str(k): str(v) for k, v in value.items()}
    raise Invalid("Input should be key=value (e.g. app=payments-api) or a mapping of strings")


def _override(s: Section, index: int) -> OverrideRule:
    return s.done(
        OverrideRule(
            selector=_selector(s.section("selector", required=True)),
            service=_service(s.section("service", required=True)),
            source=f"overrides[{index}]",
        )
    )


def _service(s: Section) -> ServiceSpec:
    return s.done(
        ServiceSpec(
            name=s.value("name", optional(text), None),
            type=s.value("type", optional(text), None),
            port=s.value("port", optional(integer(ge=1, le=65535)), None),
            health=_health(s.section("health")),
        )
    )


def _explicit_service(s: Section) -> ExplicitService:
    return s.done(
        ExplicitService(
            name=s.value("name", text, "", required=True),
            port=s.value("port", optional(integer(ge=1, le=65535)), None),
            protocol=s.value("protocol", transport, "TCP"),
            type=s.value("type", text, ""),
            namespace=s.value("namespace", text, ""),
            selector=_selector(s.section("selector")) if s.given("selector") else None,
            health=_health(s.section("health")),
            labels=s.mapping("labels"),
        )
    )


def _cache(s: Section) -> CacheSettings:
    d = CacheSettings()
    return s.done(
        CacheSettings(
            path=s.value("path", path, d.path),
            event_retention_rows=s.value("event_retention_rows", integer(ge=100), d.event_retention_rows),
            event_retention_days=s.value("event_retention_days", positive(number), d.event_retention_days),
            operation_retention_rows=s.value("operation_retention_rows", integer(ge=100), d.operation_retention_rows),
            operation_retention_days=s.value("operation_retention_days", positive(number), d.operation_retention_days),
        )
    )


def _colony(s: Section) -> ColonySettings:
    d = ColonySettings()
    return s.done(
        ColonySettings(
            address=s.value("address", text, d.address),
            colony_id=s.value("colony_id", text, d.colony_id),
            secret=s.value("secret", text, d.secret),
            secret_file=s.value("secret_file", optional(path), d.secret_file),
            heartbeat_interval=s.value("heartbeat_interval", duration, d.heartbeat_interval),
            max_backoff=s.value("max_backoff", positive(duration), d.max_backoff),
            timeout=s.value("timeout", duration, d.timeout),
            ca_file=s.value("ca_file", optional(path), d.ca_file),
            insecure=s.value("insecure", boolean, d.insecure),
            bootstrap_token_file=s.value("bootstrap_token_file", optional(path), d.bootstrap_token_file),
            service_account_token_file=s.value(
                "service_account_token_file", optional(path), d.service_account_token_file
            ),
            agent_address=s.value("agent_address", text, d.agent_address),
        )
    )


def _ops(s: Section) -> OpsSettings:
    d = OpsSettings()
    return s.done(
        OpsSettings(
            observe_only=s.value("observe_only", boolean, d.observe_only),
            default_duration=s.value("default_duration", positive(duration), d.default_duration),
            max_duration=s.value("max_duration", positive(duration), d.max_duration),
            max_concurrent=s.value("max_concurrent", integer(ge=1), d.max_concurrent),
            rate_per_minute=s.value("rate_per_minute", integer(ge=1), d.rate_per_minute),
            max_bytes=s.value("max_bytes", size, d.max_bytes),
            max_packets=s.value("max_packets", integer(ge=1), d.max_packets),
            max_frequency_hz=s.value("max_frequency_hz", integer(ge=1, le=999), d.max_frequency_hz),
            nice=s.value("nice", integer(ge=0, le=19), d.nice),
            profile_max_bytes=s.value("profile_max_bytes", integer(ge=64 * 1024), d.profile_max_bytes),
            profile_dir=s.value("profile_dir", optional(path), d.profile_dir),
        )
    )


def _log(s: Section) -> LogSettings:
    d = LogSettings()
    return s.done(
        LogSettings(
            format=s.value("format", choice(LogFormat), d.format),
            level=s.value("level", choice(LogLevel), d.level),
        )
    )


def _metrics(s: Section) -> MetricsSettings:
    return s.done(MetricsSettings(listen=s.value("listen", listen_address, MetricsSettings().listen)))
