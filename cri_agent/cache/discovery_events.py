"""``discovery_events``: append-only, every discovery decision, trimmed to the retention."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coral_base.sqlite_tables import Database
from cri_agent.cache import chains
from cri_agent.model import DiscoveryEvent, EventKind


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int
    at: float
    kind: EventKind
    namespace: str
    pod_name: str
    pod_uid: str
    key: str
    service: str
    reason: str
    fields: tuple[str, ...]
    node_name: str


@dataclass(frozen=True, slots=True)
class TimedEvent:
    """A discovery event and when it happened (events wait in memory while the cache refuses writes)."""

    at: float
    event: DiscoveryEvent


def read(
    db: Database, *, since_id: int = 0, kind: EventKind | None = None, limit: int | None = None
) -> list[StoredEvent]:
    """Events after ``since_id``, oldest first; only ``kind`` if given; the newest ``limit`` if given."""
    sql = "SELECT * FROM discovery_events WHERE id > ?"
    params: list[int | str] = [since_id]
    if kind is not None:
        sql += " AND kind = ?"
        params.append(kind.value)
    if limit is not None:
        sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT ?)"
        params.append(limit)
    return [_stored(row) for row in db.execute(sql + " ORDER BY id", params)]


def insert(db: Database, events: Sequence[TimedEvent], *, node_name: str) -> None:
    """Appended to the table's hash chain (``chains``)."""
    chains.append(db, "discovery_events", [_row(timed, node_name=node_name) for timed in events])


def trim(db: Database, *, now: float, rows: int, days: float) -> None:
    """At most ``rows`` rows, none older than ``days``; the chain keeps a checkpoint (``chains.trim``)."""
    chains.trim(db, "discovery_events", time_column="at", now=now, rows=rows, days=days)


def _row(timed: TimedEvent, *, node_name: str) -> dict[str, Any]:
    event = timed.event
    return {
        "at": timed.at,
        "kind": event.kind.value,
        "namespace": event.namespace,
        "pod_name": event.pod_name,
        "pod_uid": event.pod_uid or "",
        "key": event.key or "",
        "service": event.service,
        "reason": event.reason,
        "fields": json.dumps(list(event.fields)),
        "node_name": node_name,
    }


def _stored(row: sqlite3.Row) -> StoredEvent:
    return StoredEvent(
        id=row["id"],
        at=row["at"],
        kind=EventKind(row["kind"]),
        namespace=row["namespace"],
        pod_name=row["pod_name"],
        pod_uid=row["pod_uid"],
        key=row["key"],
        service=row["service"],
        reason=row["reason"],
        fields=tuple(json.loads(row["fields"] or "[]")),
        node_name=row["node_name"],
    )
