"""The live line a long operation shows on a terminal: target, node, elapsed, packets and bytes so far.

Written to stderr, and only when stderr is a terminal (a pipe or a file
gets nothing: scripts read stdout and the summary). The line is redrawn at
most ``REDRAW_S`` apart and erased when the operation ends, before the
summary is printed. Packets are counted from the pcap stream itself (its
record headers), so the figure is what the file holds.
"""

from __future__ import annotations

import struct
import sys
import time
from collections.abc import Callable
from typing import TextIO

from coral_base.tables import printable
from coral_colony.model import ArtifactKind, OperationTarget

REDRAW_S = 0.2
_PCAP_HEADER = 24
_RECORD_HEADER = 16
_BIG_ENDIAN_MAGIC = (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")  # microsecond, nanosecond pcap


class PcapCounter:
    """Counts the records of a classic pcap stream fed in arbitrary pieces."""

    def __init__(self) -> None:
        self.packets = 0
        self._skip = _PCAP_HEADER  # bytes before the next record header
        self._header = b""
        self._magic = b""
        self._order = "<"

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._skip:
                if len(self._magic) < 4:  # the file's first bytes say its byte order
                    self._magic += bytes(view[: 4 - len(self._magic)])
                    if self._magic in _BIG_ENDIAN_MAGIC:
                        self._order = ">"
                taken = min(self._skip, len(view))
                self._skip -= taken
                view = view[taken:]
                continue
            need = _RECORD_HEADER - len(self._header)
            self._header += bytes(view[:need])
            view = view[need:]
            if len(self._header) == _RECORD_HEADER:
                (captured,) = struct.unpack(self._order + "I", self._header[8:12])
                self.packets += 1
                self._skip, self._header = captured, b""


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
        self.target = OperationTarget()
        self.bytes = 0
        self.pcap = PcapCounter()
        self._drawn_at = float("-inf")
        self._width = 0

    def resolved(self, target: OperationTarget) -> None:
        self.target = target
        self._draw(force=True)

    def chunk(self, kind: ArtifactKind, data: bytes) -> None:
        self.bytes += len(data)
        if kind is ArtifactKind.PCAP:
            self.pcap.feed(data)
        self._draw()

    def line(self) -> str:
        t = self.target
        where = f"{t.namespace}/{t.pod_name}" if t.pod_name else "resolving"
        node = f" on {t.node_name}" if t.node_name else ""
        packets = f", {self.pcap.packets} packets" if self.pcap.packets else ""
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
