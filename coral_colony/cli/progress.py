"""The live line a long operation shows on a terminal: target, node, elapsed, packets and bytes so far.

Written to stderr, and only when stderr is a terminal (a pipe or a file
gets nothing: scripts read stdout and the summary). The line is redrawn at
most ``REDRAW_S`` apart and erased when the operation ends, before the
summary is printed. Packets are those written to the file (counted from the
pcap stream's records), so the figure is what the file holds.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from coral_base.tables import printable
from coral_colony.model import OperationTarget

REDRAW_S = 0.2


class Progress:
    """One operation's live line on ``out`` (stderr) when it is a terminal; nothing otherwise."""

    def __init__(
        self,
        action: str,
        *,
        out: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.action = action
        self.out = out or sys.stderr
        self.enabled = self.out.isatty()
        self.clock = clock
        self.started = clock()
        self.targets: list[OperationTarget] = []
        self.bytes = 0
        self.packets = 0
        self._drawn_at = float("-inf")
        self._width = 0

    def resolved(self, target: OperationTarget) -> None:
        """One more pod the operation runs on (a fan-out resolves to several)."""
        self.targets.append(target)
        self._draw(force=True)

    def chunk(self, size: int, packets: int = 0) -> None:
        self.bytes += size
        self.packets += packets
        self._draw()

    def line(self) -> str:
        if len(self.targets) > 1:
            nodes = len({t.node_name for t in self.targets})
            where, node = f"{len(self.targets)} pods", f" on {nodes} node{'s' if nodes > 1 else ''}"
        else:
            t = self.targets[0] if self.targets else OperationTarget()
            where = f"{t.namespace}/{t.pod_name}" if t.pod_name else "resolving"
            node = f" on {t.node_name}" if t.node_name else ""
        packets = f", {self.packets} packets" if self.packets else ""
        return printable(
            f"{self.action} {where}{node}: {self.clock() - self.started:.1f}s{packets}, {_size(self.bytes)}"
        )

    def done(self) -> None:
        if self.enabled and self._width:
            self.out.write("\r" + " " * self._width + "\r")
            self.out.flush()

    def _draw(self, *, force: bool = False) -> None:
        if not self.enabled or (not force and self.clock() - self._drawn_at < REDRAW_S):
            return
        text = self.line()
        self.out.write("\r" + text.ljust(self._width))
        self.out.flush()
        self._width, self._drawn_at = max(self._width, len(text)), self.clock()


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"
