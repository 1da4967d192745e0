"""The colony's audit log: what the registry's writer records, and that nobody can rewrite it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from coral_base.vocabulary import AgentHealth
from coral_colony.model import AgentKind, AgentRecord, AuditEntry, AuditKind, AuditQuery, Provenance, ServiceRecord
from coral_colony.stores.reader import RegistryReader
from coral_colony.stores.writer import RegistryWriter


def svc(key: str, **changes: object) -> ServiceRecord:
    fields: dict[str, object] = {"namespace": "shop", "pod_name": "web-0"}  # on its agent's node
    fields.update(changes)
    return ServiceRecord(key=key, component_name=key.split("/")[-1], provenance=Provenance.DISCOVERED, **fields)  # type: ignore[arg-type]


def agent(agent_id: str) -> AgentRecord:
    return AgentRecord(agent_id=agent_id, kind=AgentKind.NODE_AGENT, node_name=f"{agent_id}-node", version="0.1.0")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryWriter]:
    writer = RegistryWriter(tmp_path / "colony.db")
    yield writer
    writer.close()


def query(registry: RegistryWriter, **filters: object) -> list[dict[str, Any]]:
    """The log as an auditor reads it: one dict per row (through a reader, as ``coral audit`` does)."""
    reader = RegistryReader(registry.path)
    try:
        rows = reader.audit(AuditQuery(**filters))  # type: ignore[arg-type]
    finally:
        reader.close()
    return [{"id": r.id, **asdict(r.entry)} for r in rows]


def actions(registry: RegistryWriter, kind: str = "") -> list[tuple[object, object, object]]:
    return [(r["action"], r["service_key"], r["detail"]) for r in query(registry, kind=kind)]


def test_registrations_and_deregistrations_are_audited_per_service(registry: RegistryWriter) -> None:
    registry.register(agent("a"), [svc("shop/1/web"), svc("shop/2/api")], session="s", now=10.0)
    registry.register(agent("a"), [svc("shop/1/web"), svc("shop/3/db")], session="s2", now=11.0)
    registry.apply("a", sequence=1, upserts=[svc("shop/1/web", pod_ip="10.0.0.9")], removed=["shop/3/db"], now=12.0)
    assert actions(registry) == [
        ("service.registered", "shop/1/web", ""),
        ("service.registered", "shop/2/api", ""),
        ("agent.registered", "", "node-agent 0.1.0: 2 service(s)"),
        ("service.registered", "shop/3/db", ""),  # an unchanged or updated service is not re-audited
        ("service.deregistered", "shop/2/api", "not in its full set"),
        ("agent.registered", "", "node-agent 0.1.0: 2 service(s)"),
        ("service.deregistered", "shop/3/db", "removed by its agent"),
    ]
    row = query(registry, kind="deregistration")[0]
    assert (row["actor"], row["node_name"], row["namespace"], row["service_name"], row["provenance"]) == (
        "a",
        "a-node",
        "shop",
        "api",
        "discovered",
    )


def test_a_service_naming_another_node_is_refused_and_audited(registry: RegistryWriter) -> None:
    registry.register(agent("a"), [svc("shop/1/web")], session="s", now=1.0)
    registry.register(agent("b"), [svc("shop/1/web", node_name="a-node")], session="t", now=2.0)
    registry.apply("b", sequence=1, upserts=[svc("shop/2/web", node_name="a-node")], removed=[], now=3.0)
    assert actions(registry, "auth") == [
        ("service.refused", "shop/1/web", "names node a-node, not its agent's node b-node"),
        ("service.refused", "shop/2/web", "names node a-node, not its agent's node b-node"),
    ]


def test_discovery_events_reported_in_a_delta_are_audited_once(registry: RegistryWriter) -> None:
    registry.register(agent("a"), [], session="s", now=1.0)
    event = AuditEntry(time=1.5, kind=AuditKind.DISCOVERY, action="added", namespace="shop", service_name="web")
    for _ in range(2):  # the same delta twice: a replay
        registry.apply("a", sequence=1, upserts=[], removed=[], now=2.0, events=[event])
    rows = query(registry, kind="discovery")
    assert [(r["action"], r["agent_id"], r["node_name"], r["actor"], r["time"]) for r in rows] == [
        ("added", "a", "a-node", "a", 1.5)
    ]


def test_agent_state_changes_are_audited(registry: RegistryWriter) -> None:
    registry.register(agent("a"), [svc("shop/1/web")], session="s", now=0.0)
    registry.expire(now=100.0, heartbeat_timeout=45.0, ttl=1000.0)
    registry.heartbeat("a", health=AgentHealth.HEALTHY, now=101.0)
    registry.expire(now=2000.0, heartbeat_timeout=45.0, ttl=1000.0)
    assert [(r["kind"], r["action"], r["actor"]) for r in query(registry)][2:] == [
        ("agent", "agent.unreachable", "colony"),
        ("agent", "agent.reachable", "a"),
        ("agent", "agent.unreachable", "colony"),
        ("deregistration", "service.deregistered", "a"),
        ("deregistration", "agent.deregistered", "colony"),
    ]


def test_the_audit_log_is_append_only(registry: RegistryWriter, tmp_path: Path) -> None:
    registry.register(agent("a"), [svc("shop/1/web")], session="s", now=0.0)
    db = sqlite3.connect(tmp_path / "colony.db")
    for statement in ("UPDATE audit SET detail = 'forged'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(statement)
    assert len(query(registry)) == 2


def test_retention_deletes_only_entries_past_it_and_audits_the_pruning(
    registry: RegistryWriter, tmp_path: Path
) -> None:
    day = 86400.0
    for at in (1 * day, 2 * day, 9 * day):
        registry.register(agent("a"), [svc("shop/1/web")], session=f"s{at}", now=at)
    assert registry.prune_audit(now=10 * day, retention_s=7 * day) == 3  # the service and the two registrations

    rows = query(registry)
    assert [(r["time"], r["action"]) for r in rows] == [(9 * day, "agent.registered"), (10 * day, "audit.pruned")]
    assert rows[-1]["kind"] == "retention" and "3 entries older than 7 days" in rows[-1]["detail"]
    db = sqlite3.connect(tmp_path / "colony.db")
    with pytest.raises(sqlite3.IntegrityError, match="only entries past the retention period"):
        db.execute("DELETE FROM audit")  # what is within the retention stays append-only
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE audit SET detail = 'forged'")
    db.close()
    assert registry.prune_audit(now=10 * day, retention_s=30 * day) == 0  # a longer retention brings nothing back


def test_an_older_colony_database_keeps_its_log_and_gains_the_retention_rule(tmp_path: Path) -> None:
    path = tmp_path / "colony.db"
    RegistryWriter(path).close()
    with sqlite3.connect(path) as db:  # as an older colony left it: every DELETE refused, no cut-off, no version
        db.execute("DROP TRIGGER audit_delete_expired_only")
        db.execute("DROP TABLE audit_retention")
        db.execute("CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'no'); END")
        db.execute("PRAGMA user_version = 0")
    registry = RegistryWriter(path)
    registry.register(agent("a"), [svc("shop/1/web")], session="s", now=1.0)
    assert registry.prune_audit(now=100.0, retention_s=10.0) == 2


def test_queries_filter_by_time_node_and_kind_and_keep_the_newest(registry: RegistryWriter) -> None:
    registry.register(agent("a"), [svc("shop/1/web")], session="s", now=10.0)
    registry.register(agent("b"), [svc("shop/2/web", node_name="b-node")], session="t", now=20.0)
    assert {r["node_name"] for r in query(registry, since=15.0)} == {"b-node"}
    assert [r["action"] for r in query(registry, node="a-node", kind="registration")] == [
        "service.registered",
        "agent.registered",
    ]
    assert [r["service_key"] for r in query(registry, limit=2)] == ["shop/2/web", ""]
