"""The colony registry's writer: ownership, sessions, sequenced idempotent deltas, staleness; and its readers."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from coral_base.vocabulary import AgentHealth
from coral_base.wire.coral.mesh.v1 import mesh_pb2
from coral_colony import codec
from coral_colony.model import AgentKind, AgentRecord, AuditKind, AuditQuery, ServiceFilter, ServiceRecord
from coral_colony.stores import schema
from coral_colony.stores.reader import RegistryReader
from coral_colony.stores.schema import RegistryFileError
from coral_colony.stores.writer import RegistryWriter
from tests.test_colony_codec import filled


def svc(key: str, **changes: object) -> ServiceRecord:
    return ServiceRecord(key=key, component_name=key.split("/")[-1], **changes)  # type: ignore[arg-type]


def node(agent_id: str) -> AgentRecord:
    return AgentRecord(
        agent_id=agent_id, kind=AgentKind.NODE_AGENT, node_name=f"{agent_id}-node", node_labels={"zone": "a"}
    )


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryWriter]:
    writer = RegistryWriter(tmp_path / "colony.db")
    yield writer
    writer.close()


@pytest.fixture
def reader(registry: RegistryWriter) -> Iterator[RegistryReader]:
    opened = RegistryReader(registry.path)
    yield opened
    opened.close()


def keys(reader: RegistryReader, agent_id: str) -> list[str]:
    return [s.service.key for s in reader.services(ServiceFilter(agent_id=agent_id))]


def test_register_replaces_the_agents_whole_set(registry: RegistryWriter, reader: RegistryReader) -> None:
    registry.register(node("a"), [svc("ns/1/app/80"), svc("ns/2/app/80")], session="s1", now=1.0)
    registry.register(node("a"), [svc("ns/2/app/80"), svc("ns/3/app/80")], session="s2", now=2.0)
    assert keys(reader, "a") == ["ns/2/app/80", "ns/3/app/80"]


def test_a_registration_in_parts_keeps_the_rest_until_its_last_part_then_drops_what_no_part_named(
    registry: RegistryWriter, reader: RegistryReader
) -> None:
    registry.register(node("a"), [svc("ns/1/app/80"), svc("ns/2/app/80"), svc("ns/3/app/80")], session="s1", now=1.0)
    registry.register(node("a"), [svc("ns/1/app/80")], session="s2", now=2.0, partial=True)
    during = keys(reader, "a")
    registry.apply("a", sequence=1, upserts=[svc("ns/2/app/80")], removed=[], now=3.0, completes_registration=True)
    assert (during, keys(reader, "a")) == (
        ["ns/1/app/80", "ns/2/app/80", "ns/3/app/80"],
        ["ns/1/app/80", "ns/2/app/80"],
    )


def test_services_without_node_labels_have_their_agents(registry: RegistryWriter, reader: RegistryReader) -> None:
    registry.register(node("a"), [svc("ns/1/app/80")], session="s1", now=1.0)
    assert [dict(s.service.node_labels) for s in reader.services()] == [{"zone": "a"}]


def test_a_registry_an_older_colony_wrote_gains_the_workload_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as db:  # the tables of an unversioned colony
        schema.migrate(db, to=1)
    with sqlite3.connect(path) as db:  # as a colony before workload, and before schema versions, left it
        db.execute("ALTER TABLE services DROP COLUMN workload")
        db.execute("PRAGMA user_version = 0")
    registry = RegistryWriter(path)
    registry.register(node("a"), [svc("ns/1/app/80", workload="StatefulSet/db")], session="s1", now=1.0)
    reader = RegistryReader(path)
    assert [s.service.workload for s in reader.services(ServiceFilter(agent_id="a"))] == ["StatefulSet/db"]


def test_an_agent_cannot_overwrite_another_agents_service(registry: RegistryWriter, reader: RegistryReader) -> None:
    """Each agent has its own rows: b sending a's key (squatting) neither replaces a's row nor blocks a."""
    registry.register(node("b"), [svc("ns/1/app/80", pod_ip="6.6.6.6")], session="t", now=1.0)
    refused = registry.register(node("a"), [svc("ns/1/app/80", pod_ip="10.0.0.1")], session="s", now=2.0)
    rows = {
        (s.agent_id, s.service.node_name, s.service.pod_ip) for s in reader.services(ServiceFilter(key="ns/1/app/80"))
    }
    assert (refused, rows) == ((), {("a", "a-node", "10.0.0.1"), ("b", "b-node", "6.6.6.6")})


def test_an_agent_cannot_delete_another_agents_service(registry: RegistryWriter, reader: RegistryReader) -> None:
    registry.register(node("a"), [svc("ns/1/app/80")], session="s", now=1.0)
    registry.register(node("b"), [], session="t", now=1.0)
    registry.apply("b", sequence=1, upserts=[], removed=["ns/1/app/80"], now=2.0)
    assert keys(reader, "a") == ["ns/1/app/80"]


def test_deltas_apply_in_order_and_replays_are_idempotent(registry: RegistryWriter, reader: RegistryReader) -> None:
    registry.register(node("a"), [svc("ns/1/app/80")], session="s", now=1.0)
    first = registry.apply("a", sequence=1, upserts=[svc("ns/2/app/80")], removed=[], now=2.0)
    second = registry.apply("a", sequence=2, upserts=[], removed=["ns/1/app/80"], now=3.0)
    replay = registry.apply("a", sequence=1, upserts=[svc("ns/9/app/80")], removed=[], now=4.0)
    assert ([first.applied_sequence, second.applied_sequence, replay.applied_sequence], keys(reader, "a")) == (
        [1, 2, 2],
        ["ns/2/app/80"],
    )


def test_a_gap_in_sequences_asks_for_a_full_registration(registry: RegistryWriter, reader: RegistryReader) -> None:
    registry.register(node("a"), [], session="s", now=1.0)
    assert registry.apply("a", sequence=3, upserts=[svc("x/1/c/1")], removed=[], now=2.0).resync_required
    assert keys(reader, "a") == []


def test_an_unknown_agent_is_asked_to_register(registry: RegistryWriter) -> None:
    assert registry.apply("ghost", sequence=1, upserts=[], removed=[], now=1.0).resync_required
    assert registry.heartbeat("ghost", health=AgentHealth.HEALTHY, now=1.0) is False


def test_silent_agents_turn_unreachable_with_stale_services_then_expire(
    registry: RegistryWriter, reader: RegistryReader
) -> None:
    registry.register(node("a"), [svc("ns/1/app/80")], session="s", now=0.0)
    registry.register(node("b"), [svc("ns/2/app/80")], session="t", now=0.0)
    registry.heartbeat("b", health=AgentHealth.HEALTHY, now=50.0)

    silent, gone = registry.expire(now=60.0, heartbeat_timeout=30.0, ttl=600.0)
    stale = {s.service.key: s.stale for s in reader.services()}
    registry.heartbeat("a", health=AgentHealth.DEGRADED, now=70.0)
    back = {s.service.key: s.stale for s in reader.services()}
    _, expired = registry.expire(now=1000.0, heartbeat_timeout=30.0, ttl=600.0)

    assert (silent, gone, stale, back, sorted(expired), reader.agents()) == (
        ["a"],
        [],
        {"ns/1/app/80": True, "ns/2/app/80": False},
        {"ns/1/app/80": False, "ns/2/app/80": False},
        ["a", "b"],
        [],
    )


def test_first_seen_survives_reregistration(registry: RegistryWriter, reader: RegistryReader) -> None:
    registry.register(node("a"), [svc("ns/1/app/80")], session="s", now=1.0)
    registry.register(node("a"), [svc("ns/1/app/80", pod_ip="10.0.0.2")], session="s2", now=5.0)
    [stored] = reader.services()
    assert (stored.first_seen, stored.last_seen, stored.service.pod_ip) == (1.0, 5.0, "10.0.0.2")


def test_what_an_agent_registers_reads_back_as_it_was_sent(registry: RegistryWriter, reader: RegistryReader) -> None:
    """Every field of mesh.v1 ServiceInfo set (a field added there is too): the registry keeps each one."""
    [sent] = codec.registration(
        mesh_pb2.RegisterRequest(agent_id="a", services=[filled(mesh_pb2.ServiceInfo())])
    ).services
    agent = replace(node("a"), node_name=sent.node_name)
    registry.register(agent, [sent], session="s", now=1.0)
    [stored] = reader.services()
    [status] = reader.agents()
    assert (stored.service, stored.agent_id, status.agent, status.services) == (sent, "a", agent, 1)


def test_a_reader_sees_what_the_writer_wrote_and_can_change_nothing(
    registry: RegistryWriter, reader: RegistryReader
) -> None:
    registry.register(node("a"), [svc("ns/1/app/80")], session="s1", now=1.0)
    schema = reader.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    assert [s.agent.agent_id for s in reader.agents()] == ["a"]
    registrations = reader.audit(AuditQuery(kind=AuditKind.REGISTRATION))
    assert "agent.registered" in [logged.entry.action for logged in registrations]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.conn.execute("DELETE FROM services")
    assert reader.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == schema


def test_a_reader_refuses_a_file_the_writer_has_not_migrated(tmp_path: Path) -> None:
    path = tmp_path / "colony.db"
    RegistryWriter(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 0")
    with pytest.raises(RegistryFileError, match="the colony's writer migrates it"):
        RegistryReader(path)
