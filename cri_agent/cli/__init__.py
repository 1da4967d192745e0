"""The ``coral`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cri_agent import __version__
from cri_agent.cli import agent_node, cache_views, colony, operations, operator
from cri_agent.errors import CoralError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coral",
        description="Coral node agent: discover every workload of this node from its runtime.",
    )
    parser.add_argument("--version", action="version", version=f"coral-cri-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    agent = commands.add_parser("agent", help="run the node agent or read its cache")
    agent_commands = agent.add_subparsers(dest="agent_command", required=True, metavar="COMMAND")
    agent_node.register(agent_commands)
    cache_views.register(agent_commands)
    colony.register(commands)
    operator.register(commands)
    operations.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except CoralError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if not exc.transient else 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
