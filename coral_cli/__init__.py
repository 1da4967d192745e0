"""``coral``: one entry point for both programs.

Each command belongs to one program, whose module registers it: ``coral
agent …`` to the node agent (``cri_agent.cli``), ``coral colony …`` and the
operator's commands to the colony (``coral_colony.cli``). Only the module of
the command being run is imported, so ``coral --help`` and ``coral agent
status`` start without loading gRPC, SQLite helpers or the config model.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from coral_base import __version__
from coral_base.errors import CoralError

# command -> (the module that registers it, its one-line help for `coral --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "agent": ("cri_agent.cli", "run the node agent or read its cache"),
    "colony": ("coral_colony.cli.colony", "create and run a colony"),
    "agents": ("coral_colony.cli.queries", "agents registered with the colony"),
    "services": ("coral_colony.cli.queries", "services in the colony, one line each with its node"),
    "audit": ("coral_colony.cli.queries", "the colony's audit log"),
    "whoami": ("coral_colony.cli.queries", "who the colony knows your token as: name, scopes, namespaces"),
    "tap": ("coral_colony.cli.operations", "capture packets in a pod's network namespace, or every pod of a workload"),
    "profile": ("coral_colony.cli.operations", "sample CPU stacks of a pod's processes"),
    "sample": ("coral_colony.cli.operations", "a short capture reduced to a flow table on the node (no payload)"),
    "config": ("coral_colony.cli.contexts", "contexts of the CLI config file: which colony, CA and token file to use"),
    "completion": ("coral_cli.completion", "print a shell completion script: coral completion bash|zsh"),
}
# The long-running programs keep gRPC's own error lines in their logs; a command says what failed in words.
DAEMONS = {("agent", "node"), ("colony", "start")}


def quiet_grpc(args: Sequence[str]) -> None:
    """Silence gRPC's C core before anything imports it (it reads these once); the user's settings win."""
    words = [a for a in args if not a.startswith("-")]
    daemon = tuple(words[:2]) in DAEMONS
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR" if daemon else "NONE")
    os.environ.setdefault("GRPC_TRACE", "")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with ``command``'s module registered (every module when None) and the rest listed."""
    parser = argparse.ArgumentParser(
        prog="coral",
        description="Coral node agent: discover every workload of this node from its runtime.",
    )
    parser.add_argument("--version", action="version", version=f"coral-cri-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {module for module, _ in COMMANDS.values()} if command is None else set()
    if command in COMMANDS:
        modules.add(COMMANDS[command][0])
    for module in sorted(modules):
        importlib.import_module(module).register(commands)
    for name, (_, help_text) in COMMANDS.items():
        if name not in commands.choices:
            commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    quiet_grpc(args_in)
    command = next((a for a in args_in if not a.startswith("-")), "")
    args = build_parser(command if command in COMMANDS else "").parse_args(args_in)
    try:
        code: int = args.handler(args)
    except CoralError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if not exc.transient else 1
    except KeyboardInterrupt:
        return 130
    return code
