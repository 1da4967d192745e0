"""The hash chains of ``discovery_events`` and ``operations`` (``coral_base.hash_chain``): appending, pruning
with a checkpoint, checking.

Every row the agent appends to either table is numbered and chained to the one before it here, in the
writer's transaction. Pruning deletes a prefix of a table (the oldest rows, in id order) and records the
last row deleted in ``chain_checkpoints``, in the same transaction, so the rows that stay still verify.
``coral agent events --verify`` checks both chains from their checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from coral_base.hash_chain import START, Link, Verdict, rows_of, seal, verify
from coral_base.sqlite_tables import Database
from cri_agent.cache.migrations import CHAINED

CHAINED_TABLES = tuple(CHAINED)  # discovery_events, operations


def checkpoint(db: Database, table: str) -> Link:
    """The last row pruned from ``table`` (the start of its chain when none was)."""
    row = db.execute("SELECT last_id, hash FROM chain_checkpoints WHERE chained = ?", [table]).fetchone()
    return Link(int(row[0]), str(row[1])) if row is not None else START


def _last(db: Database, table: str) -> Link:
    row = db.execute(f"SELECT id, hash FROM [{table}] ORDER BY id DESC LIMIT 1").fetchone()
    return Link(int(row[0]), str(row[1])) if row is not None else checkpoint(db, table)


def append(db: Database, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """``rows`` numbered and chained after the table's last (inside the caller's transaction)."""
    if rows:
        db.table(table).insert_all(seal(rows, after=_last(db, table), columns=CHAINED[table]))


def prune_through(db: Database, table: str, last_id: int, *, now: float) -> int:
    """Delete the rows up to ``last_id`` and record the last of them as the checkpoint; how many."""
    row = db.execute(f"SELECT id, hash FROM [{table}] WHERE id <= ? ORDER BY id DESC LIMIT 1", [last_id]).fetchone()
    if row is None:
        return 0
    db.table("chain_checkpoints").upsert_all(
        [{"chained": table, "last_id": int(row[0]), "hash": str(row[1]), "at": now}], pk="chained"
    )
    return int(db.execute(f"DELETE FROM [{table}] WHERE id <= ?", [int(row[0])]).rowcount)


def trim(db: Database, table: str, *, time_column: str, now: float, rows: int, days: float) -> None:
    """At most ``rows`` rows, none older than ``days`` (by ``time_column``): the oldest go, in id order (a row
    written after a backward clock step waits for those before it), and the last of them becomes the
    chain's checkpoint."""
    first, last = db.execute(f"SELECT min(id), max(id) FROM [{table}]").fetchone()
    if last is None:
        return
    kept = db.execute(f"SELECT min(id) FROM [{table}] WHERE [{time_column}] >= ?", [now - days * 86400]).fetchone()[0]
    through = max(last - rows, (kept - 1) if kept is not None else last)
    if through >= first:
        prune_through(db, table, through, now=now)


def check(db: Database, table: str) -> Verdict:
    columns = CHAINED[table]
    return verify(
        rows_of(db.conn, table, [*columns, "prev_hash", "hash"]), start=checkpoint(db, table), columns=columns
    )
