"""Routing control requests: target resolution, relaying, cancel, and an agent that drops."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from coral_base.clock import VirtualClock
from coral_base.grpc_options import Endpoint, server_options
from coral_base.wire.coral.agent.v1 import agent_pb2, agent_pb2_grpc
from coral_colony.model import (
    Action,
    AgentKind,
    AgentRecord,
    ForwardedOperation,
    OperationRequest,
    OperationTarget,
    ServiceRecord,
)
from coral_colony.router import AgentNotConnected, Inbox, Router
from coral_colony.stores.reader import RegistryReader
from coral_colony.stores.writer import RegistryWriter
from coral_colony.targets import resolve_pod


def registry(tmp_path: Path) -> RegistryReader:
    writer = RegistryWriter(tmp_path / "colony.db")
    agent = AgentRecord(agent_id="a", kind=AgentKind.NODE_AGENT, node_name="node-a")
    services = [
        ServiceRecord(key="shop/u1/web/80", component_name="web", namespace="shop", pod_name="web-0", pod_uid="u1"),
        ServiceRecord(key="shop/u2/web/80", component_name="web", namespace="shop", pod_name="web-1", pod_uid="u2"),
        ServiceRecord(key="shop/u3/db/5432", component_name="db", namespace="shop", pod_name="db-0", pod_uid="u3"),
    ]
    writer.register(agent, services, session="s", now=1.0)
    writer.close()
    return RegistryReader(tmp_path / "colony.db")


def operation(request_id: str, action: Action) -> ForwardedOperation:
    return ForwardedOperation(
        request_id=request_id,
        operator="alice",
        request=OperationRequest(action=action, target="shop/web-0"),
        target=OperationTarget(namespace="shop", pod_name="web-0"),
    )


def test_targets_resolve_by_name_key_or_pod_and_ambiguity_is_explained(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    resolved = resolve_pod(reg, "db")
    target = resolved.target
    assert (target.pod_name, target.service_key, resolved.agent_id, resolved.node) == (
        "db-0",
        "shop/u3/db/5432",
        "a",
        "node-a",
    )
    assert resolve_pod(reg, "shop/u1/web/80").target.pod_name == "web-0"
    assert resolve_pod(reg, "shop/web-1").target.pod_uid == "u2"
    with pytest.raises(
        LookupError, match=r"matches 2 pods: shop/web-0 on node node-a \(agent a\), .*name one as namespace/pod"
    ):
        resolve_pod(reg, "web")
    with pytest.raises(LookupError, match="no service or pod 'nope'"):
        resolve_pod(reg, "nope")
    unlisted = resolve_pod(reg, "kube-system/proxy", node="node-a")
    assert (unlisted.target.namespace, unlisted.target.pod_name, unlisted.agent_id) == ("kube-system", "proxy", "a")


def _chunk(size: int) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(chunk=agent_pb2.Chunk(request_id="1", kind="pcap", data=bytes(size)))


def test_an_inbox_holds_one_of_the_agents_1_mib_chunks_and_the_next_waits_for_the_operator() -> None:
    clock = VirtualClock()

    async def scenario() -> tuple[bool, bool, int]:
        inbox = Inbox()
        await asyncio.wait_for(inbox.put(_chunk(1024 * 1024)), 1)  # over the bound by its header: passes alone
        second = asyncio.create_task(inbox.put(_chunk(1024 * 1024)))
        await asyncio.sleep(1)
        waited = not second.done()
        await inbox.get()  # the operator takes the first
        await asyncio.wait_for(second, 1)
        return waited, second.done(), len((await inbox.get()).chunk.data)

    assert clock.run(scenario()) == (True, True, 1024 * 1024)


@pytest.mark.parametrize("endpoint", list(Endpoint))
def test_neither_endpoint_lets_grpc_grow_a_stalled_streams_receive_window(endpoint: Endpoint) -> None:
    # BDP probing would open an agent's control stream to several MiB while its operator reads nothing.
    assert ("grpc.http2.bdp_probe", 0) in server_options(endpoint)


async def _serve(router: Router) -> tuple[grpc.aio.Server, int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentControlServicer_to_server(router, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, port


async def _allow(agent_id: str, token: str) -> bool:
    return token == "good"


def test_a_request_is_relayed_and_an_agent_that_drops_fails_it_at_once() -> None:
    clock = VirtualClock()

    async def scenario() -> tuple[list[str | None], Any, Any, str]:
        router = Router(_allow)
        server, port = await _serve(router)
        outbox: asyncio.Queue[Any] = asyncio.Queue()
        outbox.put_nowait(agent_pb2.AgentMessage(hello=agent_pb2.Hello(agent_id="a", session_token="good")))

        async def messages() -> AsyncIterator[Any]:
            while (m := await outbox.get()) is not None:
                yield m

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = agent_pb2_grpc.AgentControlStub(channel).Connect(messages())

            async def fake_agent() -> None:
                async for message in call:
                    rid = message.request.request_id
                    if message.request.action == "tap":
                        outbox.put_nowait(
                            agent_pb2.AgentMessage(chunk=agent_pb2.Chunk(request_id=rid, kind="pcap", data=b"x"))
                        )
                        outbox.put_nowait(agent_pb2.AgentMessage(result=agent_pb2.Result(request_id=rid, outcome="ok")))
                    else:  # "profile": the agent dies mid-operation
                        outbox.put_nowait(None)
                        return

            agent = asyncio.create_task(fake_agent())
            await clock.until(lambda: router.connected("a"), within=5)
            kinds: list[str | None] = [m.WhichOneof("body") async for m in router.run("a", operation("1", Action.TAP))]
            first = [m async for m in router.run("a", operation("2", Action.PROFILE))][-1]
            await agent
        with pytest.raises(AgentNotConnected):
            await anext(router.run("a", operation("3", Action.TAP)))
        await server.stop(None)
        return kinds, first.result.outcome, first.result.error, ""

    kinds, outcome, error, _ = clock.run(asyncio.wait_for(scenario(), 10))
    assert kinds == ["chunk", "result"]
    assert (outcome, error) == ("failed", "agent a disconnected during the operation")


def test_an_agent_without_a_valid_session_is_refused() -> None:
    async def scenario() -> grpc.StatusCode:
        server, port = await _serve(Router(_allow))

        async def hello() -> AsyncIterator[Any]:
            yield agent_pb2.AgentMessage(hello=agent_pb2.Hello(agent_id="a", session_token="stolen"))

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in agent_pb2_grpc.AgentControlStub(channel).Connect(hello()):
                    pass
        await server.stop(None)
        return refused.value.code()

    assert asyncio.run(scenario()) == grpc.StatusCode.UNAUTHENTICATED


def test_an_agent_that_never_answers_is_failed_at_the_deadline_and_told_to_cancel() -> None:
    async def scenario() -> tuple[str, str, list[str]]:
        router = Router(_allow)
        server, port = await _serve(router)
        outbox: asyncio.Queue[Any] = asyncio.Queue()
        outbox.put_nowait(agent_pb2.AgentMessage(hello=agent_pb2.Hello(agent_id="a", session_token="good")))
        received: list[str] = []
        cancelled = asyncio.Event()

        async def messages() -> AsyncIterator[Any]:
            while (m := await outbox.get()) is not None:
                yield m

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = agent_pb2_grpc.AgentControlStub(channel).Connect(messages())

            async def silent_agent() -> None:  # takes the request, then says nothing
                async for message in call:
                    received.append(str(message.WhichOneof("body")))
                    if message.WhichOneof("body") == "cancel":
                        cancelled.set()

            agent = asyncio.create_task(silent_agent())
            while not router.connected("a"):  # noqa: ASYNC110 - the router's own state, on this loop
                await asyncio.sleep(0)
            [final] = [m async for m in router.run("a", operation("1", Action.TAP), within_s=0.05)]
            await asyncio.wait_for(cancelled.wait(), 5)
            outbox.put_nowait(None)
            agent.cancel()
        await server.stop(None)
        return final.result.outcome, final.result.error, received

    outcome, error, received = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert (outcome, error) == ("failed", "no result from the agent within 0.05s: cancelled")
    assert received == ["request", "cancel"]


def test_a_stream_that_never_says_hello_is_closed() -> None:
    """A stranger's silent Connect must not hold a stream (and its slot) for ever."""

    async def scenario() -> tuple[grpc.StatusCode, str]:
        server, port = await _serve(Router(_allow, hello_within_s=0.05))
        never: asyncio.Event = asyncio.Event()

        async def silence() -> AsyncIterator[Any]:
            await never.wait()
            yield agent_pb2.AgentMessage()

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as closed:
                async for _ in agent_pb2_grpc.AgentControlStub(channel).Connect(silence()):
                    pass
        await server.stop(None)
        return closed.value.code(), str(closed.value.details())

    code, details = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert (code, details) == (grpc.StatusCode.DEADLINE_EXCEEDED, "no Hello within 0.05s of connecting")
