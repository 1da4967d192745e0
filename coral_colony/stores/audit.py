"""Table ``audit``: the colony's append-only audit log, a hash chain (and ``audit_retention``, its cut-off).

Every registration and deregistration (of an agent and of each service),
every discovery event an agent reports, agent state changes, operations and
refused callers land here, written in the same transaction as the registry
change they describe. ``time`` is the colony's clock when it wrote the entry:
it orders the log and decides retention; an entry an agent reported keeps the
agent's own time beside it (``agent_time``), which decides nothing.

Each entry carries the hash of the one before it (``prev_hash``) and its own
(``hash``, ``coral_base.hash_chain``): ``append`` numbers and chains what it
writes. Triggers (``schema.py``) keep the log append-only: an UPDATE fails,
whoever tries it; an INSERT that does not link to the last entry fails; a
DELETE fails unless the entry is at or before the checkpoint and older than
the cut-off. Pruning deletes a prefix of the chain and moves the cut-off
(``audit_retention``: ``before``, and the checkpoint ``last_id``/``last_hash``,
the last entry pruned, which the chain continues from); the cut-off only moves
forward and never past the database's own clock. Auditors read the log with
``coral audit`` or ``sqlite-utils rows colony.db audit`` and check it with
``coral audit verify`` (docs/audit.md).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from types import MappingProxyType

from coral_base.hash_chain import ChainColumns, Link, Row, Verdict, rows_of, seal, verify
from coral_colony.model import DEFAULT_AUDIT_LIMIT, AuditEntry, AuditKind, AuditQuery, AuditTally, LoggedEntry

# What each entry's hash covers, in the columns' types. Never changed, not even by a new column: every
# chain already written was hashed over exactly these (the migration that chained older files reads them too).
CHAINED_COLUMNS: ChainColumns = MappingProxyType(
    {
        "id": int,
        "time": float,  # the colony's clock when it wrote the entry
        "kind": str,  # AuditKind
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
        "agent_time": float,  # the agent's clock, for what an agent reported (schema version 2)
    }
)
ENTRY_COLUMNS: dict[str, type] = {c: t for c, t in CHAINED_COLUMNS.items() if c != "id"}  # an entry's fields
AUDIT_COLUMNS: dict[str, type] = {**ENTRY_COLUMNS, "prev_hash": str, "hash": str}  # and "id", the primary key
_INSERT = (
    f"INSERT INTO audit (id, {', '.join(AUDIT_COLUMNS)}) VALUES (:id, {', '.join(':' + c for c in AUDIT_COLUMNS)})"
)
AGENT_REGISTERED = "agent.registered"  # the action of an agent's (re-)registration


def _row(entry: AuditEntry) -> dict[str, object]:
    return {
        "time": entry.time,
        "kind": entry.kind.value,
        "action": entry.action,
        "actor": entry.actor,
        "agent_id": entry.agent_id,
        "node_name": entry.node_name,
        "namespace": entry.namespace,
        "pod_name": entry.pod_name,
        "service_name": entry.service_name,
        "service_key": entry.service_key,
        "provenance": entry.provenance,
        "detail": entry.detail,
        "agent_time": entry.agent_time,
    }


def _logged(row: sqlite3.Row) -> LoggedEntry:
    return LoggedEntry(
        id=int(row["id"]),
        entry=AuditEntry(
            time=row["time"],
            kind=AuditKind(row["kind"]),
            action=row["action"] or "",
            actor=row["actor"] or "",
            agent_id=row["agent_id"] or "",
            node_name=row["node_name"] or "",
            namespace=row["namespace"] or "",
            pod_name=row["pod_name"] or "",
            service_name=row["service_name"] or "",
            service_key=row["service_key"] or "",
            provenance=row["provenance"] or "",
            detail=row["detail"] or "",
            agent_time=row["agent_time"] or 0.0,
        ),
    )


def checkpoint(conn: sqlite3.Connection) -> Link:
    """Where the chain starts: the last entry pruned (``GENESIS`` at id 0 when none was)."""
    row = conn.execute("SELECT last_id, last_hash FROM audit_retention WHERE id = 1").fetchone()
    return Link(int(row[0]), str(row[1]))


def last_link(conn: sqlite3.Connection) -> Link:
    """The entry the next one links to: the newest, or the checkpoint when pruning left none."""
    row = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    return Link(int(row[0]), str(row[1])) if row is not None else checkpoint(conn)


def append(conn: sqlite3.Connection, entries: Iterable[AuditEntry]) -> int:
    """Inside the caller's transaction (the writer's, the only one): number, chain and append; how many."""
    rows = [_row(e) for e in entries]
    if rows:
        conn.executemany(_INSERT, seal(rows, after=last_link(conn), columns=CHAINED_COLUMNS))
    return len(rows)


def prune(conn: sqlite3.Connection, *, now: float, retention_s: float) -> int:
    """Delete the oldest entries, those before ``now - retention_s``, and log that it did (the caller holds
    the transaction); how many.

    What goes is a prefix of the chain, up to the first entry the retention keeps (an entry written
    after a backward clock step waits for those before it), so the rest still verifies from the
    checkpoint: the id and hash of the last entry pruned, recorded with the new cut-off before
    anything is deleted. The cut-off never moves back.
    """
    if not retention_s > 0:
        raise ValueError(f"an audit retention must be a positive number of seconds, not {retention_s!r}")
    current = conn.execute("SELECT before FROM audit_retention WHERE id = 1").fetchone()
    before = max(now - retention_s, float(current[0]))
    kept = conn.execute("SELECT min(id) FROM audit WHERE time >= ?", [before]).fetchone()[0]
    last = conn.execute(
        "SELECT id, hash FROM audit WHERE id < ? ORDER BY id DESC LIMIT 1",
        [kept if kept is not None else 1 << 62],
    ).fetchone()
    if last is None:
        return 0
    pruned = Link(int(last[0]), str(last[1]))
    conn.execute(
        "UPDATE audit_retention SET before = ?, last_id = ?, last_hash = ? WHERE id = 1",
        [before, pruned.id, pruned.hash],
    )
    deleted = int(conn.execute("DELETE FROM audit WHERE id <= ?", [pruned.id]).rowcount)
    append(
        conn,
        [
            AuditEntry(
                time=now,
                kind=AuditKind.RETENTION,
                action="audit.pruned",
                actor="colony",
                detail=f"{deleted} entries older than {retention_s / 86400:g} days deleted; "
                f"the chain continues from entry {pruned.id} (hash {pruned.hash})",
            )
        ],
    )
    return deleted


def chained_rows(conn: sqlite3.Connection) -> Iterator[Row]:
    """Every entry in id order, as the chain covers it (streamed: the log may be large)."""
    return rows_of(conn, "audit", ["id", *AUDIT_COLUMNS])


def check(conn: sqlite3.Connection) -> Verdict:
    """The chain from the checkpoint to the newest entry, checked (``coral audit verify``)."""
    return verify(chained_rows(conn), start=checkpoint(conn), columns=CHAINED_COLUMNS)


def hash_of(conn: sqlite3.Connection, entry_id: int) -> str | None:
    row = conn.execute("SELECT hash FROM audit WHERE id = ?", [entry_id]).fetchone()
    return None if row is None else str(row[0])


def tally(conn: sqlite3.Connection, *, after_id: int) -> AuditTally:
    """The entries appended after ``after_id``, counted (an id range: the primary key's, however long the log)."""
    rows = conn.execute(
        "SELECT kind, action, CASE WHEN kind = ? AND json_valid(detail) THEN json_extract(detail, '$.outcome') END,"
        " count(*), max(id) FROM audit WHERE id > ? GROUP BY 1, 2, 3",
        [AuditKind.OPERATION.value, after_id],
    ).fetchall()
    by_kind: dict[AuditKind, int] = {}
    operations: dict[tuple[str, str], int] = {}
    registrations, last_id = 0, after_id
    for kind_word, action, outcome, count, newest in rows:
        kind = AuditKind(kind_word)
        by_kind[kind] = by_kind.get(kind, 0) + count
        last_id = max(last_id, newest)
        if kind is AuditKind.REGISTRATION and action == AGENT_REGISTERED:
            registrations += count
        elif kind is AuditKind.OPERATION:
            operations[(action, outcome or "")] = operations.get((action, outcome or ""), 0) + count
    return AuditTally(last_id=last_id, by_kind=by_kind, registrations=registrations, operations=operations)


def last_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(id), 0) FROM audit").fetchone()[0])


def _matching(query: AuditQuery) -> tuple[list[str], list[object]]:
    where: list[str] = ["time >= ?"]
    params: list[object] = [query.since]
    if query.node:
        where.append("node_name = ?")
        params.append(query.node)
    if query.kind:
        where.append("kind = ?")
        params.append(query.kind)
    return where, params


def window(conn: sqlite3.Connection, query: AuditQuery) -> tuple[int, int]:
    """The ids that bound the newest ``limit`` entries matching: (after, up to and including)."""
    where, params = _matching(query)
    matching = f"FROM audit WHERE {' AND '.join(where)}"
    newest = conn.execute(f"SELECT max(id) {matching}", params).fetchone()[0]
    below = conn.execute(
        f"SELECT id {matching} ORDER BY id DESC LIMIT 1 OFFSET ?", [*params, query.limit or DEFAULT_AUDIT_LIMIT]
    ).fetchone()
    return (int(below[0]) if below else 0), int(newest or 0)


def page(conn: sqlite3.Connection, query: AuditQuery, *, after: int, upto: int, size: int) -> list[LoggedEntry]:
    """Up to ``size`` entries matching with ids in (``after``, ``upto``], oldest first."""
    where, params = _matching(query)
    cursor = conn.execute(
        f"SELECT * FROM audit WHERE {' AND '.join(where)} AND id > ? AND id <= ? ORDER BY id LIMIT ?",
        [*params, after, upto, size],
    )
    return [_logged(r) for r in cursor]


def select(conn: sqlite3.Connection, query: AuditQuery) -> list[LoggedEntry]:
    """The newest ``limit`` entries matching, oldest first."""
    where, params = _matching(query)
    cursor = conn.execute(
        f"SELECT * FROM (SELECT * FROM audit WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?) ORDER BY id",
        [*params, query.limit or DEFAULT_AUDIT_LIMIT],
    )
    return [_logged(r) for r in cursor]
