"""Listings as kubectl prints them: ``-o table|wide|json|yaml``, ``--no-headers``, ``--watch``.

A command describes its resource once, as columns (``wide`` ones only with
``-o wide``) and a document (``-o json|yaml``, built by ``coral_base.documents``
so one resource has one schema whichever program shows it), and hands its
items to a ``Listing``. An empty table says "No resources found" on stderr,
exit code 0, as kubectl does; JSON and YAML print an empty list.

Watching (``--watch``) polls: the listing first, then, every interval, the
items whose document changed (or, for a log, the new entries), without the
header again; Ctrl-C ends it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import IO, Generic, NamedTuple, TypeVar

from coral_base.durations import flag, parse_duration
from coral_base.tables import print_table

T = TypeVar("T")
Json = None | bool | int | float | str | list["Json"] | dict[str, "Json"]
JsonObject = dict[str, Json]

NO_RESOURCES = "No resources found"
DEFAULT_WATCH_INTERVAL_S = 2.0


class OutputFormat(StrEnum):
    TABLE = "table"
    WIDE = "wide"  # the table with more columns
    JSON = "json"
    YAML = "yaml"


def output_flags(parser: argparse.ArgumentParser, *, watch: bool = False) -> None:
    """``-o/--output`` and ``--no-headers`` (and ``--watch``, ``--watch-interval``) for a listing command."""
    parser.add_argument(
        "--output",
        "-o",
        choices=[f.value for f in OutputFormat],
        default=OutputFormat.TABLE.value,
        help="table (default), wide (more columns), json or yaml",
    )
    parser.add_argument("--no-headers", action="store_true", help="tables without their header line (for sort, awk)")
    if watch:
        parser.add_argument("--watch", action="store_true", help="after the listing, print what changes (Ctrl-C ends)")
        parser.add_argument(
            "--watch-interval",
            type=flag(parse_duration),
            default=DEFAULT_WATCH_INTERVAL_S,
            metavar="DURATION",
            help=f"how often --watch asks (default {DEFAULT_WATCH_INTERVAL_S:g}s)",
        )


class Column(NamedTuple, Generic[T]):  # a NamedTuple: `dataclasses` (~10 ms to import) stays unloaded
    header: str
    cell: Callable[[T], str]
    wide: bool = False  # only with -o wide


class Listing(Generic[T]):
    """Prints items in the format the flags chose; later calls (a watch) print items without the header."""

    def __init__(
        self,
        columns: Sequence[Column[T]],
        document: Callable[[T], JsonObject],
        *,
        output: str = OutputFormat.TABLE.value,
        no_headers: bool = False,
        stream: bool = False,
        out: IO[str] | None = None,
    ) -> None:
        self.format = OutputFormat(output)
        self.columns = [c for c in columns if self.format is OutputFormat.WIDE or not c.wide]
        self.document = document
        self.no_headers = no_headers
        self.stream = stream  # a watch: documents one by one rather than one list
        self._out = out
        self._printed = False

    @property
    def out(self) -> IO[str]:
        return self._out or sys.stdout  # looked up when printing: tests capture sys.stdout

    def print(self, items: Sequence[T]) -> None:
        first, self._printed = not self._printed, True
        if self.format in (OutputFormat.JSON, OutputFormat.YAML):
            documents = [self.document(item) for item in items]
            if self.stream:
                for document in documents:
                    self._dump(document, separate=True)
            elif first:
                self._dump(documents, separate=False)
        elif items:
            headers = [c.header for c in self.columns]
            rows = [[c.cell(item) for c in self.columns] for item in items]
            print_table(headers, rows, headers_shown=first and not self.no_headers, out=self.out)
        elif first:
            print(NO_RESOURCES, file=sys.stderr)
        self.out.flush()

    def _dump(self, data: object, *, separate: bool) -> None:
        _dump(data, self.format, separate=separate, out=self.out)


def _dump(data: object, output: OutputFormat, *, separate: bool, out: IO[str]) -> None:
    if output is OutputFormat.JSON:
        print(json.dumps(data, indent=2), file=out)
        return
    import yaml  # only when YAML is asked for

    if separate:
        print("---", file=out)
    out.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def print_document(document: JsonObject, *, output: str) -> None:
    """One object (not a listing: ``coral whoami``, ``coral agent status``) as JSON or YAML."""
    _dump(document, OutputFormat(output), separate=False, out=sys.stdout)


def watch(
    fetch: Callable[[], Sequence[T]],
    listing: Listing[T],
    *,
    key: Callable[[T], Hashable],
    interval: float,
    volatile: Iterable[str] = (),
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Print ``fetch()``, then every ``interval`` the items that are new or whose document changed.

    ``volatile`` names document keys that change without the item changing
    (a heartbeat time): a change there alone prints nothing. Returns on
    KeyboardInterrupt (Ctrl-C), which ends a watch cleanly.
    """
    skip = frozenset(volatile)

    def fingerprint(item: T) -> str:
        document: Mapping[str, Json] = listing.document(item)
        return json.dumps({k: v for k, v in document.items() if k not in skip}, sort_keys=True)

    try:
        items = fetch()
        listing.print(items)
        seen = {key(item): fingerprint(item) for item in items}
        while True:
            sleep(interval)
            changed = []
            for item in fetch():
                marked = fingerprint(item)
                if seen.get(key(item)) != marked:
                    seen[key(item)] = marked
                    changed.append(item)
            if changed:
                listing.print(changed)
    except KeyboardInterrupt:
        return
