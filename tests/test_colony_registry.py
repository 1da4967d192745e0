"""The colony registry: ownership, sessions, sequenced idempotent deltas, staleness."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from coral_colony.registry import AgentRecord, Registry, ServiceRecord


def svc(key: str, **changes: object) -> ServiceRecord:
    return ServiceRecord(key=key, component_name=key.split("/")[-1], **changes)  # type: ignore[arg-type]


def node(agent_id: str) -> AgentRecord:
    return AgentRecord(agent_id=agent_id, kind="node-agent", node_name=f"{agent_id}-node", node_labels={"zone": "a"})


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "colony.db")


def keys(registry: Registry, agent_id: str) -> list[str]:
    return [r["key"] for r in registry.services(agent_id=agent_id)]


def test_register_replaces_the_agents_whole_set(registry: Registry) -> None:
    registry.register(node("a"), [svc("ns/1/app/80"), svc("ns/2/app/80")], session="s1", now=1.0)
    registry.register(node("a"), [svc("ns/2/app/80"), svc("ns/3/app/80")], session="s2", now=2.0)
    assert keys(registry, "a") == ["ns/2/app/80", "ns/3/app/80"]


def test_a_registry_an_older_colony_wrote_gains_the_workload_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    Registry(path).close()
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE services DROP COLUMN workload")
    registry = Registry(path)
    registry.register(node("a"), [svc("ns/1/app/80", workload="StatefulSet/db")], session="s1", now=1.0)
    assert [r["workload"] for r in registry.services(agent_id="a")] == ["StatefulSet/db"]


def test_an_agent_cannot_overwrite_another_agents_service(registry: Registry) -> None:
    registry.register(node("a"), [svc("ns/1/app/80", pod_ip="10.0.0.1")], session="s", now=1.0)
    refused = registry.register(node("b"), [svc("ns/1/app/80", pod_ip="6.6.6.6")], session="t", now=2.0)
    assert (refused, registry.services()[0]["pod_ip"], registry.services()[0]["agent_id"]) == (
        ("ns/1/app/80",),
        "10.0.0.1",
        "a",
    )


def test_an_agent_cannot_delete_another_agents_service(registry: Registry) -> None:
    registry.register(node("a"), [svc("ns/1/app/80")], session="s", now=1.0)
    registry.register(node("b"), [], session="t", now=1.0)
    applied = registry.apply("b", sequence=1, upserts=[], removed=["ns/1/app/80"], now=2.0)
    assert (applied.refused_keys, keys(registry, "a")) == (("ns/1/app/80",), ["ns/1/app/80"])


def test_deltas_apply_in_order_and_replays_are_idempotent(registry: Registry) -> None:
    registry.register(node("a"), [svc("ns/1/app/80")], session="s", now=1.0)
    first = registry.apply("a", sequence=1, upserts=[svc("ns/2/app/80")], removed=[], now=2.0)
    second = registry.apply("a", sequence=2, upserts=[], removed=["ns/1/app/80"], now=3.0)
    replay = registry.apply("a", sequence=1, upserts=[svc("ns/9/app/80")], removed=[], now=4.0)
    assert ([first.applied_sequence, second.applied_sequence, replay.applied_sequence], keys(registry, "a")) == (
        [1, 2, 2],
        ["ns/2/app/80"],
    )


def test_a_gap_in_sequences_asks_for_a_full_registration(registry: Registry) -> None:
    registry.register(node("a"), [], session="s", now=1.0)
    assert registry.apply("a", sequence=3, upserts=[svc("x/1/c/1")], removed=[], now=2.0).resync_required
    assert keys(registry, "a") == []


def test_an_unknown_agent_is_asked_to_register(registry: Registry) -> None:
    assert registry.apply("ghost", sequence=1, upserts=[], removed=[], now=1.0).resync_required
    assert registry.heartbeat("ghost", health="healthy", now=1.0) is False


def test_silent_agents_turn_unreachable_with_stale_services_then_expire(registry: Registry) -> None:
    registry.register(node("a"), [svc("ns/1/app/80")], session="s", now=0.0)
    registry.register(node("b"), [svc("ns/2/app/80")], session="t", now=0.0)
    registry.heartbeat("b", health="healthy", now=50.0)

    silent, gone = registry.expire(now=60.0, heartbeat_timeout=30.0, ttl=600.0)
    stale = {r["key"]: r["stale"] for r in registry.services()}
    registry.heartbeat("a", health="degraded", now=70.0)
    back = {r["key"]: r["stale"] for r in registry.services()}
    _, expired = registry.expire(now=1000.0, heartbeat_timeout=30.0, ttl=600.0)

    assert (silent, gone, stale, back, sorted(expired), registry.agents()) == (
        ["a"],
        [],
        {"ns/1/app/80": 1, "ns/2/app/80": 0},
        {"ns/1/app/80": 0, "ns/2/app/80": 0},
        ["a", "b"],
        [],
    )


def test_first_seen_survives_reregistration(registry: Registry) -> None:
    registry.register(node("a"), [svc("ns/1/app/80")], session="s", now=1.0)
    registry.register(node("a"), [svc("ns/1/app/80", pod_ip="10.0.0.2")], session="s2", now=5.0)
    [row] = registry.services()
    assert (row["first_seen"], row["last_seen"], row["pod_ip"]) == (1.0, 5.0, "10.0.0.2")


def test_a_reader_sees_what_the_writer_wrote_and_can_change_nothing(registry: Registry, tmp_path: Path) -> None:
    registry.register(node("a"), [svc("ns/1/app/80")], session="s1", now=1.0)
    reader = Registry(tmp_path / "colony.db", read_only=True)
    schema = reader.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    assert [r["agent_id"] for r in reader.agents()] == ["a"]
    assert "agent.registered" in [e["action"] for e in reader.audit.query(kind="registration")]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.db.execute("DELETE FROM services")
    assert reader.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == schema
    reader.close()
