"""The colony's registry: agents and the services they own, in SQLite.

Rules the registry enforces, whoever calls it:

- an agent changes only its own services: a key another agent owns is
  refused, never overwritten;
- ``register`` replaces the agent's whole set and starts a new session
  (sequence 0);
- ``apply`` takes deltas in sequence order: an already-applied sequence is
  acknowledged and ignored (replays are idempotent), a gap asks the agent
  to register in full again;
- an agent past its heartbeat timeout becomes ``unreachable`` and its
  services are kept, marked stale, until it comes back or a TTL expires.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

import sqlite_utils
from sqlite_utils.db import Table

from coral_base.sql_params import in_chunks
from coral_colony.audit import AuditEntry, AuditKind, AuditLog

AgentKind = Literal["node-agent", "single-service"]


SERVICE_COLUMNS: dict[str, type] = {
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
# One statement per row in C: sqlite-utils' upsert_all costs several times as much at 250,000 services.
_UPSERT_SERVICE = (
    f"INSERT INTO services ({', '.join(SERVICE_COLUMNS)}) VALUES ({', '.join(':' + c for c in SERVICE_COLUMNS)})"
    " ON CONFLICT (key) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in SERVICE_COLUMNS if c != "key")
)


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """One service as the colony stores it (mesh.v1 ServiceInfo, flattened)."""

    key: str
    component_name: str
    port: int = 0
    protocol: str = ""
    health_endpoint: str = ""
    service_type: str = ""
    provenance: str = "unknown"
    namespace: str = ""
    pod_name: str = ""
    pod_uid: str = ""
    container_name: str = ""
    pod_ip: str = ""
    node_name: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    node_labels: Mapping[str, str] = field(default_factory=dict)
    overridden_fields: tuple[str, ...] = ()
    workload: str = ""
    health_state: str = "unknown"
    health_error: str = ""
    health_latency_ms: float = 0.0
    health_since: float = 0.0  # when the state last changed (agent's clock)
    health_interval_ms: int = 0


@dataclass(frozen=True, slots=True)
class AgentRecord:
    agent_id: str
    kind: AgentKind
    node_name: str = ""
    node_labels: Mapping[str, str] = field(default_factory=dict)
    version: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Applied:
    applied_sequence: int
    resync_required: bool = False
    refused_keys: tuple[str, ...] = ()


class Registry:
    """Synchronous registry over one SQLite file (the server serialises calls).

    One writer creates and migrates the tables; ``read_only`` readers (the operator API, the status
    page) open the file as it is and run no DDL.
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        if read_only:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0, check_same_thread=False)
            self.db = sqlite_utils.Database(conn)
            self.audit = AuditLog(self.db, create=False)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=5.0, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        self.db = sqlite_utils.Database(conn)
        self._t("agents").create(
            {
                "agent_id": str,
                "kind": str,
                "node_name": str,
                "node_labels": str,
                "version": str,
                "labels": str,
                "first_seen": float,
                "last_heartbeat": float,
                "state": str,  # healthy / unreachable
                "health": str,  # the agent's own aggregate
                "session": str,
                "last_sequence": int,
            },
            pk="agent_id",
            if_not_exists=True,
        )
        self._t("services").create(SERVICE_COLUMNS, pk="key", if_not_exists=True)
        existing = self._t("services").columns_dict
        for name, type_ in SERVICE_COLUMNS.items():  # a registry an older colony wrote: its rows read as ""
            if name not in existing:
                self._t("services").add_column(name, type_)
        self._t("services").create_index(["agent_id"], if_not_exists=True)
        self._t("services").create_index(["node_name", "namespace"], if_not_exists=True)
        self.audit = AuditLog(self.db)

    def _t(self, name: str) -> Table:
        return cast(Table, self.db[name])

    # -- agent calls --------------------------------------------------------------

    def register(
        self, agent: AgentRecord, services: Sequence[ServiceRecord], *, session: str, now: float
    ) -> tuple[str, ...]:
        """Replace the agent's services with ``services``; returns the refused keys."""
        with self.db.conn:
            old = self.db.execute("SELECT first_seen FROM agents WHERE agent_id = ?", [agent.agent_id]).fetchone()
            self._t("agents").upsert(
                {
                    "agent_id": agent.agent_id,
                    "kind": agent.kind,
                    "node_name": agent.node_name,
                    "node_labels": _json(agent.node_labels),
                    "version": agent.version,
                    "labels": _json(agent.labels),
                    "first_seen": old[0] if old else now,
                    "last_heartbeat": now,
                    "state": "healthy",
                    "health": "unknown",
                    "session": session,
                    "last_sequence": 0,
                },
                pk="agent_id",
            )
            refused = self._upsert(agent.agent_id, services, now=now)
            keep = {s.key for s in services} - set(refused)
            owned = [
                str(r[0]) for r in self.db.execute("SELECT key FROM services WHERE agent_id = ?", [agent.agent_id])
            ]
            self._delete(agent.agent_id, [key for key in owned if key not in keep], now=now, why="not in its full set")
            self.db.execute("UPDATE services SET stale = 0 WHERE agent_id = ?", [agent.agent_id])
            self.audit.append(
                [
                    AuditEntry(
                        time=now,
                        kind="registration",
                        action="agent.registered",
                        actor=agent.agent_id,
                        agent_id=agent.agent_id,
                        node_name=agent.node_name,
                        detail=f"{agent.kind} {agent.version}: {len(keep)} service(s)"
                        + (f", {len(refused)} refused" if refused else ""),
                    )
                ]
            )
        return refused

    def session_of(self, agent_id: str) -> tuple[str, int] | None:
        row = self.db.execute("SELECT session, last_sequence FROM agents WHERE agent_id = ?", [agent_id]).fetchone()
        return (str(row[0]), int(row[1])) if row else None

    def apply(
        self,
        agent_id: str,
        *,
        sequence: int,
        upserts: Sequence[ServiceRecord],
        removed: Sequence[str],
        now: float,
        events: Sequence[AuditEntry] = (),
    ) -> Applied:
        with self.db.conn:
            current = self.session_of(agent_id)
            if current is None:
                return Applied(applied_sequence=0, resync_required=True)
            last = current[1]
            if sequence <= last:
                return Applied(applied_sequence=last)  # a replay: already applied
            if sequence != last + 1:
                return Applied(applied_sequence=last, resync_required=True)
            refused = self._upsert(agent_id, upserts, now=now)
            refused += self._delete(agent_id, removed, now=now, why="removed by its agent")
            node = self._node_of(agent_id)
            self.audit.append(replace(e, agent_id=agent_id, actor=agent_id, node_name=node) for e in events)
            self.db.execute(
                "UPDATE agents SET last_sequence = ?, last_heartbeat = ? WHERE agent_id = ?",
                [sequence, now, agent_id],
            )
            self._reachable(agent_id, now=now)
        return Applied(applied_sequence=sequence, refused_keys=refused)

    def heartbeat(self, agent_id: str, *, health: str, now: float) -> bool:
        """False when the colony does not know the agent (it must register again)."""
        with self.db.conn:
            cursor = self.db.execute(
                "UPDATE agents SET last_heartbeat = ?, health = ? WHERE agent_id = ?",
                [now, health, agent_id],
            )
            if cursor.rowcount == 1:
                self._reachable(agent_id, now=now)
        return bool(cursor.rowcount == 1)

    def deregister(self, agent_id: str, *, now: float, why: str = "deregistered by its agent") -> None:
        with self.db.conn:
            node = self._node_of(agent_id)
            owned = [str(r[0]) for r in self.db.execute("SELECT key FROM services WHERE agent_id = ?", [agent_id])]
            self._delete(agent_id, owned, now=now, why=why)
            self.db.execute("DELETE FROM agents WHERE agent_id = ?", [agent_id])
            self.audit.append(
                [
                    AuditEntry(
                        time=now,
                        kind="deregistration",
                        action="agent.deregistered",
                        actor=agent_id if why.endswith("its agent") else "colony",
                        agent_id=agent_id,
                        node_name=node,
                        detail=f"{why}: {len(owned)} service(s)",
                    )
                ]
            )

    def record(self, entries: Sequence[AuditEntry]) -> None:
        """Audit what happened outside a registry change (refused callers...)."""
        with self.db.conn:
            self.audit.append(entries)

    # -- time ----------------------------------------------------------------------

    def prune_audit(self, *, now: float, retention_s: float) -> int:
        """Audit entries older than ``retention_s`` deleted (and the pruning audited); how many."""
        with self.db.conn:
            return self.audit.prune(now=now, retention_s=retention_s)

    def expire(self, *, now: float, heartbeat_timeout: float, ttl: float) -> tuple[list[str], list[str]]:
        """Mark silent agents unreachable (services stale); drop those silent past ``ttl``."""
        with self.db.conn:
            silent = [
                (str(r[0]), str(r[1]))
                for r in self.db.execute(
                    "SELECT agent_id, node_name FROM agents WHERE state = 'healthy' AND last_heartbeat < ?",
                    [now - heartbeat_timeout],
                )
            ]
            for agent_id, _ in silent:
                self.db.execute("UPDATE agents SET state = 'unreachable' WHERE agent_id = ?", [agent_id])
                self.db.execute("UPDATE services SET stale = 1 WHERE agent_id = ?", [agent_id])
            self.audit.append(
                AuditEntry(
                    time=now,
                    kind="agent",
                    action="agent.unreachable",
                    actor="colony",
                    agent_id=agent_id,
                    node_name=node,
                    detail=f"no heartbeat for {heartbeat_timeout:g}s: its services are stale",
                )
                for agent_id, node in silent
            )
            gone = [
                str(r[0]) for r in self.db.execute("SELECT agent_id FROM agents WHERE last_heartbeat < ?", [now - ttl])
            ]
        for agent_id in gone:
            self.deregister(agent_id, now=now, why=f"silent past the {ttl:g}s TTL")
        return [agent_id for agent_id, _ in silent], gone

    # -- readers -------------------------------------------------------------------

    def agents(self, *, node: str = "") -> list[dict[str, Any]]:
        """Agents with their service count, by node."""
        where, params = ("WHERE a.node_name = ?", [node]) if node else ("", [])
        cursor = self.db.execute(
            f"SELECT a.*, (SELECT COUNT(*) FROM services s WHERE s.agent_id = a.agent_id) AS services "
            f"FROM agents a {where} ORDER BY a.node_name, a.agent_id",
            params,
        )
        return _rows(cursor)

    def services(
        self,
        *,
        agent_id: str = "",
        node: str = "",
        namespace: str = "",
        provenance: str = "",
        name: str = "",
        key: str = "",
        pod_name: str = "",
        name_exact: str = "",
    ) -> list[dict[str, Any]]:
        """Services matching every filter given (``name``: a substring), by node, namespace, name."""
        where: list[str] = []
        params: list[str] = []
        for column, value in (
            ("agent_id", agent_id),
            ("node_name", node),
            ("namespace", namespace),
            ("provenance", provenance),
            ("key", key),
            ("pod_name", pod_name),
            ("component_name", name_exact),
        ):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if name:
            where.append("instr(component_name, ?) > 0")
            params.append(name)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        cursor = self.db.execute(
            f"SELECT * FROM services {clause} ORDER BY node_name, agent_id, namespace, component_name, key", params
        )
        return _rows(cursor)

    def close(self) -> None:
        self.db.conn.close()

    # -- internals -----------------------------------------------------------------

    def _upsert(self, agent_id: str, services: Sequence[ServiceRecord], *, now: float) -> tuple[str, ...]:
        """Write ``services`` the agent may own; audit new ones and refusals; returns the refused keys."""
        if not services:
            return ()
        owners = self._owners([s.key for s in services])
        refused = tuple(s.key for s in services if s.key in owners and owners[s.key][0] != agent_id)
        rows = [
            _service_row(s, agent_id=agent_id, first_seen=owners.get(s.key, ("", now))[1], now=now)
            for s in services
            if s.key not in refused
        ]
        if rows:
            self.db.conn.executemany(_UPSERT_SERVICE, rows)
        entries = [
            _service_entry(s, "registration", "service.registered", agent_id=agent_id, now=now)
            for s in services
            if s.key not in owners
        ]
        entries += [
            _service_entry(
                s,
                "auth",
                "service.refused",
                agent_id=agent_id,
                now=now,
                detail=f"owned by agent {owners[s.key][0]}",
            )
            for s in services
            if s.key in refused
        ]
        self.audit.append(entries)
        return refused

    def _delete(self, agent_id: str, keys: Sequence[str], *, now: float, why: str) -> tuple[str, ...]:
        """Delete the agent's own ``keys`` (audited); returns those another agent owns."""
        if not keys:
            return ()
        owners = self._owners(keys)
        mine = [k for k in keys if k in owners and owners[k][0] == agent_id]
        theirs = tuple(k for k in keys if k in owners and owners[k][0] != agent_id)
        rows: list[dict[str, Any]] = []
        for marks, chunk in in_chunks(mine):
            rows += _rows(self.db.execute(f"SELECT * FROM services WHERE key IN ({marks})", chunk))
            self.db.execute(f"DELETE FROM services WHERE key IN ({marks})", chunk)
        self.audit.append(
            AuditEntry(
                time=now,
                kind="deregistration",
                action="service.deregistered",
                actor=agent_id,
                agent_id=agent_id,
                node_name=row["node_name"],
                namespace=row["namespace"],
                pod_name=row["pod_name"],
                service_name=row["component_name"],
                service_key=row["key"],
                provenance=row["provenance"],
                detail=why,
            )
            for row in rows
        )
        self.audit.append(
            AuditEntry(
                time=now,
                kind="auth",
                action="service.refused",
                actor=agent_id,
                agent_id=agent_id,
                service_key=key,
                detail=f"removal refused: owned by agent {owners[key][0]}",
            )
            for key in theirs
        )
        return theirs

    def _owners(self, keys: Sequence[str]) -> dict[str, tuple[str, float]]:
        owners: dict[str, tuple[str, float]] = {}
        for marks, chunk in in_chunks(keys):
            for key, owner, first in self.db.execute(
                f"SELECT key, agent_id, first_seen FROM services WHERE key IN ({marks})", chunk
            ):
                owners[key] = (owner, first)
        return owners

    def _node_of(self, agent_id: str) -> str:
        row = self.db.execute("SELECT node_name FROM agents WHERE agent_id = ?", [agent_id]).fetchone()
        return str(row[0]) if row else ""

    def _reachable(self, agent_id: str, *, now: float) -> None:
        """An unreachable agent that speaks again is healthy; its services are fresh."""
        cursor = self.db.execute(
            "UPDATE agents SET state = 'healthy' WHERE agent_id = ? AND state = 'unreachable'", [agent_id]
        )
        if cursor.rowcount:
            self.db.execute("UPDATE services SET stale = 0 WHERE agent_id = ?", [agent_id])
            self.audit.append(
                [
                    AuditEntry(
                        time=now,
                        kind="agent",
                        action="agent.reachable",
                        actor=agent_id,
                        agent_id=agent_id,
                        node_name=self._node_of(agent_id),
                    )
                ]
            )


def _rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _service_entry(
    service: ServiceRecord, kind: AuditKind, action: str, *, agent_id: str, now: float, detail: str = ""
) -> AuditEntry:
    return AuditEntry(
        time=now,
        kind=kind,
        action=action,
        actor=agent_id,
        agent_id=agent_id,
        node_name=service.node_name,
        namespace=service.namespace,
        pod_name=service.pod_name,
        service_name=service.component_name,
        service_key=service.key,
        provenance=service.provenance,
        detail=detail,
    )


def _json(value: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(value.items())))


def _service_row(service: ServiceRecord, *, agent_id: str, first_seen: float, now: float) -> dict[str, Any]:
    return {
        "key": service.key,
        "agent_id": agent_id,
        "component_name": service.component_name,
        "port": service.port,
        "protocol": service.protocol,
        "health_endpoint": service.health_endpoint,
        "service_type": service.service_type,
        "provenance": service.provenance,
        "namespace": service.namespace,
        "pod_name": service.pod_name,
        "pod_uid": service.pod_uid,
        "container_name": service.container_name,
        "pod_ip": service.pod_ip,
        "node_name": service.node_name,
        "labels": _json(service.labels),
        "node_labels": _json(service.node_labels),
        "overridden_fields": json.dumps(list(service.overridden_fields)),
        "workload": service.workload,
        "health_state": service.health_state,
        "health_error": service.health_error,
        "health_latency_ms": service.health_latency_ms,
        "health_since": service.health_since,
        "health_interval_ms": service.health_interval_ms,
        "stale": 0,
        "first_seen": first_seen,
        "last_seen": now,
    }
