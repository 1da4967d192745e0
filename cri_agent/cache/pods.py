"""``pods``: the last decision for every pod on the node (included or not, why, its annotation errors)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from coral_base.sql_params import in_chunks
from coral_base.sqlite_tables import Database
from cri_agent.discovery.engine import PodDecision
from cri_agent.model import PodUID


def decisions(db: Database) -> dict[PodUID, PodDecision]:
    rows = db.execute("SELECT uid, namespace, name, included, reason, errors FROM pods")
    return {
        PodUID(row["uid"]): PodDecision(
            uid=PodUID(row["uid"]),
            namespace=row["namespace"],
            name=row["name"],
            included=bool(row["included"]),
            reason=row["reason"],
            errors=tuple(json.loads(row["errors"] or "[]")),
        )
        for row in rows
    }


def apply(db: Database, pods: Mapping[PodUID, PodDecision], *, now: float, touch: bool) -> None:
    """Make the table the decisions of ``pods``: a pod gone leaves; a pod whose decision changed (or
    every pod, when ``touch``) is written as seen ``now``, keeping its ``first_seen``."""
    stored = {row["uid"]: row for row in db.execute("SELECT uid, included, reason, errors, first_seen FROM pods")}
    gone = [uid for uid in stored if uid not in pods]
    for marks, chunk in in_chunks(gone):
        db.execute(f"DELETE FROM pods WHERE uid IN ({marks})", chunk)
    changed = []
    for uid, decision in pods.items():
        errors = json.dumps(list(decision.errors))
        old = stored.get(uid)
        if (
            old is not None
            and not touch
            and old["included"] == int(decision.included)
            and old["reason"] == decision.reason
            and old["errors"] == errors
        ):
            continue
        changed.append(
            {
                "uid": uid,
                "namespace": decision.namespace,
                "name": decision.name,
                "included": int(decision.included),
                "reason": decision.reason,
                "errors": errors,
                "first_seen": old["first_seen"] if old is not None else now,
                "last_seen": now,
            }
        )
    if changed:
        db.table("pods").upsert_all(changed, pk="uid")
