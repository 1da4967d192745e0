"""The colony's audit log: one append-only SQLite table.

Every registration and deregistration (of an agent and of each service),
every discovery event an agent reports, agent state changes and refused
callers land here, written in the same transaction as the registry change
they describe. Triggers make the table append-only: an UPDATE fails,
whoever tries it, and so does a DELETE of any entry newer than the
retention cut-off (``audit_retention.before``, 0 unless the colony runs with
``--audit-retention``). Pruning moves the cut-off, deletes what lies before
it and records itself in the log. Auditors read it with ``coral audit`` or
``sqlite-utils rows colony.db audit``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

import sqlite_utils
from sqlite_utils.db import Table

AuditKind = Literal["registration", "deregistration", "discovery", "agent", "auth", "operation", "retention"]
KINDS: tuple[AuditKind, ...] = (
    "registration",
    "deregistration",
    "discovery",
    "agent",
    "auth",
    "operation",
    "retention",
)
DEFAULT_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class AuditEntry:
    time: float
    kind: AuditKind
    action: str  # service.registered, agent.unreachable, added, operator.refused...
    actor: str = ""  # the agent id or operator name that caused it ("colony" for its own clock)
    agent_id: str = ""
    node_name: str = ""
    namespace: str = ""
    pod_name: str = ""
    service_name: str = ""
    service_key: str = ""
    provenance: str = ""
    detail: str = ""


class AuditLog:
    """Writes go through the registry's connection, inside its transactions."""

    def __init__(self, db: sqlite_utils.Database, *, create: bool = True) -> None:
        self.db = db
        if create:
            self._create(db)

    @staticmethod
    def _create(db: sqlite_utils.Database) -> None:
        table = cast(Table, db["audit"])
        table.create(
            {"id": int, **{name: type_ for name, type_ in _COLUMNS.items()}},
            pk="id",
            if_not_exists=True,
        )
        table.create_index(["time"], if_not_exists=True)
        table.create_index(["node_name", "time"], if_not_exists=True)
        with db.conn:  # committed here: the INSERT would otherwise leave a transaction open
            db.execute(
                "CREATE TABLE IF NOT EXISTS audit_retention (id INTEGER PRIMARY KEY CHECK (id = 1), before REAL)"
            )
            db.execute("INSERT OR IGNORE INTO audit_retention (id, before) VALUES (1, 0)")
            db.execute("DROP TRIGGER IF EXISTS audit_no_delete")  # an older colony refused every DELETE
            db.execute(
                "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
                "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
            )
            db.execute(
                "CREATE TRIGGER IF NOT EXISTS audit_delete_expired_only BEFORE DELETE ON audit "
                "WHEN OLD.time >= (SELECT before FROM audit_retention WHERE id = 1) "
                "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: only entries past the retention period "
                "can be deleted'); END"
            )

    def append(self, entries: Iterable[AuditEntry]) -> int:
        rows = [asdict(e) for e in entries]
        if rows:
            columns = ", ".join(_COLUMNS)
            marks = ", ".join(f":{c}" for c in _COLUMNS)
            self.db.conn.executemany(f"INSERT INTO audit ({columns}) VALUES ({marks})", rows)
        return len(rows)

    def prune(self, *, now: float, retention_s: float) -> int:
        """Delete entries older than ``retention_s`` and log that it did (the caller holds the transaction)."""
        before = now - retention_s
        self.db.execute("UPDATE audit_retention SET before = max(before, ?) WHERE id = 1", [before])
        deleted = int(self.db.execute("DELETE FROM audit WHERE time < ?", [before]).rowcount)
        if deleted:
            self.append(
                [
                    AuditEntry(
                        time=now,
                        kind="retention",
                        action="audit.pruned",
                        actor="colony",
                        detail=f"{deleted} entries older than {retention_s / 86400:g} days deleted",
                    )
                ]
            )
        return deleted

    def query(
        self, *, since: float = 0.0, node: str = "", kind: str = "", limit: int = DEFAULT_LIMIT
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` entries matching, oldest first."""
        where: list[str] = ["time >= ?"]
        params: list[object] = [since]
        if node:
            where.append("node_name = ?")
            params.append(node)
        if kind:
            where.append("kind = ?")
            params.append(kind)
        cursor = self.db.execute(
            f"SELECT * FROM (SELECT * FROM audit WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?) ORDER BY id",
            [*params, limit or DEFAULT_LIMIT],
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


_COLUMNS: dict[str, type] = {
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
}
