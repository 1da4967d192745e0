"""Runs the colony: TLS gRPC (agents' Mesh + operators' Colony API), the
registry and its staleness clock, and the status page on localhost."""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path

import grpc
import grpc.aio

from coral_base.clock import SYSTEM_CLOCK, Clock
from coral_base.logs import emit
from coral_base.wire.coral.agent.v1 import agent_pb2_grpc
from coral_base.wire.coral.colony.v1 import colony_pb2_grpc
from coral_base.wire.coral.mesh.v1 import mesh_pb2_grpc
from coral_colony.identity import ColonyIdentity
from coral_colony.mesh_service import MeshService
from coral_colony.operator_service import OperatorService
from coral_colony.registry import Registry
from coral_colony.router import Router
from coral_colony.tokens import OperatorTokens
from coral_colony.web.server import StatusPage

log = logging.getLogger("coral_colony.server")

HEARTBEAT_TIMEOUT_S = 45.0  # three missed 15 s heartbeats
STALE_TTL_S = 24 * 3600.0  # services of an agent silent this long are dropped
WEB_LISTEN = "127.0.0.1:9080"
PRUNE_EVERY_S = 3600.0  # with --audit-retention: how often entries past it are deleted


async def serve(
    identity: ColonyIdentity,
    *,
    listen: str,
    database: Path,
    stop: asyncio.Event,
    web_listen: str = WEB_LISTEN,
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S,
    ttl: float = STALE_TTL_S,
    audit_retention: float | None = None,  # seconds; None keeps every entry
    clock: Clock = SYSTEM_CLOCK,
    started: asyncio.Event | None = None,  # set once agents and operators can connect
) -> None:
    registry = Registry(database)
    mesh = MeshService(registry, colony_id=identity.colony_id, colony_secret=identity.secret(), clock=clock.time)
    router = Router(mesh.valid_session)
    operators = OperatorService(
        Registry(database, read_only=True),
        OperatorTokens(identity.directory),
        colony_id=identity.colony_id,
        record=mesh.record,
        router=router,
        clock=clock.time,
    )
    server = grpc.aio.server()
    mesh_pb2_grpc.add_MeshServicer_to_server(mesh, server)
    colony_pb2_grpc.add_ColonyServicer_to_server(operators, server)
    agent_pb2_grpc.add_AgentControlServicer_to_server(router, server)
    credentials = grpc.ssl_server_credentials([(identity.server_key.read_bytes(), identity.server_cert.read_bytes())])
    server.add_secure_port(listen, credentials)
    page = StatusPage(database, colony_id=identity.colony_id, listen=web_listen, clock=clock) if web_listen else None
    await server.start()
    if page is not None:
        page.start()
    if started is not None:
        started.set()
    emit(
        log,
        "colony.started",
        colony_id=identity.colony_id,
        listen=listen,
        web=page.address if page else "off",
        database=str(database),
    )
    pruned_at = float("-inf")
    try:
        while not stop.is_set():
            if audit_retention is not None and clock.monotonic() - pruned_at >= PRUNE_EVERY_S:
                prune = functools.partial(registry.prune_audit, now=clock.time(), retention_s=audit_retention)
                deleted = await mesh.run_in_writer(prune)
                pruned_at = clock.monotonic()
                if deleted:
                    emit(log, "audit.pruned", deleted=deleted, retention_s=audit_retention)
            silent, gone = await mesh.run_in_writer(
                lambda: registry.expire(now=clock.time(), heartbeat_timeout=heartbeat_timeout, ttl=ttl)
            )
            for agent_id in silent:
                emit(log, "agent.unreachable", level=logging.WARNING, agent_id=agent_id)
            for agent_id in gone:
                emit(log, "agent.expired", agent_id=agent_id)
            await clock.sleep(min(5.0, heartbeat_timeout / 3), stop)
    finally:
        await server.stop(5.0)
        if page is not None:
            page.stop()
        operators.close()
        operators.reader.close()
        mesh.close()
        registry.close()
        emit(log, "colony.stopped", colony_id=identity.colony_id)
