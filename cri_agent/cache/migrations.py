"""The cache's schema as numbered migrations: the history of its tables, in order, never edited.

``MIGRATIONS[n - 1]`` takes a file from version n - 1 to n (version 0 is an empty file). The version a
file is at is recorded in the file, in one place: the ``meta`` row ``schema_version``, which auditors read
(docs/audit.md). ``PRAGMA user_version`` is not used and stays 0: two records could disagree.

The writer moves a file from its version to ``SCHEMA_VERSION`` in one transaction. A file recorded at a
newer version than this code knows was written by a newer agent: its tables may hold what this code would
misread or drop, so the writer and the readers refuse it, and leave it as it is.

Every release before numbered migrations recorded ``1``, whatever it had created: a file at 1 may already
hold the ``health`` table (agents since health probing) and the ``services.workload`` column (since
workloads). Migrations 2 and 3 therefore add only what is missing; from 4 on, a file's recorded version is
exact and a migration needs no such care.

A new column or table: append a migration (the next number; a shipped one is never changed), read and
write it in its table family's module, and describe it in docs/audit.md.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

from coral_base.hash_chain import START, rechain, rows_of
from coral_base.sqlite_tables import Database
from cri_agent.errors import CacheError

VERSION_KEY = "schema_version"  # the meta row that records the file's version


class Migration(NamedTuple):
    version: int  # the version a file is at once this has run
    change: str  # what it did, for whoever reads the list
    apply: Callable[[Database], None]


def _original(db: Database) -> None:
    """The tables of the first release (b0152d1), as it created them."""
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("services").create(
        {
            "key": str,
            "name": str,
            "namespace": str,
            "pod_name": str,
            "pod_uid": str,
            "container": str,
            "port": int,
            "protocol": str,
            "service_type": str,
            "provenance": str,
            "overridden_fields": str,  # JSON list
            "health_endpoint": str,
            "health_interval_s": float,
            "pod_ip": str,
            "node_name": str,
            "labels": str,  # JSON object
            "first_seen": float,
            "last_seen": float,
        },
        pk="key",
    )
    db.table("pods").create(
        {
            "uid": str,
            "namespace": str,
            "name": str,
            "included": int,
            "reason": str,
            "errors": str,  # JSON list of stable error strings
            "first_seen": float,
            "last_seen": float,
        },
        pk="uid",
    )
    db.table("discovery_events").create(
        {
            "id": int,
            "at": float,
            "kind": str,
            "namespace": str,
            "pod_name": str,
            "pod_uid": str,
            "key": str,
            "service": str,
            "reason": str,
            "fields": str,  # JSON list
            "node_name": str,
        },
        pk="id",
    )
    db.table("discovery_events").create_index(["at"])
    db.table("discovery_events").create_index(["kind"])
    db.table("operations").create(
        {
            "id": int,
            "started_at": float,
            "finished_at": float,
            "operator": str,
            "action": str,
            "node_name": str,
            "namespace": str,
            "pod_name": str,
            "service": str,
            "parameters": str,  # JSON
            "duration_s": float,
            "bytes": int,
            "packets": int,
            "outcome": str,
            "error": str,
        },
        pk="id",
    )
    db.table("conditions").create(
        {"name": str, "ok": int, "reason": str, "since": float, "updated": float},
        pk="name",
    )


def _health(db: Database) -> None:
    """Agent-side health probing (af028cd): a file recorded at 1 may have the table already."""
    db.table("health").create(
        {
            "key": str,
            "state": str,  # healthy / unhealthy / unknown
            "since": float,
            "checked_at": float,
            "latency_ms": float,
            "last_error": str,
        },
        pk="key",
    )


def _workload(db: Database) -> None:
    """Services carry their owning workload (c85e5a4): a file recorded at 1 may have the column already."""
    services = db.table("services")
    if "workload" not in services.columns():
        services.add_column("workload", str)  # "Deployment/x" from the Kubernetes API, or ""


# What each entry's hash covers (coral_base.hash_chain), in the columns' types: never changed, not even by a
# new column, since every chain already written was hashed over exactly these.
CHAINED: Mapping[str, Mapping[str, type]] = MappingProxyType(
    {
        "discovery_events": MappingProxyType(
            {
                "id": int,
                "at": float,
                "kind": str,
                "namespace": str,
                "pod_name": str,
                "pod_uid": str,
                "key": str,
                "service": str,
                "reason": str,
                "fields": str,
                "node_name": str,
            }
        ),
        "operations": MappingProxyType(
            {
                "id": int,
                "started_at": float,
                "finished_at": float,
                "operator": str,
                "action": str,
                "node_name": str,
                "namespace": str,
                "pod_name": str,
                "service": str,
                "parameters": str,
                "duration_s": float,
                "bytes": int,
                "packets": int,
                "outcome": str,
                "error": str,
            }
        ),
    }
)


def _chain(db: Database) -> None:
    """``discovery_events`` and ``operations`` become hash chains, and ``chain_checkpoints`` records, per table,
    the last entry pruned (id and hash), which the chain continues from. The rows a file holds are chained
    here, in id order, from the start: the chain vouches for them from this migration on."""
    db.table("chain_checkpoints").create({"chained": str, "last_id": int, "hash": str, "at": float}, pk="chained")
    for name, columns in CHAINED.items():
        table = db.table(name)
        table.add_column("prev_hash", str)
        table.add_column("hash", str)
        links = list(rechain(rows_of(db.conn, name, columns), after=START, columns=columns))
        db.conn.executemany(
            f"UPDATE [{name}] SET prev_hash = ?, hash = ? WHERE id = ?", [(p, h, i) for i, p, h in links]
        )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "meta, services, pods, discovery_events, operations, conditions", _original),
    Migration(2, "health: the latest probe of every service", _health),
    Migration(3, "services.workload: the pod's controlling workload", _workload),
    Migration(4, "discovery_events and operations as hash chains; chain_checkpoints", _chain),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def checked_version(conn: sqlite3.Connection, path: Path) -> int:
    """The version the file records (0 when it records none: an empty file); CacheError for a file this
    code cannot read or write, before anything touches it."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = ?", [VERSION_KEY]).fetchone()
    if row is None:
        return 0
    try:
        version = int(row[0])
    except (TypeError, ValueError):
        raise CacheError(f"cache {path} records schema version {row[0]!r}, not a number: it is left as it is") from None
    if version > SCHEMA_VERSION:
        raise CacheError(
            f"cache {path} has schema version {version}, newer than this agent's {SCHEMA_VERSION}: a newer "
            "agent wrote it, and it is left as it is; run that version, or move the file aside to start anew"
        )
    return version


def migrate(db: Database, path: Path, *, to: int = SCHEMA_VERSION) -> None:
    """Take the file from the version it records to ``to``, in one transaction, and record ``to``.

    An explicit BEGIN and COMMIT: Python's sqlite3 opens a transaction before DML only, so DDL run
    first would commit on its own, and a failure halfway would leave tables no version describes.
    IMMEDIATE takes the write lock before the version is read again, inside the transaction.
    """
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        start = checked_version(conn, path)
        pending = [m for m in MIGRATIONS if start < m.version <= to]
        for migration in pending:
            migration.apply(db)
        if pending:
            db.table("meta").upsert_all([{"key": VERSION_KEY, "value": str(to)}], pk="key")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
