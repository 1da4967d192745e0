"""Strangers and faults against a real colony (issue 11 rows 6 and 11, "Strangers" and "Faults").

The colony runs as ``coral colony start`` does (``serving``: both endpoints, real TLS on loopback) in
this process; agents enroll and speak over mutual TLS; operators call the public endpoint.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import grpc.aio
import pytest

from coral_base.vocabulary import ArtifactKind, EnrollMethod, Outcome, Scope
from coral_base.wire.coral.agent.v1 import agent_pb2, agent_pb2_grpc
from coral_base.wire.coral.colony.v1 import colony_pb2
from coral_base.wire.coral.identity.v1 import identity_pb2_grpc
from coral_colony.identity import init_colony
from coral_colony.operator_service import MAX_OPERATIONS_PER_OPERATOR, MAX_PODS_PER_OPERATOR
from cri_agent import colony_codec
from cri_agent.model import ServiceInfo
from cri_agent.operation import Artifact, OperationRequest, OperationResult
from cri_agent.sync import ColonySync
from tests.test_colony_enrollment import Running, agent, colony_dir, refused, run, running, synced, until
from tests.test_sync import svc

MIB = 1024 * 1024


def rss_mib() -> float:
    """This process's resident memory (the colony, the agent and the operator all live in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@dataclass
class StreamingAgent:
    """An enrolled agent's control stream that answers every tap with ``total`` bytes of 1 MiB chunks.

    ``sent`` counts what left for the colony (handed to gRPC), ``made`` what the tap produced. Its
    outbox holds 2 messages where the real agent's holds 32: it lives in the test's process, whose
    memory the test measures, and what the agent buffers is the agent's memory, not the colony's.
    """

    total: int
    made: int = 0
    sent: int = 0
    requests: int = 0

    async def serve(self, sync: ColonySync) -> None:
        token = await sync.session()
        outbox: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue(2)
        await outbox.put(colony_codec.hello(agent_id=sync.agent_id, session=token))

        async def drain() -> AsyncIterator[agent_pb2.AgentMessage]:
            while True:
                message = await outbox.get()
                yield message
                self.sent += len(message.chunk.data)

        async def tap(request: OperationRequest) -> None:
            chunk = os.urandom(MIB)
            while self.made < self.total:
                await outbox.put(colony_codec.artifact(Artifact(request.request_id, ArtifactKind.PCAP, chunk)))
                self.made += len(chunk)
            done = OperationResult(request.request_id, node_name="", outcome=Outcome.OK, bytes=self.made)
            await outbox.put(colony_codec.result(done))

        tasks: set[asyncio.Task[None]] = set()
        async with sync.channel() as channel:
            async for message in agent_pb2_grpc.AgentControlStub(channel).Connect(drain()):
                asked = colony_codec.colony_message(message)
                if isinstance(asked, OperationRequest):
                    self.requests += 1
                    tasks.add(asyncio.create_task(tap(asked)))


@asynccontextmanager
async def streaming(
    colony: Running, node: str, total: int, services: tuple[ServiceInfo, ...] = ()
) -> AsyncIterator[StreamingAgent]:
    streamer = StreamingAgent(total)
    async with synced(agent(colony, node, *(services or (svc(1),)))) as sync:
        task = asyncio.create_task(streamer.serve(sync))
        try:
            yield streamer
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def tap(target: str = "") -> colony_pb2.RunOperationRequest:
    return colony_pb2.RunOperationRequest(action="tap", target=target or svc(1).key, duration_s=60)


# -- backpressure (row 6) ------------------------------------------------------------------------------


def test_a_stalled_operator_slows_the_agents_capture_instead_of_growing_the_colonys_memory(tmp_path: Path) -> None:
    """100 MiB at an operator that reads nothing: the agent is held back within a few MiB, the process's RSS
    (colony, agent and operator together: an upper bound of the colony's) grows far less than 100 MiB, and
    once the operator reads on every byte arrives."""

    async def scenario() -> tuple[float, float, int, int, str]:
        async with running(colony_dir(tmp_path)) as colony, streaming(colony, "node-a", 100 * MIB) as streamer:
            before = rss_mib()
            call = colony.operator(Scope.OPERATE).RunOperation(tap(), timeout=120)
            await call.read()  # the target; then the operator stalls
            held = -1
            while held != streamer.sent:  # until the agent can send no more
                held = streamer.sent
                await asyncio.sleep(1.0)
            growth = rss_mib() - before
            received, outcome = 0, ""
            while isinstance(output := await call.read(), colony_pb2.OperationOutput):  # until EOF
                received += len(output.chunk.data)
                outcome = output.result.outcome or outcome
            return growth, held / MIB, received, streamer.sent, outcome

    growth, held_mib, received, sent, outcome = run(scenario())
    print(f"held back at {held_mib:.0f} MiB sent; RSS growth {growth:.1f} MiB")
    # What the agent gets out before it is held: one chunk in the colony's inbox, one waiting for room, one
    # on its way to the operator, the operator's own receive window, the sockets' buffers (8 MiB measured;
    # 16 while gRPC grew the colony's receive windows by BDP probing).
    assert held_mib < 16, f"the agent sent {held_mib:.0f} MiB to an operator that read nothing"
    assert growth < 64, f"RSS grew {growth:.0f} MiB"
    assert (received, sent, outcome) == (100 * MIB, 100 * MIB, "ok")


# -- per-peer limits (Strangers) ---------------------------------------------------------------------------


def test_an_operator_token_holds_a_bounded_number_of_operations_at_once(tmp_path: Path) -> None:
    async def scenario() -> tuple[grpc.StatusCode, str, str]:
        async with running(colony_dir(tmp_path)) as colony, streaming(colony, "node-a", 100 * MIB) as streamer:
            operator = colony.operator(Scope.OPERATE)
            calls = [operator.RunOperation(tap(), timeout=60) for _ in range(MAX_OPERATIONS_PER_OPERATOR)]
            for call in calls:
                await call.read()  # each routed (the target came back), then held open
            await until(lambda: streamer.requests >= MAX_OPERATIONS_PER_OPERATOR)
            error = await refused(operator.RunOperation(tap(), timeout=10).read())
            for call in calls:
                call.cancel()
            await asyncio.sleep(0.2)
            again = operator.RunOperation(tap(), timeout=10)
            target = await again.read()
            again.cancel()
            pod = target.target.pod_name if isinstance(target, colony_pb2.OperationOutput) else ""
            return error.code(), error.details() or "", pod

    code, details, pod = run(scenario())
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"{MAX_OPERATIONS_PER_OPERATOR} operations running" in details
    assert pod == svc(1).pod_name  # one ended: room for another


async def part_of(call: grpc.aio.UnaryStreamCall[colony_pb2.RunOperationRequest, colony_pb2.OperationOutput]) -> int:
    """The part (pod) the call's next message is about."""
    output = await call.read()
    assert isinstance(output, colony_pb2.OperationOutput)
    return output.part


def test_an_operator_tokens_running_operations_cover_a_bounded_number_of_pods(tmp_path: Path) -> None:
    """A fan-out (every pod of a service name) counts each pod: two of ten pods each are more than a token's
    MAX_PODS_PER_OPERATOR; once the first ends, the second runs, each pod its own part."""
    pods = tuple(replace(svc(n), name="web" if n <= 10 else "api") for n in range(1, 21))
    every = {
        name: colony_pb2.RunOperationRequest(action="tap", target=name, duration_s=60, all_pods=True)
        for name in ("web", "api")
    }

    async def scenario() -> tuple[list[int], grpc.StatusCode, str, list[int]]:
        async with running(colony_dir(tmp_path)) as colony, streaming(colony, "node-a", 100 * MIB, pods) as streamer:
            operator = colony.operator(Scope.OPERATE)
            first = operator.RunOperation(every["web"], timeout=60)
            parts = [await part_of(first) for _ in range(10)]  # a Target each, then held open
            await until(lambda: streamer.requests >= 10)
            error = await refused(operator.RunOperation(every["api"], timeout=10).read())
            first.cancel()
            await asyncio.sleep(0.2)
            again = operator.RunOperation(every["api"], timeout=10)
            routed = [await part_of(again) for _ in range(10)]
            again.cancel()
            return parts, error.code(), error.details() or "", routed

    parts, code, details, routed = run(scenario())
    assert parts == routed == list(range(10))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"operations running on 10 pods and this one takes 10: {MAX_PODS_PER_OPERATOR} at once" in details


def test_a_reconnecting_agent_replaces_its_control_stream(tmp_path: Path) -> None:
    """One Connect per agent identity: the second ends the first (the colony holds one stream per agent)."""

    async def scenario() -> grpc.StatusCode | None:
        async with running(colony_dir(tmp_path)) as colony, synced(agent(colony, "node-a", svc(1))) as sync:
            token = await sync.session()
            hello = colony_codec.hello(agent_id=sync.agent_id, session=token)

            async def stream() -> AsyncIterator[agent_pb2.AgentMessage]:
                yield hello
                await asyncio.Event().wait()

            async with sync.channel() as first_channel, sync.channel() as second_channel:
                first = agent_pb2_grpc.AgentControlStub(first_channel).Connect(stream())
                await asyncio.sleep(0.3)
                second = agent_pb2_grpc.AgentControlStub(second_channel).Connect(stream())
                await asyncio.sleep(0.3)
                ended = await asyncio.wait_for(first.code(), 5)
                second.cancel()
                return ended

    assert run(scenario()) == grpc.StatusCode.OK  # closed by the colony, not by the agent


def test_a_stranger_varying_its_colony_id_still_makes_one_audit_row_a_minute(tmp_path: Path) -> None:
    """The refusal's reason is the colony's word ("wrong colony id"), not the id the stranger sent."""

    async def scenario() -> list[sqlite3.Row]:
        async with running(colony_dir(tmp_path)) as colony:
            credentials = grpc.ssl_channel_credentials((colony.directory / "ca.crt").read_bytes())
            async with grpc.aio.secure_channel(colony.address, credentials) as channel:
                enrollment = identity_pb2_grpc.EnrollmentStub(channel)
                for n in range(30):
                    request = colony_codec.enroll_request(
                        colony_id=f"colony-{n}-" + "x" * 1000,
                        node_name=f"node-{n}",
                        csr_pem="junk",
                        method=EnrollMethod.SECRET,
                        credential="wrong",
                        version="0.0.0",
                    )
                    await refused(enrollment.Enroll(request, timeout=5))
            return colony.audit("agent.enrollment_refused")

    rows = run(scenario())
    assert len(rows) == 1 and "wrong colony id" in rows[0]["detail"]


# -- a full disk (Faults) -------------------------------------------------------------------------------------


@contextmanager
def small_disk(directory: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``directory`` (root only), unmounted on the way out."""
    directory.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def fill(directory: Path) -> Path:
    """Write zeros into ``directory`` until its filesystem is full."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)
    return filler


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_on_a_full_disk_the_colony_refuses_writes_keeps_serving_reads_and_recovers_by_itself(tmp_path: Path) -> None:
    async def scenario() -> tuple[grpc.StatusCode, str, int, int]:
        with small_disk(tmp_path / "colony", "3m") as directory:
            init_colony(directory, colony_id="prod", hosts=["127.0.0.1"])
            async with running(directory) as colony, synced(agent(colony, "node-a", svc(1))) as sync:
                operator, reader = colony.operator(Scope.OPERATE), colony.operator(Scope.READ)
                filler = fill(directory)
                write = await refused(operator.RunOperation(tap(), timeout=10).read())  # audits its start first
                listed = await reader.ListServices(colony_pb2.ListServicesRequest(), timeout=10)
                sync.set_services({s.key: replace(s, node_name="node-a") for s in (svc(1), svc(2))}, {})
                await asyncio.sleep(1.0)  # the delta is refused meanwhile; the agent retries
                filler.unlink()  # space returns
                await until(lambda: sync.in_sync, within=30)
                return (
                    write.code(),
                    write.details() or "",
                    sum(len(g.services) for g in listed.groups),
                    len(colony.services()),
                )

    code, details, listed, after = run(scenario())
    assert (code, details) == (grpc.StatusCode.UNAVAILABLE, "registry cannot be written: disk full")
    assert (listed, after) == (1, 2)
