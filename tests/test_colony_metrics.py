"""The colony's Prometheus metrics: the registry read per scrape (agents, services, the audit log's new
entries), delta apply latency and refused calls as they happen; served by ``coral colony start
--metrics-listen`` and by nothing when it is not given."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from coral_base.clock import VirtualClock
from coral_colony.identity import ColonyIdentity, init_colony
from coral_colony.metrics import ColonyMetrics
from coral_colony.model import AuditEntry, AuditKind, Provenance
from coral_colony.refusals import Refusals
from coral_colony.server import serve
from coral_colony.stores.writer import RegistryWriter
from tests.colony import free_port
from tests.test_colony_registry import node, svc
from tests.test_colony_server import one_service_agent
from tests.test_sync import svc as agent_svc


def value(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def scrape(metrics: ColonyMetrics) -> str:
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    return body.decode()


def operation_entry(action: str, outcome: str) -> AuditEntry:
    return AuditEntry(
        time=1.0, kind=AuditKind.OPERATION, action=action, actor="alice", detail=json.dumps({"outcome": outcome})
    )


def test_agents_services_registrations_and_operations_are_read_from_the_registry(tmp_path: Path) -> None:
    writer = RegistryWriter(tmp_path / "colony.db")
    found = [svc(f"shop/uid-{n}/app/80", provenance=Provenance.DISCOVERED) for n in (1, 2)]
    writer.register(node("a"), found, session="s", now=1.0)
    metrics = ColonyMetrics(tmp_path / "colony.db")  # counters count what happens from here on
    writer.register(node("b"), [svc("shop/uid-3/app/80", provenance=Provenance.OVERRIDDEN)], session="t", now=2.0)
    writer.record([operation_entry("tap", "ok"), operation_entry("tap", "ok"), operation_entry("profile", "refused")])
    writer.expire(now=1000.0, heartbeat_timeout=45.0, ttl=1e9)  # both silent: unreachable, services stale
    text = scrape(metrics)
    writer.record([operation_entry("sample", "failed")])
    again = scrape(metrics)
    metrics.close()
    writer.close()
    assert [
        value(text, "coral_colony_agents", state="unreachable"),
        value(text, "coral_colony_agents", state="healthy"),
        value(text, "coral_colony_services", provenance="discovered"),
        value(text, "coral_colony_services", provenance="overridden"),
        value(text, "coral_colony_stale_services"),
        value(text, "coral_colony_registrations_total"),
        value(text, "coral_colony_operations_total", action="tap", outcome="ok"),
        value(text, "coral_colony_operations_total", action="profile", outcome="refused"),
        value(text, "coral_colony_audit_entries_total", kind="operation"),
        value(again, "coral_colony_operations_total", action="sample", outcome="failed"),
        value(again, "coral_colony_operations_total", action="tap", outcome="ok"),
    ] == [2, 0, 2, 1, 3, 1, 2, 1, 3, 1, 2]


def test_every_refused_call_counts_though_its_audit_rows_fold_into_one_a_minute(tmp_path: Path) -> None:
    writer = RegistryWriter(tmp_path / "colony.db")
    metrics = ColonyMetrics(tmp_path / "colony.db")

    async def record(entries: Sequence[AuditEntry]) -> None:
        writer.record(entries)

    refusals = Refusals(record, on_refused=metrics.refused)
    entry = AuditEntry(time=5.0, kind=AuditKind.AUTH, action="agent.refused", actor="x", detail="wrong secret")

    async def refuse_three() -> None:
        for _ in range(3):
            await refusals.refused(entry, peer="ipv4:10.0.0.7:5000", reason="wrong colony id or secret")

    asyncio.run(refuse_three())
    text = scrape(metrics)
    metrics.close()
    writer.close()
    assert [
        value(text, "coral_colony_refused_calls_total", action="agent.refused"),
        value(text, "coral_colony_refused_calls_total", action="operator.refused"),
        value(text, "coral_colony_audit_entries_total", kind="auth"),
    ] == [3, 0, 1]


@pytest.fixture
def identity(tmp_path: Path) -> ColonyIdentity:
    return init_colony(tmp_path / "colony", colony_id="c1", hosts=["127.0.0.1"])


def test_coral_colony_start_with_metrics_listen_serves_them_and_times_each_delta(
    identity: ColonyIdentity, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = VirtualClock()
    port = free_port()
    caplog.set_level(logging.INFO)

    async def scenario() -> str:
        stop, started = asyncio.Event(), asyncio.Event()
        colony = asyncio.create_task(
            serve(
                identity,
                listen=f"127.0.0.1:{port}",
                database=tmp_path / "colony.db",
                stop=stop,
                web_listen="",
                metrics_listen="127.0.0.1:0",
                clock=clock,
                started=started,
            )
        )
        await started.wait()
        address = next(
            getattr(r, "coral_fields", {}).get("metrics") for r in caplog.records if "colony.started" in r.getMessage()
        )
        agent = one_service_agent(identity, port=port, clock=clock)
        syncing = asyncio.create_task(agent.run())
        await clock.until(lambda: agent.in_sync, within=10)
        agent.set_services({s.key: s for s in (agent_svc(1), agent_svc(2))}, {})
        await clock.until(lambda: agent.in_sync, within=10)
        url = f"http://{address}/metrics"
        with await asyncio.to_thread(urllib.request.urlopen, url, timeout=5) as answer:
            text = str(answer.read().decode())
        syncing.cancel()
        stop.set()
        await colony
        return text

    text = clock.run(scenario())
    assert [
        value(text, "coral_colony_agents", state="healthy"),
        value(text, "coral_colony_services", provenance="discovered"),
        value(text, "coral_colony_registrations_total"),
        value(text, "coral_colony_delta_apply_duration_seconds_count"),
    ] == [1, 2, 1, 1]


def test_without_metrics_listen_the_colony_logs_metrics_off(
    identity: ColonyIdentity, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        stop, started = asyncio.Event(), asyncio.Event()
        colony = asyncio.create_task(
            serve(
                identity,
                listen="127.0.0.1:0",
                database=tmp_path / "colony.db",
                stop=stop,
                web_listen="",
                started=started,
            )
        )
        await started.wait()
        stop.set()
        await colony

    asyncio.run(scenario())
    fields = [getattr(r, "coral_fields", {}) for r in caplog.records if "colony.started" in r.getMessage()]
    assert fields[0]["metrics"] == "off"
