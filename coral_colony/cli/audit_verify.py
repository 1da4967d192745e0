"""``coral audit verify``: check the audit log's hash chain in the registry file, and name the first break.

It reads the file, not the operator API: an auditor checks the log without trusting the process that
wrote it, on the colony's volume or on a copy (``sqlite3 colony.db ".backup copy.db"``), with the
colony running or not; the hashes cover the entries exactly as stored, which the API's millisecond
times would not reproduce. Reading the file needs the file: whoever can read it can read the log
anyway (it is 0600, the colony's). The file is opened read-only and nothing is written.

Exit codes: 0 the chain holds (and the anchor, if given), 1 it is broken, 2 the file cannot be read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from coral_base.errors import ConfigError
from coral_base.hash_chain import Link, against_anchor, describe, parse_anchor
from coral_colony.stores.reader import RegistryReader


def register(audit: argparse.ArgumentParser) -> None:
    """``verify`` under ``coral audit`` (which, without it, queries the log through the API)."""
    commands = audit.add_subparsers(dest="audit_command", metavar="verify")
    verify = commands.add_parser(
        "verify",
        help="check the audit log's hash chain in the registry file (read-only) and name the first break",
        description="Check the hash chain of the audit log in the colony's registry file: every entry links to "
        "the one before it. Exit 0: it holds; 1: broken (the first break is named); 2: the file cannot be read.",
    )
    where = verify.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", type=Path, help="the registry file (a copy made with sqlite3 .backup works too)")
    where.add_argument("--dir", type=Path, help="the colony directory: its colony.db")
    verify.add_argument(
        "--anchor",
        type=_anchor,
        help="ID:HASH printed by an earlier verify, kept elsewhere: fails if the log no longer holds it "
        "(a log rewritten as a whole, or cut at its end)",
    )
    verify.add_argument("--output", "-o", choices=["table", "json"], default="table")
    verify.set_defaults(handler=verify_command)


def _anchor(text: str) -> Link:
    try:
        return parse_anchor(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def verify_command(args: argparse.Namespace) -> int:
    path: Path = args.db or args.dir / "colony.db"
    if not path.is_file():
        raise ConfigError(f"no registry file {path}: pass --db with the colony's colony.db (or --dir its directory)")
    reader = RegistryReader(path)
    try:
        verdict, start = reader.audit_chain()
        broken = verdict.broken
        if broken is None and args.anchor is not None:
            broken = against_anchor(args.anchor, verdict, start=start, recorded=reader.audit_hash(args.anchor.id))
    finally:
        reader.close()
    if args.output == "json":
        report: dict[str, Any] = {
            "ok": broken is None,
            "entries": verdict.checked,
            "checkpoint": {"id": start.id, "hash": start.hash},
            "last": {"id": verdict.last.id, "hash": verdict.last.hash},
            "broken": None if broken is None else {"entry_id": broken.entry_id, "what": broken.what},
        }
        print(json.dumps(report, indent=2))
    elif broken is not None and verdict.broken is None:
        print(f"audit log {path}: the chain holds to entry {verdict.last.id}, but not the anchor: {broken}")
    else:
        print("\n".join(describe(verdict, chain=f"audit log {path}", start=start)))
    return 0 if broken is None else 1
