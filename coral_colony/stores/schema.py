"""The registry file's schema: numbered migrations, and the two ways to open the file.

The file records its schema version in ``PRAGMA user_version`` (0 for a
file written before versions were kept, up to a8a58de). The writer applies
each migration above the file's version in its own transaction, together
with the new version, so a file is at one version or the next, never in
between. Readers (the operator API, the status page) run no DDL: they open
the file read-only and refuse one the writer has not migrated yet.

Adding a column: append a ``Migration`` (the next number) that adds it, and
add it to the table module's column list (``stores/services.py``...);
``tests/test_colony_schema.py`` checks that the two agree. A migration never
changes once released: ``_baseline`` keeps its own column lists for that
reason. Tables and columns are never renamed: auditors read them
(docs/colony.md).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import sqlite_utils
from sqlite_utils.db import Table

from coral_base.errors import CoralError
from coral_base.hash_chain import START, rechain, rows_of
from coral_colony.stores.audit import CHAINED_COLUMNS


class RegistryFileError(CoralError):
    """The registry file cannot be read by this colony as it is."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    why: str
    apply: Callable[[sqlite3.Connection], None]


# The services table as the baseline (migration 1) made it: never changed, later columns come by migrations.
_SERVICES_V1: dict[str, type] = {
    "key": str,
    "agent_id": str,
    "component_name": str,
    "port": int,
    "protocol": str,
    "health_endpoint": str,
    "service_type": str,
    "provenance": str,
    "namespace": str,
    "pod_name": str,
    "pod_uid": str,
    "container_name": str,
    "pod_ip": str,
    "node_name": str,
    "labels": str,
    "node_labels": str,
    "overridden_fields": str,
    "workload": str,
    "health_state": str,
    "health_error": str,
    "health_latency_ms": float,
    "health_since": float,
    "health_interval_ms": int,
    "stale": int,
    "first_seen": float,
    "last_seen": float,
}


def _baseline(conn: sqlite3.Connection) -> None:
    """Creates the tables, or completes a file an unversioned colony wrote (every step is idempotent).

    sqlite-utils writes the tables as the unversioned releases did, so that
    a new file and an old one read the same to an auditor's tools.
    """
    db = sqlite_utils.Database(conn)

    def table(name: str, columns: dict[str, type], pk: str) -> Table:
        created = cast(Table, db[name])
        created.create(columns, pk=pk, if_not_exists=True)
        existing = created.columns_dict
        for column, type_ in columns.items():  # a file an older colony wrote: its rows read as NULL
            if column not in existing:
                created.add_column(column, type_)
        return created

    table(
        "agents",
        {
            "agent_id": str,
            "kind": str,
            "node_name": str,
            "node_labels": str,
            "version": str,
            "labels": str,
            "first_seen": float,
            "last_heartbeat": float,
            "state": str,
            "health": str,
            "session": str,
            "last_sequence": int,
        },
        "agent_id",
    )
    services = table("services", _SERVICES_V1, "key")
    services.create_index(["agent_id"], if_not_exists=True)
    services.create_index(["node_name", "namespace"], if_not_exists=True)
    audit = table(
        "audit",
        {
            "id": int,
            "time": float,
            "kind": str,
            "action": str,
            "actor": str,
            "agent_id": str,
            "node_name": str,
            "namespace": str,
            "pod_name": str,
            "service_name": str,
            "service_key": str,
            "provenance": str,
            "detail": str,
        },
        "id",
    )
    audit.create_index(["time"], if_not_exists=True)
    audit.create_index(["node_name", "time"], if_not_exists=True)
    conn.execute("CREATE TABLE IF NOT EXISTS audit_retention (id INTEGER PRIMARY KEY CHECK (id = 1), before REAL)")
    conn.execute("INSERT OR IGNORE INTO audit_retention (id, before) VALUES (1, 0)")
    conn.execute("DROP TRIGGER IF EXISTS audit_no_delete")  # an older colony refused every DELETE
    conn.execute(
        "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
        "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
    )
    conn.execute(
        "CREATE TRIGGER IF NOT EXISTS audit_delete_expired_only BEFORE DELETE ON audit "
        "WHEN OLD.time >= (SELECT before FROM audit_retention WHERE id = 1) "
        "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: only entries past the retention period "
        "can be deleted'); END"
    )


def _per_agent_services_and_enrollments(conn: sqlite3.Connection) -> None:
    """Services keyed by (agent, key), and the table of enrolled nodes.

    A key was owned by the first agent that sent it, so an agent that sent
    another node's keys first (squatting) made that node's own registration
    refuse them. Each agent now has its own rows: what it reports never
    replaces another agent's, and a pod two agents report is an ambiguity
    operators see (and operations refuse), never a silent winner. SQLite
    cannot change a primary key, so the table is rebuilt with its rows.
    """
    layout = list(conn.execute("PRAGMA table_info(services)"))
    if sorted(str(r[1]) for r in layout if r[5]) != ["agent_id", "key"]:  # not rebuilt yet
        _rebuild_services(conn, [str(r[1]) for r in layout])
    conn.execute(
        "CREATE TABLE IF NOT EXISTS enrollments ("
        "node_name TEXT PRIMARY KEY, agent_id TEXT NOT NULL, key_sha256 TEXT NOT NULL, "
        "certificate_sha256 TEXT NOT NULL, previous_certificate_sha256 TEXT NOT NULL DEFAULT '', "
        "not_after FLOAT NOT NULL, method TEXT NOT NULL, credential TEXT NOT NULL DEFAULT '', "
        "enrolled_at FLOAT NOT NULL, renewed_at FLOAT NOT NULL, "
        "revoked_at FLOAT NOT NULL DEFAULT 0, revoked_by TEXT NOT NULL DEFAULT '', "
        "wireguard_public_key TEXT NOT NULL DEFAULT '', mesh_address TEXT NOT NULL DEFAULT '')"
    )


def _rebuild_services(conn: sqlite3.Connection, columns: list[str]) -> None:
    declared = ", ".join(
        f"[{c}] {'INTEGER' if t is int else 'FLOAT' if t is float else 'TEXT'}" for c, t in _SERVICES_V1.items()
    )
    conn.execute("DROP TABLE IF EXISTS services_v2")
    conn.execute(f"CREATE TABLE services_v2 ({declared}, PRIMARY KEY (agent_id, key))")
    kept = ", ".join(f"[{c}]" for c in _SERVICES_V1 if c in columns)
    conn.execute(f"INSERT INTO services_v2 ({kept}) SELECT {kept} FROM services WHERE agent_id IS NOT NULL")
    conn.execute("DROP TABLE services")
    conn.execute("ALTER TABLE services_v2 RENAME TO services")
    conn.execute("CREATE INDEX idx_services_key ON services (key)")
    conn.execute("CREATE INDEX idx_services_node_name_namespace ON services (node_name, namespace)")


_APPEND_ONLY = "the audit log is append-only"
_CHAIN_GUARDS = (
    # An entry links to the last one (or, when pruning left none, to the checkpoint) and is numbered after it:
    # a second writer or a script cannot slip an entry into the chain, only the colony's writer appends.
    "CREATE TRIGGER audit_append_links BEFORE INSERT ON audit WHEN NEW.hash IS NULL "
    "OR NEW.prev_hash IS NOT coalesce((SELECT hash FROM audit ORDER BY id DESC LIMIT 1), "
    "(SELECT last_hash FROM audit_retention WHERE id = 1)) "
    "OR NEW.id <= coalesce((SELECT max(id) FROM audit), (SELECT last_id FROM audit_retention WHERE id = 1), 0) "
    f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}: an entry must link to the last one, by the colony''s writer'); END",
    # Only what pruning reached: at or before the checkpoint and older than the cut-off. An entry written after
    # the last prune is past the checkpoint, so a cut-off set too far (a clock far ahead) still deletes none.
    "CREATE TRIGGER audit_delete_expired_only BEFORE DELETE ON audit "
    "WHEN coalesce(OLD.id <= (SELECT last_id FROM audit_retention WHERE id = 1) "
    "AND OLD.time < (SELECT before FROM audit_retention WHERE id = 1), 0) = 0 "
    f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}: only entries past the retention period can be deleted'); END",
    # The cut-off only moves forward, never past the database's own clock (5 minutes of slack), and its
    # checkpoint names an entry the log holds, with that entry's hash.
    "CREATE TRIGGER audit_retention_forward_only BEFORE UPDATE ON audit_retention "
    "WHEN NEW.id IS NOT OLD.id OR NEW.before IS NULL OR NEW.last_id IS NULL OR NEW.last_hash IS NULL "
    "OR NEW.before < OLD.before OR NEW.last_id < OLD.last_id "
    "OR NEW.before > (julianday('now') - 2440587.5) * 86400.0 + 300 "
    "OR (NEW.last_id != OLD.last_id AND NEW.last_hash IS NOT (SELECT hash FROM audit WHERE id = NEW.last_id)) "
    "BEGIN SELECT RAISE(ABORT, 'the audit retention cut-off only moves forward, never past now, "
    "to an entry the log holds'); END",
    "CREATE TRIGGER audit_retention_kept BEFORE DELETE ON audit_retention "
    "BEGIN SELECT RAISE(ABORT, 'the audit retention cut-off is kept: it can only move forward'); END",
    "CREATE TRIGGER audit_retention_single BEFORE INSERT ON audit_retention "
    "BEGIN SELECT RAISE(ABORT, 'the audit retention cut-off is one row'); END",
)


def _chain(conn: sqlite3.Connection) -> None:
    """The audit log becomes a hash chain, and the colony's clock orders it (agents' clocks are kept beside).

    The entries a file holds are chained here, in id order, from the start (or, when entries were pruned
    before, from the first one left): the chain vouches for them from this migration on. The columns
    come last, as in every file migrated to it.
    """
    for column, type_ in (("agent_time", "FLOAT"), ("prev_hash", "TEXT"), ("hash", "TEXT")):
        conn.execute(f"ALTER TABLE audit ADD COLUMN [{column}] {type_}")
    conn.execute("ALTER TABLE audit_retention ADD COLUMN last_id INTEGER")
    conn.execute("ALTER TABLE audit_retention ADD COLUMN last_hash TEXT")
    conn.execute("UPDATE audit_retention SET last_id = 0, last_hash = ? WHERE id = 1", [START.hash])
    conn.execute("DROP TRIGGER audit_no_update")  # back below, once the existing entries are chained
    conn.execute("DROP TRIGGER audit_delete_expired_only")
    links = list(rechain(rows_of(conn, "audit", CHAINED_COLUMNS), after=START, columns=CHAINED_COLUMNS))
    conn.executemany("UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?", [(p, h, i) for i, p, h in links])
    conn.execute(
        f"CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END"
    )
    for guard in _CHAIN_GUARDS:
        conn.execute(guard)


def _unconfirmed_services(conn: sqlite3.Connection) -> None:
    """Services a registration in parts has not named yet: kept, not deleted, until its last part."""
    conn.execute("ALTER TABLE services ADD COLUMN unconfirmed INTEGER")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "agents, services and the append-only audit log with its retention cut-off", _baseline),
    Migration(2, "the audit log as a hash chain, ordered by the colony's clock; a guarded cut-off", _chain),
    Migration(3, "services keyed by (agent, key); enrolled nodes", _per_agent_services_and_enrollments),
    Migration(4, "services a registration in parts has not confirmed yet", _unconfirmed_services),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def version_of(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, *, to: int | None = None) -> int:
    """Applies the migrations the file lacks up to ``to`` (``SCHEMA_VERSION``), each with its version in one
    transaction; the version reached (tests make a file as an older release left it with a smaller ``to``)."""
    to = SCHEMA_VERSION if to is None else to
    current = version_of(conn)
    if current > SCHEMA_VERSION:
        raise RegistryFileError(
            f"the registry is at schema version {current}, newer than this colony's {SCHEMA_VERSION}: "
            "run the colony release that wrote it"
        )
    for migration in MIGRATIONS:
        if migration.version <= current or migration.version > to:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            migration.apply(conn)
            conn.execute(f"PRAGMA user_version = {int(migration.version)}")
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        current = migration.version
    return current


def open_for_writing(path: Path) -> sqlite3.Connection:
    """The writer's connection, the file created or migrated to ``SCHEMA_VERSION``.

    The file holds the audit log and the agents' session digests: it is made
    0600 (SQLite gives its -wal and -shm files the same mode) in a directory
    made 0700, and an existing file is narrowed to 0600. That happens before
    SQLite opens it: closing a descriptor of an open database would drop
    SQLite's locks.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    conn = sqlite3.connect(str(path), timeout=5.0, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    try:
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def open_for_reading(path: Path) -> sqlite3.Connection:
    """A read-only connection to a file the writer has migrated: nothing here can change it."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    version = version_of(conn)
    if version < SCHEMA_VERSION:
        conn.close()
        raise RegistryFileError(
            f"the registry {path} is at schema version {version}, this colony reads {SCHEMA_VERSION}: "
            "the colony's writer migrates it when it starts"
        )
    return conn
