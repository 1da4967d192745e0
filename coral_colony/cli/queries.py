"""``coral agents|services|audit``: ask the colony (operator token required).

Exit codes: 0 done, 1 the colony is unreachable or slow (retrying may
help), 2 refused or misconfigured (a wrong token or CA: retrying will not).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

from coral_base.durations import parse_duration
from coral_base.errors import ConfigError
from coral_base.tables import age, print_table
from coral_colony import codec
from coral_colony.cli import audit_verify
from coral_colony.client import ColonyClient, OperatorEndpoint
from coral_colony.model import PROVENANCES, AgentState, AuditKind, AuditQuery, Provenance, ServiceFilter


def register(commands: Any) -> None:
    agents = commands.add_parser("agents", help="agents registered with the colony")
    connection_flags(agents)
    agents.add_argument("--node", default="", help="only this node")
    agents.add_argument("--output", "-o", choices=["table", "wide", "json"], default="table")
    agents.set_defaults(handler=agents_command)

    services = commands.add_parser("services", help="services in the colony, grouped by node agent")
    connection_flags(services)
    services.add_argument("--node", default="", help="only this node")
    services.add_argument("--namespace", "-n", default="", help="only this namespace")
    services.add_argument("--provenance", choices=sorted(p.value for p in PROVENANCES), help="only this provenance")
    services.add_argument("--name", default="", help="only services whose name contains this")
    services.add_argument("--output", "-o", choices=["table", "wide", "json"], default="table")
    services.set_defaults(handler=services_command)

    audit = commands.add_parser("audit", help="the colony's audit log")
    connection_flags(audit)
    audit.add_argument("--since", default="", help="a duration back (10m, 2h) or a time (2026-11-25T10:00:00)")
    audit.add_argument("--node", default="", help="only this node")
    audit.add_argument("--kind", choices=[k.value for k in AuditKind], default="")
    audit.add_argument("--limit", type=int, default=1000, help="at most this many, the newest (default 1000)")
    audit.add_argument("--output", "-o", choices=["table", "json"], default="table")
    audit.set_defaults(handler=audit_command)
    audit_verify.register(audit)

    whoami = commands.add_parser("whoami", help="who the colony knows your token as: name, scopes, namespaces")
    connection_flags(whoami)
    whoami.add_argument("--output", "-o", choices=["table", "json"], default="table")
    whoami.set_defaults(handler=whoami_command)


def whoami_command(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        me = client.whoami()
    scopes = sorted(me.scopes)
    namespaces = sorted(me.namespaces) or ["*"]
    expires = "never" if not me.expires else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(me.expires))
    if args.output == "json":
        print(json.dumps({"name": me.name, "scopes": scopes, "namespaces": namespaces, "expires": expires}, indent=2))
    else:
        print_table(
            ["NAME", "SCOPES", "NAMESPACES", "EXPIRES"], [[me.name, ",".join(scopes), ",".join(namespaces), expires]]
        )
    return 0


def connection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("colony connection (flags win over the environment)")
    group.add_argument("--colony", help="host:port of the colony (env CORAL_COLONY, default 127.0.0.1:9000)")
    group.add_argument("--ca", type=Path, help="the colony's ca.crt (env CORAL_COLONY_CA)")
    group.add_argument(
        "--token",
        help="operator token; visible to every user of this machine in ps: prefer --token-file or CORAL_TOKEN",
    )
    group.add_argument("--token-file", type=Path, help="file holding the operator token (env CORAL_TOKEN_FILE)")


def open_client(args: argparse.Namespace) -> ColonyClient:
    if args.token:
        print(
            "warning: --token puts the token in this command's arguments, where any user of this machine can read "
            "it (ps); use --token-file or CORAL_TOKEN",
            file=sys.stderr,
        )
    target = OperatorEndpoint.resolve(
        address=args.colony, ca_file=args.ca, token=args.token, token_file=args.token_file
    )
    return ColonyClient(target)


def agents_command(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        response = client.agents(node=args.node)
    if args.output == "json":
        print(json.dumps(codec.as_json(response), indent=2))
        return 0
    headers = ["NODE", "AGENT", "KIND", "STATE", "HEALTH", "SERVICES", "LAST HEARTBEAT", "AGE"]
    if args.output == "wide":
        headers += ["VERSION", "NODE LABELS"]
    rows = []
    for status in codec.agents_of(response):
        a = status.agent
        row = [
            a.node_name or "-",
            a.agent_id,
            a.kind.value,
            status.state.value,
            status.health or "unknown",
            str(status.services),
            age(status.last_heartbeat) + " ago",
            age(status.first_seen),
        ]
        if args.output == "wide":
            row += [a.version or "-", ",".join(f"{k}={v}" for k, v in sorted(a.node_labels.items())) or "-"]
        rows.append(row)
    print_table(headers, rows)
    return 0


def services_command(args: argparse.Namespace) -> int:
    where = ServiceFilter(
        node=args.node,
        namespace=args.namespace,
        provenance=Provenance(args.provenance) if args.provenance else None,
        name=args.name,
    )
    with open_client(args) as client:
        response = client.services(where)
    if args.output == "json":
        print(json.dumps(codec.as_json(response), indent=2))
        return 0
    groups = codec.groups_of(response)
    wide = args.output == "wide"
    headers = ["NAMESPACE", "POD", "NAME", "PORT", "TYPE", "PROVENANCE", "HEALTH", "AGE"]
    if wide:
        headers += ["HEALTH SINCE", "LATENCY", "LAST ERROR", "CONTAINER", "POD IP", "WORKLOAD", "OVERRIDDEN", "KEY"]
    for index, group in enumerate(groups):
        status, agent = group.agent, group.agent.agent
        if index:
            print()
        state = status.state.value + ("" if status.state is AgentState.HEALTHY else ": services are stale")
        print(
            f"NODE {agent.node_name or '-'}  agent {agent.agent_id} ({agent.kind.value}, {state}, "
            f"health {status.health or 'unknown'}): {len(group.services)} service(s)"
        )
        rows = []
        for stored in group.services:
            info = stored.service
            row = [
                info.namespace or "-",
                info.pod_name or "-",
                info.component_name + (" (stale)" if stored.stale else ""),
                f"{info.port}/{info.protocol or 'TCP'}" if info.port else "-",
                info.service_type or "-",
                info.provenance.value,
                info.health_state or "unknown",
                age(stored.first_seen),
            ]
            if wide:
                row += [
                    age(info.health_since),
                    f"{info.health_latency_ms:.1f}ms" if info.health_latency_ms else "-",
                    info.health_error or "-",
                    info.container_name or "-",
                    info.pod_ip or "-",
                    info.workload or "-",
                    ",".join(info.overridden_fields) or "-",
                    info.key,
                ]
            rows.append(row)
        if rows:
            print_table(headers, rows, indent="  ")
    if not groups:
        print("no agent matches")
    return 0


def parse_since(value: str, *, now: float) -> float:
    """``10m`` (back from now) or an ISO time (local unless it names a zone) -> unix seconds."""
    if not value:
        return 0.0
    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"--since {value!r}: give a duration back (10m, 2h) or a time (2026-11-25T10:00:00)"
        ) from None
    return moment.timestamp()


def audit_command(args: argparse.Namespace) -> int:
    since = parse_since(args.since, now=time.time())
    with open_client(args) as client:
        kind = AuditKind(args.kind) if args.kind else None
        response = client.audit(AuditQuery(since=since, node=args.node, kind=kind, limit=args.limit))
    if args.output == "json":
        print(json.dumps(codec.as_json(response), indent=2))
        return 0
    rows = []
    for logged in codec.audit_of(response):
        e = logged.entry
        rows.append(
            [
                str(logged.id),
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time)),
                e.kind.value,
                e.action,
                e.actor or "-",
                e.node_name or "-",
                e.namespace or "-",
                e.service_name or (e.pod_name and f"pod {e.pod_name}") or "-",
                e.provenance or "-",
                e.detail or "-",
            ]
        )
    print_table(["ID", "TIME", "KIND", "ACTION", "ACTOR", "NODE", "NAMESPACE", "SERVICE", "PROVENANCE", "DETAIL"], rows)
    return 0
