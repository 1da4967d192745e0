"""The hash chain both audit trails carry: the colony's ``audit`` log and the agent's ``discovery_events``
and ``operations`` (docs/audit.md, "The hash chain").

Each entry records the hash of the entry before it (``prev_hash``) and its own (``hash``): SHA-256 of
the canonical encoding of its fields, its id among them, and ``prev_hash``. Changing an entry changes
its hash; deleting, inserting or moving one breaks the link of the entry after it. The first entry links
to ``GENESIS``, or, once older entries were pruned, to the checkpoint: the id and hash of the last
entry pruned. The chain is checked by reading entries back in id order (``verify``).

The canonical encoding, for whoever checks a chain with their own tools: the UTF-8 bytes of the JSON
array ``[prev_hash, {column: value, ...}]``, keys sorted, no spaces, non-ASCII escaped (``\\uXXXX``);
TEXT as a string, INTEGER as an integer, FLOAT as the shortest decimal that reads back as the same
double (Python's ``repr``: ``1000.0``, ``1764068531.25``), NULL as ``null``. Values are encoded as
the column's type declares them, so an entry hashes the same written and read back.

Each program keeps its rows, checkpoints and guards in its own store; ``rows_of`` is the one query they
share: a chained table read back in id order.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

GENESIS = "0" * 64  # what the first entry of a chain links to
ChainColumns = Mapping[str, type]  # the hashed columns (the id among them) and the type each is stored as
Row = Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Link:
    """A place in a chain: the id and hash of an entry (the last one, or the last one pruned)."""

    id: int
    hash: str


START = Link(0, GENESIS)  # a chain with no entry yet, and none pruned


@dataclass(frozen=True, slots=True)
class Break:
    """The first place where a chain does not hold."""

    entry_id: int
    what: str  # what differs, in words an auditor can act on

    def __str__(self) -> str:
        return f"entry {self.entry_id}: {self.what}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What checking a chain found: how many entries held, the last link that held, the first break."""

    checked: int
    last: Link  # the last entry that held (the checkpoint when none did): the anchor to keep elsewhere
    broken: Break | None = None

    @property
    def ok(self) -> bool:
        return self.broken is None


def _canonical(value: object, stored_as: type) -> object:
    if value is None:
        return None
    if stored_as is float:
        return float(value)  # type: ignore[arg-type]
    if stored_as is int:
        return int(value)  # type: ignore[call-overload]
    return str(value)


def entry_hash(prev_hash: str, row: Row, columns: ChainColumns) -> str:
    """The hash of an entry with these ``columns`` of ``row``, following ``prev_hash``."""
    fields = {name: _canonical(row.get(name), stored_as) for name, stored_as in columns.items()}
    encoded = json.dumps([prev_hash, fields], sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(encoded.encode()).hexdigest()


def seal(rows: Sequence[Row], *, after: Link, columns: ChainColumns) -> list[dict[str, object]]:
    """``rows`` numbered and chained to follow ``after``: each gains ``id``, ``prev_hash`` and ``hash``."""
    sealed: list[dict[str, object]] = []
    previous = after
    for row in rows:
        numbered: dict[str, object] = {**row, "id": previous.id + 1, "prev_hash": previous.hash}
        numbered["hash"] = entry_hash(previous.hash, numbered, columns)
        previous = Link(previous.id + 1, str(numbered["hash"]))
        sealed.append(numbered)
    return sealed


def rechain(rows: Iterable[Row], *, after: Link, columns: ChainColumns) -> Iterator[tuple[int, str, str]]:
    """``(id, prev_hash, hash)`` for rows that already have ids (a migration chaining older entries)."""
    previous = after.hash
    for row in rows:
        digest = entry_hash(previous, row, columns)
        yield int(row["id"]), previous, digest  # type: ignore[call-overload]
        previous = digest


def verify(rows: Iterable[Row], *, start: Link, columns: ChainColumns) -> Verdict:
    """Check ``rows`` (in id order, each with its ``id``, ``prev_hash`` and ``hash``) against ``start``.

    Stops at the first break and names it: an entry whose ``prev_hash`` is not the hash of the entry
    before it (an entry deleted, inserted or moved), one whose fields no longer give its ``hash`` (an
    entry changed), or one numbered at or below the entry before it (ids rewritten).
    """
    last = start
    checked = 0
    for row in rows:
        entry_id = int(row["id"])  # type: ignore[call-overload]
        prev_hash, recorded = row.get("prev_hash"), row.get("hash")
        where = f"entry {last.id}" if last.id else "the start of the chain"
        if last is start and start.id:
            where = f"the checkpoint (entry {start.id}, the last one pruned)"
        if recorded is None or prev_hash is None:
            return Verdict(
                checked, last, Break(entry_id, "it carries no hash: something other than the writer added it")
            )
        if entry_id <= last.id:
            return Verdict(checked, last, Break(entry_id, f"its id does not follow {where}: ids were rewritten"))
        if prev_hash != last.hash:
            return Verdict(
                checked,
                last,
                Break(
                    entry_id,
                    f"it links to {str(prev_hash)[:16]}…, but {where} hashes to {last.hash[:16]}…: "
                    "an entry before it was deleted, inserted or moved",
                ),
            )
        digest = entry_hash(str(prev_hash), row, columns)
        if digest != recorded:
            return Verdict(
                checked,
                last,
                Break(
                    entry_id,
                    f"its fields hash to {digest[:16]}…, not to the {str(recorded)[:16]}… it was written with: "
                    "it was changed after it was written",
                ),
            )
        last = Link(entry_id, digest)
        checked += 1
    return Verdict(checked, last)


def against_anchor(anchor: Link, verdict: Verdict, *, start: Link, recorded: str | None) -> Break | None:
    """Whether a chain that verified still holds ``anchor`` (an id and hash kept elsewhere, e.g. printed by an
    earlier check): None when it does, or when the anchor was pruned since (it cannot be told then).

    ``recorded`` is the hash the chain holds for the anchor's id (None: no such entry). This is what
    detects a chain rewritten as a whole, or cut at its end, which verifying the chain alone cannot.
    """
    if anchor.id > verdict.last.id:
        return Break(
            anchor.id,
            f"the anchor names it, but the newest entry is {verdict.last.id}: entries were removed from the end",
        )
    if anchor.id < start.id:
        return None
    held = start.hash if anchor.id == start.id else recorded
    if held != anchor.hash:
        return Break(
            anchor.id,
            f"it hashes to {(held or 'nothing')[:16]}…, the anchor says {anchor.hash[:16]}…: "
            "the chain was rewritten at or before it",
        )
    return None


def parse_anchor(text: str) -> Link:
    """``ID:HASH`` (as ``describe`` prints it) -> the link; ValueError with the expected form otherwise."""
    entry_id, _, digest = text.partition(":")
    if not entry_id.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"anchor {text!r}: expected ID:HASH, an entry id and its 64-hex-digit hash")
    return Link(int(entry_id), digest)


def describe(verdict: Verdict, *, chain: str, start: Link) -> list[str]:
    """What a check found, in lines for a terminal: the break, or the anchor to keep."""
    since = f"from the checkpoint at entry {start.id} (the last one pruned)" if start.id else "from its first entry"
    if verdict.broken is not None:
        held = f"entry {verdict.last.id}" if verdict.checked else "no entry"
        return [
            f"{chain}: BROKEN at {verdict.broken}",
            f"the chain holds {since} up to {held} ({verdict.checked} entries)",
        ]
    return [
        f"{chain}: the chain holds, {verdict.checked} entries {since} to entry {verdict.last.id}",
        f"anchor: {verdict.last.id}:{verdict.last.hash}",
        "keep the anchor outside this host; --anchor with it shows whether a later copy still holds it",
    ]


def rows_of(conn: sqlite3.Connection, table: str, columns: Iterable[str]) -> Iterator[Row]:
    """``columns`` of every row of ``table`` in id order, as mappings, streamed (a log may be large)."""
    cursor = conn.execute(f"SELECT {', '.join(f'[{c}]' for c in columns)} FROM [{table}] ORDER BY id")
    names = [d[0] for d in cursor.description]
    return (dict(zip(names, values, strict=True)) for values in cursor)
