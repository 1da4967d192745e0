"""The agent cache's hash chains (discovery_events, operations): what the writer appends links to the row
before it, pruning leaves a checkpoint, and ``coral agent events --verify`` names the first tampered row."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from coral_cli import main
from cri_agent.cache.reader import CacheReader
from cri_agent.cache.writer import Cache
from tests.test_cache import apply, reconciliation, service

FIXTURES = Path(__file__).parent / "fixtures"


def operation(n: int) -> dict[str, object]:
    return {
        "started_at": 1000.0 + n,
        "finished_at": 1001.5 + n,
        "operator": "alice",
        "action": "sample",
        "node_name": "node-a",
        "namespace": "shop",
        "pod_name": "web-0",
        "service": "web",
        "parameters": json.dumps({"duration_s": 1}),
        "duration_s": 1.5,
        "bytes": 10 * n,
        "packets": n,
        "outcome": "ok",
        "error": "",
    }


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    """Five discovery events and three operations."""
    written = Cache(tmp_path / "agent.db")
    apply(written, reconciliation([service()], events=5))
    for n in range(3):
        written.record_operation(operation(n), now=n, retention_rows=10_000, retention_days=90)
    return written


def broken(path: Path) -> dict[str, str | None]:
    with CacheReader(path) as reader:
        return {table: (str(v.broken) if v.broken else None) for table, v, _ in reader.chains()}


def tamper(path: Path, statement: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for one in statement.split(";"):
            db.execute(one)


def test_both_tables_verify_as_written(cache: Cache) -> None:
    with CacheReader(cache.path) as reader:
        assert [(table, v.ok, v.checked) for table, v, _ in reader.chains()] == [
            ("discovery_events", True, 5),
            ("operations", True, 3),
        ]


@pytest.mark.parametrize(
    ("statement", "table", "first_break"),
    [
        ("UPDATE discovery_events SET reason = 'forged' WHERE id = 2", "discovery_events", "entry 2: its fields hash"),
        ("DELETE FROM discovery_events WHERE id = 3", "discovery_events", "entry 4: it links to"),
        ("UPDATE operations SET outcome = 'refused' WHERE id = 1", "operations", "entry 1: its fields hash"),
        (
            "UPDATE operations SET id = CASE id WHEN 2 THEN 3 WHEN 3 THEN 2 END + 100 WHERE id IN (2, 3);"
            " UPDATE operations SET id = id - 100 WHERE id > 100",
            "operations",
            "entry 2: it links to",
        ),
    ],
    ids=["update", "delete", "update-operation", "reorder"],
)
def test_verify_names_the_first_tampered_row(cache: Cache, statement: str, table: str, first_break: str) -> None:
    tamper(cache.path, statement)
    found = broken(cache.path)
    assert (found[table] or "").startswith(first_break)
    assert [t for t, b in found.items() if b] == [table]


def test_trimming_leaves_a_checkpoint_and_the_rest_still_verifies(cache: Cache) -> None:
    last_pruned = cache.db.execute("SELECT hash FROM discovery_events WHERE id = 3").fetchone()[0]
    apply(cache, reconciliation([service()], events=1), rows=3)  # six events, three kept
    rows = cache.db.execute("SELECT chained, last_id, hash FROM chain_checkpoints").fetchall()
    assert [tuple(r) for r in rows] == [("discovery_events", 3, last_pruned)]
    assert broken(cache.path) == {"discovery_events": None, "operations": None}
    apply(cache, reconciliation([service()], events=2), now=1000.0 + 31 * 86400)  # the others are too old now
    with CacheReader(cache.path) as reader:
        assert [e.id for e in reader.events()] == [7, 8]  # numbered on after the checkpoint
    assert broken(cache.path) == {"discovery_events": None, "operations": None}


@pytest.mark.parametrize("fixture", ["agent-221585a.db", "agent-af028cd.db", "agent-a8a58de.db"])
def test_an_older_agents_cache_is_chained_when_its_agent_opens_it(tmp_path: Path, fixture: str) -> None:
    path = tmp_path / "agent.db"
    shutil.copyfile(FIXTURES / fixture, path)
    with contextlib.closing(sqlite3.connect(path)) as db:
        before = db.execute("SELECT count(*) FROM discovery_events").fetchone()[0]
    opened = Cache(path)
    apply(opened, reconciliation([service()], events=1), now=2000.0)
    opened.close()
    with CacheReader(path) as reader:
        assert [(table, v.ok) for table, v, _ in reader.chains()] == [("discovery_events", True), ("operations", True)]
        assert reader.chains()[0][1].checked == before + 1


def test_coral_agent_events_verify_exits_1_and_names_the_break(
    cache: Cache, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["agent", "events", "--cache", str(cache.path), "--verify"]) == 0
    assert "discovery_events: the chain holds, 5 entries" in capsys.readouterr().out
    tamper(cache.path, "UPDATE discovery_events SET at = 0 WHERE id = 4")
    assert main(["agent", "events", "--cache", str(cache.path), "--verify"]) == 1
    assert "discovery_events: BROKEN at entry 4: its fields hash to" in capsys.readouterr().out
