"""``coral completion bash|zsh``: the shell completion script, made by shtab from the full parser.

Install with ``coral completion bash > /etc/bash_completion.d/coral`` or
``coral completion zsh > "${fpath[1]}/_coral"``.
"""

from __future__ import annotations

import argparse
from typing import Any

SHELLS = ("bash", "zsh")


def register(commands: Any) -> None:
    completion = commands.add_parser(
        "completion",
        help="print a shell completion script: coral completion bash|zsh",
        description="Print the completion script for SHELL: "
        "`coral completion bash > /etc/bash_completion.d/coral`, "
        '`coral completion zsh > "${fpath[1]}/_coral"`.',
    )
    completion.add_argument("shell", choices=SHELLS)
    completion.set_defaults(handler=completion_command)


def completion_command(args: argparse.Namespace) -> int:
    import shtab  # ~50 ms: only here

    from coral_cli import build_parser

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0
