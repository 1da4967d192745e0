"""Who an agent-endpoint caller is: its verified certificate, checked against its node's enrollment.

The agent endpoint is mutual TLS: gRPC has already verified the peer's
certificate against the colony's CAs before a call reaches a servicer. That
proves the colony signed it, not that it is still good: every call also
looks up the node's enrollment (kept in memory here, written through the
registry's writer), so a revoked node is refused at once, whatever its
certificate's remaining lifetime, and a node that renewed keeps only its
current and previous certificates.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import grpc
import grpc.aio

from coral_colony.model import AuditEntry, AuditKind, Enrollment
from coral_colony.signer import PeerAgent, peer_agent

_Context = grpc.aio.ServicerContext[object, object]


class Refused(Protocol):
    """Audits a refused call (``Refusals.refused``: one row per caller, reason and minute)."""

    def __call__(self, entry: AuditEntry, *, peer: str, reason: str) -> Awaitable[None]: ...


@dataclass(frozen=True, slots=True)
class Caller:
    """A verified, enrolled agent on the agent endpoint."""

    agent_id: str
    node_name: str
    enrollment: Enrollment


class Enrolled:
    """The enrollments in force, by node: what every agent-endpoint call is checked against."""

    def __init__(
        self,
        colony_id: str,
        known: Iterable[Enrollment] = (),
        *,
        refused: Refused | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.colony_id = colony_id
        self.refused = refused
        self.clock = clock
        self._by_node: dict[str, Enrollment] = {}
        self._in_force: set[str] = set()  # agent ids with an enrollment in force: asked on every legacy call
        for enrollment in known:
            self.put(enrollment)

    def get(self, node_name: str) -> Enrollment | None:
        return self._by_node.get(node_name)

    def put(self, enrollment: Enrollment) -> None:
        previous = self._by_node.get(enrollment.node_name)
        if previous is not None:
            self._in_force.discard(previous.agent_id)
        self._by_node[enrollment.node_name] = enrollment
        if not enrollment.revoked_at:
            self._in_force.add(enrollment.agent_id)

    def in_force(self, node_name: str) -> bool:
        current = self._by_node.get(node_name)
        return current is not None and not current.revoked_at

    def agent_in_force(self, agent_id: str) -> bool:
        return agent_id in self._in_force

    def peer(self, context: _Context) -> PeerAgent | None:
        """The certificate's agent, when the call came with one (the agent endpoint); None otherwise."""
        return peer_agent(context.auth_context(), colony_id=self.colony_id)

    def refusal(self, peer: PeerAgent) -> str | None:
        """Why ``peer``'s certificate is not accepted now, or None."""
        current = self._by_node.get(peer.node_name)
        if current is None:
            return f"node {peer.node_name} is not enrolled with colony {self.colony_id}: enroll again"
        if current.revoked_at:
            return f"the enrollment of node {peer.node_name} was revoked by {current.revoked_by}"
        if not current.accepts(peer.agent_id, peer.fingerprint):
            return f"this certificate of node {peer.node_name} was replaced by a renewal: use the current one"
        return None

    async def caller(self, context: _Context) -> Caller:
        """The enrolled agent calling, or the call aborted UNAUTHENTICATED with the reason."""
        peer = self.peer(context)
        if peer is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"no agent certificate of colony {self.colony_id}: enroll first (coral.identity.v1.Enrollment)",
            )
            raise AssertionError("unreachable: abort raises")
        if why := self.refusal(peer):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)
        return Caller(agent_id=peer.agent_id, node_name=peer.node_name, enrollment=self._by_node[peer.node_name])

    async def speaking_for(self, context: _Context, claimed: str) -> Caller:
        """The enrolled agent calling, which a request naming another agent (``claimed``) cannot speak for:
        such a call is audited and aborted PERMISSION_DENIED, whichever service it reached."""
        caller = await self.caller(context)
        if claimed and claimed != caller.agent_id:
            if self.refused is not None:
                entry = AuditEntry(
                    time=self.clock(),
                    kind=AuditKind.AUTH,
                    action="agent.refused",
                    actor=caller.agent_id,
                    agent_id=caller.agent_id,
                    node_name=caller.node_name,
                    detail=f"agent {caller.agent_id} (node {caller.node_name}) sent a request as agent {claimed}",
                )
                await self.refused(entry, peer=context.peer(), reason="request for another agent")
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this certificate is agent {caller.agent_id}'s: it cannot speak for {claimed}",
            )
        return caller
