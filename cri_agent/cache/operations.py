"""``operations``: control operations run on this node, one row per request, refused or not (append-only),
trimmed to the retention."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from coral_base.sqlite_tables import Database
from cri_agent.cache import chains


@dataclass(frozen=True, slots=True)
class StoredOperation:
    id: int
    started_at: float
    finished_at: float
    operator: str  # the name of the colony token that asked
    action: str  # tap, profile, sample: as the request named it (cri_agent/ops/guardrails.py ACTIONS)
    node_name: str
    namespace: str
    pod_name: str
    service: str
    parameters: Mapping[str, object]  # the request's non-empty limits and filter
    duration_s: float
    bytes: int
    packets: int
    outcome: str  # ok, refused, failed, cancelled: as the operation's Result said
    error: str


def insert(db: Database, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows as the operation runner records them (cri_agent/ops/runner.py), named by column; appended to the
    table's hash chain (``chains``)."""
    chains.append(db, "operations", rows)


def trim(db: Database, *, now: float, rows: int, days: float) -> None:
    """At most ``rows`` rows, none started more than ``days`` before ``now``; the chain keeps a checkpoint
    (``chains.trim``)."""
    chains.trim(db, "operations", time_column="started_at", now=now, rows=rows, days=days)


def read(db: Database) -> list[StoredOperation]:
    return [
        StoredOperation(
            id=row["id"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            operator=row["operator"],
            action=row["action"],
            node_name=row["node_name"],
            namespace=row["namespace"],
            pod_name=row["pod_name"],
            service=row["service"],
            parameters=json.loads(row["parameters"] or "{}"),
            duration_s=row["duration_s"],
            bytes=row["bytes"],
            packets=row["packets"],
            outcome=row["outcome"],
            error=row["error"],
        )
        for row in db.execute("SELECT * FROM operations ORDER BY id")
    ]
