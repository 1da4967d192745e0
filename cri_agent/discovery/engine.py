"""Reconcile: (last known state, node snapshot, rules) -> new state + events.

A pure function. The agent feeds it the snapshot of every pass and the
state it persisted after the previous one (or reloaded from the cache after
a restart), so events describe only real changes:

- (per pod, pod-level events — skipped, error — come before its service events)
- ``added`` / ``updated`` (with the changed fields) / ``removed`` (with why:
  ``pod gone``, ``filtered out: …``, ``opt-out: …``, ``port closed``, ``replaced by the ports it listens on``,
  ``container completed``, ``removed from config``);
- ``skipped`` once when a pod is first seen excluded or its reason changes;
- ``error`` once per new problem of a pod (malformed annotation, port JSON).

A port that a running container stops showing is debounced: it stays, unchanged, and is removed
(``port closed``) by the first pass at least ``CLOSE_GRACE_S`` after the pass that first found it
closed; the engine asks for that pass (``recheck_at``). A pod being stopped closes its listeners a
moment before the runtime says its containers exited or its sandbox is gone: its services then
leave once, as ``pod gone`` (or stay while the exited containers hold them), never as ``port
closed`` on the way out, and without a portless entry or a renamed sibling in between. A port
that opens again within the grace changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cri_agent.discovery.containers import Phase, lifecycle
from cri_agent.discovery.filters import evaluate, pod_ref
from cri_agent.discovery.overrides import matches
from cri_agent.discovery.rules import DiscoveryRules
from cri_agent.discovery.services import derive_services, static_service
from cri_agent.model import (
    SERVICE_FIELDS,
    DiscoveryEvent,
    EventKind,
    NodeSnapshot,
    PodUID,
    ServiceInfo,
    ServiceKey,
)

_KIND_ORDER = {kind: index for index, kind in enumerate(EventKind)}

# How long a port a running container no longer shows is kept before it is removed as closed: the
# time a stopped pod's runtime takes to report its containers exited once their listeners are gone
# (milliseconds, a few hundred under load), with room to spare. A closed port is removed at most
# pollInterval + CLOSE_GRACE_S after it closed.
CLOSE_GRACE_S = 2.0
_EARLY_S = 0.001  # a pass asked for at since + CLOSE_GRACE_S is due, whatever the rounding of wall times


@dataclass(frozen=True, slots=True)
class PodDecision:
    uid: PodUID
    namespace: str
    name: str
    included: bool
    reason: str  # stable human string
    errors: tuple[str, ...] = ()  # the rendered problems (PodProblem.render), sorted: what the cache keeps


@dataclass(frozen=True, slots=True)
class KnownState:
    """What the cache remembers from the last pass (or the last run)."""

    services: Mapping[ServiceKey, ServiceInfo]
    pods: Mapping[PodUID, PodDecision]
    # Ports kept while a running container does not show them: since when (wall time). In memory
    # only: after a restart, a port still closed is timed from the first pass.
    closing: Mapping[ServiceKey, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reconciliation:
    services: Mapping[ServiceKey, ServiceInfo]  # the full new current set
    pods: Mapping[PodUID, PodDecision]  # decisions for every pod in the snapshot
    events: tuple[DiscoveryEvent, ...]
    upserted: tuple[ServiceInfo, ...]  # added or updated
    removed: tuple[ServiceKey, ...]
    recheck_at: float | None = None  # when a settling container changes phase or a closed port's grace ends
    closing: Mapping[ServiceKey, float] = field(default_factory=dict)  # the closed ports kept, since when


def changed_fields(old: ServiceInfo, new: ServiceInfo) -> tuple[str, ...]:
    return tuple(f for f in SERVICE_FIELDS if getattr(old, f) != getattr(new, f))


def reconcile(known: KnownState, snapshot: NodeSnapshot, rules: DiscoveryRules) -> Reconciliation:
    node_name = rules.node_name or snapshot.node_name
    services: dict[ServiceKey, ServiceInfo] = {}
    pods: dict[PodUID, PodDecision] = {}
    events: list[DiscoveryEvent] = []

    now = snapshot.taken_at
    known_by_pod: dict[PodUID, list[ServiceInfo]] = {}
    for service in known.services.values():
        known_by_pod.setdefault(service.pod_uid, []).append(service)
    completed: set[tuple[PodUID, str]] = set()
    recheck_at: float | None = None
    released = {key for key, since in known.closing.items() if now - since >= CLOSE_GRACE_S - _EARLY_S}
    closing: dict[ServiceKey, float] = {}

    for pod in snapshot.pods:
        verdict = evaluate(pod, rules.filters)
        problems = [*verdict.errors, *pod.provider_problems]
        if verdict.included:
            life = lifecycle(pod.containers, now=now)
            derived, service_problems, closed = derive_services(
                pod,
                rules,
                node_name=node_name,
                life=life,
                previous=known_by_pod.get(pod.uid, ()),
                released=released,
            )
            problems += service_problems
            services.update((s.key, s) for s in derived)
            completed.update((pod.uid, name) for name, p in life.phases.items() if p == Phase.COMPLETED)
            for key in closed:  # first found closed now, or earlier (a wall clock stepped back restarts it)
                closing[key] = since = min(known.closing.get(key, now), now)
                recheck_at = _earliest(recheck_at, since + CLOSE_GRACE_S)
            for at in (life.settles_at, life.warms_at):
                if at is not None:
                    recheck_at = _earliest(recheck_at, at)
        reason = verdict.reason if verdict.included or verdict.opt_out else f"filtered out: {verdict.reason}"
        errors = {problem.render(pod_ref(pod)): problem for problem in problems}  # rendered once, here
        decision = PodDecision(
            uid=pod.uid,
            namespace=pod.namespace,
            name=pod.name,
            included=verdict.included,
            reason=reason,
            errors=tuple(sorted(errors)),
        )
        pods[pod.uid] = decision
        previous = known.pods.get(pod.uid)
        if not verdict.included and (previous is None or previous.reason != decision.reason):
            events.append(_pod_event(EventKind.SKIPPED, decision, reason=verdict.reason))
        for error in sorted(set(errors) - set(previous.errors if previous else ())):
            events.append(_pod_event(EventKind.ERROR, decision, reason=error, fields=(errors[error].key,)))

    included = [pod for pod in snapshot.pods if pods[pod.uid].included]
    for explicit in rules.services:
        if explicit.selector is None or not any(matches(explicit.selector, p) for p in included):
            static = static_service(explicit, rules, node_name=node_name)
            services[static.key] = static

    upserted: list[ServiceInfo] = []
    for key, service in sorted(services.items()):
        old = known.services.get(key)
        if old is None:
            upserted.append(service)
            events.append(_service_event(EventKind.ADDED, service))
        elif fields := changed_fields(old, service):
            upserted.append(service)
            events.append(_service_event(EventKind.UPDATED, service, fields=fields))
    removed = sorted(key for key in known.services if key not in services)
    listening = {(s.pod_uid, s.container) for s in services.values() if s.port is not None}
    for key in removed:
        old = known.services[key]
        events.append(_service_event(EventKind.REMOVED, old, reason=_removal_reason(old, pods, completed, listening)))

    events.sort(key=lambda e: (e.namespace, e.pod_name, e.key or "", _KIND_ORDER[e.kind], e.reason))
    return Reconciliation(
        services=services,
        pods=pods,
        events=tuple(events),
        upserted=tuple(upserted),
        removed=tuple(removed),
        recheck_at=recheck_at,
        closing=closing,
    )


def _earliest(current: float | None, at: float) -> float:
    return at if current is None else min(current, at)


def _removal_reason(
    old: ServiceInfo,
    pods: Mapping[PodUID, PodDecision],
    completed: set[tuple[PodUID, str]],
    listening: set[tuple[PodUID, str]],  # containers with a service on a port now
) -> str:
    if not old.pod_uid:
        return "removed from config"
    decision = pods.get(old.pod_uid)
    if decision is None:
        return "pod gone"
    if not decision.included:
        return decision.reason
    if (old.pod_uid, old.container) in completed:
        return "container completed"
    if old.port is None and (old.pod_uid, old.container) in listening:
        return "replaced by the ports it listens on"  # the portless placeholder of a container that opened one
    return "port closed"


def _pod_event(kind: EventKind, pod: PodDecision, *, reason: str, fields: tuple[str, ...] = ()) -> DiscoveryEvent:
    return DiscoveryEvent(
        kind=kind, namespace=pod.namespace, pod_name=pod.name, pod_uid=pod.uid, reason=reason, fields=fields
    )


def _service_event(
    kind: EventKind, service: ServiceInfo, *, fields: tuple[str, ...] = (), reason: str = ""
) -> DiscoveryEvent:
    return DiscoveryEvent(
        kind=kind,
        namespace=service.namespace,
        pod_name=service.pod_name,
        pod_uid=service.pod_uid or None,
        key=service.key,
        service=service.name,
        reason=reason,
        fields=fields,
        provenance=service.provenance,
    )
