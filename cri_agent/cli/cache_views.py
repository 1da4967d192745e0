"""``coral agent services|events|status``: read the agent's cache (read-only).

Listings print as kubectl's do (``coral_base.listing``); a service has the
schema ``coral services`` gives it (``coral_base.documents``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coral_base import documents
from coral_base.durations import since_flag
from coral_base.listing import Column, JsonObject, Listing, OutputFormat, output_flags, print_document, watch
from coral_base.tables import age, print_table
from cri_agent.paths import DEFAULT_CACHE
from cri_agent.status_file import LiveStatus, Probe, read_status

if TYPE_CHECKING:  # SQLite loads only for commands that read the cache: `status` of a running agent does not
    from cri_agent.cache.discovery_events import StoredEvent
    from cri_agent.cache.reader import CacheReader
    from cri_agent.cache.services import ServiceRow


# EventKind's values (a test checks): cri_agent.model loads dataclasses, which `coral --help` need not.
EVENT_KINDS = ("added", "updated", "removed", "skipped", "error")


def register(commands: Any) -> None:
    services = commands.add_parser("services", help="services in the agent's cache")
    _cache_flag(services)
    services.add_argument("--namespace", "-n", help="only this namespace")
    output_flags(services)
    services.set_defaults(handler=services_command)

    events = commands.add_parser("events", help="discovery events in the agent's cache")
    _cache_flag(events)
    events.add_argument("--kind", choices=EVENT_KINDS)
    events.add_argument("--since-id", type=int, default=0, metavar="ID", help="only events after this id")
    since_flag(events)
    events.add_argument("--limit", type=int, help="at most this many (the newest)")
    events.add_argument(
        "--verify",
        action="store_true",
        help="check the hash chains of discovery_events and operations instead, and name the first break "
        "(exit 1 when one is broken)",
    )
    output_flags(events, watch=True)
    events.set_defaults(handler=events_command)

    status = commands.add_parser(
        "status",
        help="the agent's health conditions",
        description="The agent's conditions; exit 1 when one is false. With --probe, what a kubelet exec probe "
        "asks, from the status file alone (no SQLite): live = the agent runs and its discovery loop's heartbeat "
        "is fresh; ready = live, the first discovery pass is done and the runtime answers (or the Kubernetes API "
        "fallback serves its pods). The colony plays no part in either. Exit 0 yes, 1 no, with one line saying why.",
    )
    _cache_flag(status)
    output_flags(status)
    status.add_argument("--probe", choices=[p.value for p in Probe], help="answer one probe: live or ready")
    status.set_defaults(handler=status_command)


def _cache_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"default {DEFAULT_CACHE}")


def _open(path: Path) -> CacheReader:
    from cri_agent.cache.reader import CacheReader

    return CacheReader(path)


def _port(row: ServiceRow) -> str:
    s = row.service
    return f"{s.port}/{s.protocol}" if s.port else "-"


SERVICE_COLUMNS: tuple[Column[ServiceRow], ...] = (
    Column("NAMESPACE", lambda r: r.service.namespace),
    Column("POD", lambda r: r.service.pod_name),
    Column("CONTAINER", lambda r: r.service.container),
    Column("NAME", lambda r: r.service.name),
    Column("PORT", _port),
    Column("TYPE", lambda r: r.service.service_type or "-"),
    Column("PROVENANCE", lambda r: r.service.provenance),
    Column("HEALTH", lambda r: r.health),
    Column("POD IP", lambda r: r.service.pod_ip or "-"),
    Column("AGE", lambda r: age(r.first_seen)),
    Column("WORKLOAD", lambda r: r.service.workload or "-", wide=True),
    Column("OVERRIDDEN", lambda r: ",".join(r.service.overridden_fields) or "-", wide=True),
    Column("KEY", lambda r: r.service.key, wide=True),
)


def service_document(row: ServiceRow, *, agent_id: str) -> JsonObject:
    s = row.service
    return documents.service(
        key=s.key,
        name=s.name,
        namespace=s.namespace,
        pod_name=s.pod_name,
        pod_uid=s.pod_uid,
        container=s.container,
        port=s.port,
        protocol=s.protocol or "",
        service_type=s.service_type,
        provenance=s.provenance.value,
        pod_ip=s.pod_ip,
        node_name=s.node_name,
        agent_id=agent_id,
        workload=s.workload,
        labels=s.labels,
        overridden_fields=s.overridden_fields,
        health_endpoint=s.health_endpoint,
        health_interval_s=s.health_interval_s,
        health_state=row.health.value,
        health_since=row.health_since,
        health_latency_ms=row.health_latency_ms,
        health_error=row.health_error,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        stale=False,
    )


def services_command(args: argparse.Namespace) -> int:
    with _open(args.cache) as cache:
        rows = [r for r in cache.service_rows() if not args.namespace or r.service.namespace == args.namespace]
        agent_id = cache.meta().get("agent_id", "")
    Listing(
        SERVICE_COLUMNS,
        lambda row: service_document(row, agent_id=agent_id),
        output=args.output,
        no_headers=args.no_headers,
    ).print(rows)
    return 0


EVENT_COLUMNS: tuple[Column[StoredEvent], ...] = (
    Column("ID", lambda e: str(e.id)),
    Column("TIME", lambda e: time.strftime("%H:%M:%S", time.localtime(e.at))),
    Column("KIND", lambda e: e.kind.value),
    Column("NAMESPACE", lambda e: e.namespace or "-"),
    Column("POD", lambda e: e.pod_name or "-"),
    Column("SERVICE", lambda e: e.service or "-"),
    Column("REASON", lambda e: e.reason + (f" [{', '.join(e.fields)}]" if e.fields else "")),
    Column("DATE", lambda e: time.strftime("%Y-%m-%d", time.localtime(e.at)), wide=True),
    Column("NODE", lambda e: e.node_name or "-", wide=True),
    Column("KEY", lambda e: e.key or "-", wide=True),
)


def event_document(e: StoredEvent) -> JsonObject:
    return documents.discovery_event(
        id=e.id,
        time=e.at,
        kind=e.kind.value,
        node_name=e.node_name,
        namespace=e.namespace,
        pod_name=e.pod_name,
        pod_uid=e.pod_uid,
        service_key=e.key,
        service_name=e.service,
        reason=e.reason,
        fields=e.fields,
    )


def events_command(args: argparse.Namespace) -> int:
    from cri_agent.model import EventKind

    if args.verify:
        return verify_command(args)
    kind = EventKind(args.kind) if args.kind else None
    cursor = args.since_id

    def fetch(limit: int | None) -> list[StoredEvent]:
        nonlocal cursor
        with _open(args.cache) as cache:
            events = [e for e in cache.events(since_id=cursor, kind=kind, limit=limit) if e.at >= args.since]
        cursor = max([cursor, *(e.id for e in events)])
        return events

    listing = Listing(EVENT_COLUMNS, event_document, output=args.output, no_headers=args.no_headers, stream=args.watch)
    if not args.watch:
        listing.print(fetch(args.limit or None))
        return 0
    first = True

    def poll() -> list[StoredEvent]:
        nonlocal first
        limit, first = (args.limit or None) if first else None, False
        return fetch(limit)

    watch(poll, listing, key=lambda e: e.id, interval=args.watch_interval)
    return 0


def verify_command(args: argparse.Namespace) -> int:
    """``coral agent events --verify``: both chains checked from their checkpoints (the file read-only)."""
    from coral_base.hash_chain import describe
    from cri_agent.cache.migrations import SCHEMA_VERSION

    with _open(args.cache) as cache:
        checked = cache.chains()
        recorded = cache.meta().get("schema_version", "")
    broken = any(not verdict.ok for _, verdict, _ in checked)
    if OutputFormat(args.output) in (OutputFormat.JSON, OutputFormat.YAML):
        document: JsonObject = {
            table: {
                "ok": verdict.ok,
                "entries": verdict.checked,
                "checkpoint": {"id": start.id, "hash": start.hash},
                "last": {"id": verdict.last.id, "hash": verdict.last.hash},
                "broken": None if verdict.broken is None else str(verdict.broken),
            }
            for table, verdict, start in checked
        }
        print_document(document, output=args.output)
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
    if OutputFormat(args.output) in (OutputFormat.JSON, OutputFormat.YAML):
        document: JsonObject = {
            "healthy": healthy,
            "running": bool(live and live.running),
            "agent_id": meta.get("agent_id") or None,
            "node_name": meta.get("node_name") or None,
            "pid": live.pid if live is not None and live.running else None,
            "conditions": [
                documents.condition(
                    name=c["name"], ok=c["ok"], reason=c["reason"], since=c.get("since"), updated=c.get("updated")
                )
                for c in conditions
            ],
        }
        print_document(document, output=args.output)
    else:
        if not args.no_headers:
            print(
                f"agent {meta.get('agent_id', '?')} on node {meta.get('node_name', '?')}, {running}: "
                f"{'healthy' if healthy else 'degraded'}"
            )
        print_table(
            ["CONDITION", "OK", "SINCE", "REASON"],
            [[c["name"], "yes" if c["ok"] else "NO", age(c["since"]), c["reason"]] for c in conditions],
            headers_shown=not args.no_headers,
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
