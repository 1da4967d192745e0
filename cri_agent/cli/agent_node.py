"""``coral agent node``: run the discovery agent in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coral_base.logs import configure

if TYPE_CHECKING:  # the agent and its config model load when the agent runs, not to parse flags
    from cri_agent.agent import NodeAgent


def register(commands: Any) -> None:
    node = commands.add_parser(
        "node",
        help="discover this node's pods from the container runtime",
        description="Run the node agent: CRI + /proc discovery into the SQLite cache. "
        "Precedence: defaults < --config file < CORAL_* environment < flags.",
    )
    node.add_argument("--config", type=Path, help="agent-config.yaml")
    node.add_argument("--override-file", type=Path, help="YAML with extra overrides/services")
    node.add_argument("--mode", choices=["passive"], help="discovery mode (default passive)")
    node.add_argument("--include-namespace", action="append", metavar="NS", dest="include_ns")
    node.add_argument("--exclude-namespace", action="append", metavar="NS", dest="exclude_ns")
    node.add_argument("--include-label", action="append", metavar="KEY=VALUE")
    node.add_argument("--exclude-label", action="append", metavar="KEY=VALUE")
    node.add_argument("--cri-socket", type=Path, help="default /run/containerd/containerd.sock")
    node.add_argument("--cache", type=Path, help="default /var/lib/coral/agent.db")
    node.add_argument("--node-name", help="default $NODE_NAME, else the hostname")
    node.add_argument("--resync-interval", help="full re-list period, e.g. 5m (default)")
    node.add_argument("--poll-interval", help="light pass period (new listening ports), e.g. 30s (default)")
    node.add_argument("--no-events", action="store_true", help="do not subscribe to runtime events")
    node.add_argument(
        "--kubeconfig", type=Path, help="use the Kubernetes API with these credentials (default: in-cluster)"
    )
    node.add_argument("--log-format", choices=["text", "json"])
    node.add_argument(
        "--observe-only", action="store_true", help="refuse tap and profile (sample keeps no payload: allowed)"
    )
    node.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from cri_agent.agent import NodeAgent
    from cri_agent.config import flags_to_settings, load_settings

    flags = flags_to_settings(
        mode=args.mode,
        include_namespaces=args.include_ns,
        exclude_namespaces=args.exclude_ns,
        include_labels=args.include_label,
        exclude_labels=args.exclude_label,
        cri_socket=args.cri_socket,
        cache=args.cache,
        node_name=args.node_name,
        log_format=args.log_format,
        resync_interval=args.resync_interval,
        poll_interval=args.poll_interval,
        no_events=args.no_events,
        observe_only=args.observe_only,
        kubeconfig=args.kubeconfig,
    )
    settings = load_settings(args.config, override_file=args.override_file, flags=flags)
    configure(fmt=settings.log.format, level=settings.log.level)
    asyncio.run(_serve(NodeAgent(settings)))
    return 0


async def _serve(agent: NodeAgent) -> None:
    from cri_agent.agent import SHUTDOWN_GRACE_S

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def _on_signal() -> None:
        if stop.is_set():
            os._exit(1)  # second signal: the operator insists
        stop.set()
        # Last resort: a wedged shutdown must not keep the pod Terminating.
        timer = threading.Timer(SHUTDOWN_GRACE_S + 5.0, lambda: os._exit(1))
        timer.daemon = True
        timer.start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal)
    await agent.run(stop)
