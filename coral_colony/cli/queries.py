"""``coral agents|services|audit|whoami``: ask the colony (operator token required).

Listings print as kubectl's do (``coral_base.listing``): one flat table with
NODE as a column, ``-o wide|json|yaml``, ``--no-headers``, ``--watch``; a
service has the schema ``coral agent services`` gives it (``coral_base.documents``).

Exit codes: 0 done, 1 the colony is unreachable or slow (retrying may
help), 2 refused or misconfigured (a wrong token, CA or certificate name:
retrying will not).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from coral_base import documents
from coral_base.durations import since_flag
from coral_base.listing import Column, Json, JsonObject, Listing, OutputFormat, output_flags, print_document, watch
from coral_base.tables import age, print_table
from coral_base.vocabulary import AuditKind, Provenance
from coral_colony.cli import audit_verify
from coral_colony.cli.connection import connection_flags, open_client

if TYPE_CHECKING:  # the model's ~20 dataclasses load when a command runs, not for its --help
    from coral_colony.model import AgentStatus, AuditEntry, LoggedEntry, StoredService

T = TypeVar("T")


def register(commands: Any) -> None:
    agents = commands.add_parser("agents", help="agents registered with the colony")
    connection_flags(agents)
    agents.add_argument("--node", default="", help="only this node")
    output_flags(agents, watch=True)
    agents.set_defaults(handler=agents_command)
    agent_commands = agents.add_subparsers(dest="agents_command", metavar="COMMAND")
    revoke = agent_commands.add_parser(
        "revoke",
        help="revoke a node's enrollment (admin scope)",
        description="Revoke NODE's enrollment: its agent is disconnected at once and its certificate refused "
        "from then on, its services leave the registry, and the node may enroll again (a replaced node's new "
        "agent, say). The agent itself does not enroll again until its identity record is removed.",
    )
    revoke.add_argument("node", metavar="NODE")
    connection_flags(revoke)
    revoke.set_defaults(handler=revoke_command)

    services = commands.add_parser("services", help="services in the colony, one line each with its node")
    connection_flags(services)
    services.add_argument("--node", default="", help="only this node")
    services.add_argument("--namespace", "-n", default="", help="only this namespace")
    services.add_argument(
        "--provenance",
        choices=sorted(p.value for p in Provenance if p is not Provenance.UNKNOWN),
        help="only this provenance",
    )
    services.add_argument("--name", default="", help="only services whose name contains this")
    output_flags(services, watch=True)
    services.set_defaults(handler=services_command)

    audit = commands.add_parser("audit", help="the colony's audit log")
    connection_flags(audit)
    since_flag(audit)
    audit.add_argument("--since-id", type=int, default=0, metavar="ID", help="only entries after this id")
    audit.add_argument("--node", default="", help="only this node")
    audit.add_argument("--kind", choices=[k.value for k in AuditKind], default="")
    audit.add_argument("--limit", type=int, default=1000, help="at most this many, the newest (default 1000)")
    output_flags(audit, watch=True)
    audit.set_defaults(handler=audit_command)
    audit_verify.register(audit)

    whoami = commands.add_parser("whoami", help="who the colony knows your token as: name, scopes, namespaces")
    connection_flags(whoami)
    output_flags(whoami)
    whoami.set_defaults(handler=whoami_command)


def whoami_command(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        me = client.whoami()
    scopes: list[Json] = [str(scope) for scope in sorted(me.scopes)]
    namespaces: list[Json] = [*sorted(me.namespaces)] or ["*"]
    expires = documents.rfc3339(me.expires)
    if OutputFormat(args.output) in (OutputFormat.JSON, OutputFormat.YAML):
        print_document(
            {"name": me.name, "scopes": scopes, "namespaces": namespaces, "expires": expires},
            output=args.output,
        )
    else:
        print_table(
            ["NAME", "SCOPES", "NAMESPACES", "EXPIRES"],
            [[me.name, ",".join(map(str, scopes)), ",".join(map(str, namespaces)), expires or "never"]],
            headers_shown=not args.no_headers,
        )
    return 0


# -- agents ----------------------------------------------------------------------------------------

AGENT_COLUMNS: tuple[Column[AgentStatus], ...] = (
    Column("NODE", lambda s: s.agent.node_name or "-"),
    Column("AGENT", lambda s: s.agent.agent_id),
    Column("KIND", lambda s: s.agent.kind.value),
    Column("STATE", lambda s: s.state.value),
    Column("HEALTH", lambda s: s.health.value),
    Column("SERVICES", lambda s: str(s.services)),
    Column("LAST HEARTBEAT", lambda s: age(s.last_heartbeat) + " ago"),
    Column("AGE", lambda s: age(s.first_seen)),
    Column("VERSION", lambda s: s.agent.version or "-", wide=True),
    Column("ENROLLED", lambda s: s.enrollment.method.value if s.enrollment else "no (shared secret)", wide=True),
    Column("NODE LABELS", lambda s: ",".join(f"{k}={v}" for k, v in sorted(s.agent.node_labels.items())) or "-", True),
)


def agent_document(status: AgentStatus) -> JsonObject:
    a = status.agent
    return documents.agent(
        agent_id=a.agent_id,
        kind=a.kind.value,
        node_name=a.node_name,
        state=status.state.value,
        health=status.health.value,
        services=status.services,
        version=a.version,
        first_seen=status.first_seen,
        last_heartbeat=status.last_heartbeat,
        labels=a.labels,
        node_labels=a.node_labels,
        enrollment=None
        if status.enrollment is None
        else documents.enrollment(
            method=status.enrollment.method.value,
            credential=status.enrollment.credential,
            enrolled_at=status.enrollment.enrolled_at,
            renewed_at=status.enrollment.renewed_at,
            not_after=status.enrollment.not_after,
            key_sha256=status.enrollment.key_sha256,
        ),
    )


def agents_command(args: argparse.Namespace) -> int:
    from coral_colony import codec

    with open_client(args) as client:

        def fetch() -> list[AgentStatus]:
            return codec.agents_of(client.agents(node=args.node))

        _list_or_watch(args, fetch, AGENT_COLUMNS, agent_document, key=lambda s: s.agent.agent_id)
    return 0


def revoke_command(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        agent_id, removed = client.revoke_agent(args.node)
    print(f"node {args.node}: enrollment revoked; agent {agent_id} disconnected, {removed} service(s) removed")
    return 0


# -- services --------------------------------------------------------------------------------------


def _port(stored: StoredService) -> str:
    info = stored.service
    return f"{info.port}/{info.protocol or 'TCP'}" if info.port else "-"


SERVICE_COLUMNS: tuple[Column[StoredService], ...] = (
    Column("NODE", lambda s: s.service.node_name or "-"),
    Column("NAMESPACE", lambda s: s.service.namespace or "-"),
    Column("POD", lambda s: s.service.pod_name or "-"),
    Column("NAME", lambda s: s.service.component_name),
    Column("PORT", _port),
    Column("TYPE", lambda s: s.service.service_type or "-"),
    Column("PROVENANCE", lambda s: s.service.provenance.value),
    Column("HEALTH", lambda s: "stale" if s.stale else s.service.health_state.value),
    Column("AGE", lambda s: age(s.first_seen)),
    Column("AGENT", lambda s: s.agent_id, wide=True),
    Column("HEALTH SINCE", lambda s: age(s.service.health_since), wide=True),
    Column("LATENCY", lambda s: f"{s.service.health_latency_ms:.1f}ms" if s.service.health_latency_ms else "-", True),
    Column("LAST ERROR", lambda s: s.service.health_error or "-", wide=True),
    Column("CONTAINER", lambda s: s.service.container_name or "-", wide=True),
    Column("POD IP", lambda s: s.service.pod_ip or "-", wide=True),
    Column("WORKLOAD", lambda s: s.service.workload or "-", wide=True),
    Column("OVERRIDDEN", lambda s: ",".join(s.service.overridden_fields) or "-", wide=True),
    Column("KEY", lambda s: s.service.key, wide=True),
)


def service_document(stored: StoredService) -> JsonObject:
    info = stored.service
    return documents.service(
        key=info.key,
        name=info.component_name,
        namespace=info.namespace,
        pod_name=info.pod_name,
        pod_uid=info.pod_uid,
        container=info.container_name,
        port=info.port,
        protocol=info.protocol or ("TCP" if info.port else ""),
        service_type=info.service_type,
        provenance=info.provenance.value,
        pod_ip=info.pod_ip,
        node_name=info.node_name,
        agent_id=stored.agent_id,
        workload=info.workload,
        labels=info.labels,
        overridden_fields=info.overridden_fields,
        health_endpoint=info.health_endpoint,
        health_interval_s=info.health_interval_ms / 1000,
        health_state=info.health_state.value,
        health_since=info.health_since,
        health_latency_ms=info.health_latency_ms,
        health_error=info.health_error,
        first_seen=stored.first_seen,
        last_seen=stored.last_seen,
        stale=stored.stale,
    )


def services_command(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from coral_colony import codec
    from coral_colony.model import ServiceFilter

    where = ServiceFilter(
        node=args.node,
        namespace=args.namespace,
        provenance=Provenance(args.provenance) if args.provenance else None,
        name=args.name,
    )
    with open_client(args) as client:

        def fetch() -> list[StoredService]:
            flat = []
            for group in codec.groups_of(client.services(where)):
                node = group.agent.agent.node_name
                for stored in group.services:  # a service names its node; an older agent's may not
                    info = stored.service
                    flat.append(stored if info.node_name else replace(stored, service=replace(info, node_name=node)))
            return flat

        _list_or_watch(args, fetch, SERVICE_COLUMNS, service_document, key=lambda s: s.service.key)
    return 0


# -- audit -----------------------------------------------------------------------------------------


def _audit_subject(entry: AuditEntry) -> str:
    return entry.service_name or (entry.pod_name and f"pod {entry.pod_name}") or "-"


AUDIT_COLUMNS: tuple[Column[LoggedEntry], ...] = (
    Column("ID", lambda logged: str(logged.id)),
    Column("TIME", lambda logged: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(logged.entry.time))),
    Column("KIND", lambda logged: logged.entry.kind.value),
    Column("ACTION", lambda logged: logged.entry.action),
    Column("ACTOR", lambda logged: logged.entry.actor or "-"),
    Column("NODE", lambda logged: logged.entry.node_name or "-"),
    Column("NAMESPACE", lambda logged: logged.entry.namespace or "-"),
    Column("SERVICE", lambda logged: _audit_subject(logged.entry)),
    Column("PROVENANCE", lambda logged: logged.entry.provenance or "-"),
    Column("DETAIL", lambda logged: logged.entry.detail or "-"),
    Column("AGENT", lambda logged: logged.entry.agent_id or "-", wide=True),
    Column("KEY", lambda logged: logged.entry.service_key or "-", wide=True),
)


def audit_document(logged: LoggedEntry) -> JsonObject:
    e = logged.entry
    return documents.audit_entry(
        id=logged.id,
        time=e.time,
        kind=e.kind.value,
        action=e.action,
        actor=e.actor,
        agent_id=e.agent_id,
        node_name=e.node_name,
        namespace=e.namespace,
        pod_name=e.pod_name,
        service_name=e.service_name,
        service_key=e.service_key,
        provenance=e.provenance,
        detail=e.detail,
    )


def audit_command(args: argparse.Namespace) -> int:
    """``--since-id`` is applied to what the colony answers: the newest ``--limit`` entries after that id."""
    from coral_colony import codec
    from coral_colony.model import AuditQuery

    kind = AuditKind(args.kind) if args.kind else None
    cursor = args.since_id
    with open_client(args) as client:

        def fetch() -> list[LoggedEntry]:
            nonlocal cursor
            query = AuditQuery(since=args.since, node=args.node, kind=kind, limit=args.limit)
            entries = [e for e in codec.audit_of(client.audit(query)) if e.id > cursor]
            cursor = max([cursor, *(e.id for e in entries)])
            return entries

        _list_or_watch(args, fetch, AUDIT_COLUMNS, audit_document, key=lambda logged: logged.id)
    return 0


# -- one listing, or a watch -----------------------------------------------------------------------


def _list_or_watch(
    args: argparse.Namespace,
    fetch: Callable[[], Sequence[T]],
    columns: Sequence[Column[T]],
    document: Callable[[T], JsonObject],
    *,
    key: Callable[[T], Hashable],
) -> None:
    listing = Listing(columns, document, output=args.output, no_headers=args.no_headers, stream=args.watch)
    if args.watch:
        watch(fetch, listing, key=key, interval=args.watch_interval, volatile=VOLATILE)
    else:
        listing.print(fetch())


VOLATILE = ("last_heartbeat", "last_seen")  # they move with every heartbeat: a change there alone is not news
