"""Table ``audit``: the colony's append-only audit log (and ``audit_retention``, its cut-off).

Every registration and deregistration (of an agent and of each service),
every discovery event an agent reports, agent state changes, operations and
refused callers land here, written in the same transaction as the registry
change they describe. Triggers (``schema.py``) make the table append-only:
an UPDATE fails, whoever tries it, and so does a DELETE of any entry newer
than the retention cut-off (``audit_retention.before``, 0 unless the colony
runs with ``--audit-retention``). Pruning moves the cut-off, deletes what
lies before it and records itself in the log. Auditors read it with
``coral audit`` or ``sqlite-utils rows colony.db audit``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from coral_colony.model import DEFAULT_AUDIT_LIMIT, AuditEntry, AuditKind, AuditQuery, AuditTally, LoggedEntry

AUDIT_COLUMNS: dict[str, type] = {
    "time": float,
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
}  # and "id", the primary key the log numbers entries with
AGENT_REGISTERED = "agent.registered"  # the action of an agent's (re-)registration
_INSERT = f"INSERT INTO audit ({', '.join(AUDIT_COLUMNS)}) VALUES ({', '.join(':' + c for c in AUDIT_COLUMNS)})"


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
        ),
    )


def append(conn: sqlite3.Connection, entries: Iterable[AuditEntry]) -> int:
    """Inside the caller's transaction; how many were appended."""
    rows = [_row(e) for e in entries]
    if rows:
        conn.executemany(_INSERT, rows)
    return len(rows)


def prune(conn: sqlite3.Connection, *, now: float, retention_s: float) -> int:
    """Delete entries older than ``retention_s`` and log that it did (the caller holds the transaction)."""
    before = now - retention_s
    conn.execute("UPDATE audit_retention SET before = max(before, ?) WHERE id = 1", [before])
    deleted = int(conn.execute("DELETE FROM audit WHERE time < ?", [before]).rowcount)
    if deleted:
        append(
            conn,
            [
                AuditEntry(
                    time=now,
                    kind=AuditKind.RETENTION,
                    action="audit.pruned",
                    actor="colony",
                    detail=f"{deleted} entries older than {retention_s / 86400:g} days deleted",
                )
            ],
        )
    return deleted


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


def select(conn: sqlite3.Connection, query: AuditQuery) -> list[LoggedEntry]:
    """The newest ``limit`` entries matching, oldest first."""
    where: list[str] = ["time >= ?"]
    params: list[object] = [query.since]
    if query.node:
        where.append("node_name = ?")
        params.append(query.node)
    if query.kind:
        where.append("kind = ?")
        params.append(query.kind)
    cursor = conn.execute(
        f"SELECT * FROM (SELECT * FROM audit WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?) ORDER BY id",
        [*params, query.limit or DEFAULT_AUDIT_LIMIT],
    )
    return [_logged(r) for r in cursor]
