"""Tables over plain ``sqlite3``: what the stores need of a helper library, and no more.

Creates tables and indexes, adds a column, upserts and inserts rows given as
mappings, and reads rows back as dicts. Which table or column a file lacks
is for the caller's numbered migrations to know, not for this module to guess.
It writes the tables ``sqlite-utils`` writes (``[name] TEXT``, ``INTEGER``,
``FLOAT``; ``idx_<table>_<columns>`` indexes), so a file made either way
opens the same with both, and auditors keep using ``sqlite-utils``. The node agent uses it instead of the
library: it loads in a millisecond and a few hundred KiB, where the library
brings ``click``, ``pluggy`` and ``dateutil`` (~3 MiB, ~70 ms) to every
``coral`` command that reads the cache.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

_TYPES = {str: "TEXT", int: "INTEGER", float: "FLOAT"}


class Database:
    def __init__(self, conn: sqlite3.Connection) -> None:
        conn.row_factory = sqlite3.Row
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        return (dict(row) for row in self.conn.execute(sql, params))

    def table(self, name: str) -> Table:
        return Table(self, name)


class Table:
    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.name = name

    def create(self, columns: Mapping[str, type], *, pk: str) -> None:
        """The table if it is missing (an existing one is left as it is)."""
        spec = ", ".join(f"[{c}] {_TYPES[t]}" + (" PRIMARY KEY" if c == pk else "") for c, t in columns.items())
        self.db.execute(f"CREATE TABLE IF NOT EXISTS [{self.name}] ({spec})")

    def columns(self) -> list[str]:
        return [row[1] for row in self.db.execute(f"PRAGMA table_info([{self.name}])")]

    def add_column(self, column: str, type_: type) -> None:
        """A new column; the rows already there read it as NULL."""
        self.db.execute(f"ALTER TABLE [{self.name}] ADD COLUMN [{column}] {_TYPES[type_]}")

    def create_index(self, columns: Sequence[str]) -> None:
        name = f"idx_{self.name}_{'_'.join(columns)}"
        self.db.execute(
            f"CREATE INDEX IF NOT EXISTS [{name}] ON [{self.name}] ({', '.join(f'[{c}]' for c in columns)})"
        )

    def upsert_all(self, rows: Iterable[Mapping[str, Any]], *, pk: str) -> None:
        """Insert each row, or update the columns it names where its ``pk`` exists (all rows name the same)."""
        self._write(rows, conflict=pk)

    def insert_all(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self._write(rows, conflict=None)

    def _write(self, rows: Iterable[Mapping[str, Any]], *, conflict: str | None) -> None:
        rows = list(rows)
        if not rows:
            return
        columns = list(rows[0])
        sql = (
            f"INSERT INTO [{self.name}] ({', '.join(f'[{c}]' for c in columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})"
        )
        if conflict is not None:
            updates = ", ".join(f"[{c}] = excluded.[{c}]" for c in columns if c != conflict)
            sql += f" ON CONFLICT ([{conflict}]) DO " + (f"UPDATE SET {updates}" if updates else "NOTHING")
        self.db.conn.executemany(sql, [tuple(row[c] for c in columns) for row in rows])

    def rows_where(
        self, where: str = "", params: Sequence[Any] = (), *, order_by: str = "", limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        sql = f"SELECT * FROM [{self.name}]"
        sql += f" WHERE {where}" if where else ""
        sql += f" ORDER BY {order_by}" if order_by else ""
        sql += f" LIMIT {int(limit)}" if limit is not None else ""
        return self.db.query(sql, params)
