"""Per-pod metadata from ``coral.io/*`` annotations and config-file overrides.

Precedence per field, highest first: explicit service (services.py) >
config override > annotation > discovered default. Each malformed
annotation is one error naming the pod, the key and the reason; the pod's
other annotations still apply. Config overrides were validated when the
configuration was loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from coral_base.durations import NotADuration, NotPositive, parse_duration
from cri_agent.discovery.rules import OverrideRule, Selector, ServiceSpec
from cri_agent.model import PodProblem, PodRecord, Transport

NAME = "coral.io/name"
TYPE = "coral.io/type"
PORT = "coral.io/port"
HEALTH_ENDPOINT = "coral.io/health-endpoint"
HEALTH_INTERVAL = "coral.io/health-interval"

_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9._:]{0,251}[A-Za-z0-9])?$")
_TYPE = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
_PORT_NUMBER = re.compile(r"[0-9]{1,5}")  # ASCII only: str.isdigit() also accepts "²"
MIN_HEALTH_INTERVAL_S = 1.0
MAX_HEALTH_INTERVAL_S = 3600.0

PortRef = tuple[int, Transport]


@dataclass(frozen=True, slots=True)
class Metadata:
    """Field values set by annotations/overrides; None leaves the default.

    ``set_fields`` names what was set, in ``ServiceInfo`` field names.
    """

    name: str | None = None
    service_type: str | None = None
    ports: tuple[PortRef, ...] | None = None
    health_endpoint: str | None = None
    health_interval_s: float | None = None
    set_fields: frozenset[str] = field(default_factory=frozenset)

    def merged(self, top: Metadata) -> Metadata:
        """``top``'s set fields win over this one's."""
        return Metadata(
            name=top.name if top.name is not None else self.name,
            service_type=top.service_type if top.service_type is not None else self.service_type,
            ports=top.ports if top.ports is not None else self.ports,
            health_endpoint=(top.health_endpoint if top.health_endpoint is not None else self.health_endpoint),
            health_interval_s=(top.health_interval_s if top.health_interval_s is not None else self.health_interval_s),
            set_fields=self.set_fields | top.set_fields,
        )


def parse_ports(raw: str) -> tuple[PortRef, ...]:
    """``"8080"``, ``"8080,9090"``, ``"53/udp"`` -> ((8080, "TCP"), ...); duplicates dropped.

    The error names the offending item (and the whole value when it is a list).
    """
    ports: list[PortRef] = []
    items = raw.split(",")
    for item in items:
        where = f'"{item.strip()}"' + (f' in "{raw}"' if len(items) > 1 else "")
        number, _, proto = (part.strip() for part in item.partition("/"))
        protocol: Transport
        if proto.lower() in ("", "tcp"):
            protocol = "TCP"
        elif proto.lower() == "udp":
            protocol = "UDP"
        else:
            raise ValueError(f'{where}: protocol "{proto}" is not tcp or udp')
        if not _PORT_NUMBER.fullmatch(number) or not 1 <= int(number) <= 65535:
            raise ValueError(f"{where} is not a port number (1-65535)")
        if (int(number), protocol) not in ports:
            ports.append((int(number), protocol))
    return tuple(ports)


def parse_health_interval(raw: str) -> float:
    """``"5s"``, ``"500ms"``, ``"1m"`` or plain seconds ``"5"`` -> seconds, within 1s..1h."""
    try:
        seconds = parse_duration(raw)
    except NotPositive:  # "0s": a duration, just not a usable interval
        raise ValueError(f'"{raw}" is outside 1s..1h') from None
    except NotADuration:
        raise ValueError(f'"{raw}" is not a duration (e.g. 5s, 500ms, 1m, or seconds)') from None
    if not MIN_HEALTH_INTERVAL_S <= seconds <= MAX_HEALTH_INTERVAL_S:
        raise ValueError(f'"{raw}" is outside 1s..1h')
    return seconds


def _annotation(pod: PodRecord, key: str) -> str | None:
    value = pod.annotations.get(key)
    return None if value is None else value.strip()


def from_annotations(pod: PodRecord) -> tuple[Metadata, tuple[PodProblem, ...]]:
    """The pod's ``coral.io/*`` annotations, and one problem per malformed one."""
    errors: list[PodProblem] = []
    values: dict[str, object] = {}

    def error(key: str, reason: str) -> None:
        errors.append(PodProblem(key, f"{reason}; ignored"))

    if (name := _annotation(pod, NAME)) is not None:
        if _NAME.match(name):
            values["name"] = name
        else:
            error(NAME, f'"{name}" is not a valid name (letters, digits, -._:, at most 253)')
    if (kind := _annotation(pod, TYPE)) is not None:
        if _TYPE.match(kind.lower()):
            values["service_type"] = kind.lower()
        else:
            error(TYPE, f'"{kind}" is not a service type (a short lowercase word such as http)')
    if (port := _annotation(pod, PORT)) is not None:
        try:
            values["ports"] = parse_ports(port)
        except ValueError as exc:
            error(PORT, str(exc))
    if (endpoint := _annotation(pod, HEALTH_ENDPOINT)) is not None:
        if endpoint.startswith("/") and not any(c.isspace() for c in endpoint) and len(endpoint) <= 1024:
            values["health_endpoint"] = endpoint
        else:
            error(HEALTH_ENDPOINT, f'"{endpoint}" is not an HTTP path starting with /')
    if (interval := _annotation(pod, HEALTH_INTERVAL)) is not None:
        try:
            values["health_interval_s"] = parse_health_interval(interval)
        except ValueError as exc:
            error(HEALTH_INTERVAL, str(exc))
    metadata = Metadata(**values, set_fields=frozenset(values))  # type: ignore[arg-type]
    return metadata, tuple(errors)


def matches(selector: Selector, pod: PodRecord) -> bool:
    """Every set field matches the pod (the container field is checked per service)."""
    if selector.empty:
        return False
    if selector.namespace is not None and selector.namespace != pod.namespace:
        return False
    if selector.pod_name is not None and selector.pod_name != pod.name:
        return False
    return all(pod.labels.get(k) == v for k, v in selector.pod_labels.items())


def _from_spec(spec: ServiceSpec) -> Metadata:
    values: dict[str, object] = {}
    if spec.name is not None:
        values["name"] = spec.name
    if spec.type is not None:
        values["service_type"] = spec.type.lower()
    if spec.port is not None:
        values["ports"] = ((spec.port, "TCP"),)
    if spec.health.endpoint is not None:
        values["health_endpoint"] = spec.health.endpoint
    if spec.health.interval_s is not None:
        values["health_interval_s"] = spec.health.interval_s
    return Metadata(**values, set_fields=frozenset(values))  # type: ignore[arg-type]


def apply_overrides(
    annotations: Metadata,
    pod: PodRecord,
    overrides: Iterable[OverrideRule],
    *,
    container: str | None,
) -> Metadata:
    """Annotation metadata with every matching override applied on top, in order.

    ``container=None`` applies only the rules without a container selector
    (the pod-wide view); a name applies those plus the rules for it.
    """
    result = annotations
    for rule in overrides:
        if matches(rule.selector, pod) and rule.selector.container in (None, container):
            result = result.merged(_from_spec(rule.service))
    return result
