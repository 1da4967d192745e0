"""The ``coral.mesh.v1.Mesh`` gRPC service: agents register, send deltas, heartbeat.

Agents authenticate with ``colony_id`` + ``colony_secret`` (compared in
constant time, never logged) and receive a per-agent session token that
every later call carries. Every registry write goes through the writer
thread ``serve()`` owns and hands in: this service starts and stops no thread.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

import grpc
import grpc.aio

from coral_base.wire.coral.mesh.v1 import mesh_pb2, mesh_pb2_grpc
from coral_colony import codec
from coral_colony.model import Applied, AuditEntry, AuditKind
from coral_colony.refusals import Refusals
from coral_colony.stores.writer import WriterThread

_Context = grpc.aio.ServicerContext[object, object]


class MeshService(mesh_pb2_grpc.MeshServicer):
    def __init__(
        self,
        writer: WriterThread,
        *,
        colony_id: str,
        colony_secret: str,
        clock: Callable[[], float] = time.time,
        refusals: Refusals | None = None,
    ) -> None:
        self.writer = writer
        self.colony_id = colony_id
        self._secret = colony_secret.encode()
        self.clock = clock
        self.refusals = refusals or Refusals(writer.record)

    async def Register(self, request: mesh_pb2.RegisterRequest, context: _Context) -> mesh_pb2.RegisterResponse:
        call = codec.registration(request)
        agent = call.agent
        if call.colony_id != self.colony_id or not hmac.compare_digest(call.colony_secret.encode(), self._secret):
            refusal = AuditEntry(
                time=self.clock(),
                kind=AuditKind.AUTH,
                action="agent.refused",
                actor=agent.agent_id,
                agent_id=agent.agent_id,
                node_name=agent.node_name,
                detail=f"wrong colony id or secret (colony id sent: {call.colony_id!r})",
            )
            await self.refusals.refused(refusal, peer=context.peer(), reason="wrong colony id or secret")
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"wrong colony id or secret for colony {self.colony_id!r}: check the agent's colony Secret",
            )
        if not agent.agent_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "agent_id is required")
        session = secrets.token_urlsafe(24)
        digest = session_digest(session)  # the registry keeps only this: a token read from the file opens nothing
        refused = await self.writer.run(lambda w: w.register(agent, call.services, session=digest, now=self.clock()))
        reason = f"{len(refused)} service(s) belong to another agent" if refused else ""
        return codec.register_response(session_token=session, refused=refused, reason=reason)

    async def valid_session(self, agent_id: str, token: str) -> bool:
        current = await self.writer.run(lambda w: w.session_of(agent_id))
        return current is not None and hmac.compare_digest(current[0], session_digest(token))

    async def _check_session(self, agent_id: str, token: str, context: _Context) -> bool:
        """False when the colony does not know the agent (it must register again)."""
        current = await self.writer.run(lambda w: w.session_of(agent_id))
        if current is None:
            return False
        if not hmac.compare_digest(current[0], session_digest(token)):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"session of agent {agent_id!r} is not this one: register again",
            )
        return True

    async def UpdateServices(
        self, request: mesh_pb2.UpdateServicesRequest, context: _Context
    ) -> mesh_pb2.UpdateServicesResponse:
        delta = codec.delta(request)
        if not await self._check_session(delta.agent_id, delta.session_token, context):
            return codec.update_response(Applied(applied_sequence=0, resync_required=True))
        applied = await self.writer.run(
            lambda w: w.apply(
                delta.agent_id,
                sequence=delta.sequence,
                upserts=delta.upserts,
                removed=delta.removed,
                now=self.clock(),
                events=delta.events,
            )
        )
        return codec.update_response(applied)

    async def Heartbeat(self, request: mesh_pb2.HeartbeatRequest, context: _Context) -> mesh_pb2.HeartbeatResponse:
        call = codec.heartbeat(request)
        if not await self._check_session(call.agent_id, call.session_token, context):
            return codec.heartbeat_response(resync_required=True)
        await self.writer.run(lambda w: w.heartbeat(call.agent_id, health=call.health, now=self.clock()))
        return codec.heartbeat_response(resync_required=False)

    async def Deregister(self, request: mesh_pb2.DeregisterRequest, context: _Context) -> mesh_pb2.DeregisterResponse:
        call = codec.deregistration(request)
        if await self._check_session(call.agent_id, call.session_token, context):
            await self.writer.run(lambda w: w.leave(call.agent_id, now=self.clock()))  # removed after a grace window
        return codec.deregister_response()


def session_digest(token: str) -> str:
    """What the registry stores of a session token (SHA-256, hex)."""
    return hashlib.sha256(token.encode()).hexdigest()
