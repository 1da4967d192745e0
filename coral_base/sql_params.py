"""``WHERE key IN (…)`` over any number of keys: SQLite caps the parameters of one statement."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

CHUNK = 500  # well under SQLite's limit (999 before 3.32), and large enough that the statement count stays low


def in_chunks(keys: Sequence[str], size: int = CHUNK) -> Iterator[tuple[str, list[str]]]:
    """``(marks, chunk)`` per chunk: ``marks`` is ``"?,?,…"`` for an ``IN (…)`` of ``chunk``."""
    for start in range(0, len(keys), size):
        chunk = list(keys[start : start + size])
        yield ",".join("?" * len(chunk)), chunk
