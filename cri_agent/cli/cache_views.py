"""``coral agent services|events|status``: read the agent's cache (read-only)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coral_base.tables import age, print_table
from cri_agent.paths import DEFAULT_CACHE
from cri_agent.status_file import LiveStatus, Probe, read_status

if TYPE_CHECKING:  # SQLite loads only for commands that read the cache: `status` of a running agent does not
    from cri_agent.cache.reader import CacheReader
    from cri_agent.cache.services import ServiceRow


# EventKind's values (a test checks): cri_agent.model loads dataclasses, which `coral --help` need not.
EVENT_KINDS = ("added", "updated", "removed", "skipped", "error")


def register(commands: Any) -> None:
    services = commands.add_parser("services", help="services in the agent's cache")
    _common(services)
    services.add_argument("--namespace", "-n", help="only this namespace")
    services.set_defaults(handler=services_command)

    events = commands.add_parser("events", help="discovery events in the agent's cache")
    _common(events)
    events.add_argument("--kind", choices=EVENT_KINDS)
    events.add_argument("--since-id", type=int, default=0, help="only events after this id")
    events.add_argument("--limit", type=int, help="at most this many (the newest)")
    events.add_argument(
        "--verify",
        action="store_true",
        help="check the hash chains of discovery_events and operations instead, and name the first break "
        "(exit 1 when one is broken)",
    )
    events.set_defaults(handler=events_command)

    status = commands.add_parser(
        "status",
        help="the agent's health conditions",
        description="The agent's conditions; exit 1 when one is false. With --probe, what a kubelet exec probe "
        "asks, from the status file alone (no SQLite): live = the agent runs and its discovery loop's heartbeat "
        "is fresh; ready = live, the first discovery pass is done and the runtime answers (or the Kubernetes API "
        "fallback serves its pods). The colony plays no part in either. Exit 0 yes, 1 no, with one line saying why.",
    )
    _common(status)
    status.add_argument("--probe", choices=[p.value for p in Probe], help="answer one probe: live or ready")
    status.set_defaults(handler=status_command)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"default {DEFAULT_CACHE}")
    parser.add_argument("--output", "-o", choices=["table", "json"], default="table")


def _open(path: Path) -> CacheReader:
    from cri_agent.cache.reader import CacheReader

    return CacheReader(path)


def services_command(args: argparse.Namespace) -> int:
    with _open(args.cache) as cache:
        rows = [r for r in cache.service_rows() if not args.namespace or r.service.namespace == args.namespace]
    if args.output == "json":
        print(json.dumps([_service_dict(r) for r in rows], indent=2))
        return 0
    print_table(
        ["NAMESPACE", "POD", "CONTAINER", "NAME", "PORT", "TYPE", "PROVENANCE", "HEALTH", "POD IP", "AGE"],
        [_service_line(row) for row in rows],
    )
    return 0


def _service_line(row: ServiceRow) -> list[str]:
    s = row.service
    port = f"{s.port}/{s.protocol}" if s.port else "-"
    return [
        s.namespace,
        s.pod_name,
        s.container,
        s.name,
        port,
        s.service_type,
        s.provenance,
        row.health,
        s.pod_ip or "-",
        age(row.first_seen),
    ]


def events_command(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from cri_agent.model import EventKind

    if args.verify:
        return verify_command(args)
    kind = EventKind(args.kind) if args.kind else None
    with _open(args.cache) as cache:
        events = cache.events(since_id=args.since_id, kind=kind, limit=args.limit or None)
    if args.output == "json":
        print(json.dumps([asdict(e) for e in events], indent=2))
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


def verify_command(args: argparse.Namespace) -> int:
    """``coral agent events --verify``: both chains checked from their checkpoints (the file read-only)."""
    from coral_base.hash_chain import describe
    from cri_agent.cache.migrations import SCHEMA_VERSION

    with _open(args.cache) as cache:
        checked = cache.chains()
        recorded = cache.meta().get("schema_version", "")
    broken = any(not verdict.ok for _, verdict, _ in checked)
    if args.output == "json":
        print(
            json.dumps(
                {
                    table: {
                        "ok": verdict.ok,
                        "entries": verdict.checked,
                        "checkpoint": {"id": start.id, "hash": start.hash},
                        "last": {"id": verdict.last.id, "hash": verdict.last.hash},
                        "broken": None if verdict.broken is None else str(verdict.broken),
                    }
                    for table, verdict, start in checked
                },
                indent=2,
            )
        )
        return 1 if broken else 0
    if recorded != str(SCHEMA_VERSION):
        print(
            f"note: cache {args.cache} is at schema version {recorded}, before hash chains: what follows is the "
            "chain of a migrated copy, which vouches for nothing; its agent chains the file when it next starts"
        )
    for table, verdict, start in checked:
        print("\n".join(describe(verdict, chain=f"{args.cache} {table}", start=start)))
    return 1 if broken else 0


def status_command(args: argparse.Namespace) -> int:
    """The running agent's conditions from its status file (right even when the cache fails);
    the last ones the cache recorded when no agent runs."""
    live = read_status(args.cache)
    if args.probe:
        return _probe(live, Probe(args.probe), cache=args.cache)
    if live is not None and live.running:
        conditions: list[dict[str, Any]] = list(live.status.get("conditions") or [])
        meta = {
            "agent_id": str(live.status.get("agent_id", "")),
            "node_name": str(live.status.get("node_name", "")),
            "agent_pid": str(live.pid),
        }
        running = f"running (pid {live.pid})"
    else:
        from cri_agent.cache import agent_state
        from cri_agent.cache.opening import open_read_only

        db = open_read_only(args.cache)
        try:
            conditions = [c._asdict() for c in agent_state.conditions(db)]
            meta = agent_state.meta(db)
        finally:
            db.conn.close()
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


def _probe(live: LiveStatus | None, probe: Probe, *, cache: Path) -> int:
    """One line on stdout (the kubelet shows it in the pod's events when the probe fails); 0 or 1."""
    if live is None:
        ok, reason = False, f"no agent status next to {cache}: the agent has not started (or --cache is wrong)"
    else:
        ok, reason = live.probe(probe, now=time.time())
    print(f"{probe.value}: {'ok' if ok else 'no'}: {reason}")
    return 0 if ok else 1


def _service_dict(row: ServiceRow) -> dict[str, Any]:
    """A row of ``services`` with its health, as JSON: labels and overridden fields decoded."""
    from dataclasses import asdict

    return {
        **asdict(row.service),
        "first_seen": row.first_seen,
        "last_seen": row.last_seen,
        "health": row.health,
        "health_since": row.health_since,
        "health_latency_ms": row.health_latency_ms,
        "health_error": row.health_error,
    }
