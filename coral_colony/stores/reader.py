"""Typed read-only access to the registry: what the operator API and the status page read.

A reader opens the file read-only and runs no DDL (the writer created and
migrated it), so readers never contend with the writer for the schema and
cannot change a row, whatever they execute. Each reader has its own
connection: readers never queue behind agents' writes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from coral_base.hash_chain import Link, Verdict
from coral_colony.model import (
    AgentState,
    AgentStatus,
    AuditQuery,
    AuditTally,
    LoggedEntry,
    Provenance,
    ServiceFilter,
    StoredService,
)
from coral_colony.stores import agents, audit, enrollments, services
from coral_colony.stores.schema import open_for_reading


class RegistryReader:
    def __init__(self, path: Path) -> None:
        self.conn = open_for_reading(path)

    def agents(self, *, node: str = "") -> list[AgentStatus]:
        """Agents with their service count and enrollment in force, by node."""
        enrolled = {e.agent_id: e for e in enrollments.every(self.conn) if not e.revoked_at}
        return [replace(s, enrollment=enrolled.get(s.agent.agent_id)) for s in agents.select(self.conn, node=node)]

    def services(
        self,
        where: ServiceFilter | None = None,
        *,
        after: services.ServicePosition | None = None,
        limit: int | None = None,
    ) -> list[StoredService]:
        """Services matching every filter given (all without one), by node, agent, namespace, name; a page of
        ``limit`` past ``after`` (``services.position`` of the last one of the page before)."""
        return services.select(self.conn, where or ServiceFilter(), after=after, limit=limit)

    def audit(self, query: AuditQuery | None = None) -> list[LoggedEntry]:
        """The newest entries matching, oldest first."""
        return audit.select(self.conn, query or AuditQuery())

    def audit_window(self, query: AuditQuery) -> tuple[int, int]:
        """The ids bounding the newest ``query.limit`` entries matching: (after, up to and including)."""
        return audit.window(self.conn, query)

    def audit_page(self, query: AuditQuery, *, after: int, upto: int, size: int) -> list[LoggedEntry]:
        """Up to ``size`` entries matching with ids in (``after``, ``upto``], oldest first."""
        return audit.page(self.conn, query, after=after, upto=upto, size=size)

    def audit_chain(self) -> tuple[Verdict, Link]:
        """The audit log's hash chain, checked, and the checkpoint it starts from."""
        return audit.check(self.conn), audit.checkpoint(self.conn)

    def audit_hash(self, entry_id: int) -> str | None:
        """The hash the log records for an entry (None: the log holds no such entry)."""
        return audit.hash_of(self.conn, entry_id)

    def check(self) -> None:
        """A read the readiness probe makes: sqlite3.Error when the registry cannot be read."""
        self.conn.execute("SELECT 1 FROM agents LIMIT 1").fetchall()

    def agent_states(self) -> dict[AgentState, int]:
        return agents.count_by_state(self.conn)

    def service_counts(self) -> tuple[dict[Provenance, int], int]:
        """Services by provenance, and the stale ones among them."""
        return services.count_by_provenance(self.conn)

    def audit_tally(self, *, after_id: int) -> AuditTally:
        return audit.tally(self.conn, after_id=after_id)

    def last_audit_id(self) -> int:
        return audit.last_id(self.conn)

    def close(self) -> None:
        self.conn.close()
