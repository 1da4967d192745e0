"""Output helpers shared by the commands: kubectl-style tables and ages."""

from __future__ import annotations

import time
from collections.abc import Sequence


def age(since: float | None, *, now: float | None = None) -> str:
    """``42s``, ``5m``, ``3h``, ``2d`` since ``since`` (``-`` when unknown)."""
    if not since:
        return "-"
    seconds = int((time.time() if now is None else now) - since)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, indent: str = "") -> None:
    """Columns aligned like kubectl's: two spaces between, headers upper-case."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(str(cell))) for w, cell in zip(widths, row, strict=True)]
    for row in [list(headers), *rows]:
        print(indent + "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
