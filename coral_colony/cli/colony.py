"""``coral colony init|start|token|ca``: create a colony, run it, manage operator tokens, rotate its CA."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from coral_base.durations import flag, parse_duration, parse_span, parse_timeout
from coral_base.errors import ConfigError
from coral_base.logs import configure
from coral_base.tables import age, print_table
from coral_base.vocabulary import Scope
from coral_colony.ca_rotation import MIN_OVERLAP, CaChange, describe, finish_ca_rotation, rotate_ca
from coral_colony.identity import init_colony, load_colony
from coral_colony.kube_api import ApiServer
from coral_colony.server import (
    DEREGISTER_GRACE_S,
    HEARTBEAT_TIMEOUT_S,
    PROBE_LISTEN,
    STALE_TTL_S,
    WEB_LISTEN,
    serve,
)
from coral_colony.signer import AGENT_CERT_LIFETIME
from coral_colony.token_review import DEFAULT_AUDIENCE, ServiceAccountName, TokenReviewer
from coral_colony.tokens import OperatorTokens, parse_scopes

DEFAULT_SCOPES = frozenset({Scope.READ, Scope.AUDIT})  # look, not touch: operate is granted explicitly
BOOTSTRAP_TTL_S = 24 * 3600.0


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
    start.add_argument(
        "--listen",
        default="127.0.0.1:9000",
        help="the public endpoint: operators and agents' enrollment, server TLS (default 127.0.0.1:9000)",
    )
    start.add_argument(
        "--agent-listen",
        default="",
        help="the enrolled agents' endpoint, mutual TLS; its port is told to agents at enrollment "
        "(default: --listen's host, its port + 1)",
    )
    start.add_argument(
        "--allow-shared-secret-agents",
        action="store_true",
        help="also serve agents that only hold the shared secret (not enrolled: RFD 011 agents, agents older "
        "than enrollment) on --listen; they cannot speak for an enrolled node (default: refused)",
    )
    start.add_argument(
        "--agent-cert-lifetime",
        type=flag(parse_span),
        default=AGENT_CERT_LIFETIME.total_seconds(),
        help="how long an agent's certificate lasts; agents renew it after two thirds (default 24h)",
    )
    start.add_argument(
        "--enroll-service-account",
        action="append",
        default=[],
        metavar="NAMESPACE/NAME",
        help="enroll agents that present a projected token of this ServiceAccount, checked with the Kubernetes "
        "TokenReview API; the token's pod binds the node (repeatable; default: none, such tokens are refused)",
    )
    start.add_argument(
        "--token-audience",
        default=None,
        help=f"the audience agents project their ServiceAccount token for (default {DEFAULT_AUDIENCE})",
    )
    start.add_argument(
        "--kubeconfig",
        type=Path,
        help="the API that checks ServiceAccount tokens (default: in-cluster, the colony pod's own account, "
        "which needs create on tokenreviews)",
    )
    start.add_argument("--db", type=Path, help="registry file (default DIR/colony.db)")
    start.add_argument(
        "--web-listen",
        default=WEB_LISTEN,
        help=f"status page address (default {WEB_LISTEN}; it has no login: expose it deliberately; '' disables)",
    )
    start.add_argument(
        "--probe-listen",
        default=PROBE_LISTEN,
        help=f"address of /healthz and /readyz, and nothing else, for the kubelet's probes (default {PROBE_LISTEN}; "
        "in a pod 0.0.0.0:9081, so the kubelet reaches it; '' disables)",
    )
    start.add_argument(
        "--metrics-listen",
        default="",
        help="Prometheus metrics address, e.g. 0.0.0.0:9091 (default: none; docs/metrics.md)",
    )
    start.add_argument(
        "--heartbeat-timeout",
        type=flag(parse_duration),
        default=HEARTBEAT_TIMEOUT_S,
        help=f"silence after which an agent is unreachable and its services stale (default {HEARTBEAT_TIMEOUT_S:g}s)",
    )
    start.add_argument(
        "--ttl",
        type=flag(parse_duration),
        default=STALE_TTL_S,
        help="silence after which an unreachable agent and its services are dropped (default 24h)",
    )
    start.add_argument(
        "--deregister-grace",
        type=flag(parse_duration),
        default=DEREGISTER_GRACE_S,
        help="how long the services of an agent that deregistered (stopped) are kept in case it is only "
        f"restarting; registering again within it changes nothing (default {DEREGISTER_GRACE_S:g}s)",
    )
    start.add_argument(
        "--audit-retention",
        type=flag(parse_span),
        help="delete audit entries older than this, e.g. 90d or 2160h, checked hourly (default: keep them all)",
    )
    start.add_argument("--log-format", choices=["text", "json"], default="text")
    start.set_defaults(handler=start_command)

    token = sub.add_parser("token", help="colony tokens: the name is the caller's audit identity")
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    for name, text, handler in (
        ("create", "create a token for NAME and print it once", token_create),
        ("revoke", "revoke NAME's token (a running colony notices at once)", token_revoke),
        ("list", "list tokens: names, scopes, namespaces, expiry", token_list),
    ):
        command = token_sub.add_parser(name, help=text)
        command.add_argument("--dir", type=Path, required=True, help="the colony directory")
        if name != "list":
            command.add_argument("name")
        if name == "create":
            command.add_argument("--quiet", "-q", action="store_true", help="print only the token (for scripts)")
            command.add_argument(
                "--scope",
                action="append",
                default=[],
                help="what the token may do: read (agents, services), audit, operate (tap, profile, sample); "
                "comma-separated or repeated (default: read,audit)",
            )
            command.add_argument(
                "--namespace",
                action="append",
                default=[],
                help="limit read and operate to this namespace (repeat for several; default: every namespace)",
            )
            command.add_argument(
                "--bootstrap",
                action="store_true",
                help="a bootstrap token: enrolls node agents and nothing else; expires (--expires, default 24h)",
            )
            command.add_argument(
                "--expires",
                type=flag(parse_duration),
                default=None,
                help="e.g. 24h, 7d (default: never; 24h for --bootstrap)",
            )
        command.set_defaults(handler=handler)

    ca = sub.add_parser("ca", help="rotate the colony CA with an overlap window (docs/security.md)")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True, metavar="COMMAND")
    rotate = ca_sub.add_parser("rotate", help="a new CA signs agents' certificates; the current one stays trusted")
    rotate.add_argument("--dir", type=Path, required=True, help="the colony directory")
    rotate.set_defaults(handler=ca_rotate)
    finish = ca_sub.add_parser("finish", help="the server certificate moves to the new CA; the previous CA is dropped")
    finish.add_argument("--dir", type=Path, required=True, help="the colony directory")
    finish.add_argument(
        "--min-overlap",
        type=flag(parse_timeout),
        default=MIN_OVERLAP.total_seconds(),
        help="refuse to finish a rotation started less than this ago: the colony's --agent-cert-lifetime "
        "(default 24h; 0 finishes at once, cutting off every agent that has not renewed since)",
    )
    finish.set_defaults(handler=ca_finish)


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
    service_accounts = _token_reviewer(args)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(
            identity,
            listen=args.listen,
            agent_listen=args.agent_listen,
            allow_shared_secret=args.allow_shared_secret_agents,
            agent_cert_lifetime=args.agent_cert_lifetime,
            database=args.db or args.dir / "colony.db",
            stop=stop,
            web_listen=args.web_listen,
            probe_listen=args.probe_listen,
            metrics_listen=args.metrics_listen,
            heartbeat_timeout=args.heartbeat_timeout,
            ttl=args.ttl,
            deregister_grace=args.deregister_grace,
            audit_retention=args.audit_retention,
            service_accounts=service_accounts,
        )

    asyncio.run(run())
    return 0


def _token_reviewer(args: argparse.Namespace) -> TokenReviewer | None:
    """The ServiceAccount check ``--enroll-service-account`` asks for, its API loaded now (a mistake stops the
    start, not the first enrollment); None without the flag."""
    if not args.enroll_service_account:
        if args.kubeconfig or args.token_audience is not None:
            raise ConfigError("--kubeconfig and --token-audience only go with --enroll-service-account NAMESPACE/NAME")
        return None
    accounts = [ServiceAccountName.parse(text) for text in args.enroll_service_account]
    api = ApiServer.from_kubeconfig(args.kubeconfig) if args.kubeconfig else ApiServer.in_cluster()
    reviewer = TokenReviewer(api, allowed=accounts, audience=args.token_audience or DEFAULT_AUDIENCE)
    reviewer.announce()
    return reviewer


def token_create(args: argparse.Namespace) -> int:
    load_colony(args.dir)  # a colony directory, not a typo
    if args.bootstrap:
        if args.scope or args.namespace:
            raise ConfigError("a bootstrap token only enrolls agents: drop --scope and --namespace")
        scopes = frozenset({Scope.ENROLL})
        ttl = BOOTSTRAP_TTL_S if args.expires is None else args.expires
    else:
        scopes = parse_scopes(args.scope) if args.scope else DEFAULT_SCOPES
        ttl = args.expires or 0.0
    token = OperatorTokens(args.dir).create(args.name, scopes=scopes, namespaces=args.namespace, ttl_s=ttl)
    if args.quiet:
        print(token)
        return 0
    where = f" in namespace(s) {', '.join(sorted(args.namespace))}" if args.namespace else ""
    print(f"token for {args.name}, scopes {', '.join(sorted(scopes))}{where} (shown once; the colony keeps its hash):")
    print(token)
    print()
    print("use it with:")
    print(f"  export CORAL_COLONY_CA={(args.dir / 'ca.crt').resolve()}")
    print("  export CORAL_TOKEN=<the token above>   # or CORAL_TOKEN_FILE=<a 0600 file holding it>")
    return 0


def token_revoke(args: argparse.Namespace) -> int:
    OperatorTokens(args.dir).revoke(args.name)
    print(f"revoked the token of {args.name}")
    return 0


def _expiry(expires: float, *, now: float) -> str:
    if not expires:
        return "never"
    return "expired" if expires <= now else "in " + age(now, now=expires)


def token_list(args: argparse.Namespace) -> int:
    rows = [
        [
            t.name,
            ",".join(sorted(t.scopes)),
            ",".join(sorted(t.namespaces)) or "*",
            age(t.created) + " ago",
            _expiry(t.expires, now=time.time()),
        ]
        for t in OperatorTokens(args.dir).list()
    ]
    print_table(["NAME", "SCOPES", "NAMESPACES", "CREATED", "EXPIRES"], rows)
    return 0


def _ca_lines(change: CaChange) -> None:
    print(f"  signing CA:   {describe(change.signing)}, valid until {change.signing.not_valid_after_utc:%Y-%m-%d}")
    print(f"  previous CA:  {describe(change.previous)}")


def ca_rotate(args: argparse.Namespace) -> int:
    identity = load_colony(args.dir)
    change = rotate_ca(identity, now=datetime.datetime.now(datetime.UTC))
    print(f"colony {identity.colony_id}: CA rotation started in {identity.directory}")
    _ca_lines(change)
    print(f"  {identity.ca_cert} holds both CAs (the new one first); {identity.ca_key} is the new CA's key")
    print(f"  {identity.server_cert} is still signed by the previous CA: agents pinning only it still connect")
    print("next:")
    print(f"  1. give agents and operators the new {identity.ca_cert} (both CAs): the agents' CA Secret, --ca")
    print("  2. restart the colony (with the chart: update its identity Secret first): from then on it signs")
    print("     agents' certificates with the new CA and sends both CAs to every agent that enrolls or renews")
    print("  3. wait one agent certificate lifetime (--agent-cert-lifetime, default 24h) after that restart:")
    print("     every running agent renews after two thirds of it")
    print(f"  4. coral colony ca finish --dir {identity.directory}, and restart the colony again")
    return 0


def ca_finish(args: argparse.Namespace) -> int:
    identity = load_colony(args.dir)
    change = finish_ca_rotation(
        identity,
        now=datetime.datetime.now(datetime.UTC),
        min_overlap=datetime.timedelta(seconds=args.min_overlap),
    )
    print(f"colony {identity.colony_id}: CA rotation finished in {identity.directory}")
    _ca_lines(change)
    print(f"  {identity.server_cert} is signed by the new CA ({', '.join(identity.hosts)}); the previous CA is dropped")
    print("next:")
    print("  1. restart the colony (with the chart: update its identity Secret first): it refuses certificates")
    print("     of the previous CA; agents that renewed since step 2 of `rotate` hold the new CA and carry on")
    print(f"  2. give agents and operators the new {identity.ca_cert} (the new CA alone)")
    print("  3. an agent that was down during the whole window enrolls again by itself with its credential")
    print("     once its colony.caFile holds the new CA (docs/security.md)")
    return 0
