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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import sqlite_utils
from sqlite_utils.db import Table

AgentKind = Literal["node-agent", "single-service"]


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
    health_state: str = "unknown"
    health_error: str = ""


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
    """Synchronous registry over one SQLite file (the server serialises calls)."""

    def __init__(self, path: Path) -> None:
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
        self._t("services").create(
            {
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
                "health_state": str,
                "health_error": str,
                "stale": int,
                "first_seen": float,
                "last_seen": float,
            },
            pk="key",
            if_not_exists=True,
        )
        self._t("services").create_index(["agent_id"], if_not_exists=True)

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
            keep = [s.key for s in services if s.key not in refused]
            marks = ",".join("?" * len(keep))
            query = (
                f"DELETE FROM services WHERE agent_id = ? AND key NOT IN ({marks})"
                if keep
                else ("DELETE FROM services WHERE agent_id = ?")
            )
            self.db.execute(query, [agent.agent_id, *keep])
            self.db.execute("UPDATE services SET stale = 0 WHERE agent_id = ?", [agent.agent_id])
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
            for key in removed:
                self.db.execute("DELETE FROM services WHERE key = ? AND agent_id = ?", [key, agent_id])
            refused += tuple(
                key
                for key in removed
                if self.db.execute("SELECT 1 FROM services WHERE key = ?", [key]).fetchone() is not None
            )
            self.db.execute(
                "UPDATE agents SET last_sequence = ?, last_heartbeat = ?, state = 'healthy' WHERE agent_id = ?",
                [sequence, now, agent_id],
            )
        return Applied(applied_sequence=sequence, refused_keys=refused)

    def heartbeat(self, agent_id: str, *, health: str, now: float) -> bool:
        """False when the colony does not know the agent (it must register again)."""
        with self.db.conn:
            cursor = self.db.execute(
                "UPDATE agents SET last_heartbeat = ?, health = ?, state = 'healthy' WHERE agent_id = ?",
                [now, health, agent_id],
            )
            self.db.execute("UPDATE services SET stale = 0 WHERE agent_id = ?", [agent_id])
        return bool(cursor.rowcount == 1)

    def deregister(self, agent_id: str) -> None:
        with self.db.conn:
            self.db.execute("DELETE FROM services WHERE agent_id = ?", [agent_id])
            self.db.execute("DELETE FROM agents WHERE agent_id = ?", [agent_id])

    # -- time ----------------------------------------------------------------------

    def expire(self, *, now: float, heartbeat_timeout: float, ttl: float) -> tuple[list[str], list[str]]:
        """Mark silent agents unreachable (services stale); drop those silent past ``ttl``."""
        with self.db.conn:
            silent = [
                str(r[0])
                for r in self.db.execute(
                    "SELECT agent_id FROM agents WHERE state = 'healthy' AND last_heartbeat < ?",
                    [now - heartbeat_timeout],
                )
            ]
            for agent_id in silent:
                self.db.execute("UPDATE agents SET state = 'unreachable' WHERE agent_id = ?", [agent_id])
                self.db.execute("UPDATE services SET stale = 1 WHERE agent_id = ?", [agent_id])
            gone = [
                str(r[0]) for r in self.db.execute("SELECT agent_id FROM agents WHERE last_heartbeat < ?", [now - ttl])
            ]
        for agent_id in gone:
            self.deregister(agent_id)
        return silent, gone

    # -- readers -------------------------------------------------------------------

    def agents(self) -> list[dict[str, Any]]:
        return list(self._t("agents").rows_where(order_by="node_name, agent_id"))

    def services(self, *, agent_id: str | None = None) -> list[dict[str, Any]]:
        if agent_id is None:
            return list(self._t("services").rows_where(order_by="node_name, namespace, component_name"))
        return list(self._t("services").rows_where("agent_id = ?", [agent_id], order_by="key"))

    def close(self) -> None:
        self.db.conn.close()

    # -- internals -----------------------------------------------------------------

    def _upsert(self, agent_id: str, services: Sequence[ServiceRecord], *, now: float) -> tuple[str, ...]:
        if not services:
            return ()
        keys = [s.key for s in services]
        owners: dict[str, tuple[str, float]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, owner, first in self.db.execute(
                f"SELECT key, agent_id, first_seen FROM services WHERE key IN ({marks})", chunk
            ):
                owners[key] = (owner, first)
        refused = tuple(s.key for s in services if s.key in owners and owners[s.key][0] != agent_id)
        rows = [
            _service_row(s, agent_id=agent_id, first_seen=owners.get(s.key, ("", now))[1], now=now)
            for s in services
            if s.key not in refused
        ]
        if rows:
            self._t("services").upsert_all(rows, pk="key")
        return refused


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
        "health_state": service.health_state,
        "health_error": service.health_error,
        "stale": 0,
        "first_seen": first_seen,
        "last_seen": now,
    }
