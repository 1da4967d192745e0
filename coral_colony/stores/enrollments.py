"""Table ``enrollments``: one row per enrolled node, bound to its agent's key.

A row names the certificates the colony accepts for the node (the current
one and the one before it), how the node enrolled, and, once revoked, who
revoked it and when. Nothing secret is stored: fingerprints and names only.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, fields

from coral_base.vocabulary import read_word
from coral_colony.model import Enrollment, EnrollMethod

_COLUMNS = [f.name for f in fields(Enrollment)]
_UPSERT = (
    f"INSERT INTO enrollments ({', '.join(_COLUMNS)}) VALUES ({', '.join(':' + c for c in _COLUMNS)})"
    " ON CONFLICT (node_name) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c != "node_name")
)


def put(conn: sqlite3.Connection, enrollment: Enrollment) -> None:
    conn.execute(_UPSERT, {**asdict(enrollment), "method": enrollment.method.value})


def get(conn: sqlite3.Connection, node_name: str) -> Enrollment | None:
    row = conn.execute("SELECT * FROM enrollments WHERE node_name = ?", [node_name]).fetchone()
    return _enrollment(row) if row else None


def every(conn: sqlite3.Connection) -> list[Enrollment]:
    return [_enrollment(r) for r in conn.execute("SELECT * FROM enrollments ORDER BY node_name")]


def _enrollment(row: sqlite3.Row) -> Enrollment:
    values = {c: row[c] for c in _COLUMNS}
    values["method"] = read_word(EnrollMethod, row["method"], EnrollMethod.SECRET)
    return Enrollment(**values)
