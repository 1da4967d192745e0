"""The node agent's wiring: the discovery pipeline in the order data flows.

    runtime (CRI)  ->  /proc enrichment  ->  reconcile (filters, overrides,
    services, provenance, diff)  ->  cache (SQLite)  ->  logs

Two long-lived tasks on one event loop: ``_events`` turns runtime events
into wake-ups, ``_discovery`` runs a reconcile per (coalesced) wake-up or
per resync interval. The agent owns both, stops them in reverse order and
closes the runtime channel and the cache last. A reconcile reads the
runtime's *current* state; event payloads are never trusted as state, so
a burst of events for one pod collapses into one pass. A task exit is
followed by a second pass once the runtime has settled (``RECHECK_S``), and
a container that is restarting or has just exited by one when its grace
ends, so a stop is seen within a second and no later event is needed.

Memory is the truth: the cache (``CacheKeeper``) mirrors it when it can,
and the status file next to it (``StatusFile``) holds the agent's lock on
the cache and the conditions ``coral agent status`` shows. The discovery
loop writes its heartbeat there at least every ``HEARTBEAT_S``, however
long it waits for its next pass: what the liveness probe reads.

When stopped, the agent tells the colony it leaves (``Deregister``) as soon
as its sync stops; the colony keeps its services for a grace window, so a
restart (a rolling update) changes nothing there.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from coral_base import __version__
from coral_base.backoff import Backoff
from coral_base.clock import SYSTEM_CLOCK, Clock
from coral_base.errors import ConfigError, CoralError
from coral_base.lifecycle import Stage, StopPolicy, run_stages
from coral_base.logs import emit
from coral_base.vocabulary import AgentHealth, EnrollMethod
from cri_agent import identity
from cri_agent.cache.writer import CacheContents, CacheWriter
from cri_agent.cache_keeper import CacheKeeper
from cri_agent.conditions import Conditions
from cri_agent.config import Settings
from cri_agent.control import ControlStream
from cri_agent.discovery.engine import KnownState, Reconciliation, reconcile
from cri_agent.discovery.rules import DiscoveryRules
from cri_agent.enrollment import AgentIdentity, Credential
from cri_agent.health import HealthChecker, aggregate
from cri_agent.logs import emit_discovery
from cri_agent.model import (
    DiscoveryEvent,
    EventKind,
    Health,
    HealthState,
    NodeSnapshot,
    PodRecord,
    PodUID,
)
from cri_agent.ops.guardrails import Guardrails
from cri_agent.ops.runner import OperationRunner, PodView
from cri_agent.providers.cri import SUBSCRIBED, CriClient, RuntimeEvent, RuntimeVersion
from cri_agent.providers.kube_report import ApiStatus, KubeReport
from cri_agent.providers.proc import ProcError, ProcFS
from cri_agent.status_file import StatusFile
from cri_agent.sync import ColonyEndpoint, ColonySync, OnState

if TYPE_CHECKING:  # the Kubernetes client costs ~35 MiB: imported only when the API is used
    from cri_agent.metrics import AgentMetrics  # and prometheus-client ~2.5 MiB, only with metrics.listen
    from cri_agent.providers.kubernetes import KubeSource

log = logging.getLogger("cri_agent.agent")

SHUTDOWN_GRACE_S = 10.0
RECHECK_S = 0.3  # after a task exit, the CRI plugin updates its state (a sandbox turns NOTREADY): pass again
KUBE_SETTLE_S = 5.0  # the longest the first pass waits for the Kubernetes API (owners, the fallback pods)
HEARTBEAT_S = 10.0  # the discovery loop writes its heartbeat to the status file at least this often


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
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = settings
        self.node_name = settings.node_name
        self.rules: DiscoveryRules = settings.rules()
        cri = settings.discovery.cri
        self.runtime: Runtime = runtime or CriClient(
            cri.socket, timeout=cri.timeout, containerd_namespace=cri.containerd_namespace
        )
        self.proc: Enricher = proc or ProcFS(settings.discovery.proc_root)
        self.clock = clock
        self.conditions = Conditions()
        self.meta: dict[str, str] = {}
        self.status_file = StatusFile(settings.cache.path)
        self.metrics = _agent_metrics(settings, clock=clock)
        self.cache = CacheKeeper(
            CacheWriter(settings.cache.path),
            node_name=self.node_name,
            contents=self._cache_contents,
            on_state=self._cache_state,
            clock=clock,
            on_write=self.metrics.cache_written if self.metrics is not None else None,
        )
        self.sync = _colony_sync(settings, on_state=self._colony_state, clock=clock)
        self.health = HealthChecker(
            report=self._report_health,
            timeout=settings.discovery.health_timeout,
            max_in_flight=settings.discovery.health_concurrency,
            clock=clock,
        )
        self.operations = OperationRunner(
            Guardrails(settings.ops, clock=clock),
            node_name=self.node_name,
            lookup=self._pod_view,
            record=self._record_operation,
            proc_root=settings.discovery.proc_root,
            profile_dir=settings.ops.profile_dir or settings.cache.path.parent,
        )
        self.known = KnownState(services={}, pods={})
        self.pods: dict[PodUID, PodRecord] = {}  # the last snapshot, for control operations
        self.passes = 0
        self.heartbeat_at = 0.0  # wall time the discovery loop last said it runs (0: not started)
        self.fallback = False  # the last pass's pods came from the Kubernetes API: the runtime was down
        self._wake = asyncio.Event()
        self._recheck_at = float("inf")
        self._stopping = False
        self._background: set[asyncio.Task[None]] = set()
        self.kube, self.kube_unavailable = _kube_source(
            settings, on_change=self._wake.set, on_problem=self._kube_problem
        )

    # -- lifecycle -------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then drain and close everything."""
        self.meta = {
            "agent_id": self.settings.agent_id,
            "node_name": self.node_name,
            "agent_pid": str(os.getpid()),
            "started_at": str(self.clock.time()),
        }
        self.status_file.acquire(self._status())  # CacheInUse: another agent writes this cache
        try:
            await self._run(stop)
        finally:
            self.status_file.release()

    async def _run(self, stop: asyncio.Event) -> None:
        self.known = await self.cache.open()
        await self._set_meta(self.meta)
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
        if self.sync is not None:
            self.sync.set_services(self.known.services, self.health.health)
        if self.kube_unavailable is not None:
            emit(log, "kubernetes.unavailable", level=logging.WARNING, reason=self.kube_unavailable.reason)
            await self._kube_condition(self.kube_unavailable)
        try:
            await run_stages(
                self._stages(), stop, on_stopping=self._stopping_now, grace_s=SHUTDOWN_GRACE_S, clock=self.clock
            )
        finally:
            await self.runtime.close()
            await self.cache.writer.close()
            emit(log, "agent.stopped", node=self.node_name, passes=self.passes)

    def _stages(self) -> list[Stage]:
        """What runs, in start order; stopped in reverse: events, sync and probes first, then the pass
        under way finishes (it may be writing the cache)."""
        stages = [Stage("discovery", self._discovery, StopPolicy.FINISH), Stage("health", self.health.run)]
        if self.settings.discovery.cri.events:
            stages.append(Stage("runtime-events", self._events))
        if self.kube is not None:
            stages.append(Stage("kubernetes", self.kube.run))
        if self.sync is not None:
            stages.append(Stage("colony-sync", self._colony))
            stages.append(Stage("control", ControlStream(self.sync, self.operations).run))
        if self.metrics is not None:  # first in, last out: scrapes see the shutdown
            serve = functools.partial(self.metrics.serve, self.settings.metrics.listen, sync=self.sync)
            stages.insert(0, Stage("metrics", serve))
        return stages

    async def _colony(self) -> None:
        """Keep the colony in sync; once the agent stops, say it leaves (after the sync, so nothing follows)."""
        assert self.sync is not None
        try:
            await self.sync.run()
        finally:
            if self._stopping:
                await self.sync.deregister()

    def _stopping_now(self) -> None:
        self._stopping = True
        self._wake.set()

    # -- runtime events -> wake-ups --------------------------------------------

    async def _events(self) -> None:
        backoff = Backoff(initial=0.5, maximum=30.0, clock=self.clock)
        while not self._stopping:
            self._wake.set()  # catch up on whatever happened while unsubscribed
            try:
                async for event in self.runtime.events():
                    if backoff.failing or not self.conditions.ok("events", default=False):
                        backoff.reset()
                        await self._condition("events", ok=True, reason=f"streaming ({event.source})")
                    if event.topic == SUBSCRIBED:
                        continue
                    if event.exited:
                        self._recheck(after=RECHECK_S)
                    self._wake.set()
                reason = "event stream ended"
            except CoralError as exc:
                reason = str(exc)
            await self._condition("events", ok=False, reason=reason)
            await backoff.wait()

    # -- discovery loop ----------------------------------------------------------

    async def _discovery(self) -> None:
        resync = self.settings.discovery.kubernetes.resync_interval
        # No runtime event announces a process that starts or stops listening: a light pass every
        # pollInterval finds it (and every change when events are off); the resync also refreshes last_seen.
        poll = self.settings.discovery.kubernetes.poll_interval
        coalesce = self.settings.discovery.coalesce_interval
        backoff = Backoff(initial=0.5, maximum=30.0, clock=self.clock)
        last_full = last_pass = float("-inf")  # monotonic, as every deadline of this loop
        self._heartbeat()
        await self._await_kubernetes()
        while not self._stopping:
            due = min(last_full + resync, last_pass + poll, self._recheck_at, self.cache.retry_at)
            await self._wait_until(due)
            if self._stopping:
                return
            if self._wake.is_set():
                await self.clock.sleep(coalesce)  # let a burst of events land
            self._wake.clear()
            full = self.clock.monotonic() >= last_full + resync
            if await self.reconcile_once(touch=full):
                backoff.reset()
                last_pass = self.clock.monotonic()
                if full:
                    last_full = last_pass
            else:
                await self._wait_until(self.clock.monotonic() + backoff.next())

    async def _wait_until(self, due: float) -> None:
        """Sleep until ``due`` (monotonic) or a wake-up, writing the loop's heartbeat at least every HEARTBEAT_S."""
        while True:
            self._heartbeat()
            left = due - self.clock.monotonic()
            if await self.clock.sleep(min(left, HEARTBEAT_S), self._wake) or left <= HEARTBEAT_S:
                return

    def _heartbeat(self) -> None:
        """The discovery loop runs: what `coral agent status --probe live` checks."""
        self.heartbeat_at = self.clock.time()
        self.status_file.write(self._status())

    async def _await_kubernetes(self) -> None:
        """Hold the first pass until the API has told what it knows, a few seconds at most.

        The cache holds services named with their owners (a CronJob's pod after the CronJob, not its
        Job): a first pass without them would rename services after every restart.
        """
        for _ in range(round(KUBE_SETTLE_S / 0.05)):  # `settled` is the watch threads' state: no event to await
            if self.kube is None or self.kube.settled or self._stopping:
                return
            await self.clock.sleep(0.05)

    def _recheck(self, *, after: float | None) -> None:
        """Ask for a pass ``after`` seconds from now (kept when an earlier one is already asked for)."""
        if after is not None:
            self._recheck_at = min(self._recheck_at, self.clock.monotonic() + after)

    async def reconcile_once(self, *, touch: bool = False) -> bool:
        """One pass of the pipeline. False when the runtime failed (and no fallback); a cache that
        fails does not stop discovery."""
        started = self.clock.monotonic()
        if self._recheck_at <= self.clock.monotonic():  # this pass is the re-check (one asked for later stays)
            self._recheck_at = float("inf")
        self.status_file.reclaim()  # CacheInUse if another agent took the cache over: this one stops
        await self.cache.check()  # a deleted or replaced file, a write retry that is due
        try:
            pods = await self.runtime.pods()
        except CoralError as exc:
            await self._runtime_down(exc)
            if self.kube is None or not self.kube.pods_synced:
                return False
            pods = self.kube.pod_records()  # the fallback: this node's pods as the API server sees them
            self.fallback = True
        else:
            self.fallback = False
            await self._runtime_up()
            if self.kube is not None:
                pods = self.kube.enrich(pods)
        if (kube := self.kube) is not None:
            # what the watches delivered, for auditors
            await self._set_meta({"kubernetes_events": str(kube.events_received)})
            if self.sync is not None:
                self.sync.set_node_labels(kube.node_labels())
        try:
            pods = list(await asyncio.to_thread(self.proc.enrich, pods))
        except ProcError as exc:
            await self._condition("proc", ok=False, reason=str(exc))
        else:
            await self._condition("proc", ok=True, reason="readable")
        snapshot = NodeSnapshot(node_name=self.node_name, pods=tuple(pods), taken_at=self.clock.time())
        result = reconcile(self.known, snapshot, self.rules)
        self.known = KnownState(services=result.services, pods=result.pods, closing=result.closing)
        self.pods = {pod.uid: pod for pod in pods}
        self.health.set_services(result.services)
        if self.sync is not None:
            self.sync.set_services(result.services, self.health.health)
        self.passes += 1
        self._recheck(after=None if result.recheck_at is None else result.recheck_at - snapshot.taken_at)
        self.meta["last_pass_at"] = repr(snapshot.taken_at)
        await self._persist(result, touch=touch, now=snapshot.taken_at)
        for event in result.events:
            emit_discovery(log, event)
        if self.sync is not None:
            self.sync.add_events(result.events, at=snapshot.taken_at)
        elapsed = self.clock.monotonic() - started
        if self.metrics is not None:
            self.metrics.passed(elapsed, services=result.services, events=result.events)
        if result.events or touch:
            emit(
                log,
                "discovery.pass",
                level=logging.DEBUG,
                pods=len(pods),
                services=len(result.services),
                events=len(result.events),
                ms=round(elapsed * 1000, 1),
            )
        return True

    async def _persist(self, result: Reconciliation, *, touch: bool, now: float) -> None:
        cache = self.settings.cache
        retention = (cache.event_retention_rows, cache.event_retention_days)
        await self.cache.apply(result, now=now, touch=touch, retention=retention)
        if touch:  # on full resyncs: operations age out on a node that runs none
            rows, days = self._operation_retention()
            await self.cache.state(lambda c: c.trim_operations(now=now, retention_rows=rows, retention_days=days))
        self.status_file.write(self._status())

    def _cache_contents(self) -> CacheContents:
        return CacheContents(
            services=self.known.services,
            pods=self.known.pods,
            health=list(self.health.health.values()),
            conditions=list(self.conditions),
            meta=dict(self.meta),
        )

    def _status(self) -> dict[str, Any]:
        """What the status file says: identity, conditions, the cache's state."""
        return {
            "pid": os.getpid(),
            "agent_id": self.settings.agent_id,
            "node_name": self.node_name,
            "cache": str(self.settings.cache.path),
            "started_at": float(self.meta.get("started_at", 0.0)),
            "last_pass_at": float(self.meta.get("last_pass_at", 0.0)),
            "passes": self.passes,
            "fallback": self.fallback,
            "heartbeat_at": self.heartbeat_at,
            "heartbeat_every": HEARTBEAT_S,
            "services": len(self.known.services),
            "conditions": [
                {"name": c.name, "ok": c.ok, "reason": c.reason, "since": c.since, "updated": c.updated}
                for c in self.conditions
            ],
        }

    async def _set_meta(self, values: Mapping[str, str]) -> None:
        self.meta.update(values)
        await self.cache.state(lambda c: c.set_meta(values))

    async def _report_health(self, results: list[Health], changes: list[Health]) -> None:
        if self.metrics is not None:
            self.metrics.probed(results)
        summary = aggregate(self.health.health)
        if self.sync is not None:
            self.sync.set_health(self.agent_health(summary))
            if changes:
                self.sync.set_services(self.known.services, self.health.health)
        await self.cache.state(lambda c: c.record_health(results))
        await self._set_meta({"services_health": summary})
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
        if self.metrics is not None:
            self.metrics.operation_ended(row)
        await self.cache.record_operation(row, retention=self._operation_retention())

    def _operation_retention(self) -> tuple[int, float]:
        cache = self.settings.cache
        return cache.operation_retention_rows, cache.operation_retention_days

    # -- conditions --------------------------------------------------------------

    async def _runtime_down(self, exc: CoralError) -> None:
        if self.conditions.ok("runtime", default=True):
            emit(log, "runtime.unavailable", level=logging.ERROR, reason=str(exc))
            outage = DiscoveryEvent(kind=EventKind.ERROR, namespace="", pod_name="", reason=str(exc))
            await self.cache.record_events([outage])
        await self._condition("runtime", ok=False, reason=str(exc))

    async def _runtime_up(self) -> None:
        if self.conditions.ok("runtime", default=False):
            return
        try:
            version = await self.runtime.version()
            reason = f"{version.runtime_name} {version.runtime_version} (CRI {version.api_version})"
        except CoralError as exc:
            reason = f"listing works; Version failed: {exc}"
        emit(log, "runtime.connected", runtime=reason)
        await self._condition("runtime", ok=True, reason=reason)

    def _kube_problem(self, report: KubeReport) -> None:
        """From the API watches (on the loop): the `kubernetes` condition, and one error event per new refusal."""
        task = asyncio.ensure_future(self._kube_condition(report))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _kube_condition(self, report: KubeReport) -> None:
        ok, reason = report.status == ApiStatus.OK, report.reason
        known = self.conditions.get("kubernetes")
        refused = report.status in (ApiStatus.FORBIDDEN, ApiStatus.NO_CREDENTIALS)
        if refused and (known is None or (known.ok, known.reason) != (False, reason)):
            event = DiscoveryEvent(kind=EventKind.ERROR, namespace="", pod_name="", reason=reason)
            await self.cache.record_events([event])
            if self.sync is not None:
                self.sync.add_events([event], at=self.clock.time())
        await self._condition("kubernetes", ok=ok, reason=reason)

    async def _colony_state(self, connected: bool, reason: str) -> None:
        await self._condition("colony", ok=connected, reason=reason)

    def agent_health(self, services: AgentHealth | None = None) -> AgentHealth:
        """What heartbeats say: unhealthy without the runtime (discovery is blind) unless the API
        fallback sees the node's pods, degraded when another condition fails or some services are
        unhealthy, else the services' aggregate."""
        services = services or aggregate(self.health.health)
        if not self.conditions.ok("runtime", default=True):
            return AgentHealth.DEGRADED if self.kube is not None and self.kube.pods_synced else AgentHealth.UNHEALTHY
        local = all(c.ok for c in self.conditions if c.name != "colony")
        if not local and services is AgentHealth.HEALTHY:
            return AgentHealth.DEGRADED
        return services

    async def _condition(self, name: str, *, ok: bool, reason: str) -> None:
        """Record a named health condition on change: in memory, in the status file (what `coral agent
        status` shows, right even when the cache fails), then in the cache."""
        if self.metrics is not None:
            self.metrics.checked(name, ok=ok)
        condition = self.conditions.set(name, ok=ok, reason=reason, now=self.clock.time())
        if condition is None:
            return
        if self.sync is not None:
            self.sync.set_health(self.agent_health())
        self.status_file.write(self._status())
        await self.cache.state(lambda c: c.set_condition(condition))

    async def _cache_state(self, ok: bool, reason: str) -> None:
        """From the cache keeper: the `cache` condition (the file gets it when it works again)."""
        await self._condition("cache", ok=ok, reason=reason)

    @property
    def healthy(self) -> bool:
        return all(c.ok for c in self.conditions)


def _kube_source(
    settings: Settings, *, on_change: Callable[[], None], on_problem: Callable[[KubeReport], None]
) -> tuple[KubeSource | None, KubeReport | None]:
    """The API watches; or none, with the report of why when the API is on but the pod has no token.

    A pod without its ServiceAccount token (automountServiceAccountToken: false, restricted clusters)
    discovers from the runtime alone, like one whose RBAC forbids everything: the `kubernetes`
    condition says so. A kubeconfig the operator named and that cannot be read stays a start-up error.
    """
    k8s = settings.discovery.kubernetes
    if not k8s.api_enabled():
        return None, None
    from cri_agent.providers.kubernetes import KubeSource, load_api

    try:
        api = load_api(k8s.kubeconfig)
    except ConfigError as exc:
        if k8s.kubeconfig is not None:
            raise
        reason = (
            f"{exc}: discovering from the container runtime alone, without owners or node labels; "
            "mount the token (the pod's automountServiceAccountToken, the chart's serviceAccount.automount) "
            "or turn the API off (discovery.kubernetes.api: off, the chart's kubernetesApi.enabled)"
        )
        return None, KubeReport(ApiStatus.NO_CREDENTIALS, reason)
    source = KubeSource(
        api,
        node_name=settings.node_name,
        forbidden_retry_s=k8s.forbidden_retry_interval,
        on_change=on_change,
        on_problem=on_problem,
    )
    return source, None


def _agent_metrics(settings: Settings, *, clock: Clock) -> AgentMetrics | None:
    if not settings.metrics.listen:
        return None
    from cri_agent.metrics import AgentMetrics

    return AgentMetrics(clock=clock)


def _colony_sync(settings: Settings, *, on_state: OnState, clock: Clock) -> ColonySync | None:
    colony = settings.colony
    if not colony.address:
        return None
    ca_pem = colony.ca_pem()
    return ColonySync(
        ColonyEndpoint(
            address=colony.address,
            colony_id=colony.colony_id,
            secret=colony.resolved_secret(),
            agent_id=settings.agent_id,
            node_name=settings.node_name,
            version=__version__,
            node_labels={},
            heartbeat_interval_s=colony.heartbeat_interval,
            timeout_s=colony.timeout,
            ca_pem=ca_pem,
        ),
        backoff=Backoff(initial=min(0.5, colony.max_backoff), maximum=colony.max_backoff, clock=clock),
        on_state=on_state,
        identity=None if ca_pem is None else _agent_identity(settings, ca_pem, clock),
    )


def _agent_identity(settings: Settings, ca_pem: bytes, clock: Clock) -> AgentIdentity:
    """The identity kept beside the cache, enrolled with the one credential configured."""
    colony = settings.colony
    if colony.service_account_token_file is not None:
        credential = Credential(EnrollMethod.SERVICE_ACCOUNT, "", token_file=colony.service_account_token_file)
    elif colony.bootstrap_token_file is not None:
        credential = Credential(EnrollMethod.BOOTSTRAP_TOKEN, "", token_file=colony.bootstrap_token_file)
    else:
        credential = Credential(EnrollMethod.SECRET, colony.resolved_secret())
    return AgentIdentity(
        identity.path_for(settings.cache.path),
        address=colony.address,
        ca_pem=ca_pem,
        colony_id=colony.colony_id,
        node_name=settings.node_name,
        version=__version__,
        credential=credential,
        clock=clock,
        agent_address=colony.agent_address,
        timeout_s=colony.timeout,
    )
