"""The colony's audit log: what the registry's writer records, and that nobody can rewrite it."""

from __future__ import annotations

import contextlib
import itertools
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from coral_base.hash_chain import GENESIS, Link, Verdict
from coral_base.vocabulary import AgentHealth
from coral_cli import main
from coral_colony.model import AgentKind, AgentRecord, AuditEntry, AuditKind, AuditQuery, Provenance, ServiceRecord
from coral_colony.stores import schema
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


def test_discovery_events_reported_in_a_delta_are_audited_once_at_the_colonys_time(registry: RegistryWriter) -> None:
    registry.register(agent("a"), [], session="s", now=1.0)
    event = AuditEntry(
        time=0.0, agent_time=1.5, kind=AuditKind.DISCOVERY, action="added", namespace="shop", service_name="web"
    )
    for _ in range(2):  # the same delta twice: a replay
        registry.apply("a", sequence=1, upserts=[], removed=[], now=2.0, events=[event])
    rows = query(registry, kind="discovery")
    assert [(r["action"], r["agent_id"], r["node_name"], r["actor"], r["time"], r["agent_time"]) for r in rows] == [
        ("added", "a", "a-node", "a", 2.0, 1.5)
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
    with contextlib.closing(sqlite3.connect(path)) as db:  # the tables of an unversioned colony
        schema.migrate(db, to=1)
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


# -- the hash chain ----------------------------------------------------------------------------


def verdict(registry: RegistryWriter) -> Verdict:
    """What ``coral audit verify`` finds, through a read-only reader."""
    reader = RegistryReader(registry.path)
    try:
        return reader.audit_chain()[0]
    finally:
        reader.close()


def tamper(registry: RegistryWriter, *statements: str) -> None:
    """What someone with write access to the file can do: drop the guards, then change the log."""
    with contextlib.closing(sqlite3.connect(registry.path)) as db, db:
        for trigger in ("audit_no_update", "audit_delete_expired_only", "audit_append_links"):
            db.execute(f"DROP TRIGGER {trigger}")
        for statement in statements:
            db.execute(statement)


@pytest.fixture
def logged(registry: RegistryWriter) -> RegistryWriter:
    """A log of five entries: two services and their agent registered, the agent again without one of them."""
    registry.register(agent("a"), [svc("shop/1/web"), svc("shop/2/api")], session="s", now=10.0)
    registry.register(agent("a"), [svc("shop/1/web")], session="s2", now=11.0)
    return registry


def test_every_entry_links_to_the_one_before_and_the_chain_verifies(logged: RegistryWriter) -> None:
    rows = [dict(r) for r in logged.conn.execute("SELECT id, prev_hash, hash FROM audit ORDER BY id")]
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["prev_hash"] == GENESIS and all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(rows))
    assert (verdict(logged).ok, verdict(logged).checked, verdict(logged).last) == (True, 5, Link(5, rows[-1]["hash"]))


@pytest.mark.parametrize(
    ("statements", "entry_id", "what"),
    [
        (["UPDATE audit SET detail = 'forged' WHERE id = 3"], 3, "it was changed after it was written"),
        (["UPDATE audit SET time = 0 WHERE id = 2"], 2, "it was changed after it was written"),
        (["DELETE FROM audit WHERE id = 2"], 3, "an entry before it was deleted, inserted or moved"),
        (  # entries 2 and 3 swapped, with their hashes: the order is what the links record
            [
                "UPDATE audit SET id = -2 WHERE id = 2",
                "UPDATE audit SET id = 2 WHERE id = 3",
                "UPDATE audit SET id = 3 WHERE id = -2",
            ],
            2,
            "an entry before it was deleted, inserted or moved",
        ),
    ],
    ids=["update-detail", "update-time", "delete", "reorder"],
)
def test_verify_names_the_first_tampered_entry(
    logged: RegistryWriter, statements: list[str], entry_id: int, what: str
) -> None:
    tamper(logged, *statements)
    broken = verdict(logged).broken
    assert broken is not None and (broken.entry_id, broken.what.rsplit(": ", 1)[-1]) == (entry_id, what)


def test_the_database_refuses_an_entry_that_does_not_link_to_the_last(logged: RegistryWriter) -> None:
    with contextlib.closing(sqlite3.connect(logged.path)) as db:
        for values in ("(99, 1.0, 'auth', 'x', '0', '0')", "(6, 1.0, 'auth', 'x', 'wrong', 'forged')"):
            with pytest.raises(sqlite3.IntegrityError, match="must link to the last one"):
                db.execute(f"INSERT INTO audit (id, time, kind, action, prev_hash, hash) VALUES {values}")


def test_pruning_leaves_a_checkpoint_the_chain_verifies_from(logged: RegistryWriter) -> None:
    last_pruned = logged.conn.execute("SELECT hash FROM audit WHERE id = 3").fetchone()[0]
    assert logged.prune_audit(now=11.5, retention_s=1.0) == 3  # the entries of t=10
    reader = RegistryReader(logged.path)
    try:
        result, start = reader.audit_chain()
    finally:
        reader.close()
    assert start == Link(3, last_pruned)
    assert (result.ok, result.checked) == (True, 3)  # two of t=11, and the pruning itself
    tamper(logged, "DELETE FROM audit WHERE id = 4")  # the first entry after the checkpoint
    broken = verdict(logged).broken
    assert broken is not None and broken.entry_id == 5 and "the checkpoint (entry 3" in broken.what


def test_the_cut_off_only_moves_forward_and_never_past_the_databases_clock(logged: RegistryWriter) -> None:
    logged.prune_audit(now=11.5, retention_s=1.0)
    db = sqlite3.connect(logged.path)
    for statement in (
        "UPDATE audit_retention SET before = 0",  # back: would make pruned history look current
        f"UPDATE audit_retention SET before = {time.time() + 86400}",  # past now: would unguard what comes
        "UPDATE audit_retention SET last_id = 6, last_hash = 'forged'",  # a checkpoint no entry has
        "UPDATE audit_retention SET last_id = 0",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="only moves forward, never past now"):
            db.execute(statement)
    with pytest.raises(sqlite3.IntegrityError, match="cut-off"):
        db.execute("DELETE FROM audit_retention")
    with pytest.raises(sqlite3.IntegrityError, match="cut-off"):
        db.execute(f"INSERT OR REPLACE INTO audit_retention VALUES (1, 0, 0, '{GENESIS}')")
    db.close()


def test_an_entry_written_after_a_prune_cannot_be_deleted_whatever_its_time(logged: RegistryWriter) -> None:
    """A prune with a clock far ahead, then the clock back: the new entries are older than the cut-off."""
    logged.prune_audit(now=time.time(), retention_s=1.0)
    logged.register(agent("b"), [], session="t", now=20.0)
    db = sqlite3.connect(logged.path)
    with pytest.raises(sqlite3.IntegrityError, match="only entries past the retention period"):
        db.execute("DELETE FROM audit WHERE action = 'agent.registered'")
    db.close()
    assert logged.prune_audit(now=time.time(), retention_s=1.0) == 0


def test_an_agents_clock_decides_neither_order_nor_retention(registry: RegistryWriter) -> None:
    day = 86400.0
    registry.register(agent("a"), [], session="s", now=9 * day)
    event = AuditEntry(time=0.0, agent_time=0.0, kind=AuditKind.DISCOVERY, action="added")  # an agent in 1970
    registry.apply("a", sequence=1, upserts=[], removed=[], now=9 * day, events=[event])
    assert registry.prune_audit(now=10 * day, retention_s=7 * day) == 0
    assert [(r["action"], r["time"], r["agent_time"]) for r in query(registry)] == [
        ("agent.registered", 9 * day, 0.0),
        ("added", 9 * day, 0.0),
    ]


def test_the_previous_releases_log_is_chained_when_migrated_and_keeps_verifying(tmp_path: Path) -> None:
    path = tmp_path / "colony.db"
    shutil.copyfile(Path(__file__).parent / "fixtures" / "colony-a8a58de.db", path)
    registry = RegistryWriter(path)
    try:
        registry.register(agent("b"), [], session="t", now=2000.0)
        result = verdict(registry)
    finally:
        registry.close()
    assert (result.ok, result.checked) == (True, 4)  # the three the old release wrote, and the new one


def test_coral_audit_verify_prints_the_anchor_and_exits_1_naming_the_break(
    logged: RegistryWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "verify", "--db", str(logged.path)]) == 0
    anchor = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("anchor: "))
    assert anchor.startswith("anchor: 5:")
    assert main(["audit", "verify", "--db", str(logged.path), "--anchor", anchor.removeprefix("anchor: ")]) == 0
    tamper(logged, "DELETE FROM audit WHERE id = 5")  # the end cut off: only the anchor tells
    assert main(["audit", "verify", "--db", str(logged.path), "--anchor", anchor.removeprefix("anchor: ")]) == 1
    assert "entries were removed from the end" in capsys.readouterr().out
    tamper_more = "UPDATE audit SET actor = 'someone else' WHERE id = 1"
    with contextlib.closing(sqlite3.connect(logged.path)) as db, db:
        db.execute(tamper_more)
    assert main(["audit", "verify", "--db", str(logged.path)]) == 1
    assert "BROKEN at entry 1: its fields hash to" in capsys.readouterr().out
