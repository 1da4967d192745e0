"""Table ``services``: one row per service an agent reports, keyed by (agent, stable key).

Each agent owns its own rows: what one agent sends never replaces or
blocks another's (a key another agent sent first used to be refused: one
node could squat another's pods). Two agents reporting the same pod is an
ambiguity the operator API shows, never a silent winner.

Labels are stored as sorted JSON objects, overridden fields as a JSON list,
times as unix seconds; a column an older file gained reads as NULL and is
read back as the field's default.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from coral_base.sql_params import in_chunks
from coral_base.vocabulary import read_word
from coral_colony.model import HealthState, Provenance, ServiceFilter, ServiceRecord, StoredService
from coral_colony.stores.agents import labels_json

SERVICE_COLUMNS: dict[str, type] = {
    "key": str,
    "agent_id": str,
    "component_name": str,
    "port": int,
    "protocol": str,
    "health_endpoint": str,
    "service_type": str,
    "provenance": str,  # Provenance
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
    "unconfirmed": int,  # 1: the agent's registration in parts has not named it yet (deleted unless a part does)
}
# One statement per row in C: sqlite-utils' upsert_all costs several times as much at 250,000 services.
_UPSERT = (
    f"INSERT INTO services ({', '.join(SERVICE_COLUMNS)}) VALUES ({', '.join(':' + c for c in SERVICE_COLUMNS)})"
    " ON CONFLICT (agent_id, key) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in SERVICE_COLUMNS if c not in ("key", "agent_id"))
)


def row(service: ServiceRecord, *, agent_id: str, first_seen: float, now: float) -> dict[str, object]:
    return {
        "key": service.key,
        "agent_id": agent_id,
        "component_name": service.component_name,
        "port": service.port,
        "protocol": service.protocol,
        "health_endpoint": service.health_endpoint,
        "service_type": service.service_type,
        "provenance": service.provenance.value,
        "namespace": service.namespace,
        "pod_name": service.pod_name,
        "pod_uid": service.pod_uid,
        "container_name": service.container_name,
        "pod_ip": service.pod_ip,
        "node_name": service.node_name,
        "labels": labels_json(service.labels),
        "node_labels": labels_json(service.node_labels),
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
        "unconfirmed": 0,
    }


def stored(row: sqlite3.Row) -> StoredService:
    return StoredService(
        service=ServiceRecord(
            key=row["key"],
            component_name=row["component_name"] or "",
            port=row["port"] or 0,
            protocol=row["protocol"] or "",
            health_endpoint=row["health_endpoint"] or "",
            service_type=row["service_type"] or "",
            provenance=read_word(Provenance, row["provenance"], Provenance.UNKNOWN),
            namespace=row["namespace"] or "",
            pod_name=row["pod_name"] or "",
            pod_uid=row["pod_uid"] or "",
            container_name=row["container_name"] or "",
            pod_ip=row["pod_ip"] or "",
            node_name=row["node_name"] or "",
            labels=json.loads(row["labels"] or "{}"),
            node_labels=json.loads(row["node_labels"] or "{}"),
            overridden_fields=tuple(json.loads(row["overridden_fields"] or "[]")),
            workload=row["workload"] or "",
            health_state=read_word(HealthState, row["health_state"], HealthState.UNKNOWN),
            health_error=row["health_error"] or "",
            health_latency_ms=row["health_latency_ms"] or 0.0,
            health_since=row["health_since"] or 0.0,
            health_interval_ms=row["health_interval_ms"] or 0,
        ),
        agent_id=row["agent_id"],
        stale=bool(row["stale"]),
        first_seen=row["first_seen"] or 0.0,
        last_seen=row["last_seen"] or 0.0,
    )


def upsert(conn: sqlite3.Connection, rows: Sequence[dict[str, object]]) -> None:
    if rows:
        conn.executemany(_UPSERT, rows)


def first_seen(conn: sqlite3.Connection, agent_id: str, keys: Sequence[str]) -> dict[str, float]:
    """key -> first seen, for those of ``keys`` the agent already has."""
    found: dict[str, float] = {}
    for marks, chunk in in_chunks(keys):
        for key, first in conn.execute(
            f"SELECT key, first_seen FROM services WHERE agent_id = ? AND key IN ({marks})", [agent_id, *chunk]
        ):
            found[key] = first
    return found


def take(conn: sqlite3.Connection, agent_id: str, keys: Sequence[str]) -> list[StoredService]:
    """Deletes the agent's ``keys``; what they held (for the audit log)."""
    taken: list[StoredService] = []
    for marks, chunk in in_chunks(keys):
        params = [agent_id, *chunk]
        where = f"WHERE agent_id = ? AND key IN ({marks})"
        taken += [stored(r) for r in conn.execute(f"SELECT * FROM services {where}", params)]
        conn.execute(f"DELETE FROM services {where}", params)
    return taken


def keys_of(conn: sqlite3.Connection, agent_id: str) -> list[str]:
    return [str(r[0]) for r in conn.execute("SELECT key FROM services WHERE agent_id = ?", [agent_id])]


def set_unconfirmed(conn: sqlite3.Connection, agent_id: str, keys: Sequence[str]) -> None:
    """``keys`` of the agent await the rest of a registration in parts."""
    for marks, chunk in in_chunks(keys):
        conn.execute(f"UPDATE services SET unconfirmed = 1 WHERE agent_id = ? AND key IN ({marks})", [agent_id, *chunk])


def unconfirmed_keys(conn: sqlite3.Connection, agent_id: str) -> list[str]:
    cursor = conn.execute("SELECT key FROM services WHERE agent_id = ? AND unconfirmed = 1", [agent_id])
    return [str(r[0]) for r in cursor]


def set_stale(conn: sqlite3.Connection, agent_id: str, stale: bool) -> None:
    conn.execute("UPDATE services SET stale = ? WHERE agent_id = ?", [int(stale), agent_id])


# The listing's order, and the position a page ends at (``ServicePosition``): NULLs read as "" in both.
_ORDER = ("node_name", "agent_id", "namespace", "component_name", "key")
_ORDERED = ", ".join(f"coalesce({c}, '')" for c in _ORDER)
ServicePosition = tuple[str, str, str, str, str]


def position(stored: StoredService) -> ServicePosition:
    """Where ``stored`` sits in the listing's order: the next page starts after it."""
    s = stored.service
    return (s.node_name, stored.agent_id, s.namespace, s.component_name, s.key)


def select(
    conn: sqlite3.Connection, where: ServiceFilter, *, after: ServicePosition | None = None, limit: int | None = None
) -> list[StoredService]:
    """Services matching every filter given, by node, agent, namespace, name; past ``after``, ``limit`` of them."""
    clauses: list[str] = []
    params: list[object] = []
    for column, value in (
        ("agent_id", where.agent_id),
        ("node_name", where.node),
        ("namespace", where.namespace),
        ("provenance", where.provenance.value if where.provenance else ""),
        ("key", where.key),
        ("pod_name", where.pod_name),
        ("component_name", where.name_exact),
        ("workload", where.workload),
    ):
        if value:
            clauses.append(f"{column} = ?")
            params.append(value)
    if where.name:
        clauses.append("instr(component_name, ?) > 0")
        params.append(where.name)
    if where.pod_prefix:
        clauses.append("substr(pod_name, 1, ?) = ?")
        params.extend([len(where.pod_prefix), where.pod_prefix])
    if after is not None:
        clauses.append(f"({_ORDERED}) > ({', '.join('?' for _ in after)})")
        params.extend(after)
    clause = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    bound = " LIMIT ?" if limit is not None else ""
    cursor = conn.execute(
        f"SELECT * FROM services {clause} ORDER BY {_ORDERED}{bound}", [*params, *([limit] if bound else [])]
    )
    return [stored(r) for r in cursor]


def count_by_provenance(conn: sqlite3.Connection) -> tuple[dict[Provenance, int], int]:
    """Services by provenance, and how many of them are stale (their agent is unreachable)."""
    counts: dict[Provenance, int] = {}
    stale = 0
    for word, is_stale, count in conn.execute("SELECT provenance, stale, count(*) FROM services GROUP BY 1, 2"):
        provenance = read_word(Provenance, word, Provenance.UNKNOWN)
        counts[provenance] = counts.get(provenance, 0) + count
        stale += count if is_stale else 0
    return counts, stale
