"""The registry file's schema: numbered migrations recorded in the file, applied once, all or nothing."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from coral_colony.stores import schema
from coral_colony.stores.agents import AGENT_COLUMNS
from coral_colony.stores.audit import AUDIT_COLUMNS
from coral_colony.stores.schema import MIGRATIONS, SCHEMA_VERSION, Migration, RegistryFileError, version_of
from coral_colony.stores.services import SERVICE_COLUMNS
from coral_colony.stores.writer import RegistryWriter

FIXTURES = Path(__file__).parent / "fixtures"


def layout(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Every table's columns and types, and the indexes and triggers, as SQLite describes them."""
    with sqlite3.connect(path) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        tables = {name: [(r[1], r[2]) for r in db.execute(f"PRAGMA table_info([{name}])")] for name in names}
        others = db.execute("SELECT type, name FROM sqlite_master WHERE type != 'table' ORDER BY name").fetchall()
    return {**tables, "(indexes and triggers)": [(str(t), str(n)) for t, n in others]}


def test_migrations_are_numbered_one_by_one_and_the_last_is_the_schema_version() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert MIGRATIONS[-1].version == SCHEMA_VERSION


def test_a_new_file_has_the_columns_the_stores_read_and_write_and_records_its_version(tmp_path: Path) -> None:
    writer = RegistryWriter(tmp_path / "colony.db")
    assert version_of(writer.conn) == SCHEMA_VERSION
    writer.close()
    tables = layout(tmp_path / "colony.db")
    assert [c for c, _ in tables["agents"]] == list(AGENT_COLUMNS)
    assert [c for c, _ in tables["services"]] == list(SERVICE_COLUMNS)
    assert [c for c, _ in tables["audit"]] == ["id", *AUDIT_COLUMNS]


def test_the_previous_releases_registry_migrates_to_what_a_new_file_is(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    shutil.copyfile(FIXTURES / "colony-a8a58de.db", old)
    RegistryWriter(old).close()
    RegistryWriter(tmp_path / "new.db").close()
    assert layout(old) == layout(tmp_path / "new.db")
    with sqlite3.connect(old) as db:
        assert version_of(db) == SCHEMA_VERSION


def test_an_added_migration_runs_once_and_moves_the_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "colony.db"
    RegistryWriter(path).close()
    runs: list[int] = []

    def add_column(conn: sqlite3.Connection) -> None:
        runs.append(1)
        conn.execute("ALTER TABLE services ADD COLUMN [zone] TEXT")

    following = Migration(SCHEMA_VERSION + 1, "services.zone", add_column)
    monkeypatch.setattr(schema, "MIGRATIONS", (*MIGRATIONS, following))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", following.version)
    for _ in range(2):
        RegistryWriter(path).close()
    assert runs == [1]
    assert ("zone", "TEXT") in layout(path)["services"]
    with sqlite3.connect(path) as db:
        assert version_of(db) == following.version


def test_a_failing_migration_leaves_the_file_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "colony.db"
    RegistryWriter(path).close()
    before = layout(path)

    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE services ADD COLUMN [zone] TEXT")
        raise sqlite3.OperationalError("disk full")

    monkeypatch.setattr(schema, "MIGRATIONS", (*MIGRATIONS, Migration(SCHEMA_VERSION + 1, "half", half_done)))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(sqlite3.OperationalError, match="disk full"):
        RegistryWriter(path)
    assert layout(path) == before
    with sqlite3.connect(path) as db:
        assert version_of(db) == SCHEMA_VERSION


def test_a_file_from_a_newer_colony_is_refused_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "colony.db"
    RegistryWriter(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RegistryFileError, match="newer than this colony's"):
        RegistryWriter(path)
