"""How the cache file is opened: read-write by its one writer, read-only by everyone else.

Both read the schema version the file records first (``migrations.checked_version``), through a
read-only connection, and refuse a file a newer agent wrote before anything has written to it. The
writer then migrates the file to this code's version. A reader never writes and runs no DDL on the
file: one at an older version (no agent of this release has opened it yet) is copied into memory and
the copy migrated, so that every reader reads one schema, the current one (its ``meta`` still says
the version the file records).

This module loads plain ``sqlite3`` and nothing heavier: ``coral agent status`` of a stopped agent
opens the cache through it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from coral_base.sqlite_tables import Database
from cri_agent.cache.migrations import SCHEMA_VERSION, VERSION_KEY, checked_version, migrate
from cri_agent.errors import CacheError
from cri_agent.status_file import read_status


def open_read_only(path: Path) -> Database:
    """The cache at this code's schema version, for reading; a missing file is an error that says what
    to do (and, when its agent runs, that the agent recreates it)."""
    if not path.exists():
        live = read_status(path)
        if live is not None and live.running:
            raise CacheError(
                f"cache {path} is missing, but its agent (pid {live.pid}) runs: it recreates the file "
                "from memory within one discovery pass; try again in a moment"
            )
        raise CacheError(
            f"cache {path} does not exist: start `coral agent node` first or pass --cache with the agent's cache path"
        )
    try:
        with contextlib.ExitStack() as closing:
            conn = _read_only(path)
            closing.callback(conn.close)
            version = checked_version(conn, path)
            if version == SCHEMA_VERSION:
                closing.pop_all()  # the caller's now
                return Database(conn)
            if version == 0:
                raise CacheError(
                    f"cache {path} records no schema version: it is not an agent's cache, or one its agent "
                    "is creating at this moment"
                )
            memory = sqlite3.connect(":memory:")
            conn.backup(memory)
        copy = Database(memory)
        migrate(copy, path)
        # What readers show of meta is what the file records: the copy's tables are this code's, the file's are not.
        copy.execute("UPDATE meta SET value = ? WHERE key = ?", [str(version), VERSION_KEY])
        return copy
    except sqlite3.Error as exc:
        raise CacheError(f"cache {path} cannot be opened: {exc}") from exc


def open_for_writing(path: Path) -> Database:
    """The cache migrated to this code's version, in WAL mode; a file that does not exist is created.
    sqlite3.Error or OSError when SQLite cannot open or write it."""
    if path.exists():
        with contextlib.closing(_read_only(path)) as peek:  # no connection of ours has the file open yet
            checked_version(peek, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=5.0)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        db = Database(conn)
        migrate(db, path)
    except BaseException:
        conn.close()
        raise
    return db


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
