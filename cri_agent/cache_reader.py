"""The cache as a reader opens it: read-only, with plain ``sqlite3`` (no helper library to load).

``coral agent status`` reads a stopped agent's last conditions through
this module and starts in a fraction of the time the full cache module
takes to import; ``Cache`` uses the same functions for the same tables.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from cri_agent.errors import CacheError
from cri_agent.status_file import read_status


def open_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection; a missing file is an error that says what to do (and, when its agent runs,
    that the agent recreates it)."""
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
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise CacheError(f"cache {path} cannot be opened: {exc}") from exc


def conditions(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """The ``conditions`` rows, by name (``ok`` as 0/1, as stored)."""
    columns = ("name", "ok", "reason", "since", "updated")
    rows = conn.execute(f"SELECT {', '.join(columns)} FROM conditions ORDER BY name").fetchall()
    return [dict(zip(columns, row, strict=True)) for row in rows]


def meta(conn: sqlite3.Connection) -> dict[str, str]:
    return {key: value for key, value in conn.execute("SELECT key, value FROM meta")}
