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
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import grpc
import grpc.aio

from coral_base.logs import emit
from coral_base.wire.coral.agent.v1 import agent_pb2, agent_pb2_grpc
from coral_colony import codec
from coral_colony.enrolled import Enrolled
from coral_colony.model import ForwardedOperation

log = logging.getLogger("coral_colony.router")

HELLO_WITHIN_S = 10.0  # a Connect that has not said Hello by then is closed
# Chunks waiting for one operator, at most: one of the agent's 1 MiB chunks (a larger one passes alone). A
# tap moves as fast with 1 MiB as with 4 (the operator's write takes one chunk while the next waits here);
# each MiB more is a MiB the colony holds for every operation whose operator stopped reading.
INBOX_BYTES = 1024 * 1024
SessionCheck = Callable[[str, str], Awaitable[bool]]  # (agent_id, session_token) -> valid
_Context = grpc.aio.ServicerContext[object, object]


class _Closed:
    """Put in an outbox when the stream is over."""


_CLOSED: Final = _Closed()


class AgentNotConnected(Exception):
    """The agent owning the target holds no control stream right now."""


class Inbox:
    """One request's messages from its agent, bounded in bytes: ``put`` waits while it is full.

    One producer (the stream's reader) and one consumer (``Router.run``). A
    message is always taken when the inbox is empty (a chunk larger than the
    bound passes alone). ``put_nowait`` ignores the bound: the colony's own
    last word (a failed result) never waits. ``close`` (the operator went
    away) releases a waiting ``put`` and drops what comes after.
    """

    def __init__(self, limit_bytes: int = INBOX_BYTES) -> None:
        self.limit_bytes = limit_bytes
        self.queued_bytes = 0
        self.peak_bytes = 0  # the most it held at once
        self.closed = False
        self._messages: deque[tuple[agent_pb2.AgentMessage, int]] = deque()
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    async def put(self, message: agent_pb2.AgentMessage) -> None:
        await self._room.wait()
        self._append(message)

    def put_nowait(self, message: agent_pb2.AgentMessage) -> None:
        self._append(message)

    async def get(self) -> agent_pb2.AgentMessage:
        await self._readable.wait()
        message, size = self._messages.popleft()
        self.queued_bytes -= size
        self._update()
        return message

    def close(self) -> None:
        self.closed = True
        self._messages.clear()
        self.queued_bytes = 0
        self._update()

    def _append(self, message: agent_pb2.AgentMessage) -> None:
        if self.closed:
            return
        size = message.ByteSize()
        self._messages.append((message, size))
        self.queued_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.queued_bytes)
        self._update()

    def _update(self) -> None:
        if self._messages:
            self._readable.set()
        else:
            self._readable.clear()
        if self.closed or self.queued_bytes < self.limit_bytes:
            self._room.set()
        else:
            self._room.clear()


@dataclass(eq=False)
class _Connection:
    agent_id: str
    outbox: asyncio.Queue[agent_pb2.ColonyMessage | _Closed] = field(default_factory=asyncio.Queue)
    inboxes: dict[str, Inbox] = field(default_factory=dict)


class Router(agent_pb2_grpc.AgentControlServicer):
    def __init__(
        self,
        check_session: SessionCheck,
        enrolled: Enrolled | None = None,
        *,
        hello_within_s: float = HELLO_WITHIN_S,
        inbox_bytes: int = INBOX_BYTES,
    ) -> None:
        self.check_session = check_session
        self.enrolled = enrolled or Enrolled("")
        self.hello_within_s = hello_within_s
        self.inbox_bytes = inbox_bytes
        self._agents: dict[str, _Connection] = {}

    def connected(self, agent_id: str) -> bool:
        return agent_id in self._agents

    def disconnect(self, agent_id: str, reason: str) -> bool:
        """End the agent's control stream (its open operations fail with ``reason``); False if it had none."""
        connection = self._agents.pop(agent_id, None)
        if connection is None:
            return False
        self._drop(connection, reason)
        return True

    # -- the agents' side ------------------------------------------------------------------

    async def Connect(
        self, request_iterator: AsyncIterator[agent_pb2.AgentMessage], context: _Context
    ) -> AsyncIterator[agent_pb2.ColonyMessage]:
        try:  # a stream that says nothing must not hold a slot for ever
            async with asyncio.timeout(self.hello_within_s):
                first = await anext(aiter(request_iterator), None)
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no Hello within {self.hello_within_s:g}s of connecting"
            )
            raise  # unreachable: abort raises
        hello = codec.hello(first) if first is not None else None
        if hello is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be Hello")
        assert hello is not None
        agent_id, token = hello.agent_id, hello.session_token
        if self.enrolled.peer(context) is not None:  # the agent endpoint: the certificate says who
            agent_id = (await self.enrolled.speaking_for(context, agent_id)).agent_id
        elif self.enrolled.agent_in_force(agent_id):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"agent {agent_id} is enrolled: only its certificate speaks for it"
            )
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
                if isinstance(message, _Closed):
                    return
                yield message
        finally:
            reader.cancel()
            if self._agents.get(agent_id) is connection:
                del self._agents[agent_id]
            self._drop(connection, f"agent {agent_id} disconnected during the operation")
            emit(log, "control.disconnected", agent_id=agent_id)

    async def _read(self, connection: _Connection, messages: AsyncIterator[agent_pb2.AgentMessage]) -> None:
        try:
            async for message in messages:
                address = codec.addressed(message)
                if address is None:
                    continue
                request_id, final = address
                inbox = connection.inboxes.pop(request_id, None) if final else connection.inboxes.get(request_id)
                if inbox is not None:
                    await inbox.put(message)  # full: the agent's stream is not read until its operator reads on
        except grpc.aio.AioRpcError:
            pass
        finally:
            connection.outbox.put_nowait(_CLOSED)

    def _drop(self, connection: _Connection, reason: str) -> None:
        for request_id, inbox in list(connection.inboxes.items()):
            inbox.put_nowait(codec.failed(request_id, reason))
        connection.inboxes.clear()
        connection.outbox.put_nowait(_CLOSED)

    # -- the operators' side -----------------------------------------------------------------

    async def run(
        self,
        agent_id: str,
        operation: ForwardedOperation,
        *,
        within_s: float = float("inf"),
    ) -> AsyncGenerator[agent_pb2.AgentMessage, None]:
        """Send ``operation`` to the agent; yield its chunks and, last, its result, as the agent sent them.

        Closing the generator early (the operator went away) sends Cancel. An
        agent that has not answered within ``within_s`` (real time: the
        operation runs in real time on the node) is sent Cancel, and the
        operation ends with a failed result that says so.
        """
        connection = self._agents.get(agent_id)
        if connection is None:
            raise AgentNotConnected(agent_id)
        request_id = operation.request_id
        inbox = Inbox(self.inbox_bytes)
        connection.inboxes[request_id] = inbox
        connection.outbox.put_nowait(codec.request_message(operation))
        finished = False
        try:
            deadline = asyncio.get_running_loop().time() + within_s
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await inbox.get()
                except TimeoutError:
                    yield codec.failed(request_id, f"no result from the agent within {within_s:g}s: cancelled")
                    return
                if (address := codec.addressed(message)) is not None and address[1]:
                    finished = True
                    yield message
                    return
                yield message
        finally:
            inbox.close()  # a reader waiting for room goes on; what comes after is dropped
            if not finished:
                connection.inboxes.pop(request_id, None)
                connection.outbox.put_nowait(codec.cancel_message(request_id, "the operator cancelled"))
