"""How an operator command reaches the colony: the connection flags, and the client they make.

Each setting comes from its flag, else its environment variable, else the
chosen context of the CLI config file (``contexts``), else its default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from coral_base.durations import flag, parse_timeout

if TYPE_CHECKING:  # gRPC loads when a command connects, not to parse its flags (`coral services --help`)
    from coral_colony.client import ColonyClient

DEFAULT_REQUEST_TIMEOUT = "10s"


def connection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("colony connection (flags win over the environment, which wins over the context)")
    group.add_argument("--context", help="a context of the CLI config file (default: its current context)")
    group.add_argument("--colony", help="host:port of the colony (env CORAL_COLONY, default 127.0.0.1:9000)")
    group.add_argument("--ca", type=Path, help="the colony's ca.crt (env CORAL_COLONY_CA)")
    group.add_argument(
        "--token",
        help="operator token; visible to every user of this machine in ps: prefer --token-file or CORAL_TOKEN",
    )
    group.add_argument("--token-file", type=Path, help="file holding the operator token (env CORAL_TOKEN_FILE)")
    group.add_argument(
        "--tls-server-name",
        help="check the colony's certificate against this name rather than the address's host "
        "(through kubectl port-forward: the colony Service's name, e.g. coral-colony.coral.svc)",
    )
    group.add_argument(
        "--request-timeout",
        type=flag(parse_timeout),
        default=parse_timeout(DEFAULT_REQUEST_TIMEOUT),
        metavar="DURATION",
        help=f"give up on a call after this long, e.g. 30s, 1m (default {DEFAULT_REQUEST_TIMEOUT}; 0: never)",
    )


def open_client(args: argparse.Namespace) -> ColonyClient:
    from coral_colony.cli.contexts import endpoint_defaults
    from coral_colony.client import ColonyClient, OperatorEndpoint

    if args.token:
        print(
            "warning: --token puts the token in this command's arguments, where any user of this machine can read "
            "it (ps); use --token-file or CORAL_TOKEN",
            file=sys.stderr,
        )
    target = OperatorEndpoint.resolve(
        address=args.colony,
        ca_file=args.ca,
        token=args.token,
        token_file=args.token_file,
        tls_server_name=args.tls_server_name,
        context=endpoint_defaults(args.context),
    )
    return ColonyClient(target, timeout=args.request_timeout)
