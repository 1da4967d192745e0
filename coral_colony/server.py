"""Runs the colony: two gRPC endpoints, the registry and its staleness clock, the status page on
localhost, and ``/healthz`` + ``/readyz`` for the kubelet on their own listener (``health.py``).

- The **public endpoint** (``--listen``, server TLS): operators' Colony API,
  agents' Enrollment and ``grpc.health.v1``; with
  ``--allow-shared-secret-agents``, also the Mesh and AgentControl services
  for agents that only hold the shared secret.
- The **agent endpoint** (``--agent-listen``, mutual TLS: a client
  certificate of the colony's CA is required): Mesh, AgentControl and
  Renewal for enrolled agents, whose identity is their certificate.

Both state their message limit (``coral_base.message_limits``: 16 MiB, not
gRPC's implicit 4 MiB); agents chunk what they send and listings are paged.

gRPC's Python server cannot ask for a client certificate optionally, hence
two ports: operators and new agents have no certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import sqlite3
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as grpc_health  # type: ignore[attr-defined]  # grpc-stubs predates it

from coral_base.clock import SYSTEM_CLOCK, Clock
from coral_base.grpc_options import Endpoint, server_options
from coral_base.lifecycle import Stage, run_stages
from coral_base.logs import emit
from coral_base.wire.coral.agent.v1 import agent_pb2, agent_pb2_grpc
from coral_base.wire.coral.colony.v1 import colony_pb2, colony_pb2_grpc
from coral_base.wire.coral.identity.v1 import identity_pb2_grpc
from coral_base.wire.coral.mesh.v1 import mesh_pb2, mesh_pb2_grpc
from coral_colony.enrolled import Enrolled
from coral_colony.enrollment_service import EnrollmentService, ServiceAccountCheck
from coral_colony.health import ColonyHealth
from coral_colony.identity import ColonyIdentity
from coral_colony.mesh_service import MeshService
from coral_colony.metrics import serving as serving_metrics
from coral_colony.operator_service import OperatorService
from coral_colony.refusals import Refusals
from coral_colony.router import Router
from coral_colony.signer import AGENT_CERT_LIFETIME
from coral_colony.stores.reader import RegistryReader
from coral_colony.stores.writer import RegistryFull, RegistryWriter, WriterThread
from coral_colony.tokens import OperatorTokens
from coral_colony.unwritable import DiskFull
from coral_colony.web.probes import ProbeEndpoints
from coral_colony.web.server import StatusPage

log = logging.getLogger("coral_colony.server")

HEARTBEAT_TIMEOUT_S = 45.0  # three missed 15 s heartbeats
STALE_TTL_S = 24 * 3600.0  # services of an agent silent this long are dropped
DEREGISTER_GRACE_S = 120.0  # services of an agent that deregistered stay this long, in case it is only restarting
WEB_LISTEN = "127.0.0.1:9080"
PROBE_LISTEN = "127.0.0.1:9081"  # `coral colony start`'s default; in a pod, 0.0.0.0:9081: the kubelet dials the pod IP
# What grpc.health.v1 reports on: the server as a whole ("") and each service by its full name.
HEALTH_SERVICES = (
    "",
    mesh_pb2.DESCRIPTOR.services_by_name["Mesh"].full_name,
    colony_pb2.DESCRIPTOR.services_by_name["Colony"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentControl"].full_name,
)
PRUNE_EVERY_S = 3600.0  # with --audit-retention: how often entries past it are deleted
CLOCK_JUMP_S = 5.0  # wall and monotonic time disagreeing by more, between two rounds, is a jump


def default_agent_listen(listen: str) -> str:
    """The agent endpoint beside ``listen``: the same host, the next port."""
    host, _, port = listen.rpartition(":")
    return f"{host}:{int(port) + 1}"


async def serve(
    identity: ColonyIdentity,
    *,
    listen: str,
    database: Path,
    stop: asyncio.Event,
    agent_listen: str = "",  # default: beside ``listen`` (its port + 1)
    web_listen: str = WEB_LISTEN,
    probe_listen: str = "",  # `coral colony start` listens on PROBE_LISTEN by default; a library caller asks
    metrics_listen: str = "",  # host:port of the Prometheus metrics (coral_colony.metrics); "": none
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S,
    ttl: float = STALE_TTL_S,
    deregister_grace: float = DEREGISTER_GRACE_S,
    audit_retention: float | None = None,  # seconds; None keeps every entry
    allow_shared_secret: bool = False,  # serve agents that only hold the shared secret, on ``listen``
    agent_cert_lifetime: float = AGENT_CERT_LIFETIME.total_seconds(),
    service_accounts: ServiceAccountCheck | None = None,  # enroll with a ServiceAccount token (TokenReview)
    clock: Clock = SYSTEM_CLOCK,
    started: asyncio.Event | None = None,  # set once agents and operators can connect
) -> None:
    """Runs the colony until ``stop``; owns the registry's writer (its thread and connection) and closes it last.

    The writer is created first (it creates or migrates the file the readers
    then open) and closed after the gRPC server has stopped, so no call is
    left to write; closing waits for the changes already handed to it.
    """
    writer = WriterThread(RegistryWriter(database))
    try:
        await _serve(
            identity,
            writer,
            listen=listen,
            database=database,
            stop=stop,
            agent_listen=agent_listen or default_agent_listen(listen),
            web_listen=web_listen,
            probe_listen=probe_listen,
            metrics_listen=metrics_listen,
            heartbeat_timeout=heartbeat_timeout,
            ttl=ttl,
            deregister_grace=deregister_grace,
            audit_retention=audit_retention,
            allow_shared_secret=allow_shared_secret,
            agent_cert_lifetime=agent_cert_lifetime,
            service_accounts=service_accounts,
            clock=clock,
            started=started,
        )
    finally:
        writer.close()
        emit(log, "colony.stopped", colony_id=identity.colony_id)


async def _serve(
    identity: ColonyIdentity,
    writer: WriterThread,
    *,
    listen: str,
    database: Path,
    stop: asyncio.Event,
    agent_listen: str,
    web_listen: str,
    probe_listen: str,
    metrics_listen: str,
    heartbeat_timeout: float,
    ttl: float,
    deregister_grace: float,
    audit_retention: float | None,
    allow_shared_secret: bool,
    agent_cert_lifetime: float,
    service_accounts: ServiceAccountCheck | None,
    clock: Clock,
    started: asyncio.Event | None,
) -> None:
    """Everything but the writer: each part closed, in reverse, however far the start got."""
    async with contextlib.AsyncExitStack() as stack:
        metrics, metrics_at = (
            stack.enter_context(serving_metrics(database, listen=metrics_listen, clock=clock))
            if metrics_listen
            else (None, "off")
        )
        refusals = Refusals(writer.record, on_refused=metrics.refused if metrics else None)
        enrolled = Enrolled(
            identity.colony_id, await writer.run(lambda w: w.enrollments()), refused=refusals.refused, clock=clock.time
        )
        secret = identity.secret()
        mesh = MeshService(
            writer,
            colony_id=identity.colony_id,
            colony_secret=secret,
            enrolled=enrolled,
            clock=clock.time,
            refusals=refusals,
        )
        router = Router(mesh.valid_session, enrolled)
        reader = RegistryReader(database)
        stack.callback(reader.close)
        tokens = OperatorTokens(identity.directory)
        operators = OperatorService(
            reader,
            tokens,
            colony_id=identity.colony_id,
            record=writer.record,
            refusals=refusals,
            router=router,
            clock=clock.time,
            revoke=functools.partial(_revoke, writer, enrolled, router, clock),
        )
        stack.callback(operators.close)
        trusted = identity.trusted_cas()
        agent_port = int(agent_listen.rpartition(":")[2])
        enrollment = EnrollmentService(
            writer,
            enrolled,
            colony_id=identity.colony_id,
            colony_secret=secret,
            tokens=tokens,
            signing_ca=identity.signing_ca(),
            trusted_cas=trusted,
            agent_port=agent_port,
            refusals=refusals,
            lifetime=datetime.timedelta(seconds=agent_cert_lifetime),
            service_accounts=service_accounts,
            clock=clock.time,
        )
        interceptors = (DiskFull(), *(metrics.interceptors() if metrics else ()))
        public = grpc.aio.server(interceptors=interceptors, options=server_options(Endpoint.PUBLIC))
        grpc_health_service = grpc_health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(grpc_health_service, public)

        async def serving(ready: bool) -> None:
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in HEALTH_SERVICES:
                await grpc_health_service.set(name, status)

        await serving(False)
        health = ColonyHealth(writer, database, clock=clock, on_ready=serving)
        key, cert = identity.server_key.read_bytes(), identity.server_cert.read_bytes()
        colony_pb2_grpc.add_ColonyServicer_to_server(operators, public)
        identity_pb2_grpc.add_EnrollmentServicer_to_server(enrollment, public)
        if allow_shared_secret:
            mesh_pb2_grpc.add_MeshServicer_to_server(mesh, public)
            agent_pb2_grpc.add_AgentControlServicer_to_server(router, public)
        public.add_secure_port(listen, grpc.ssl_server_credentials([(key, cert)]))
        agents = grpc.aio.server(interceptors=interceptors, options=server_options(Endpoint.AGENTS))
        mesh_pb2_grpc.add_MeshServicer_to_server(mesh, agents)
        agent_pb2_grpc.add_AgentControlServicer_to_server(router, agents)
        identity_pb2_grpc.add_RenewalServicer_to_server(enrollment, agents)
        agents.add_secure_port(
            agent_listen,
            grpc.ssl_server_credentials([(key, cert)], root_certificates=trusted, require_client_auth=True),
        )
        for server in (public, agents):
            await server.start()
            stack.push_async_callback(server.stop, 5.0)
        health.serving = True
        stack.callback(setattr, health, "serving", False)
        stack.push_async_callback(grpc_health_service.enter_graceful_shutdown)  # NOT_SERVING before the stop
        page = (
            StatusPage(database, colony_id=identity.colony_id, listen=web_listen, clock=clock) if web_listen else None
        )
        if page is not None:
            page.start()
            stack.callback(page.stop)
        probes = ProbeEndpoints(health, listen=probe_listen) if probe_listen else None
        if probes is not None:
            probes.start()
            stack.callback(probes.stop)
        if started is not None:
            started.set()
        emit(
            log,
            "colony.started",
            colony_id=identity.colony_id,
            listen=listen,
            agent_listen=agent_listen,
            shared_secret_agents="allowed" if allow_shared_secret else "refused",
            web=page.address if page else "off",
            probes=probes.address if probes else "off",
            metrics=metrics_at,
            database=str(database),
        )
        housekeeping = functools.partial(
            _registry_clock,
            writer,
            refusals,
            clock=clock,
            heartbeat_timeout=heartbeat_timeout,
            ttl=ttl,
            deregister_grace=deregister_grace,
            audit_retention=audit_retention,
        )
        await run_stages(
            [Stage("registry-clock", housekeeping), Stage("health", health.run)],
            stop,
            on_stopping=lambda: None,
            grace_s=5.0,
            clock=clock,
        )


async def _revoke(
    writer: WriterThread, enrolled: Enrolled, router: Router, clock: Clock, node_name: str, *, by: str
) -> tuple[str, int] | None:
    """Revoke the node's enrollment, end its agent's control stream at once; (agent id, services removed)."""
    revoked = await writer.run(lambda w: w.revoke(node_name, by=by, now=clock.time(), then=enrolled.put))
    if revoked is None:
        return None
    enrollment, removed = revoked
    router.disconnect(enrollment.agent_id, f"the enrollment of node {node_name} was revoked by {by}")
    emit(log, "agent.revoked", level=logging.WARNING, node=node_name, agent_id=enrollment.agent_id, by=by)
    return enrollment.agent_id, removed


async def _registry_clock(
    writer: WriterThread,
    refusals: Refusals,
    *,
    clock: Clock,
    heartbeat_timeout: float,
    ttl: float,
    deregister_grace: float,
    audit_retention: float | None,
) -> None:
    """Marks silent agents unreachable, drops those past the TTL and those that deregistered more than
    ``deregister_grace`` ago and, with a retention, prunes the audit log.

    A round that fails (the file locked by another process, a full disk, an
    I/O error) is logged once, with its cause, and tried again at the next
    round: housekeeping never takes the colony down.
    """
    pruned_at = float("-inf")
    failing = ""
    wall, mono = clock.time(), clock.monotonic()
    steady = wall - mono  # wall time at monotonic 0, as it was at start: the wall clock without its jumps
    while True:
        try:
            # Silence is measured on the wall clock (heartbeat times are stored as such); a jump of it
            # (an NTP step, a VM restored) would drop every agent at once. The monotonic clock tells.
            jump = (clock.time() - wall) - (clock.monotonic() - mono)
            if abs(jump) > CLOCK_JUMP_S:
                moved = await writer.run(functools.partial(RegistryWriter.clock_jumped, by=jump, now=clock.time()))
                emit(log, "colony.clock_jumped", level=logging.WARNING, by_s=round(jump), agents=moved)
            wall, mono = clock.time(), clock.monotonic()
            if audit_retention is not None and clock.monotonic() - pruned_at >= PRUNE_EVERY_S:
                # Pruning never runs ahead of the time that really passed: a wall clock stepped forward (a
                # wrong NTP server, a VM restored) would otherwise delete recent entries. It may lag behind
                # a clock stepped forward to be right: entries are then kept longer, never deleted early.
                now = min(clock.time(), steady + clock.monotonic())
                prune = functools.partial(RegistryWriter.prune_audit, now=now, retention_s=audit_retention)
                deleted = await writer.run(prune)
                pruned_at = clock.monotonic()
                if deleted:
                    emit(log, "audit.pruned", deleted=deleted, retention_s=audit_retention)
            silent, gone = await writer.run(
                lambda w: w.expire(
                    now=clock.time(), heartbeat_timeout=heartbeat_timeout, ttl=ttl, grace=deregister_grace
                )
            )
            await refusals.flush(clock.time())  # the counts of a quiet minute's refusals
        except (sqlite3.Error, OSError, RegistryFull) as exc:
            if not failing:
                emit(log, "registry.housekeeping_failed", level=logging.ERROR, reason=f"{type(exc).__name__}: {exc}")
            failing = str(exc)
        else:
            if failing:
                emit(log, "registry.housekeeping_recovered", after=failing)
                failing = ""
            for agent_id in silent:
                emit(log, "agent.unreachable", level=logging.WARNING, agent_id=agent_id)
            for agent_id in gone:
                emit(log, "agent.expired", agent_id=agent_id)
        await clock.sleep(min(5.0, heartbeat_timeout / 3))
