"""The delta protocol end to end (hypothesis): whatever the network and the colony do meanwhile, once the
link is stable the colony holds exactly the agent's desired set, and each discovery event once.

The agent's real ``ColonySync`` talks to a real colony Mesh server on loopback (``tests.colony.Colony``)
whose service misbehaves on demand: it loses a request before applying it, applies one and loses the answer,
or applies it twice (the network delivered it twice); the colony restarts, keeping its registry or losing it;
an old delta is sent again by someone else. Time is virtual (the sync's backoff and heartbeats), gRPC is real.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import grpc.aio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coral_base.backoff import Backoff
from coral_base.clock import VirtualClock
from coral_base.wire.coral.mesh.v1 import mesh_pb2, mesh_pb2_grpc
from coral_colony.mesh_service import MeshService
from coral_colony.model import AuditKind, AuditQuery
from coral_colony.stores.writer import WriterThread
from cri_agent.model import DiscoveryEvent, EventKind, PodUID, Provenance
from cri_agent.sync import ColonySync
from tests.colony import SECRET, Colony
from tests.test_sync import svc, target

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Context = grpc.aio.ServicerContext[object, object]


class Fault(enum.Enum):
    LOSE_REQUEST = "lose the request"  # never applied
    LOSE_ANSWER = "lose the answer"  # applied, the agent hears nothing
    TWICE = "deliver twice"  # applied, then the same request again (a replay), the second answer sent


class FaultyMesh(MeshService):
    """The real Mesh service behind a network that misbehaves once per queued fault (any call)."""

    def __init__(
        self, writer: WriterThread, faults: deque[Fault], deltas: list[mesh_pb2.UpdateServicesRequest]
    ) -> None:
        super().__init__(writer, colony_id="c1", colony_secret=SECRET)
        self.faults = faults
        self.deltas = deltas  # every delta that reached the colony, for replays

    async def _through(
        self,
        call: Callable[[_Request, _Context], Awaitable[_Response]],
        request: _Request,
        context: _Context,
    ) -> _Response:
        fault = self.faults.popleft() if self.faults else None
        if fault is Fault.LOSE_REQUEST:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "request lost")
        response = await call(request, context)
        if fault is Fault.TWICE:
            response = await call(request, context)
        if fault is Fault.LOSE_ANSWER:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "answer lost")
        return response

    async def Register(self, request: mesh_pb2.RegisterRequest, context: _Context) -> mesh_pb2.RegisterResponse:
        return await self._through(super().Register, request, context)

    async def UpdateServices(
        self, request: mesh_pb2.UpdateServicesRequest, context: _Context
    ) -> mesh_pb2.UpdateServicesResponse:
        self.deltas.append(request)
        return await self._through(super().UpdateServices, request, context)

    async def Heartbeat(self, request: mesh_pb2.HeartbeatRequest, context: _Context) -> mesh_pb2.HeartbeatResponse:
        return await self._through(super().Heartbeat, request, context)


class FaultyColony(Colony):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.faults: deque[Fault] = deque()
        self.deltas: list[mesh_pb2.UpdateServicesRequest] = []

    def mesh(self, writer: WriterThread) -> MeshService:
        return FaultyMesh(writer, self.faults, self.deltas)

    def held(self) -> list[tuple[str, str, str, bool]]:
        """Every row, duplicates and all: (agent, key, pod IP, stale)."""
        assert self.registry is not None
        return sorted((s.agent_id, s.service.key, s.service.pod_ip, s.stale) for s in self.registry.services())

    def audited(self) -> list[str]:
        assert self.registry is not None
        return [r.entry.service_name for r in self.registry.audit(AuditQuery(kind=AuditKind.DISCOVERY, limit=10_000))]


# -- what happens, step by step -----------------------------------------------------------------------


@dataclass(frozen=True)
class Desire:
    """Discovery now sees these services (pod n -> its IP) and reports events for them."""

    services: dict[int, str]
    events: int


@dataclass(frozen=True)
class Misbehave:
    faults: tuple[Fault, ...]


@dataclass(frozen=True)
class Restart:
    forget: bool  # the colony comes back with an empty registry


@dataclass(frozen=True)
class Replay:
    which: int  # an earlier delta, sent again by someone else


@dataclass(frozen=True)
class Wait:
    seconds: float


Step = Desire | Misbehave | Restart | Replay | Wait

steps = st.lists(
    st.one_of(
        st.builds(
            Desire,
            st.dictionaries(st.integers(0, 5), st.sampled_from(["10.250.0.2", "10.250.0.3"]), max_size=4),
            st.integers(0, 2),
        ),
        st.builds(Misbehave, st.lists(st.sampled_from(Fault), min_size=1, max_size=3).map(tuple)),
        st.builds(Restart, st.booleans()),
        st.builds(Replay, st.integers(0, 50)),
        st.builds(Wait, st.sampled_from([0.0, 0.05, 0.3])),
    ),
    max_size=8,
)


@dataclass
class Outcome:
    desired: list[tuple[str, str, str, bool]]
    held: list[tuple[str, str, str, bool]]
    held_later: list[tuple[str, str, str, bool]]
    connected: bool  # what the agent knows and says once the link is stable
    audited: list[str]
    reported: list[str]  # every event the agent reported, in order
    reported_since_forgotten: list[str]  # those the colony cannot have lost with its registry


def event(name: str) -> DiscoveryEvent:
    return DiscoveryEvent(
        EventKind.UPDATED, "shop", name, PodUID(f"uid-{name}"), None, name, provenance=Provenance.DISCOVERED
    )


async def replay(colony: FaultyColony, which: int) -> None:
    if not colony.deltas:
        return
    async with grpc.aio.insecure_channel(f"127.0.0.1:{colony.port}") as channel:
        try:
            await mesh_pb2_grpc.MeshStub(channel).UpdateServices(colony.deltas[which % len(colony.deltas)], timeout=1.0)
        except grpc.aio.AioRpcError as exc:  # an old session's delta is refused; the network may misbehave too
            assert exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE), exc


def play(directory: Path, script: list[Step]) -> Outcome:
    clock = VirtualClock()
    names = (f"event-{n}" for n in itertools.count())

    async def main() -> Outcome:
        colony = FaultyColony(directory / "colony.db")
        await colony.start()
        said: list[bool] = []  # what the agent's `colony` condition was told

        async def condition(connected: bool, reason: str) -> None:
            said.append(connected)

        sync = ColonySync(
            target(colony.port), backoff=Backoff(initial=0.05, maximum=0.2, clock=clock), on_state=condition
        )
        task = asyncio.create_task(sync.run())
        desired: dict[int, str] = {}
        reported: list[str] = []
        since_forgotten: list[str] = []
        try:
            for step in script:
                match step:
                    case Desire(services=services, events=count):
                        desired = services
                        sync.set_services({svc(n).key: svc(n, ip=ip) for n, ip in desired.items()}, {})
                        new = [next(names) for _ in range(count)]
                        sync.add_events([event(name) for name in new], at=clock.time())
                        reported += new
                        since_forgotten += new
                    case Misbehave(faults=faults):
                        colony.faults.extend(faults)
                    case Restart(forget=forget):
                        await colony.stop()
                        if forget:
                            colony.path.unlink()
                            since_forgotten.clear()
                        await colony.start()
                    case Replay(which=which):
                        await replay(colony, which)
                    case Wait(seconds=seconds):
                        await clock.sleep(seconds)
            colony.faults.clear()  # the link is stable from here on
            want = sorted(("node-agent-a", str(svc(n).key), ip, False) for n, ip in desired.items())
            await clock.until(lambda: sync.in_sync and colony.held() == want, within=30)
            held = colony.held()
            await clock.sleep(1.0)  # ten heartbeats later, nothing moved
            return Outcome(
                want, held, colony.held(), sync.connected and said[-1], colony.audited(), reported, since_forgotten
            )
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await colony.stop()

    return clock.run(main())


def test_no_service_or_event_is_lost_or_duplicated_whatever_the_link_did(tmp_path: Path) -> None:
    directories = (tmp_path / str(n) for n in itertools.count())

    @settings(max_examples=25, deadline=None)
    @given(script=steps)
    def check(script: list[Step]) -> None:
        directory = next(directories)
        directory.mkdir()
        outcome = play(directory, script)
        assert outcome.held == outcome.held_later == outcome.desired
        assert outcome.connected, "the agent's colony condition says disconnected"
        assert len(outcome.audited) == len(set(outcome.audited)), "an event audited twice"
        assert [name for name in outcome.reported if name in outcome.audited] == outcome.audited, "out of order"
        assert set(outcome.reported_since_forgotten) <= set(outcome.audited), "an event lost"

    check()
