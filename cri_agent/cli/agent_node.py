"""``coral agent node``: run the discovery agent in the foreground."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


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
    # The agent, its config model and the event loop load when the agent runs, not to parse flags.
    from cri_agent.cli.foreground import run_in_foreground
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
    run_in_foreground(load_settings(args.config, override_file=args.override_file, flags=flags))
    return 0
