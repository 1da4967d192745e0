"""Runs the colony: TLS gRPC (agents' Mesh + operators' Colony API, and
``grpc.health.v1``), the registry and its staleness clock, the status page
on localhost, and ``/healthz`` + ``/readyz`` for the kubelet on their own
listener (coral_colony/health.py says what they check)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as grpc_health  # type: ignore[attr-defined]  # grpc-stubs predates it

from coral_base.clock import SYSTEM_CLOCK, Clock
from coral_base.lifecycle import Stage, run_stages
from coral_base.logs import emit
from coral_base.wire.coral.agent.v1 import agent_pb2, agent_pb2_grpc
from coral_base.wire.coral.colony.v1 import colony_pb2, colony_pb2_grpc
from coral_base.wire.coral.mesh.v1 import mesh_pb2, mesh_pb2_grpc
from coral_colony.health import ColonyHealth
from coral_colony.identity import ColonyIdentity
from coral_colony.mesh_service import MeshService
from coral_colony.operator_service import OperatorService
from coral_colony.refusals import Refusals
from coral_colony.router import Router
from coral_colony.stores.reader import RegistryReader
from coral_colony.stores.writer import RegistryWriter, WriterThread
from coral_colony.tokens import OperatorTokens
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


async def serve(
    identity: ColonyIdentity,
    *,
    listen: str,
    database: Path,
    stop: asyncio.Event,
    web_listen: str = WEB_LISTEN,
    probe_listen: str = "",  # `coral colony start` listens on PROBE_LISTEN by default; a library caller asks
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S,
    ttl: float = STALE_TTL_S,
    deregister_grace: float = DEREGISTER_GRACE_S,
    audit_retention: float | None = None,  # seconds; None keeps every entry
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
            web_listen=web_listen,
            probe_listen=probe_listen,
            heartbeat_timeout=heartbeat_timeout,
            ttl=ttl,
            deregister_grace=deregister_grace,
            audit_retention=audit_retention,
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
    web_listen: str,
    probe_listen: str,
    heartbeat_timeout: float,
    ttl: float,
    deregister_grace: float,
    audit_retention: float | None,
    clock: Clock,
    started: asyncio.Event | None,
) -> None:
    """Everything but the writer: each part closed, in reverse, however far the start got."""
    async with contextlib.AsyncExitStack() as stack:
        refusals = Refusals(writer.record)
        mesh = MeshService(
            writer, colony_id=identity.colony_id, colony_secret=identity.secret(), clock=clock.time, refusals=refusals
        )
        router = Router(mesh.valid_session)
        reader = RegistryReader(database)
        stack.callback(reader.close)
        operators = OperatorService(
            reader,
            OperatorTokens(identity.directory),
            colony_id=identity.colony_id,
            record=writer.record,
            refusals=refusals,
            router=router,
            clock=clock.time,
        )
        stack.callback(operators.close)
        server = grpc.aio.server()
        grpc_health_service = grpc_health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(grpc_health_service, server)

        async def serving(ready: bool) -> None:
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in HEALTH_SERVICES:
                await grpc_health_service.set(name, status)

        await serving(False)
        health = ColonyHealth(writer, database, clock=clock, on_ready=serving)
        mesh_pb2_grpc.add_MeshServicer_to_server(mesh, server)
        colony_pb2_grpc.add_ColonyServicer_to_server(operators, server)
        agent_pb2_grpc.add_AgentControlServicer_to_server(router, server)
        key, cert = identity.server_key.read_bytes(), identity.server_cert.read_bytes()
        server.add_secure_port(listen, grpc.ssl_server_credentials([(key, cert)]))
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
            web=page.address if page else "off",
            probes=probes.address if probes else "off",
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
                prune = functools.partial(RegistryWriter.prune_audit, now=clock.time(), retention_s=audit_retention)
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
        except (sqlite3.Error, OSError) as exc:
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
