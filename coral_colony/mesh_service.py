"""The ``coral.mesh.v1.Mesh`` gRPC service: agents register, send deltas, heartbeat.

Agents authenticate with ``colony_id`` + ``colony_secret`` (compared in
constant time, never logged) and receive a per-agent session token that
every later call carries. Registry writes go through one worker thread,
which owns the SQLite connection.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import grpc.aio

from coral_base.wire.coral.mesh.v1 import mesh_pb2, mesh_pb2_grpc
from coral_colony.audit import AuditEntry
from coral_colony.registry import AgentRecord, Registry, ServiceRecord

_T = TypeVar("_T")

_PROVENANCE = {
    mesh_pb2.SERVICE_PROVENANCE_EXPLICIT: "explicit",
    mesh_pb2.SERVICE_PROVENANCE_DISCOVERED: "discovered",
    mesh_pb2.SERVICE_PROVENANCE_OVERRIDDEN: "overridden",
}


def service_record(info: Any, *, agent_id: str) -> ServiceRecord:
    """A mesh.v1 ServiceInfo as the registry stores it (keyed by agent for RFD 011 agents)."""
    return ServiceRecord(
        key=info.service_key or f"{agent_id}/{info.component_name}",
        component_name=info.component_name,
        port=info.port,
        protocol=info.protocol,
        health_endpoint=info.health_endpoint,
        service_type=info.service_type,
        provenance=_PROVENANCE.get(info.provenance, "unknown"),
        namespace=info.namespace,
        pod_name=info.pod_name,
        pod_uid=info.pod_uid,
        container_name=info.container_name,
        pod_ip=info.pod_ip,
        node_name=info.node_name,
        labels=dict(info.labels),
        node_labels=dict(info.node_labels),
        overridden_fields=tuple(info.overridden_fields),
        workload=info.workload,
        health_state=info.health.state or "unknown",
        health_error=info.health.last_error,
        health_latency_ms=info.health.latency_ms,
        health_since=info.health.since_unix_ms / 1000,
        health_interval_ms=info.health_interval_ms,
    )


def discovery_entry(event: Any) -> AuditEntry:
    """A discovery event an agent reported; the registry fills in the agent and node."""
    reason = event.reason + (f" [{', '.join(event.fields)}]" if event.fields else "")
    return AuditEntry(
        time=event.time_unix_ms / 1000,
        kind="discovery",
        action=event.kind,
        namespace=event.namespace,
        pod_name=event.pod_name,
        service_name=event.service_name,
        service_key=event.service_key,
        provenance=_PROVENANCE.get(event.provenance, ""),
        detail=reason,
    )


class MeshService(mesh_pb2_grpc.MeshServicer):
    def __init__(
        self, registry: Registry, *, colony_id: str, colony_secret: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.registry = registry
        self.colony_id = colony_id
        self._secret = colony_secret.encode()
        self.clock = clock
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry")

    async def run_in_writer(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the thread that owns the registry's connection."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn)

    async def Register(self, request: Any, context: Any) -> Any:
        if request.colony_id != self.colony_id or not hmac.compare_digest(request.colony_secret.encode(), self._secret):
            refusal = AuditEntry(
                time=self.clock(),
                kind="auth",
                action="agent.refused",
                actor=request.agent_id,
                agent_id=request.agent_id,
                node_name=request.node_name,
                detail=f"wrong colony id or secret (colony id sent: {request.colony_id!r})",
            )
            await self.record([refusal])
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"wrong colony id or secret for colony {self.colony_id!r}: check the agent's colony Secret",
            )
        if not request.agent_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "agent_id is required")
        single = not request.services and bool(request.component_name)
        infos = [request] if single else list(request.services)
        records = [service_record(_as_service(i) if single else i, agent_id=request.agent_id) for i in infos]
        agent = AgentRecord(
            agent_id=request.agent_id,
            kind="single-service" if single else "node-agent",
            node_name=request.node_name,
            node_labels=dict(request.node_labels),
            version=request.version,
            labels=dict(request.labels),
        )
        session = secrets.token_urlsafe(24)
        refused = await self.run_in_writer(
            lambda: self.registry.register(agent, records, session=session, now=self.clock())
        )
        reason = f"{len(refused)} service(s) belong to another agent" if refused else ""
        return mesh_pb2.RegisterResponse(
            accepted=True, session_token=session, reason=reason, refused_keys=list(refused)
        )

    async def record(self, entries: list[AuditEntry]) -> None:
        """Append audit entries through the writer thread."""
        await self.run_in_writer(lambda: self.registry.record(entries))

    async def valid_session(self, agent_id: str, token: str) -> bool:
        current = await self.run_in_writer(lambda: self.registry.session_of(agent_id))
        return current is not None and hmac.compare_digest(current[0].encode(), token.encode())

    async def _check_session(self, agent_id: str, token: str, context: Any) -> bool:
        """False when the colony does not know the agent (it must register again)."""
        current = await self.run_in_writer(lambda: self.registry.session_of(agent_id))
        if current is None:
            return False
        if not hmac.compare_digest(current[0].encode(), token.encode()):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"session of agent {agent_id!r} is not this one: register again",
            )
        return True

    async def UpdateServices(self, request: Any, context: Any) -> Any:
        if not await self._check_session(request.agent_id, request.session_token, context):
            return mesh_pb2.UpdateServicesResponse(resync_required=True)
        upserts = [service_record(i, agent_id=request.agent_id) for i in request.upserts]
        events = [discovery_entry(e) for e in request.events]
        applied = await self.run_in_writer(
            lambda: self.registry.apply(
                request.agent_id,
                sequence=request.sequence,
                upserts=upserts,
                removed=list(request.removed_keys),
                now=self.clock(),
                events=events,
            )
        )
        return mesh_pb2.UpdateServicesResponse(
            applied_sequence=applied.applied_sequence,
            resync_required=applied.resync_required,
            refused_keys=list(applied.refused_keys),
        )

    async def Heartbeat(self, request: Any, context: Any) -> Any:
        if not await self._check_session(request.agent_id, request.session_token, context):
            return mesh_pb2.HeartbeatResponse(resync_required=True)
        await self.run_in_writer(
            lambda: self.registry.heartbeat(request.agent_id, health=request.health, now=self.clock())
        )
        return mesh_pb2.HeartbeatResponse(resync_required=False)

    async def Deregister(self, request: Any, context: Any) -> Any:
        if await self._check_session(request.agent_id, request.session_token, context):
            await self.run_in_writer(lambda: self.registry.deregister(request.agent_id, now=self.clock()))
        return mesh_pb2.DeregisterResponse()

    def close(self) -> None:
        self._writer.shutdown(wait=True)


def _as_service(request: Any) -> Any:
    """RFD 011: a single-service agent registers with ``component_name`` and no services."""
    return mesh_pb2.ServiceInfo(component_name=request.component_name, labels=dict(request.labels))
