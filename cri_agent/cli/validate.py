"""``coral agent validate-config FILE``: check an agent config as the agent would load it (as ``otelcol validate``).

The file is read by the agent's own loader (``cri_agent.config``), with the
``CORAL_*`` environment on top as the agent would see it, and every problem
is printed with its key path. Exit code 0 when valid, 1 when not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(commands: Any) -> None:
    validate = commands.add_parser(
        "validate-config",
        help="check an agent config file with the agent's loader: OK, or each problem with its key",
    )
    validate.add_argument("file", type=Path, help="agent-config.yaml")
    validate.add_argument("--override-file", type=Path, help="YAML with extra overrides/services, as the agent takes")
    validate.set_defaults(handler=validate_command)


def validate_command(args: argparse.Namespace) -> int:
    from coral_base.errors import ConfigError
    from cri_agent.config.loading import check_settings

    try:
        _, problems = check_settings(args.file, override_file=args.override_file)
    except ConfigError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 1
    if not problems:
        print(f"{args.file}: OK")
        return 0
    for problem in problems:
        print(f"{args.file}: {problem}")
    print(f"{args.file}: {len(problems)} problem(s)", file=sys.stderr)
    return 1
