"""The agent's own state: ``conditions`` (one row per named condition) and ``meta`` (identity, the last
pass, the services' aggregate health, the schema version).

Rows are named tuples, not dataclasses, and SQLite is imported for types only: ``coral agent status``
reads these two tables of a stopped agent's cache and nothing else, and starts in a fraction of the time
the rest of the cache takes to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Mapping

    from coral_base.sqlite_tables import Database
    from cri_agent.conditions import Condition


class StoredCondition(NamedTuple):
    name: str
    ok: bool
    reason: str
    since: float  # when ``ok`` last changed
    updated: float  # when the reason last changed


def conditions(db: Database) -> list[StoredCondition]:
    rows = db.execute("SELECT name, ok, reason, since, updated FROM conditions ORDER BY name")
    return [StoredCondition(name, bool(ok), reason, since, updated) for name, ok, reason, since, updated in rows]


def meta(db: Database) -> dict[str, str]:
    return {key: value for key, value in db.execute("SELECT key, value FROM meta")}


def upsert_condition(db: Database, condition: Condition) -> None:
    row = {
        "name": condition.name,
        "ok": int(condition.ok),
        "reason": condition.reason,
        "since": condition.since,
        "updated": condition.updated,
    }
    db.table("conditions").upsert_all([row], pk="name")


def upsert_meta(db: Database, values: Mapping[str, str]) -> None:
    db.table("meta").upsert_all([{"key": key, "value": value} for key, value in values.items()], pk="key")
