"""``coral agent services|events|status``: read the agent's cache (read-only)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coral_base.tables import age, print_table
from cri_agent.paths import DEFAULT_CACHE
from cri_agent.status_file import read_status

if TYPE_CHECKING:  # SQLite loads only for commands that read the cache: `status` of a running agent does not
    from cri_agent.cache import Cache


def register(commands: Any) -> None:
    services = commands.add_parser("services", help="services in the agent's cache")
    _common(services)
    services.add_argument("--namespace", "-n", help="only this namespace")
    services.set_defaults(handler=services_command)

    events = commands.add_parser("events", help="discovery events in the agent's cache")
    _common(events)
    events.add_argument("--kind", choices=["added", "updated", "removed", "skipped", "error"])
    events.add_argument("--since-id", type=int, default=0, help="only events after this id")
    events.add_argument("--limit", type=int, help="at most this many (the newest)")
    events.set_defaults(handler=events_command)

    status = commands.add_parser("status", help="the agent's health conditions")
    _common(status)
    status.set_defaults(handler=status_command)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"default {DEFAULT_CACHE}")
    parser.add_argument("--output", "-o", choices=["table", "json"], default="table")


def _open(path: Path) -> Cache:
    from cri_agent.cache import Cache

    return Cache(path, read_only=True)


def services_command(args: argparse.Namespace) -> int:
    cache = _open(args.cache)
    rows = [r for r in cache.service_rows() if not args.namespace or r["namespace"] == args.namespace]
    if args.output == "json":
        for row in rows:
            row["labels"] = json.loads(row["labels"] or "{}")
            row["overridden_fields"] = json.loads(row["overridden_fields"] or "[]")
        print(json.dumps(rows, indent=2))
        return 0
    print_table(
        ["NAMESPACE", "POD", "CONTAINER", "NAME", "PORT", "TYPE", "PROVENANCE", "HEALTH", "POD IP", "AGE"],
        [
            [
                r["namespace"],
                r["pod_name"],
                r["container"],
                r["name"],
                f"{r['port']}/{r['protocol']}" if r["port"] else "-",
                r["service_type"],
                r["provenance"],
                r["health"],
                r["pod_ip"] or "-",
                age(r["first_seen"]),
            ]
            for r in rows
        ],
    )
    return 0


def events_command(args: argparse.Namespace) -> int:
    cache = _open(args.cache)
    events = cache.events(since_id=args.since_id, kind=args.kind)
    if args.limit:
        events = events[-args.limit :]
    if args.output == "json":
        print(json.dumps([_event_dict(e) for e in events], indent=2))
        return 0
    print_table(
        ["ID", "TIME", "KIND", "NAMESPACE", "POD", "SERVICE", "REASON"],
        [
            [
                str(e.id),
                time.strftime("%H:%M:%S", time.localtime(e.at)),
                e.kind,
                e.namespace or "-",
                e.pod_name or "-",
                e.service or "-",
                e.reason + (f" [{', '.join(e.fields)}]" if e.fields else ""),
            ]
            for e in events
        ],
    )
    return 0


def status_command(args: argparse.Namespace) -> int:
    """The running agent's conditions from its status file (right even when the cache fails);
    the last ones the cache recorded when no agent runs."""
    live = read_status(args.cache)
    if live is not None and live.running:
        conditions: list[dict[str, Any]] = list(live.status.get("conditions") or [])
        meta = {
            "agent_id": str(live.status.get("agent_id", "")),
            "node_name": str(live.status.get("node_name", "")),
            "agent_pid": str(live.pid),
        }
        running = f"running (pid {live.pid})"
    else:
        from cri_agent import cache_reader

        conn = cache_reader.open_read_only(args.cache)
        conditions = [{**c, "ok": bool(c["ok"])} for c in cache_reader.conditions(conn)]
        meta = cache_reader.meta(conn)
        running = "not running (last recorded conditions)"
    healthy = all(c["ok"] for c in conditions)
    if args.output == "json":
        print(
            json.dumps(
                {"healthy": healthy, "running": bool(live and live.running), "meta": meta, "conditions": conditions},
                indent=2,
            )
        )
    else:
        print(
            f"agent {meta.get('agent_id', '?')} on node {meta.get('node_name', '?')}, {running}: "
            f"{'healthy' if healthy else 'degraded'}"
        )
        print_table(
            ["CONDITION", "OK", "SINCE", "REASON"],
            [[c["name"], "yes" if c["ok"] else "NO", age(c["since"]), c["reason"]] for c in conditions],
        )
    return 0 if healthy else 1


def _event_dict(event: Any) -> dict[str, Any]:
    return {slot: getattr(event, slot) for slot in event.__slots__}
