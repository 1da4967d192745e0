"""The cache's numbered migrations: a file at any earlier version opens and reaches this code's version
(through the writer; through a reader, in memory only), a file from a newer agent is refused and left as
it is, and a migration that fails leaves the file at the version it was."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from coral_base.sqlite_tables import Database
from cri_agent.cache import migrations
from cri_agent.cache.migrations import MIGRATIONS, SCHEMA_VERSION, Migration, migrate
from cri_agent.cache.reader import CacheReader
from cri_agent.cache.services import SERVICE_COLUMNS
from cri_agent.cache.writer import Cache, CacheContents, CacheWriter
from cri_agent.cache_keeper import CacheKeeper
from cri_agent.errors import CacheError
from cri_agent.model import HealthState

FIXTURE = Path(__file__).parent / "fixtures" / "agent-a8a58de.db"
TABLES = {"meta", "services", "pods", "discovery_events", "operations", "health", "conditions", "chain_checkpoints"}


def at_version(path: Path, version: int, *, recorded: int | None = None) -> Path:
    """A file as an agent of schema ``version`` left it, with one service and one pod; ``recorded`` is
    the version it says it is at (agents before numbered migrations all said 1)."""
    with sqlite3.connect(path) as conn:
        migrate(Database(conn), path, to=version)
        conn.execute(
            "INSERT INTO services (key, name, namespace, pod_name, pod_uid, container, port, protocol, service_type,"
            " provenance, overridden_fields, health_endpoint, health_interval_s, pod_ip, node_name, labels, first_seen,"
            " last_seen) VALUES ('shop/u/web/80', 'web', 'shop', 'web-0', 'u', 'web', 80, 'TCP', 'http', 'discovered',"
            " '[]', '', 10.0, '10.0.0.1', 'node-a', '{}', 1.0, 1.0)"
        )
        conn.execute(
            "INSERT INTO pods (uid, namespace, name, included, reason, errors, first_seen, last_seen)"
            " VALUES ('u', 'shop', 'web-0', 1, 'included', '[]', 1.0, 1.0)"
        )
        if version >= 2:
            conn.execute("INSERT INTO health (key, state, since) VALUES ('shop/u/web/80', 'healthy', 5.0)")
        if recorded is not None:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(recorded)])
    conn.close()
    return path


def recorded_version(path: Path) -> str:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        value: str = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    conn.close()
    return value


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))


def test_a_new_file_holds_the_tables_and_columns_the_table_families_read_and_write(tmp_path: Path) -> None:
    Cache(tmp_path / "agent.db").close()
    with sqlite3.connect(tmp_path / "agent.db") as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        columns = tuple(row[1] for row in conn.execute("PRAGMA table_info(services)"))
        user_version = conn.execute("PRAGMA user_version").fetchone()[0]
    conn.close()
    # workload comes last in a new file, as in every file migrated to it: columns are read by name
    assert (tables, sorted(columns), user_version) == (TABLES, sorted(SERVICE_COLUMNS), 0)
    assert recorded_version(tmp_path / "agent.db") == str(SCHEMA_VERSION)


@pytest.mark.parametrize(
    ("version", "recorded"),
    [(1, None), (2, None), (2, 1)],
    ids=["1: the original tables", "2: with health", "health, recorded as 1 by an agent before numbered migrations"],
)
def test_a_file_at_an_earlier_version_is_migrated_by_the_writer_and_keeps_its_rows(
    tmp_path: Path, version: int, recorded: int | None
) -> None:
    path = at_version(tmp_path / "agent.db", version, recorded=recorded)
    cache = Cache(path)
    [service] = cache.load_known().services.values()
    assert (service.name, service.workload, list(cache.load_known().pods)) == ("web", "", ["u"])
    cache.close()
    assert recorded_version(path) == str(SCHEMA_VERSION)
    with CacheReader(path) as reader:
        [row] = reader.service_rows()
    assert row.health == (HealthState.HEALTHY if version >= 2 else HealthState.UNKNOWN), "health rows are kept"


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_a_reader_migrates_an_older_file_in_memory_and_leaves_the_file_as_it_is(tmp_path: Path, version: int) -> None:
    path = at_version(tmp_path / "agent.db", version)
    before = digest(path)
    with CacheReader(path) as reader:
        [service] = reader.services()
        assert (service.name, service.workload, reader.meta()["schema_version"]) == ("web", "", str(version))
    assert (digest(path), recorded_version(path)) == (before, str(version))


def newer(tmp_path: Path) -> Path:
    """The old release's cache as an agent of the next schema version would leave it."""
    path = tmp_path / "agent.db"
    shutil.copyfile(FIXTURE, path)
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE services ADD COLUMN future TEXT")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    conn.close()
    return path


def test_a_file_from_a_newer_agent_is_refused_by_the_writer_and_the_readers_and_left_as_it_is(tmp_path: Path) -> None:
    path = newer(tmp_path)
    before = digest(path)
    refusal = f"schema version {SCHEMA_VERSION + 1}, newer than this agent's {SCHEMA_VERSION}"
    with pytest.raises(CacheError, match=refusal):
        Cache(path)
    with pytest.raises(CacheError, match=refusal):
        CacheReader(path)
    wal = path.with_name(path.name + "-wal")  # a read-only connection leaves an empty one, as sqlite3's would
    assert (digest(path), wal.stat().st_size if wal.exists() else 0) == (before, 0)
    assert recorded_version(path) == str(SCHEMA_VERSION + 1)


def test_an_agent_on_a_file_from_a_newer_agent_runs_from_memory_and_says_why(tmp_path: Path) -> None:
    path = newer(tmp_path)
    before = digest(path)

    async def scenario() -> tuple[list[tuple[bool, str]], int]:
        states: list[tuple[bool, str]] = []

        async def state(ok: bool, reason: str) -> None:
            states.append((ok, reason))

        keeper = CacheKeeper(
            CacheWriter(path), node_name="node-a", contents=lambda: CacheContents({}, {}, [], [], {}), on_state=state
        )
        known = await keeper.open()
        await keeper.writer.close()
        return states, len(known.services)

    states, services = asyncio.run(scenario())
    assert [ok for ok, _ in states] == [False] and "newer than this agent's" in states[0][1]
    assert (services, digest(path)) == (0, before)


def test_a_migration_that_fails_leaves_the_file_at_its_version_with_none_of_its_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "agent.db"
    Cache(path).close()

    def half_done(db: Database) -> None:
        db.table("services").add_column("half", str)
        db.execute("UPDATE services SET half = 'x'")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(migrations, "MIGRATIONS", (*MIGRATIONS, Migration(SCHEMA_VERSION + 1, "fails", half_done)))
    with sqlite3.connect(path) as conn, pytest.raises(sqlite3.OperationalError):
        migrate(Database(conn), path, to=SCHEMA_VERSION + 1)
    conn.close()
    with sqlite3.connect(path) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(services)")}
    conn.close()
    assert ("half" in columns, recorded_version(path)) == (False, str(SCHEMA_VERSION))


def test_a_reader_refuses_a_file_that_records_no_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    conn.close()
    with pytest.raises(
        CacheError, match="records no schema version: it is not an agent's cache, or one its agent is creating"
    ):
        CacheReader(path)
