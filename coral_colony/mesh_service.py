"""The ``coral.mesh.v1.Mesh`` gRPC service: agents register, send deltas, heartbeat.

On the colony's agent endpoint (mutual TLS) the caller is the agent its
certificate names, checked against its node's enrollment on every call
(``enrolled.py``): the ``agent_id`` and ``node_name`` a request carries are
never believed. A request naming another agent is refused and audited.

With ``--allow-shared-secret-agents`` the public endpoint also serves agents
that only have the shared secret (RFD 011 agents, and node agents not yet
upgraded): they authenticate with ``colony_id`` + ``colony_secret``
(compared in constant time, never logged) and receive a session token every
later call carries. Such an agent may not speak for an enrolled node or
agent: the secret no longer impersonates anyone who enrolled.

A session token opens a registration's sequence of deltas; the registry
keeps only its digest. Every registry write goes through the writer thread
``serve()`` owns and hands in: this service starts and stops no thread.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import replace

import grpc
import grpc.aio

from coral_base.wire.coral.mesh.v1 import mesh_pb2, mesh_pb2_grpc
from coral_colony import codec
from coral_colony.enrolled import Enrolled
from coral_colony.model import AgentKind, Applied, AuditEntry, AuditKind
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
        enrolled: Enrolled | None = None,
        clock: Callable[[], float] = time.time,
        refusals: Refusals | None = None,
    ) -> None:
        self.writer = writer
        self.colony_id = colony_id
        self._secret = colony_secret.encode()
        self.clock = clock
        self.refusals = refusals or Refusals(writer.record)
        self.enrolled = enrolled or Enrolled(colony_id, refused=self.refusals.refused, clock=clock)

    async def Register(self, request: mesh_pb2.RegisterRequest, context: _Context) -> mesh_pb2.RegisterResponse:
        call = codec.registration(request)
        agent = call.agent
        if self.enrolled.peer(context) is not None:
            caller = await self.enrolled.speaking_for(context, call.agent.agent_id)
            agent = replace(agent, agent_id=caller.agent_id, node_name=caller.node_name, kind=AgentKind.NODE_AGENT)
        else:
            await self._shared_secret(call.colony_id, call.colony_secret, agent.agent_id, agent.node_name, context)
        if not agent.agent_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "agent_id is required")
        session = secrets.token_urlsafe(24)
        digest = session_digest(session)  # the registry keeps only this: a token read from the file opens nothing
        refused = await self.writer.run(
            lambda w: w.register(agent, call.services, session=digest, now=self.clock(), partial=call.partial)
        )
        reason = f"{len(refused)} service(s) name another node than this agent's" if refused else ""
        return codec.register_response(session_token=session, refused=refused, reason=reason)

    async def _shared_secret(
        self, colony_id: str, secret: str, agent_id: str, node_name: str, context: _Context
    ) -> None:
        """A shared-secret registration: the right secret, for no enrolled node or agent (else aborted)."""
        if colony_id != self.colony_id or not hmac.compare_digest(secret.encode(), self._secret):
            await self._refuse(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                agent_id=agent_id,
                node_name=node_name,
                reason="wrong colony id or secret",
                detail=f"wrong colony id or secret (colony id sent: {colony_id!r})",
                message=f"wrong colony id or secret for colony {self.colony_id!r}: check the agent's colony Secret",
            )
        if (node_name and self.enrolled.in_force(node_name)) or self.enrolled.agent_in_force(agent_id):
            why = f"node {node_name or '?'} / agent {agent_id} is enrolled: only its certificate speaks for it"
            await self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                agent_id=agent_id,
                node_name=node_name,
                reason="shared secret for an enrolled agent",
                detail=why,
                message=why,
            )

    async def _refuse(
        self,
        context: _Context,
        code: grpc.StatusCode,
        *,
        agent_id: str,
        node_name: str,
        reason: str,
        detail: str,
        message: str,
    ) -> None:
        refusal = AuditEntry(
            time=self.clock(),
            kind=AuditKind.AUTH,
            action="agent.refused",
            actor=agent_id,
            agent_id=agent_id,
            node_name=node_name,
            detail=detail,
        )
        await self.refusals.refused(refusal, peer=context.peer(), reason=reason)
        await context.abort(code, message)

    async def valid_session(self, agent_id: str, token: str) -> bool:
        current = await self.writer.run(lambda w: w.session_of(agent_id))
        return current is not None and hmac.compare_digest(current[0], session_digest(token))

    async def _session_agent(self, claimed: str, token: str, context: _Context) -> str | None:
        """The calling agent, or None when the colony does not know it (it must register again)."""
        agent_id = claimed
        if self.enrolled.peer(context) is not None:
            agent_id = (await self.enrolled.speaking_for(context, claimed)).agent_id
        elif self.enrolled.agent_in_force(claimed):
            return None  # enrolled since: its old shared-secret session is over
        current = await self.writer.run(lambda w: w.session_of(agent_id))
        if current is None:
            return None
        if not hmac.compare_digest(current[0], session_digest(token)):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"session of agent {agent_id!r} is not this one: register again",
            )
        return agent_id

    async def UpdateServices(
        self, request: mesh_pb2.UpdateServicesRequest, context: _Context
    ) -> mesh_pb2.UpdateServicesResponse:
        delta = codec.delta(request)
        agent_id = await self._session_agent(delta.agent_id, delta.session_token, context)
        if agent_id is None:
            return codec.update_response(Applied(applied_sequence=0, resync_required=True))
        applied = await self.writer.run(
            lambda w: w.apply(
                agent_id,
                sequence=delta.sequence,
                upserts=delta.upserts,
                removed=delta.removed,
                now=self.clock(),
                events=delta.events,
                completes_registration=delta.completes_registration,
            )
        )
        return codec.update_response(applied)

    async def Heartbeat(self, request: mesh_pb2.HeartbeatRequest, context: _Context) -> mesh_pb2.HeartbeatResponse:
        call = codec.heartbeat(request)
        agent_id = await self._session_agent(call.agent_id, call.session_token, context)
        if agent_id is None:
            return codec.heartbeat_response(resync_required=True)
        await self.writer.run(lambda w: w.heartbeat(agent_id, health=call.health, now=self.clock()))
        return codec.heartbeat_response(resync_required=False)

    async def Deregister(self, request: mesh_pb2.DeregisterRequest, context: _Context) -> mesh_pb2.DeregisterResponse:
        call = codec.deregistration(request)
        agent_id = await self._session_agent(call.agent_id, call.session_token, context)
        if agent_id is not None:
            await self.writer.run(lambda w: w.leave(agent_id, now=self.clock()))  # removed after a grace window
        return codec.deregister_response()


def session_digest(token: str) -> str:
    """What the registry stores of a session token (SHA-256, hex)."""
    return hashlib.sha256(token.encode()).hexdigest()
