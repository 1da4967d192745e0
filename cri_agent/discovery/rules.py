"""What the operator decided: filters, overrides and explicit services.

Plain frozen data built from the typed configuration (``cri_agent.config``)
so that discovery depends on nothing but ``cri_agent.model`` and this file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cri_agent.model import Transport


@dataclass(frozen=True, slots=True)
class FilterRules:
    """Which pods may register. See docs/configuration.md for the truth table."""

    include_namespaces: frozenset[str] = frozenset()  # empty: every namespace
    exclude_namespaces: frozenset[str] = frozenset()
    include_labels: Mapping[str, str] = field(default_factory=dict)  # all must match
    exclude_labels: Mapping[str, str] = field(default_factory=dict)  # any match excludes


@dataclass(frozen=True, slots=True)
class HealthSpec:
    endpoint: str | None = None
    interval_s: float | None = None


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """Fields an override or explicit service may set; None leaves the default."""

    name: str | None = None
    type: str | None = None
    port: int | None = None
    health: HealthSpec = HealthSpec()


@dataclass(frozen=True, slots=True)
class Selector:
    """Selects pods. Every field that is set must match; an empty selector matches nothing."""

    namespace: str | None = None
    pod_labels: Mapping[str, str] = field(default_factory=dict)  # "app=payments-api" parsed
    pod_name: str | None = None
    container: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.namespace or self.pod_labels or self.pod_name or self.container)


@dataclass(frozen=True, slots=True)
class OverrideRule:
    selector: Selector
    service: ServiceSpec
    source: str = "config"  # where it came from, for error events ("overrides[2] in x.yaml")


@dataclass(frozen=True, slots=True)
class ExplicitService:
    """A service declared in config (``services[]``): provenance EXPLICIT.

    When ``selector`` matches a discovered pod, the explicit entry replaces
    the discovered services of that pod's (container, port); otherwise it
    is registered as a static service that no pod backs (e.g. a host daemon).
    """

    name: str
    port: int | None = None
    protocol: Transport = "TCP"
    type: str = ""
    namespace: str = ""
    selector: Selector | None = None
    health: HealthSpec = HealthSpec()
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DiscoveryRules:
    filters: FilterRules = FilterRules()
    overrides: tuple[OverrideRule, ...] = ()
    services: tuple[ExplicitService, ...] = ()
    default_health_interval_s: float = 10.0
    node_name: str = ""
