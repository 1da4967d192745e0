"""Output helpers shared by the commands: kubectl-style tables and ages.

Cells come from agents, workloads and the network (an agent id, a health
probe's response, a pod name): a control character in one could move the
cursor, rewrite earlier lines or change the terminal's title. Every cell
is printed with its control and bidirectional-override characters escaped.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from typing import IO

# C0 and C1 controls, DEL, and the bidirectional overrides and isolates (U+202A-E, U+2066-9).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with every control character escaped as Python would write it (``\\x1b``, ``\\n``)."""
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)


def age(since: float | None, *, now: float | None = None) -> str:
    """``42s``, ``5m``, ``3h``, ``2d`` since ``since`` (``-`` when unknown)."""
    if not since:
        return "-"
    seconds = int((time.time() if now is None else now) - since)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    indent: str = "",
    headers_shown: bool = True,
    out: IO[str] | None = None,
) -> None:
    """Columns aligned like kubectl's: two spaces between, headers upper-case (sized even when not shown)."""
    cells = [[printable(str(cell)) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in [list(headers)] * headers_shown + cells:
        line = indent + "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True))
        print(line.rstrip(), file=out or sys.stdout)
