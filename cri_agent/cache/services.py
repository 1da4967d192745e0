"""``services`` (the current set, one row per registrable service) and ``health`` (the latest probe of
each; its rows leave with their service): row codecs, writes, and typed reads."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coral_base.sql_params import in_chunks
from coral_base.sqlite_tables import Database
from cri_agent.model import Health, HealthState, PodUID, Provenance, ServiceInfo, ServiceKey, Transport

# The columns of ``services`` as docs/audit.md describes them (the migrations create exactly these).
SERVICE_COLUMNS: tuple[str, ...] = (
    "key",
    "name",
    "namespace",
    "pod_name",
    "pod_uid",
    "container",
    "port",
    "protocol",
    "service_type",
    "provenance",
    "overridden_fields",  # JSON list
    "health_endpoint",
    "health_interval_s",
    "pod_ip",
    "node_name",
    "labels",  # JSON object
    "workload",  # "Deployment/x" from the Kubernetes API, or ""
    "first_seen",
    "last_seen",
)
_SELECT = ", ".join(f"s.[{column}]" for column in SERVICE_COLUMNS)
_ORDER = "ORDER BY s.namespace, s.pod_name, s.name"


@dataclass(frozen=True, slots=True)
class ServiceRow:
    """A service as ``coral agent services`` shows it: when it was seen, and its latest health."""

    service: ServiceInfo
    first_seen: float
    last_seen: float
    health: HealthState  # UNKNOWN until probed
    health_since: float | None
    health_latency_ms: float | None
    health_error: str | None


# -- reads ---------------------------------------------------------------------------------------


def current(db: Database) -> list[ServiceInfo]:
    return [_service(row) for row in db.execute(f"SELECT {_SELECT} FROM services s {_ORDER}")]


def with_health(db: Database) -> list[ServiceRow]:
    rows = db.execute(
        f"SELECT {_SELECT}, coalesce(h.state, 'unknown') AS health, h.since AS health_since, "
        "h.latency_ms AS health_latency_ms, h.last_error AS health_error "
        f"FROM services s LEFT JOIN health h ON h.key = s.key {_ORDER}"
    )
    return [
        ServiceRow(
            service=_service(row),
            first_seen=row["first_seen"],
            last_seen=row["last_seen"],
            health=HealthState(row["health"]),
            health_since=row["health_since"],
            health_latency_ms=row["health_latency_ms"],
            health_error=row["health_error"],
        )
        for row in rows
    ]


# -- writes (the writer's transactions) ----------------------------------------------------------


def upsert(db: Database, services: Sequence[ServiceInfo], *, now: float) -> None:
    """Insert or update ``services`` as seen ``now``, each keeping the ``first_seen`` the file has."""
    if not services:
        return
    first_seen: dict[str, float] = {}
    for marks, chunk in in_chunks([s.key for s in services]):
        first_seen.update(db.execute(f"SELECT key, first_seen FROM services WHERE key IN ({marks})", chunk))
    rows = (_row(s, first_seen=first_seen.get(s.key, now), last_seen=now) for s in services)
    db.table("services").upsert_all(rows, pk="key")


def delete(db: Database, keys: Sequence[str]) -> None:
    for marks, chunk in in_chunks(keys):
        db.execute(f"DELETE FROM services WHERE key IN ({marks})", chunk)


def stored_keys(db: Database) -> list[str]:
    return [row[0] for row in db.execute("SELECT key FROM services")]


def touch(db: Database, *, now: float) -> None:
    db.execute("UPDATE services SET last_seen = ?", [now])


def upsert_health(db: Database, results: Sequence[Health]) -> None:
    # plain SQL: a round of 250 results every 10 s, upsert_all costs 6x as much
    db.conn.executemany(
        "INSERT INTO health (key, state, since, checked_at, latency_ms, last_error) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (key) DO UPDATE SET state = excluded.state, since = excluded.since,"
        " checked_at = excluded.checked_at, latency_ms = excluded.latency_ms, last_error = excluded.last_error",
        [(h.key, h.state.value, h.since, h.checked_at, h.latency_ms, h.last_error) for h in results],
    )


def prune_health(db: Database) -> None:
    """Health rows of services no longer registered leave."""
    db.execute("DELETE FROM health WHERE key NOT IN (SELECT key FROM services)")


def clear_health(db: Database) -> None:
    db.execute("DELETE FROM health")


# -- row codec -----------------------------------------------------------------------------------


def _row(service: ServiceInfo, *, first_seen: float, last_seen: float) -> dict[str, Any]:
    return {
        "key": service.key,
        "name": service.name,
        "namespace": service.namespace,
        "pod_name": service.pod_name,
        "pod_uid": service.pod_uid,
        "container": service.container,
        "port": service.port,
        "protocol": service.protocol,
        "service_type": service.service_type,
        "provenance": service.provenance.value,
        "overridden_fields": json.dumps(list(service.overridden_fields)),
        "health_endpoint": service.health_endpoint,
        "health_interval_s": service.health_interval_s,
        "pod_ip": service.pod_ip,
        "node_name": service.node_name,
        "labels": json.dumps(dict(sorted(service.labels.items()))),
        "workload": service.workload,
        "first_seen": first_seen,
        "last_seen": last_seen,
    }


def _service(row: sqlite3.Row) -> ServiceInfo:
    protocol: Transport | None = row["protocol"] if row["protocol"] in ("TCP", "UDP") else None
    return ServiceInfo(
        key=ServiceKey(row["key"]),
        name=row["name"],
        namespace=row["namespace"],
        pod_name=row["pod_name"],
        pod_uid=PodUID(row["pod_uid"]),
        container=row["container"],
        port=row["port"],
        protocol=protocol,
        service_type=row["service_type"],
        provenance=Provenance(row["provenance"]),
        health_endpoint=row["health_endpoint"] or "",
        health_interval_s=row["health_interval_s"],
        pod_ip=row["pod_ip"] or "",
        node_name=row["node_name"] or "",
        labels=json.loads(row["labels"] or "{}"),
        overridden_fields=tuple(json.loads(row["overridden_fields"] or "[]")),
        workload=row["workload"] or "",  # NULL in the rows of a file migrated to version 3
    )
