"""The agent's control stream: it dials the colony and serves its requests.

The agent opens no listening port. Once registered (it needs the session
token of its mesh.v1 registration) it holds one ``agent.v1`` Connect stream
to the colony and runs each OperationRequest as a task, streaming chunks
and the final result back. A Cancel cancels the task (the capture or
profiler process is killed). When the stream drops, running operations are
cancelled too, since nobody could receive their output, and the agent
reconnects with backoff and jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from coral_base.backoff import Backoff
from coral_base.logs import emit
from coral_base.wire.coral.agent.v1 import agent_pb2, agent_pb2_grpc
from cri_agent.ops.runner import OperationRunner
from cri_agent.sync import ColonySync, colony_channel

log = logging.getLogger("cri_agent.control")
_END = object()


class ControlStream:
    def __init__(self, sync: ColonySync, runner: OperationRunner, *, backoff: Backoff | None = None) -> None:
        self.sync = sync
        self.runner = runner
        self.backoff = backoff or Backoff(initial=0.5, maximum=sync.backoff.maximum, clock=sync.clock)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.connected = False

    async def run(self) -> None:
        while True:
            token = await self.sync.session()
            outbox: asyncio.Queue[Any] = asyncio.Queue()
            outbox.put_nowait(
                agent_pb2.AgentMessage(hello=agent_pb2.Hello(agent_id=self.sync.endpoint.agent_id, session_token=token))
            )
            try:
                async with colony_channel(self.sync.endpoint) as channel:
                    call = agent_pb2_grpc.AgentControlStub(channel).Connect(_drain(outbox))
                    async for message in call:
                        if not self.connected:
                            self.connected = True
                            self.backoff.reset()
                        self._dispatch(message, outbox)
            except grpc.aio.AioRpcError as exc:
                if self.connected:
                    emit(
                        log, "control.disconnected", level=logging.WARNING, reason=f"{exc.code().name}: {exc.details()}"
                    )
            finally:
                self.connected = False
                outbox.put_nowait(_END)
                await self._cancel_all()
            await self.backoff.wait()

    def _dispatch(self, message: Any, outbox: asyncio.Queue[Any]) -> None:
        kind = message.WhichOneof("body")
        if kind == "request":
            request = message.request
            emit(
                log,
                "operation.requested",
                action=request.action,
                operator=request.operator,
                namespace=request.target.namespace,
                pod=request.target.pod_name,
            )
            task = asyncio.create_task(self._serve(request, outbox), name=f"op-{request.request_id}")
            self._tasks[request.request_id] = task
            task.add_done_callback(lambda _: self._tasks.pop(request.request_id, None))
        elif kind == "cancel" and (running := self._tasks.get(message.cancel.request_id)) is not None:
            running.cancel()

    async def _serve(self, request: Any, outbox: asyncio.Queue[Any]) -> None:
        result: Any = None
        async with contextlib.aclosing(self.runner.run(request)) as messages:
            async for message in messages:
                outbox.put_nowait(message)
                if message.WhichOneof("body") == "result":
                    result = message.result
        if result is not None:
            emit(
                log,
                "operation.finished",
                level=logging.INFO if result.outcome == "ok" else logging.WARNING,
                action=request.action,
                operator=request.operator,
                outcome=result.outcome,
                error=result.error,
                bytes=result.bytes,
                seconds=round(result.duration_s, 2),
            )

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _drain(outbox: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    while (message := await outbox.get()) is not _END:
        yield message
