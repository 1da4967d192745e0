"""Routes operators' control requests to the agent that owns the target.

Each node agent holds one ``agent.v1`` Connect stream (it dials the colony;
it opens no port). The router keeps, per connected agent, an outbox of
requests and cancels, and per request an inbox the agent's chunks and
result are delivered to. When an agent's stream ends, every request still
open on it gets a ``failed`` result naming the agent, so an operator never
waits on a dead node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from coral_base.logs import emit
from coral_base.wire.coral.agent.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger("coral_colony.router")

SessionCheck = Callable[[str, str], Awaitable[bool]]  # (agent_id, session_token) -> valid
_CLOSED = object()


class AgentNotConnected(Exception):
    """The agent owning the target holds no control stream right now."""


@dataclass(eq=False)
class _Connection:
    agent_id: str
    outbox: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    inboxes: dict[str, asyncio.Queue[Any]] = field(default_factory=dict)


class Router(agent_pb2_grpc.AgentControlServicer):
    def __init__(self, check_session: SessionCheck) -> None:
        self.check_session = check_session
        self._agents: dict[str, _Connection] = {}

    def connected(self, agent_id: str) -> bool:
        return agent_id in self._agents

    # -- the agents' side ------------------------------------------------------------------

    async def Connect(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        hello = await anext(aiter(request_iterator), None)
        if hello is None or hello.WhichOneof("body") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be Hello")
        assert hello is not None
        agent_id, token = hello.hello.agent_id, hello.hello.session_token
        if not await self.check_session(agent_id, token):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, f"no registration session {agent_id!r} with this token: register first"
            )
        connection = _Connection(agent_id)
        previous = self._agents.get(agent_id)
        if previous is not None:  # a reconnect replaces the old stream
            self._drop(previous, "the agent reconnected")
        self._agents[agent_id] = connection
        emit(log, "control.connected", agent_id=agent_id)
        reader = asyncio.create_task(self._read(connection, request_iterator))
        try:
            while True:
                message = await connection.outbox.get()
                if message is _CLOSED:
                    return
                yield message
        finally:
            reader.cancel()
            if self._agents.get(agent_id) is connection:
                del self._agents[agent_id]
            self._drop(connection, f"agent {agent_id} disconnected during the operation")
            emit(log, "control.disconnected", agent_id=agent_id)

    async def _read(self, connection: _Connection, messages: AsyncIterator[Any]) -> None:
        try:
            async for message in messages:
                kind = message.WhichOneof("body")
                if kind == "chunk":
                    inbox = connection.inboxes.get(message.chunk.request_id)
                elif kind == "result":
                    inbox = connection.inboxes.pop(message.result.request_id, None)
                else:
                    continue
                if inbox is not None:
                    inbox.put_nowait(message)
        except grpc.aio.AioRpcError:
            pass
        finally:
            connection.outbox.put_nowait(_CLOSED)

    def _drop(self, connection: _Connection, reason: str) -> None:
        for request_id, inbox in list(connection.inboxes.items()):
            inbox.put_nowait(
                agent_pb2.AgentMessage(result=agent_pb2.Result(request_id=request_id, outcome="failed", error=reason))
            )
        connection.inboxes.clear()
        connection.outbox.put_nowait(_CLOSED)

    # -- the operators' side -----------------------------------------------------------------

    async def run(self, agent_id: str, request: Any) -> AsyncIterator[Any]:
        """Send ``request`` to the agent; yield its chunks and, last, its result.

        Closing the generator early (the operator went away) sends Cancel.
        """
        connection = self._agents.get(agent_id)
        if connection is None:
            raise AgentNotConnected(agent_id)
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        connection.inboxes[request.request_id] = inbox
        connection.outbox.put_nowait(agent_pb2.ColonyMessage(request=request))
        finished = False
        try:
            while True:
                message = await inbox.get()
                if message.WhichOneof("body") == "result":
                    finished = True
                    yield message
                    return
                yield message
        finally:
            if not finished:
                connection.inboxes.pop(request.request_id, None)
                connection.outbox.put_nowait(
                    agent_pb2.ColonyMessage(
                        cancel=agent_pb2.Cancel(request_id=request.request_id, reason="the operator cancelled")
                    )
                )
