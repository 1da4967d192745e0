"""CPU stack samples in the three shapes operators read: folded, pprof, flame graph.

Pure functions: ``perf script`` text in, folded stacks (``comm;outer;...;leaf
count``) out; folded stacks to a gzipped pprof profile (``go tool pprof``
reads it) and to a self-contained SVG flame graph.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from html import escape

from coral_base.wire.pprof import profile_pb2

_HEADER = re.compile(r"^(?P<comm>\S.*?)\s+(?P<pid>\d+)(?:/(?P<tid>\d+))?\b")
_FRAME = re.compile(r"^\s+(?P<ip>[0-9a-f]+)\s+(?P<sym>.+?)\s+\((?P<dso>[^)]*)\)\s*$")
_OFFSET = re.compile(r"\+0x[0-9a-f]+$")


class StackFolder:
    """``perf script`` lines (comm, pid/tid, then ip sym (dso) frames, leaf first) -> folded stacks, one line at
    a time: the profiler reads perf's output as it comes and never holds the whole text."""

    def __init__(self) -> None:
        self.folded: Counter[str] = Counter()
        self._comm = ""
        self._frames: list[str] = []

    def feed(self, line: str) -> None:
        if not line.strip():
            self._flush()
        elif not line[0].isspace():
            self._flush()
            match = _HEADER.match(line)
            self._comm = match.group("comm").replace(";", ":") if match else line.split()[0]
        elif match := _FRAME.match(line):
            symbol = _OFFSET.sub("", match.group("sym"))
            if symbol == "[unknown]":
                dso = match.group("dso").rsplit("/", 1)[-1]
                symbol = f"[{dso}]" if dso and dso != "[unknown]" else "[unknown]"
            self._frames.append(symbol.replace(";", ":"))

    def finish(self, *, cut: bool = False) -> Counter[str]:
        """The folded stacks; ``cut``: the text stopped mid-way, so its last sample (maybe without its outer
        frames, which come last) is left out rather than counted under a wrong root."""
        if not cut:
            self._flush()
        return self.folded

    def _flush(self) -> None:
        if self._comm:
            self.folded[";".join([self._comm, *reversed(self._frames)])] += 1
        self._comm, self._frames = "", []


def fold_perf_script(text: str) -> Counter[str]:
    """The whole of a ``perf script`` text -> folded stacks."""
    folder = StackFolder()
    for line in text.splitlines():
        folder.feed(line)
    return folder.finish()


def folded_text(folded: Mapping[str, int]) -> str:
    return "".join(f"{stack} {count}\n" for stack, count in sorted(folded.items()))


def pprof(folded: Mapping[str, int], *, frequency_hz: int, duration_s: float, time_ns: int) -> bytes:
    """A gzipped pprof Profile: sample count and CPU time per stack."""
    strings: dict[str, int] = {"": 0}

    def index(text: str) -> int:
        return strings.setdefault(text, len(strings))

    profile = profile_pb2.Profile()
    profile.sample_type.add(type=index("samples"), unit=index("count"))
    profile.sample_type.add(type=index("cpu"), unit=index("nanoseconds"))
    period = int(1e9 / frequency_hz)
    profile.period_type.type, profile.period_type.unit = index("cpu"), index("nanoseconds")
    profile.period = period
    profile.time_nanos = time_ns
    profile.duration_nanos = int(duration_s * 1e9)
    functions: dict[str, int] = {}
    for stack, count in sorted(folded.items()):
        location_ids = []
        for name in reversed(stack.split(";")):  # pprof wants the leaf first
            if name not in functions:
                functions[name] = len(functions) + 1
                profile.function.add(id=functions[name], name=index(name), system_name=index(name))
                location = profile.location.add(id=functions[name])
                location.line.add(function_id=functions[name])
            location_ids.append(functions[name])
        profile.sample.add(location_id=location_ids, value=[count, count * period])
    profile.string_table.extend(sorted(strings, key=strings.__getitem__))
    return gzip.compress(profile.SerializeToString(), mtime=0)


@dataclass
class _Node:
    name: str
    count: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


def flame_graph_svg(folded: Mapping[str, int], *, title: str, width: int = 1200) -> str:
    """A static flame graph (root at the bottom); each frame's width is its share of samples."""
    root = _Node("all")
    for stack, count in folded.items():
        root.count += count
        node = root
        for name in stack.split(";"):
            node = node.children.setdefault(name, _Node(name))
            node.count += count
    depth = _depth(root)
    row, top, margin = 17, 36, 10
    height = top + depth * row + margin
    total = max(root.count, 1)
    scale = (width - 2 * margin) / total
    rects: list[str] = []

    def draw(node: _Node, x: float, level: int) -> None:
        w = node.count * scale
        if w < 0.3:
            return
        y = height - margin - (level + 1) * row
        share = 100.0 * node.count / total
        label = node.name if w > 7 * len(node.name) else node.name[: max(int(w / 7) - 2, 0)] + ".." if w > 21 else ""
        rects.append(
            f"<g><title>{escape(node.name)} ({node.count} samples, {share:.2f}%)</title>"
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" fill="{_colour(node.name)}" rx="2"/>'
            f'<text x="{x + 3:.1f}" y="{y + 12}">{escape(label)}</text></g>'
        )
        child_x = x
        for child in sorted(node.children.values(), key=lambda n: n.name):
            draw(child, child_x, level + 1)
            child_x += child.count * scale

    draw(root, margin, 0)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="monospace" font-size="11">'
        f'<rect width="100%" height="100%" fill="#fdfaf4"/>'
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="15">{escape(title)}</text>'
        + "".join(rects)
        + "</svg>\n"
    )


def _depth(node: _Node) -> int:
    return 1 + max((_depth(c) for c in node.children.values()), default=0)


def _colour(name: str) -> str:
    h = zlib.crc32(name.encode())
    return f"rgb({205 + h % 50},{80 + (h >> 8) % 120},{40 + (h >> 16) % 50})"
