"""The colony's Prometheus metrics (docs/metrics.md), on ``--metrics-listen`` when it is set.

Most of what the colony can tell is in its registry already, so most
metrics are read from it at scrape time, on the metrics' own read-only
connection: agents by state, services by provenance, and the audit log,
which the colony appends to once per thing that happened. Its new entries
(an id range, cheap however long the log) are counted into the counters of
audit entries by kind, registrations, and operations by action and outcome,
counted from this process's start. Two things leave no row of their own and
are fed as they happen: the time a delta takes to apply (a gRPC server
interceptor on ``Mesh/UpdateServices``) and refused calls (``Refusals``
folds those into one audit row a minute per caller).

``exposition()`` renders the same text for any other HTTP listener that
wants to serve ``/metrics`` beside its own paths.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from coral_base import __version__
from coral_base.clock import SYSTEM_CLOCK, Clock
from coral_base.metrics_listener import MetricsListener
from coral_base.wire.coral.mesh.v1 import mesh_pb2
from coral_colony.model import Action, AgentState, AuditEntry, AuditKind, Outcome, Provenance
from coral_colony.stores.reader import RegistryReader

LISTEN_KEY = "--metrics-listen"
UPDATE_SERVICES = f"/{mesh_pb2.DESCRIPTOR.services_by_name['Mesh'].full_name}/UpdateServices"
APPLY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ColonyMetrics:
    def __init__(self, database: Path, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.registry = r = CollectorRegistry()
        Gauge("coral_colony_build_info", "Always 1; the colony's version as a label.", ["version"], registry=r).labels(
            __version__
        ).set(1)
        self.delta_apply = Histogram(
            "coral_colony_delta_apply_duration_seconds",
            "Time to answer an agent's UpdateServices: the session checked, the delta applied and audited.",
            buckets=APPLY_BUCKETS,
            registry=r,
        )
        self.refused_calls = Counter(
            "coral_colony_refused_calls",
            "Calls refused (wrong colony secret, no or unknown token, a scope the token lacks), by the audited action.",
            ["action"],
            registry=r,
        )
        for action in ("agent.refused", "operator.refused"):
            self.refused_calls.labels(action)
        self._registry_reads = _RegistryCollector(RegistryReader(database))
        r.register(self._registry_reads)

    def refused(self, entry: AuditEntry) -> None:
        """From ``Refusals``: one refused call (before the once-a-minute folding of its audit row)."""
        self.refused_calls.labels(entry.action).inc()

    def interceptors(self) -> tuple[_DeltaTimer, ...]:
        return (_DeltaTimer(self.delta_apply.observe, clock=self.clock),)

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type, for a listener that serves ``/metrics`` among other paths."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        self._registry_reads.close()


@contextlib.contextmanager
def serving(database: Path, *, listen: str, clock: Clock = SYSTEM_CLOCK) -> Iterator[tuple[ColonyMetrics, str]]:
    """The colony's metrics served on ``listen``, and the address it got; closed on the way out."""
    metrics = ColonyMetrics(database, clock=clock)
    try:
        listener = MetricsListener(metrics.registry, listen=listen, key=LISTEN_KEY)
        try:
            yield metrics, listener.address
        finally:
            listener.close()
    finally:
        metrics.close()


class _RegistryCollector(Collector):
    """Agents, services and the audit log's new entries, read per scrape (scrapes may overlap: one at a time)."""

    def __init__(self, reader: RegistryReader) -> None:
        self.reader = reader
        self._lock = threading.Lock()
        self._after_id = reader.last_audit_id()  # counters count from this process's start
        self._by_kind = dict.fromkeys(AuditKind, 0)
        self._registrations = 0
        self._operations = {(a.value, o.value): 0 for a in Action for o in Outcome}

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            states = self.reader.agent_states()
            services, stale = self.reader.service_counts()
            tally = self.reader.audit_tally(after_id=self._after_id)
            self._after_id = tally.last_id
            for kind, count in tally.by_kind.items():
                self._by_kind[kind] += count
            self._registrations += tally.registrations
            for key, count in tally.operations.items():
                self._operations[key] = self._operations.get(key, 0) + count
            by_kind, registrations, operations = dict(self._by_kind), self._registrations, dict(self._operations)
        agents = GaugeMetricFamily("coral_colony_agents", "Registered agents, by state.", labels=["state"])
        for state in AgentState:
            agents.add_metric([state.value], states.get(state, 0))
        yield agents
        by_provenance = GaugeMetricFamily(
            "coral_colony_services", "Services in the registry, by provenance.", labels=["provenance"]
        )
        for provenance in Provenance:
            by_provenance.add_metric([provenance.value], services.get(provenance, 0))
        yield by_provenance
        yield GaugeMetricFamily(
            "coral_colony_stale_services",
            "Services kept while their agent is unreachable (until the TTL).",
            value=stale,
        )
        yield CounterMetricFamily(
            "coral_colony_registrations",
            "Agent registrations accepted (a first one, or a new session).",
            value=registrations,
        )
        audit = CounterMetricFamily(
            "coral_colony_audit_entries", "Audit log entries appended, by kind.", labels=["kind"]
        )
        for kind, count in by_kind.items():
            audit.add_metric([kind.value], count)
        yield audit
        done = CounterMetricFamily(
            "coral_colony_operations",
            "Operations (tap, profile, sample) audited, by action, outcome.",
            labels=["action", "outcome"],
        )
        for (action, outcome), count in sorted(operations.items()):
            done.add_metric([action, outcome], count)
        yield done

    def close(self) -> None:
        with self._lock:
            self.reader.close()


class _DeltaTimer(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic in the stubs only
    """Times ``Mesh/UpdateServices`` calls; every other call passes untouched."""

    def __init__(self, observe: Callable[[float], None], *, clock: Clock) -> None:
        self.observe = observe
        self.clock = clock

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        inner = getattr(handler, "unary_unary", None)
        if handler_call_details.method != UPDATE_SERVICES or inner is None:
            return handler

        async def timed(request: Any, context: Any) -> Any:
            started = self.clock.monotonic()
            try:
                return await inner(request, context)
            finally:
                self.observe(self.clock.monotonic() - started)

        return grpc.unary_unary_rpc_method_handler(
            timed, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
