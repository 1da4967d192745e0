"""The node agent's wiring: the discovery pipeline in the order data flows.

    runtime (CRI)  ->  /proc enrichment  ->  reconcile (filters, overrides,
    services, provenance, diff)  ->  cache (SQLite)  ->  logs

Two long-lived tasks on one event loop: ``_events`` turns runtime events
into wake-ups, ``_discovery`` runs a reconcile per (coalesced) wake-up or
per resync interval. The agent owns both, stops them in reverse order and
closes the runtime channel and the cache last. A reconcile reads the
runtime's *current* state; event payloads are never trusted as state, so
a burst of events for one pod collapses into one pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from cri_agent import __version__
from cri_agent.backoff import Backoff
from cri_agent.cache import CacheWriter
from cri_agent.config import Settings
from cri_agent.control import ControlStream
from cri_agent.discovery.engine import KnownState, Reconciliation, reconcile
from cri_agent.discovery.rules import DiscoveryRules
from cri_agent.errors import CacheError, CoralError
from cri_agent.health import HealthChecker, aggregate
from cri_agent.logs import emit, emit_discovery
from cri_agent.model import (
    DiscoveryEvent,
    EventKind,
    Health,
    HealthState,
    NodeSnapshot,
    PodRecord,
    PodUID,
    Provenance,
    ServiceInfo,
    ServiceKey,
)
from cri_agent.ops.guardrails import Guardrails
from cri_agent.ops.runner import OperationRunner, PodView
from cri_agent.providers.cri import CriClient, RuntimeEvent, RuntimeVersion
from cri_agent.providers.proc import ProcError, ProcFS
from cri_agent.sync import ColonySync, ColonyTarget, OnState, event_to_wire

if TYPE_CHECKING:  # the Kubernetes client costs ~35 MiB: imported only when the API is used
    from cri_agent.providers.kubernetes import KubeSource

log = logging.getLogger("cri_agent.agent")

SHUTDOWN_GRACE_S = 10.0
KUBE_SETTLE_S = 5.0  # the longest the first pass waits for the Kubernetes API (owners, the fallback pods)


class Runtime(Protocol):
    """What discovery needs from the container runtime."""

    async def version(self) -> RuntimeVersion: ...
    async def pods(self) -> list[PodRecord]: ...
    def events(self) -> AsyncIterator[RuntimeEvent]: ...
    async def close(self) -> None: ...


class Enricher(Protocol):
    """What discovery needs from /proc."""

    def enrich(self, pods: Sequence[PodRecord]) -> tuple[PodRecord, ...]: ...


class NodeAgent:
    def __init__(
        self,
        settings: Settings,
        *,
        runtime: Runtime | None = None,
        proc: Enricher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.node_name = settings.node_name
        self.rules: DiscoveryRules = settings.rules()
        cri = settings.discovery.cri
        self.runtime: Runtime = runtime or CriClient(
            cri.socket, timeout=cri.timeout, containerd_namespace=cri.containerd_namespace
        )
        self.proc: Enricher = proc or ProcFS(settings.discovery.proc_root)
        self.cache = CacheWriter(settings.cache.path)
        self.sync = _colony_sync(settings, on_state=self._colony_state)
        self.health = HealthChecker(
            report=self._report_health,
            timeout=settings.discovery.health_timeout,
            max_in_flight=settings.discovery.health_concurrency,
        )
        self.clock = clock
        self.operations = OperationRunner(
            Guardrails(settings.ops), node_name=self.node_name, lookup=self._pod_view, record=self._record_operation
        )
        self.known = KnownState(services={}, pods={})
        self.pods: dict[PodUID, PodRecord] = {}  # the last snapshot, for control operations
        self.passes = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._conditions: dict[str, tuple[bool, str]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.kube = _kube_source(settings, on_change=self._wake.set, on_problem=self._kube_problem)

    # -- lifecycle -------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then drain and close everything."""
        self.known = await self.cache.open()
        meta = {
            "agent_id": self.settings.agent_id,
            "node_name": self.node_name,
            "agent_pid": str(os.getpid()),
            "started_at": str(self.clock()),
        }
        await self.cache.call(lambda c: c.set_meta(meta))
        emit(
            log,
            "agent.started",
            agent_id=self.settings.agent_id,
            node=self.node_name,
            cache=str(self.settings.cache.path),
            services=len(self.known.services),
            cri_socket=str(self.settings.discovery.cri.socket),
        )
        self.health.set_services(self.known.services)
        tasks: list[asyncio.Task[None]] = [
            asyncio.create_task(self._discovery(), name="discovery"),
            asyncio.create_task(self.health.run(), name="health"),
        ]
        if self.settings.discovery.cri.events:
            tasks.append(asyncio.create_task(self._events(), name="runtime-events"))
        if self.kube is not None:
            tasks.append(asyncio.create_task(self.kube.run(), name="kubernetes"))
        if self.sync is not None:
            self.sync.set_services(self.known.services, self.health.health)
            tasks.append(asyncio.create_task(self.sync.run(), name="colony-sync"))
            control = ControlStream(self.sync, self.operations)
            tasks.append(asyncio.create_task(control.run(), name="control"))
        stopped = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopped and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            stopped.cancel()
            await self._shutdown(tasks)

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        self._stopping = True
        self._wake.set()
        for task in reversed(tasks):  # events and probes first, then let the current pass finish
            if task.get_name() in ("runtime-events", "health", "colony-sync", "control", "kubernetes"):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                await asyncio.wait_for(task, SHUTDOWN_GRACE_S)
        await self.runtime.close()
        await self.cache.close()
        emit(log, "agent.stopped", node=self.node_name, passes=self.passes)

    # -- runtime events -> wake-ups --------------------------------------------

    async def _events(self) -> None:
        backoff = Backoff(initial=0.5, maximum=30.0)
        while not self._stopping:
            self._wake.set()  # catch up on whatever happened while unsubscribed
            try:
                async for event in self.runtime.events():
                    if backoff.failing or "events" not in self._conditions:
                        backoff.reset()
                        await self._condition("events", ok=True, reason=f"streaming ({event.source})")
                    self._wake.set()
                reason = "event stream ended"
            except CoralError as exc:
                reason = str(exc)
            await self._condition("events", ok=False, reason=reason)
            await asyncio.sleep(backoff.next())

    # -- discovery loop ----------------------------------------------------------

    async def _discovery(self) -> None:
        resync = self.settings.discovery.kubernetes.resync_interval
        # No runtime event announces a process that starts or stops listening: a light pass every
        # pollInterval finds it (and every change when events are off); the resync also refreshes last_seen.
        poll = self.settings.discovery.kubernetes.poll_interval
        coalesce = self.settings.discovery.coalesce_interval
        backoff = Backoff(initial=0.5, maximum=30.0)
        last_full = last_pass = float("-inf")
        await self._await_kubernetes()
        while not self._stopping:
            timeout = max(0.0, min(last_full + resync, last_pass + poll) - self.clock())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            if self._stopping:
                return
            if self._wake.is_set():
                await asyncio.sleep(coalesce)  # let a burst of events land
            self._wake.clear()
            full = self.clock() >= last_full + resync
            if await self.reconcile_once(touch=full):
                backoff.reset()
                last_pass = self.clock()
                if full:
                    last_full = self.clock()
            else:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), backoff.next())

    async def _await_kubernetes(self) -> None:
        """Hold the first pass until the API has told what it knows, a few seconds at most.

        The cache holds services named with their owners (a CronJob's pod after the CronJob, not its
        Job): a first pass without them would rename services after every restart.
        """
        for _ in range(round(KUBE_SETTLE_S / 0.05)):  # `settled` is the watch threads' state: no event to await
            if self.kube is None or self.kube.settled or self._stopping:
                return
            await asyncio.sleep(0.05)

    async def reconcile_once(self, *, touch: bool = False) -> bool:
        """One pass of the pipeline. False when the runtime or cache failed."""
        started = time.perf_counter()
        try:
            pods = await self.runtime.pods()
        except CoralError as exc:
            await self._runtime_down(exc)
            if self.kube is None or not self.kube.pods_synced:
                return False
            pods = self.kube.pod_records()  # the fallback: this node's pods as the API server sees them
        else:
            await self._runtime_up()
            if self.kube is not None:
                pods = self.kube.enrich(pods)
        if (kube := self.kube) is not None:
            received = {"kubernetes_events": str(kube.events_received)}  # what the watches delivered, for auditors
            with contextlib.suppress(CacheError):
                await self.cache.call(lambda c: c.set_meta(received))
            if self.sync is not None:
                self.sync.set_node_labels(kube.node_labels())
        try:
            pods = list(await asyncio.to_thread(self.proc.enrich, pods))
        except ProcError as exc:
            await self._condition("proc", ok=False, reason=str(exc))
        else:
            await self._condition("proc", ok=True, reason="readable")
        snapshot = NodeSnapshot(node_name=self.node_name, pods=tuple(pods), taken_at=self.clock())
        result = reconcile(self.known, snapshot, self.rules)
        previous = self.known.services
        try:
            await self._persist(result, touch=touch)
        except CacheError as exc:
            await self._condition("cache", ok=False, reason=str(exc))
            return False  # known state unchanged: the same diff is retried
        self.known = KnownState(services=result.services, pods=result.pods)
        self.pods = {pod.uid: pod for pod in pods}
        self.health.set_services(result.services)
        if self.sync is not None:
            self.sync.set_services(result.services, self.health.health)
        self.passes += 1
        await self._condition("cache", ok=True, reason="writable")
        for event in result.events:
            provenance = _provenance(event, result.services, previous)
            emit_discovery(log, event, provenance=provenance.value if provenance else "")
        if self.sync is not None:
            self.sync.add_events(
                event_to_wire(e, at=snapshot.taken_at, provenance=_provenance(e, result.services, previous))
                for e in result.events
            )
        if result.events or touch:
            emit(
                log,
                "discovery.pass",
                level=logging.DEBUG,
                pods=len(pods),
                services=len(result.services),
                events=len(result.events),
                ms=round((time.perf_counter() - started) * 1000, 1),
            )
        return True

    async def _persist(self, result: Reconciliation, *, touch: bool) -> None:
        cache = self.settings.cache
        now = self.clock()
        await self.cache.call(
            lambda c: c.apply(
                result,
                node_name=self.node_name,
                now=now,
                touch=touch,
                retention_rows=cache.event_retention_rows,
                retention_days=cache.event_retention_days,
            )
        )

    async def _report_health(self, results: list[Health], changes: list[Health]) -> None:
        summary = aggregate(self.health.health)
        if self.sync is not None:
            self.sync.set_health(self.agent_health(summary))
            if changes:
                self.sync.set_services(self.known.services, self.health.health)
        with contextlib.suppress(CacheError):
            await self.cache.call(lambda c: c.record_health(results))
            await self.cache.call(lambda c: c.set_meta({"services_health": summary}))
        for health in changes:
            service = self.known.services.get(health.key)
            emit(
                log,
                f"service.{health.state.value}",
                level=logging.WARNING if health.state == HealthState.UNHEALTHY else logging.INFO,
                key=health.key,
                service=service.name if service else "",
                namespace=service.namespace if service else "",
                error=health.last_error,
                ms=health.latency_ms,
            )

    # -- control operations ------------------------------------------------------

    def _pod_view(self, uid: PodUID, namespace: str, name: str) -> PodView | None:
        pod = self.pods.get(uid) or next(
            (p for p in self.pods.values() if (p.namespace, p.name) == (namespace, name)), None
        )
        if pod is None:
            return None
        decision = self.known.pods.get(pod.uid)
        return PodView(record=pod, included=decision is not None and decision.included)

    async def _record_operation(self, row: Mapping[str, Any]) -> None:
        with contextlib.suppress(CacheError):
            await self.cache.call(lambda c: c.record_operation(row))

    # -- conditions --------------------------------------------------------------

    async def _runtime_down(self, exc: CoralError) -> None:
        if self._conditions.get("runtime", (True, ""))[0] or "runtime" not in self._conditions:
            emit(log, "runtime.unavailable", level=logging.ERROR, reason=str(exc))
            outage = DiscoveryEvent(kind=EventKind.ERROR, namespace="", pod_name="", reason=str(exc))
            with contextlib.suppress(CacheError):
                await self.cache.call(lambda c: c.record_events([outage], node_name=self.node_name))
        await self._condition("runtime", ok=False, reason=str(exc))

    async def _runtime_up(self) -> None:
        if self._conditions.get("runtime", (False, ""))[0]:
            return
        try:
            version = await self.runtime.version()
            reason = f"{version.runtime_name} {version.runtime_version} (CRI {version.api_version})"
        except CoralError as exc:
            reason = f"listing works; Version failed: {exc}"
        emit(log, "runtime.connected", runtime=reason)
        await self._condition("runtime", ok=True, reason=reason)

    def _kube_problem(self, reason: str, ok: bool) -> None:
        """From the API watches (on the loop): the `kubernetes` condition, and one error event per new problem."""
        task = asyncio.ensure_future(self._kube_condition(reason, ok))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _kube_condition(self, reason: str, ok: bool) -> None:
        if not ok and self._conditions.get("kubernetes") != (False, reason) and "forbids" in reason:
            event = DiscoveryEvent(kind=EventKind.ERROR, namespace="", pod_name="", reason=reason)
            with contextlib.suppress(CacheError):
                await self.cache.call(lambda c: c.record_events([event], node_name=self.node_name))
            if self.sync is not None:
                self.sync.add_events([event_to_wire(event, at=self.clock(), provenance=None)])
        await self._condition("kubernetes", ok=ok, reason=reason)

    async def _colony_state(self, connected: bool, reason: str) -> None:
        await self._condition("colony", ok=connected, reason=reason)

    def agent_health(self, services: str | None = None) -> str:
        """What heartbeats say: unhealthy without the runtime (discovery is blind) unless the API
        fallback sees the node's pods, degraded when another condition fails or some services are
        unhealthy, else the services' aggregate."""
        services = services or aggregate(self.health.health)
        if not self._conditions.get("runtime", (True, ""))[0]:
            return "degraded" if self.kube is not None and self.kube.pods_synced else "unhealthy"
        local = all(ok for name, (ok, _) in self._conditions.items() if name != "colony")
        if not local and services == "healthy":
            return "degraded"
        return services

    async def _condition(self, name: str, *, ok: bool, reason: str) -> None:
        """Record a named health condition (shown by `coral agent status`) on change."""
        if self._conditions.get(name) == (ok, reason):
            return
        self._conditions[name] = (ok, reason)
        if self.sync is not None:
            self.sync.set_health(self.agent_health())
        now = self.clock()
        with contextlib.suppress(CacheError):
            await self.cache.call(lambda c: c.set_condition(name, ok=ok, reason=reason, now=now))

    @property
    def healthy(self) -> bool:
        return all(ok for ok, _ in self._conditions.values())


def _provenance(
    event: DiscoveryEvent, now: Mapping[ServiceKey, ServiceInfo], before: Mapping[ServiceKey, ServiceInfo]
) -> Provenance | None:
    service = (now.get(event.key) or before.get(event.key)) if event.key else None
    return service.provenance if service else None


def _kube_source(
    settings: Settings, *, on_change: Callable[[], None], on_problem: Callable[[str, bool], None]
) -> KubeSource | None:
    k8s = settings.discovery.kubernetes
    if not k8s.api_enabled():
        return None
    from cri_agent.providers.kubernetes import KubeSource, load_api

    return KubeSource(
        load_api(k8s.kubeconfig),
        node_name=settings.node_name,
        forbidden_retry_s=k8s.forbidden_retry_interval,
        on_change=on_change,
        on_problem=on_problem,
    )


def _colony_sync(settings: Settings, *, on_state: OnState) -> ColonySync | None:
    colony = settings.colony
    if not colony.address:
        return None
    return ColonySync(
        ColonyTarget(
            address=colony.address,
            colony_id=colony.colony_id,
            secret=colony.resolved_secret(),
            agent_id=settings.agent_id,
            node_name=settings.node_name,
            version=__version__,
            node_labels={},
            heartbeat_interval_s=colony.heartbeat_interval,
            timeout_s=colony.timeout,
            ca_pem=colony.ca_pem(),
        ),
        backoff=Backoff(initial=min(0.5, colony.max_backoff), maximum=colony.max_backoff),
        on_state=on_state,
    )
