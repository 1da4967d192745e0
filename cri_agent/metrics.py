"""The agent's Prometheus metrics (docs/metrics.md), served on ``metrics.listen`` when it is set.

The agent opens no port unless configured: ``NodeAgent`` imports this
module (and prometheus-client, ~2.5 MiB) only then. The agent's wiring feeds
it at a handful of points (a pass ended, a condition was checked, a cache
write, a round of probes, an operation ended); what the colony has not
acknowledged yet is read from the sync at scrape time. Label values are the
vocabulary's words (``coral_base.vocabulary``), the same the cache, the logs
and the CLI use; every label value of a closed set is exported from the
start, at 0, so a rate over it never starts from a missing series.

Every metric object is thread-safe: the listener's thread reads while the
event loop writes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from coral_base import __version__
from coral_base.clock import Clock
from coral_base.logs import emit
from coral_base.metrics_listener import MetricsListener
from coral_base.vocabulary import Action, EventKind, HealthState, Outcome, Provenance, read_word
from cri_agent.conditions import CONDITION_NAMES
from cri_agent.model import DiscoveryEvent, Health, ServiceInfo, ServiceKey

log = logging.getLogger("cri_agent.metrics")

LISTEN_KEY = "metrics.listen"
PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # 250 pods, warm: ~0.15 s
WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
M = TypeVar("M", bound=MetricWrapperBase)

PROBE_RESULTS = (HealthState.HEALTHY, HealthState.UNHEALTHY)  # a probe that ran: never "unknown"
PROVENANCES = (Provenance.EXPLICIT, Provenance.DISCOVERED, Provenance.OVERRIDDEN)  # "unknown" is the colony's reading


class Backlog(Protocol):
    """What the colony has not acknowledged yet (``cri_agent.sync.Backlog``)."""

    @property
    def changes(self) -> int: ...
    @property
    def events(self) -> int: ...


class SyncView(Protocol):
    def backlog(self) -> Backlog: ...


class AgentMetrics:
    def __init__(self, *, clock: Clock) -> None:
        self.clock = clock
        self.registry = r = CollectorRegistry()
        Gauge("coral_agent_build_info", "Always 1; the agent's version as a label.", ["version"], registry=r).labels(
            __version__
        ).set(1)
        self.pass_seconds = Histogram(
            "coral_agent_discovery_pass_duration_seconds",
            "Duration of a discovery pass that read the pods (runtime, /proc, reconcile, cache write).",
            buckets=PASS_BUCKETS,
            registry=r,
        )
        self.services = _labelled(
            Gauge("coral_agent_services", "Services registered now, by provenance.", ["provenance"], registry=r),
            PROVENANCES,
        )
        self.events = _labelled(
            Counter(
                "coral_agent_discovery_events", "Discovery events decided by passes, by kind.", ["kind"], registry=r
            ),
            EventKind,
        )
        self.errors = _labelled(
            Counter(
                "coral_agent_errors",
                "Failed checks, by reason (the condition that failed: a failed pass, stream, write or call).",
                ["reason"],
                registry=r,
            ),
            CONDITION_NAMES,
        )
        self.conditions = Gauge(
            "coral_agent_condition",
            "1 while the named condition holds, 0 while it fails (absent until first checked).",
            ["condition"],
            registry=r,
        )
        self.cache_write_seconds = Histogram(
            "coral_agent_cache_write_duration_seconds",
            "Duration of one write to the SQLite cache (a pass's changes, health, a condition, an operation).",
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.probes = _labelled(
            Counter("coral_agent_health_probes", "Health probes of services, by result.", ["result"], registry=r),
            PROBE_RESULTS,
        )
        self.operations = Counter(
            "coral_agent_operations",
            "Control operations (tap, profile, sample) that ended, by action and outcome.",
            ["action", "outcome"],
            registry=r,
        )
        for action in Action:
            for outcome in Outcome:
                self.operations.labels(action.value, outcome.value)
        self._pending = Gauge(
            "coral_agent_sync_pending",
            "Changes the colony has not acknowledged: services to upsert or remove, discovery events to deliver.",
            ["item"],
            registry=r,
        )
        self._lag = Gauge(
            "coral_agent_sync_lag_seconds",
            "How long the colony has been behind the agent (0 when in sync), seen at each pass and each scrape.",
            registry=r,
        )
        self.address = ""  # host:port, once listening
        self._sync: SyncView | None = None
        self._lock = threading.Lock()
        self._behind_since: float | None = None  # monotonic

    # -- fed by the agent (on the event loop) ---------------------------------------------

    def passed(
        self, seconds: float, *, services: Mapping[ServiceKey, ServiceInfo], events: Iterable[DiscoveryEvent]
    ) -> None:
        self.pass_seconds.observe(seconds)
        by_provenance = Tally(service.provenance for service in services.values())
        for provenance in PROVENANCES:
            self.services.labels(provenance.value).set(by_provenance.get(provenance, 0))
        for kind, count in Tally(event.kind for event in events).items():
            self.events.labels(kind.value).inc(count)
        self._observe_sync()

    def checked(self, condition: str, *, ok: bool) -> None:
        """A check of a named condition (``Conditions``): its gauge, and an error when it failed."""
        self.conditions.labels(condition).set(1 if ok else 0)
        if not ok:
            self.errors.labels(condition).inc()

    def cache_written(self, seconds: float) -> None:
        self.cache_write_seconds.observe(seconds)

    def probed(self, results: Iterable[Health]) -> None:
        for state, count in Tally(h.state for h in results).items():
            self.probes.labels(state.value).inc(count)

    def operation_ended(self, row: Mapping[str, Any]) -> None:
        """An ``operations`` row as the runner records it."""
        action = read_word(Action, str(row.get("action", "")), Action.TAP)
        outcome = read_word(Outcome, str(row.get("outcome", "")), Outcome.FAILED)
        self.operations.labels(action.value, outcome.value).inc()

    # -- the listener (a stage of the agent) ---------------------------------------------

    async def serve(self, listen: str, *, sync: SyncView | None) -> None:
        """Serve on ``listen`` until cancelled; the sync's backlog (when there is a colony) is read per scrape."""
        if sync is not None:
            self._sync = sync
            self._pending.labels("services").set_function(lambda: self._observe_sync()[0])
            self._pending.labels("events").set_function(lambda: self._observe_sync()[1])
            self._lag.set_function(lambda: self._observe_sync()[2])
        listener = MetricsListener(self.registry, listen=listen, key=LISTEN_KEY)
        self.address = listener.address
        emit(log, "metrics.listening", address=self.address)
        try:
            await asyncio.Event().wait()  # until the agent stops this stage
        finally:
            await asyncio.to_thread(listener.close)

    def _observe_sync(self) -> tuple[int, int, float]:
        """(service changes, events, lag in seconds) of the sync now; the lag starts when a backlog is first seen."""
        if self._sync is None:
            return 0, 0, 0.0
        backlog = self._sync.backlog()
        with self._lock:
            now = self.clock.monotonic()
            if not (backlog.changes or backlog.events):
                self._behind_since = None
            elif self._behind_since is None:
                self._behind_since = now
            lag = 0.0 if self._behind_since is None else now - self._behind_since
        return backlog.changes, backlog.events, lag


def _labelled(metric: M, words: Iterable[str]) -> M:
    """``metric`` with one child per word of a closed set, at 0 from the start."""
    for word in words:
        metric.labels(str(word))
    return metric
