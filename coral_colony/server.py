"""Runs the colony: TLS gRPC (agents' Mesh + operators' Colony API), the
registry and its staleness clock, and the status page on localhost."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
from pathlib import Path

import grpc
import grpc.aio

from coral_base.clock import SYSTEM_CLOCK, Clock
from coral_base.lifecycle import Stage, run_stages
from coral_base.logs import emit
from coral_base.wire.coral.agent.v1 import agent_pb2_grpc
from coral_base.wire.coral.colony.v1 import colony_pb2_grpc
from coral_base.wire.coral.mesh.v1 import mesh_pb2_grpc
from coral_colony.identity import ColonyIdentity
from coral_colony.mesh_service import MeshService
from coral_colony.metrics import serving as serving_metrics
from coral_colony.operator_service import OperatorService
from coral_colony.refusals import Refusals
from coral_colony.router import Router
from coral_colony.stores.reader import RegistryReader
from coral_colony.stores.writer import RegistryWriter, WriterThread
from coral_colony.tokens import OperatorTokens
from coral_colony.web.server import StatusPage

log = logging.getLogger("coral_colony.server")

HEARTBEAT_TIMEOUT_S = 45.0  # three missed 15 s heartbeats
STALE_TTL_S = 24 * 3600.0  # services of an agent silent this long are dropped
WEB_LISTEN = "127.0.0.1:9080"
PRUNE_EVERY_S = 3600.0  # with --audit-retention: how often entries past it are deleted
CLOCK_JUMP_S = 5.0  # wall and monotonic time disagreeing by more, between two rounds, is a jump


async def serve(
    identity: ColonyIdentity,
    *,
    listen: str,
    database: Path,
    stop: asyncio.Event,
    web_listen: str = WEB_LISTEN,
    metrics_listen: str = "",  # host:port of the Prometheus metrics (coral_colony.metrics); "": none
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S,
    ttl: float = STALE_TTL_S,
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
            metrics_listen=metrics_listen,
            heartbeat_timeout=heartbeat_timeout,
            ttl=ttl,
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
    metrics_listen: str,
    heartbeat_timeout: float,
    ttl: float,
    audit_retention: float | None,
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
        server = grpc.aio.server(interceptors=metrics.interceptors() if metrics else None)
        mesh_pb2_grpc.add_MeshServicer_to_server(mesh, server)
        colony_pb2_grpc.add_ColonyServicer_to_server(operators, server)
        agent_pb2_grpc.add_AgentControlServicer_to_server(router, server)
        key, cert = identity.server_key.read_bytes(), identity.server_cert.read_bytes()
        server.add_secure_port(listen, grpc.ssl_server_credentials([(key, cert)]))
        await server.start()
        stack.push_async_callback(server.stop, 5.0)
        page = (
            StatusPage(database, colony_id=identity.colony_id, listen=web_listen, clock=clock) if web_listen else None
        )
        if page is not None:
            page.start()
            stack.callback(page.stop)
        if started is not None:
            started.set()
        emit(
            log,
            "colony.started",
            colony_id=identity.colony_id,
            listen=listen,
            web=page.address if page else "off",
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
            audit_retention=audit_retention,
        )
        await run_stages(
            [Stage("registry-clock", housekeeping)],
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
    audit_retention: float | None,
) -> None:
    """Marks silent agents unreachable, drops those past the TTL and, with a retention, prunes the audit log.

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
                lambda w: w.expire(now=clock.time(), heartbeat_timeout=heartbeat_timeout, ttl=ttl)
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
