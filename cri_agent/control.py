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

import grpc
import grpc.aio

from coral_base.backoff import Backoff
from coral_base.logs import emit
from coral_base.vocabulary import Outcome
from coral_base.wire.coral.agent.v1 import agent_pb2, agent_pb2_grpc
from cri_agent import colony_codec
from cri_agent.identity import IdentityError
from cri_agent.operation import OperationRequest, OperationResult
from cri_agent.ops.runner import OperationRunner
from cri_agent.sync import ColonySync

log = logging.getLogger("cri_agent.control")
_END = agent_pb2.AgentMessage()  # a marker: the outbox's end, never sent
OUTBOX = 32  # messages waiting for the stream: beyond it, operations wait (and their capture slows)


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
            outbox: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue(OUTBOX)
            outbox.put_nowait(colony_codec.hello(agent_id=self.sync.agent_id, session=token))
            try:
                async with self.sync.channel() as channel:
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
            except IdentityError:
                pass  # the certificate went (revoked, or the colony forgot the node): the sync says why
            finally:
                self.connected = False
                await self._cancel_all()
                while not outbox.empty():  # nobody will send these: the stream is gone
                    outbox.get_nowait()
                outbox.put_nowait(_END)
            await self.backoff.wait()

    def _dispatch(self, message: agent_pb2.ColonyMessage, outbox: asyncio.Queue[agent_pb2.AgentMessage]) -> None:
        request = colony_codec.colony_message(message)
        if isinstance(request, OperationRequest):
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
        elif isinstance(request, str) and (running := self._tasks.get(request)) is not None:
            running.cancel()

    async def _serve(self, request: OperationRequest, outbox: asyncio.Queue[agent_pb2.AgentMessage]) -> None:
        result: OperationResult | None = None
        async with contextlib.aclosing(self.runner.run(request)) as messages:
            async for message in messages:
                if isinstance(message, OperationResult):
                    result = message
                    await outbox.put(colony_codec.result(message))
                else:
                    await outbox.put(colony_codec.artifact(message))
        if result is not None:
            emit(
                log,
                "operation.finished",
                level=logging.INFO if result.outcome is Outcome.OK else logging.WARNING,
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


async def _drain(outbox: asyncio.Queue[agent_pb2.AgentMessage]) -> AsyncIterator[agent_pb2.AgentMessage]:
    while (message := await outbox.get()) is not _END:
        yield message
