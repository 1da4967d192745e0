"""Every flag of every `coral` command is in the docs (docs/*.md or the README), under its long name."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

from coral_cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
GENERIC = {"--help", "--version"}


def flags(parser: argparse.ArgumentParser, command: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """(command, flag) for each long option of each command and subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from flags(sub, (*command, name))
        else:
            for option in action.option_strings:
                if option.startswith("--") and option not in GENERIC:
                    yield " ".join(command), option


def test_every_flag_of_every_command_is_documented() -> None:
    docs = "\n".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))) + (ROOT / "README.md").read_text()
    every = sorted(set(flags(build_parser())))
    assert len(every) > 100, "the whole parser tree was walked"
    missing = [
        f"coral {command} {flag}" for command, flag in every if not re.search(rf"{re.escape(flag)}(?![\w-])", docs)
    ]
    assert missing == [], "undocumented flags (add them to docs/): " + ", ".join(missing)
