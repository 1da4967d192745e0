"""``coral colony init|start``: create a colony identity and run its mesh endpoint."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import uuid
from pathlib import Path
from typing import Any

from coral_colony.identity import init_colony, load_colony
from coral_colony.server import serve
from cri_agent.logs import configure


def register(commands: Any) -> None:
    colony = commands.add_parser("colony", help="create and run a colony")
    sub = colony.add_subparsers(dest="colony_command", required=True, metavar="COMMAND")
    init = sub.add_parser("init", help="write a CA, the server certificate, a colony id and a random secret")
    init.add_argument("dir", type=Path)
    init.add_argument("--colony-id", default="", help="default: colony-<random>")
    init.add_argument(
        "--host", action="append", help="name or IP agents dial (repeatable; default: localhost, 127.0.0.1)"
    )
    init.set_defaults(handler=init_command)
    start = sub.add_parser("start", help="serve the mesh endpoint over TLS")
    start.add_argument("--dir", type=Path, required=True, help="the directory `coral colony init` wrote")
    start.add_argument("--listen", default="127.0.0.1:9000", help="address:port (default 127.0.0.1:9000)")
    start.add_argument("--db", type=Path, help="registry file (default DIR/colony.db)")
    start.add_argument("--log-format", choices=["text", "json"], default="text")
    start.set_defaults(handler=start_command)


def init_command(args: argparse.Namespace) -> int:
    colony_id = args.colony_id or f"colony-{uuid.uuid4().hex[:8]}"
    hosts = args.host or ["localhost", "127.0.0.1", socket.gethostname()]
    identity = init_colony(args.dir, colony_id=colony_id, hosts=hosts)
    print(f"colony {identity.colony_id} initialised in {identity.directory}")
    print(f"  agents pin the CA:        colony.caFile = {identity.ca_cert}")
    print(f"  agents read the secret:   colony.secretFile = {identity.secret_file} (mode 0600)")
    print(f"  certificate valid for:    {', '.join(hosts)}")
    return 0


def start_command(args: argparse.Namespace) -> int:
    configure(fmt=args.log_format)
    identity = load_colony(args.dir)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(identity, listen=args.listen, database=args.db or args.dir / "colony.db", stop=stop)

    asyncio.run(run())
    return 0
