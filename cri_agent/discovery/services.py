"""Pod -> services: which (container, port) pairs, their names, types and keys.

One ``ServiceInfo`` per (container, port) that is declared or listening
(loopback-only listeners are not reachable on the pod IP and are skipped),
from the instance of each container that decides (containers.py): a
completed container contributes nothing, a restarting one keeps its ports,
a running one keeps a port it no longer shows until the engine releases
it (``closed``, ``released``: engine.py debounces a closing port); a pod
with no port at all still yields one portless entry so it is visible.
``coral.io/port`` or an override ``port`` restricts the pod to exactly
those ports. Keys are ``namespace/pod-uid/container/port`` and never
involve the IP, which the cluster reuses.

A service's labels keep within ``LABEL_BUDGET_BYTES``: one pod carrying a
megabyte of labels (the runtime does not enforce Kubernetes' limits) must
not make every message about it that large. Past the budget labels are
dropped (in key order, the first ones kept), ``TRUNCATED_LABEL`` says how
many, and the pod gets a problem (an error event, once).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple, TypeVar

from cri_agent.discovery.containers import Lifecycle, Phase
from cri_agent.discovery.overrides import (
    Metadata,
    PortRef,
    apply_overrides,
    from_annotations,
    matches,
)
from cri_agent.discovery.rules import DiscoveryRules, ExplicitService
from cri_agent.model import (
    ContainerRecord,
    ContainerState,
    PodProblem,
    PodRecord,
    PodUID,
    Provenance,
    ServiceInfo,
    ServiceKey,
    Transport,
)

LABEL_BUDGET_BYTES = 16 * 1024  # keys and values, UTF-8; Kubernetes' own limits keep real pods far below
TRUNCATED_LABEL = "coral.io/labels-truncated"

# Process names (comm, at most 15 chars) that say what a port speaks.
PROCESS_TYPES = {
    "redis-server": "redis",
    "valkey-server": "redis",
    "postgres": "postgres",
    "mysqld": "mysql",
    "mariadbd": "mysql",
    "mongod": "mongodb",
    "mongos": "mongodb",
    "nginx": "http",
    "httpd": "http",
    "caddy": "http",
    "envoy": "http",
    "traefik": "http",
    "memcached": "memcached",
    "etcd": "etcd",
    "beam.smp": "amqp",
    "coredns": "dns",
}
# Well-known TCP ports; over UDP only DNS is recognised (UDP 8080 is not HTTP).
WELL_KNOWN_PORTS = {
    53: "dns",
    80: "http",
    443: "https",
    2379: "etcd",
    3000: "http",
    3306: "mysql",
    5432: "postgres",
    5672: "amqp",
    6379: "redis",
    8000: "http",
    8080: "http",
    8443: "https",
    9090: "metrics",
    9092: "kafka",
    11211: "memcached",
    27017: "mongodb",
    50051: "grpc",
}
WELL_KNOWN_UDP_PORTS = {53: "dns"}
# Declared port names, read as Istio-style "<protocol>[-<suffix>]" (or "<prefix>-<protocol>").
PORT_NAME_TYPES = {
    "http": "http",
    "http2": "http",
    "h2c": "http",
    "https": "https",
    "grpc": "grpc",
    "metrics": "metrics",
    "dns": "dns",
    "redis": "redis",
    "postgres": "postgres",
    "postgresql": "postgres",
    "mysql": "mysql",
    "mongo": "mongodb",
    "mongodb": "mongodb",
    "amqp": "amqp",
    "kafka": "kafka",
    "memcached": "memcached",
}
_K8S_RANDOM = re.compile(r"-[bcdfghjklmnpqrstvwxz2456789]{5}$")
_ORDINAL = re.compile(r"-\d+$")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Entry:
    container: ContainerRecord
    port: int | None
    protocol: Transport | None
    port_name: str = ""
    held: bool = False  # only there because the container had it: its process does not show it now


class Derived(NamedTuple):
    """What ``derive_services`` finds for one pod."""

    services: tuple[ServiceInfo, ...]
    problems: tuple[PodProblem, ...]  # the pod's annotation errors
    closed: frozenset[ServiceKey] = frozenset()  # kept ports a running container no longer shows (not released)


def service_key(
    namespace: str, pod_uid: str, container: str, port: int | None, protocol: Transport | None
) -> ServiceKey:
    """``namespace/pod-uid/container/port``; ``…/53-udp`` for UDP, ``…/-`` when portless."""
    suffix = "-" if port is None else (f"{port}-udp" if protocol == "UDP" else str(port))
    return ServiceKey(f"{namespace}/{pod_uid}/{container}/{suffix}")


def workload_name(pod: PodRecord) -> str:
    """The owning workload's name, else the app labels, else the pod name without its hash.

    ``Deployment/payments-api`` -> ``payments-api``; a ``ReplicaSet/`` owner
    loses its ``pod-template-hash``. Pod names lose the ReplicaSet hash and
    random suffix (``payments-api-7d4b9c6f5d-x2x9z``), the StatefulSet
    ordinal (``web-2``) or the DaemonSet/random suffix (``fluentd-x7k2p``).
    """
    template_hash = pod.labels.get("pod-template-hash")
    if pod.owner:
        owner = pod.owner.rsplit("/", 1)[-1]
        if template_hash and owner.endswith(f"-{template_hash}"):
            return owner[: -len(template_hash) - 1]
        return owner
    for label in ("app.kubernetes.io/name", "app"):
        if pod.labels.get(label):
            return pod.labels[label]
    name = pod.name
    if template_hash and f"-{template_hash}-" in name:
        return name[: name.rindex(f"-{template_hash}-")]
    if "statefulset.kubernetes.io/pod-name" in pod.labels and _ORDINAL.search(name):
        return _ORDINAL.sub("", name)
    return _K8S_RANDOM.sub("", name)


def _candidates(
    pod: PodRecord,
    contributing: Sequence[ContainerRecord],
    containers: Sequence[ContainerRecord],
    default: ContainerRecord,
    held: Sequence[ServiceInfo],
) -> list[_Entry]:
    """Declared and listening ports of the contributing containers, then the ports the others hold;
    one entry per (port, protocol), first owner wins."""
    entries: dict[PortRef, _Entry] = {}
    for container in contributing:
        for declared in container.declared_ports:
            entries.setdefault(
                (declared.port, declared.protocol),
                _Entry(container, declared.port, declared.protocol, declared.name),
            )
    for container in contributing:
        for sock in container.listening:
            if not sock.loopback_only:
                entries.setdefault((sock.port, sock.protocol), _Entry(container, sock.port, sock.protocol))
    for sock in pod.unattributed_listening:
        if not sock.loopback_only:
            entries.setdefault((sock.port, sock.protocol), _Entry(default, sock.port, sock.protocol))
    by_name = {c.name: c for c in containers}
    for service in held:
        if service.port is not None and service.protocol is not None and service.container in by_name:
            owner = by_name[service.container]
            entries.setdefault(
                (service.port, service.protocol), _Entry(owner, service.port, service.protocol, held=True)
            )
    return sorted(entries.values(), key=lambda e: (e.container.name, e.port or 0, e.protocol or ""))


def _restricted(entries: list[_Entry], ports: Sequence[PortRef], default: ContainerRecord) -> list[_Entry]:
    """Exactly ``ports``: named by an annotation or override, they are there whether they listen or not."""
    by_port = {(e.port, e.protocol): replace(e, held=False) for e in entries}
    return [by_port.get((port, protocol)) or _Entry(default, port, protocol) for port, protocol in ports]


def _well_known(port: int, protocol: Transport | None) -> str | None:
    return (WELL_KNOWN_UDP_PORTS if protocol == "UDP" else WELL_KNOWN_PORTS).get(port)


def _type_hint(entry: _Entry, *, sole_port: bool) -> str:
    """Process name (when it plausibly owns the port), else port name, else well-known port.

    ``sole_port``: the entry is its container's only port, so whatever the
    container runs serves it.
    """
    if entry.port is None:
        return "unknown"
    well_known = _well_known(entry.port, entry.protocol)
    for process in entry.container.process_names:
        hinted = PROCESS_TYPES.get(process)
        if hinted and (sole_port or well_known == hinted):
            return hinted
    tokens = entry.port_name.lower().split("-")
    if "metrics" in tokens:
        return "metrics"
    for token in (tokens[0], tokens[-1]):
        if token in PORT_NAME_TYPES:
            return PORT_NAME_TYPES[token]
    return well_known or (entry.protocol or "TCP").lower()


def _explicit_for(rules: DiscoveryRules, pod: PodRecord, entry: _Entry) -> ExplicitService | None:
    for explicit in rules.services:
        selector = explicit.selector
        if selector is None or not matches(selector, pod):
            continue
        if selector.container not in (None, entry.container.name):
            continue
        if explicit.port is None or (explicit.port, explicit.protocol) == (
            entry.port,
            entry.protocol,
        ):
            return explicit
    return None


def _explicit_entries(
    rules: DiscoveryRules,
    pod: PodRecord,
    entries: list[_Entry],
    containers: Sequence[ContainerRecord],
    default: ContainerRecord,
) -> list[_Entry]:
    """Explicit services with a selector on this pod declare their port: added if it is not there, and
    never closed (a kept entry of that port stops being one, in place)."""
    present = {(e.port, e.protocol): index for index, e in enumerate(entries)}
    extra = []
    for explicit in rules.services:
        selector = explicit.selector
        if selector is None or explicit.port is None or not matches(selector, pod):
            continue
        owner = default
        if selector.container is not None:
            named = [c for c in containers if c.name == selector.container]
            if not named:
                continue  # the container it names is not (or no longer) there
            owner = named[0]
        ref = (explicit.port, explicit.protocol)
        if (index := present.get(ref)) is None:
            extra.append(_Entry(owner, explicit.port, explicit.protocol))
            present[ref] = -1
        elif index >= 0 and entries[index].held:
            entries[index] = replace(entries[index], held=False)
    return extra


def derive_services(
    pod: PodRecord,
    rules: DiscoveryRules,
    *,
    node_name: str,
    life: Lifecycle,
    previous: Sequence[ServiceInfo] = (),
    released: Collection[ServiceKey] = frozenset(),
) -> Derived:
    """The services of one included pod, the pod's annotation errors, and the ports it keeps closed.

    ``life``: the pod's containers now (containers.py). ``previous``: the pod's services after the
    last pass; a container that is restarting or has just exited keeps its own, with their types
    when it has no process now. A running container keeps the ports it no longer shows too, unless
    they are ``released``: those it keeps are ``closed``, for the engine to time (engine.py).
    """
    annotations, errors = from_annotations(pod)
    phases = life.phases
    containers = [c for c in life.instances if phases[c.name] != Phase.COMPLETED]
    contributing = [c for c in containers if phases[c.name].contributes]
    held = [
        s
        for s in previous
        if s.container in phases
        and (
            phases[s.container].holds
            or (phases[s.container] == Phase.ACTIVE and s.port is not None and s.key not in released)
        )
    ]
    if not contributing and not held:
        return Derived((), errors)
    held_types = {s.key: s.service_type for s in held if phases[s.container].holds}
    closed_types = {s.key: s.service_type for s in held if not phases[s.container].holds}
    running = [c for c in containers if c.state == ContainerState.RUNNING]
    default = (running or containers)[0]
    pod_meta = apply_overrides(annotations, pod, rules.overrides, container=None)
    per_container = {c.name: apply_overrides(annotations, pod, rules.overrides, container=c.name) for c in containers}

    entries = _candidates(pod, contributing, containers, default, held)
    if pod_meta.ports is not None:
        entries = _restricted(entries, pod_meta.ports, default)
    for container in containers:
        ports = per_container[container.name].ports
        if ports is not None and ports != pod_meta.ports:
            others = [e for e in entries if e.container.name != container.name]
            entries = others + [
                e
                for e in _restricted(entries, ports, container)
                if (e.port, e.protocol) not in {(o.port, o.protocol) for o in others}
            ]
    entries += _explicit_entries(rules, pod, entries, containers, default)
    if not entries:
        entries = [_Entry(default, None, None)]

    base_name = workload_name(pod)
    suffixes = _suffixes(entries)
    per_container_ports = Counter(e.container.name for e in entries)
    services = tuple(
        _service(
            pod,
            entry,
            per_container[entry.container.name],
            rules,
            base_name=base_name,
            suffix=suffix,
            sole_port=per_container_ports[entry.container.name] == 1,
            node_name=node_name,
            held_types=held_types,
            closed_types=closed_types,
        )
        for entry, suffix in zip(entries, suffixes, strict=True)
    )
    capped = tuple(
        replace(s, labels=kept) if (kept := capped_labels(s.labels)) is not s.labels else s for s in services
    )
    if capped != services:
        total = max(len(s.labels) for s in services)
        errors += (PodProblem("labels", f"{total} labels exceed the {LABEL_BUDGET_BYTES}-byte budget: truncated"),)
    closed = frozenset(
        s.key for s, e in zip(capped, entries, strict=True) if e.held and phases[s.container] == Phase.ACTIVE
    )
    return Derived(capped, errors, closed)


def capped_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    """``labels`` itself when within the budget; else the first (by key) that fit, and ``TRUNCATED_LABEL``."""
    if sum(len(k.encode()) + len(v.encode()) for k, v in labels.items()) <= LABEL_BUDGET_BYTES:
        return labels
    kept: dict[str, str] = {}
    room = LABEL_BUDGET_BYTES - 256  # the marker's own room
    for key in sorted(labels):
        size = len(key.encode()) + len(labels[key].encode())
        if size <= room:
            kept[key] = labels[key]
            room -= size
    kept[TRUNCATED_LABEL] = f"{len(labels) - len(kept)} of {len(labels)} labels dropped"
    return kept


def _suffixes(entries: Sequence[_Entry]) -> list[str]:
    """``:<port-name>`` when a pod has several ports; the number (``53-udp``) where names clash.

    UDP numbers always carry ``-udp`` so a name does not change when the TCP
    twin appears. The result is unique within the pod.
    """
    if len(entries) < 2:
        return [""] * len(entries)

    def number(entry: _Entry) -> str:
        return f"{entry.port}-udp" if entry.protocol == "UDP" else str(entry.port)

    names = Counter(e.port_name for e in entries)
    suffixes = [":" + (e.port_name if e.port_name and names[e.port_name] == 1 else number(e)) for e in entries]
    if len(set(suffixes)) < len(suffixes):  # a port name that reads like another port's number
        suffixes = [":" + number(e) for e in entries]
    return suffixes


def _service(
    pod: PodRecord,
    entry: _Entry,
    meta: Metadata,
    rules: DiscoveryRules,
    *,
    base_name: str,
    suffix: str,
    sole_port: bool,
    node_name: str,
    held_types: Mapping[ServiceKey, str],  # of a restarting or exited container: kept when it has no process
    closed_types: Mapping[ServiceKey, str],  # of a running container's closed ports: kept as they were
) -> ServiceInfo:
    overridden = tuple(sorted("port" if f == "ports" else f for f in meta.set_fields))
    key = service_key(pod.namespace, pod.uid, entry.container.name, entry.port, entry.protocol)
    hint = closed_types.get(key) if entry.held else None
    if hint is None and not entry.container.process_names:
        hint = held_types.get(key)
    discovered = ServiceInfo(
        key=key,
        name=(meta.name or base_name) + suffix,
        namespace=pod.namespace,
        pod_name=pod.name,
        pod_uid=pod.uid,
        container=entry.container.name,
        port=entry.port,
        protocol=entry.protocol,
        service_type=meta.service_type or hint or _type_hint(entry, sole_port=sole_port),
        provenance=Provenance.OVERRIDDEN if overridden else Provenance.DISCOVERED,
        health_endpoint=meta.health_endpoint or "",
        health_interval_s=meta.health_interval_s or rules.default_health_interval_s,
        pod_ip=pod.ip,
        node_name=node_name,
        labels=dict(pod.labels),
        overridden_fields=overridden,
        workload=pod.owner,
    )
    explicit = _explicit_for(rules, pod, entry)
    if explicit is None:
        return discovered
    # Per field, explicit > override/annotation (already in ``discovered``) > default.
    return replace(
        discovered,
        name=explicit.name + (suffix if explicit.port is None else ""),
        service_type=explicit.type.lower() or discovered.service_type,
        provenance=Provenance.EXPLICIT,
        health_endpoint=_first(explicit.health.endpoint, discovered.health_endpoint),
        health_interval_s=_first(explicit.health.interval_s, discovered.health_interval_s),
        labels={**pod.labels, **explicit.labels},
        overridden_fields=(),
    )


def _first(explicit: _T | None, fallback: _T) -> _T:
    return fallback if explicit is None else explicit


def static_service(explicit: ExplicitService, rules: DiscoveryRules, *, node_name: str) -> ServiceInfo:
    """An explicit service that no discovered pod backs (e.g. a host daemon)."""
    port = str(explicit.port) if explicit.port is not None else "-"
    return ServiceInfo(
        key=ServiceKey(f"explicit/{explicit.namespace or '-'}/{explicit.name}/{port}"),
        name=explicit.name,
        namespace=explicit.namespace,
        pod_name="",
        pod_uid=PodUID(""),
        container="",
        port=explicit.port,
        protocol=explicit.protocol if explicit.port is not None else None,
        service_type=explicit.type.lower() or _static_type(explicit),
        provenance=Provenance.EXPLICIT,
        health_endpoint=explicit.health.endpoint or "",
        health_interval_s=explicit.health.interval_s or rules.default_health_interval_s,
        node_name=node_name,
        labels=dict(explicit.labels),
    )


def _static_type(explicit: ExplicitService) -> str:
    if explicit.port is None:
        return "unknown"
    return _well_known(explicit.port, explicit.protocol) or explicit.protocol.lower()
