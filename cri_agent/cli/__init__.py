"""``coral agent …``: the node agent's commands (run it, read its cache)."""

from __future__ import annotations

from typing import Any

from cri_agent.cli import agent_node, cache_views, validate


def register(commands: Any) -> None:
    agent = commands.add_parser("agent", help="run the node agent or read its cache")
    agent_commands = agent.add_subparsers(dest="agent_command", required=True, metavar="COMMAND")
    agent_node.register(agent_commands)
    cache_views.register(agent_commands)
    validate.register(agent_commands)
