"""One workload cannot wedge its node out of the colony (issue 11, row 1): against real colonies on loopback.

A node with thousands of services, or a pod with a megabyte of labels, registers (in parts when the set
does not fit in one message) and keeps heartbeating; a delta the colony refuses as too large is dropped
and followed by a full registration; a slow delta never holds heartbeats back.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc.aio
import pytest

from coral_base.backoff import Backoff
from coral_base.wire.coral.mesh.v1 import mesh_pb2
from coral_colony.identity import init_colony
from coral_colony.mesh_service import MeshService
from coral_colony.stores.writer import WriterThread
from cri_agent.discovery.containers import lifecycle
from cri_agent.discovery.rules import DiscoveryRules
from cri_agent.discovery.services import LABEL_BUDGET_BYTES, TRUNCATED_LABEL, derive_services
from cri_agent.model import DeclaredPort, ServiceInfo, ServiceKey
from cri_agent.sync import ColonySync
from tests.builders import container, pod
from tests.colony import SECRET, Colony, enrolling_sync, free_port, logged, serving
from tests.test_sync import svc, target


def labelled(n: int, *, label_bytes: int) -> ServiceInfo:
    """A service with labels as large as a busy workload's (``label_bytes`` of them)."""
    return replace(svc(n), labels={"app": f"web-{n}", "team": "payments", "notes": "x" * label_bytes})


def by_key(services: list[ServiceInfo]) -> dict[ServiceKey, ServiceInfo]:
    return {s.key: s for s in services}


async def until(predicate: Callable[[], object], *, within: float) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached within {within:g} s")
        await asyncio.sleep(0.02)


def rows(database: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return list(db.execute(sql, params))


def actions(database: Path, action: str) -> int:
    return int(rows(database, "SELECT count(*) FROM audit WHERE action = ?", action)[0][0])


def test_three_thousand_services_with_big_labels_register_in_parts_and_heartbeats_keep_arriving(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "colony"
    init_colony(directory, colony_id="prod", hosts=["127.0.0.1"])
    database = directory / "colony.db"
    services = [labelled(n, label_bytes=2048) for n in range(3000)]  # ~6.5 MB: past gRPC's 4 MiB default

    async def main() -> tuple[int, int, set[str], float, float]:
        port = free_port()
        async with serving(directory, port=port, agent_port=free_port()):
            sync = enrolling_sync(
                f"127.0.0.1:{port}",
                directory,
                node="node-a",
                identity_path=tmp_path / "id.json",
                heartbeat_interval_s=0.1,
            )
            sync.set_services(by_key(services), {})
            task = asyncio.create_task(sync.run())
            try:
                await until(lambda: sync.in_sync, within=60)
                heartbeat = "SELECT last_heartbeat FROM agents WHERE agent_id = 'node-agent-node-a'"
                first = float(rows(database, heartbeat)[0][0])
                await asyncio.sleep(0.5)
                later = float(rows(database, heartbeat)[0][0])
            finally:
                task.cancel()
        count = rows(database, "SELECT count(*) FROM services WHERE agent_id = 'node-agent-node-a'")[0][0]
        node_labels = {str(r[0]) for r in rows(database, "SELECT DISTINCT node_labels FROM services")}
        return int(count), actions(database, "service.deregistered"), node_labels, first, later

    count, deregistered, node_labels, first, later = asyncio.run(main())
    assert (count, deregistered) == (3000, 0)
    assert node_labels == {'{"topology.kubernetes.io/zone": "a"}'}  # sent once, given to every service
    assert later > first  # heartbeats arrived after the registration


def test_a_registration_in_parts_churns_nothing_at_the_colony(tmp_path: Path) -> None:
    directory = tmp_path / "colony"
    init_colony(directory, colony_id="prod", hosts=["127.0.0.1"])
    database = directory / "colony.db"
    services = [labelled(n, label_bytes=1024) for n in range(300)]

    async def register(port: int, kept: list[ServiceInfo]) -> None:
        sync = enrolling_sync(f"127.0.0.1:{port}", directory, node="node-a", identity_path=tmp_path / "id.json")
        sync.chunk_bytes = 16 * 1024  # ~20 parts
        sync.set_services(by_key(kept), {})
        task = asyncio.create_task(sync.run())
        try:
            await until(lambda: sync.in_sync, within=30)
        finally:
            task.cancel()

    async def main() -> None:
        port = free_port()
        async with serving(directory, port=port, agent_port=free_port()):
            await register(port, services)
            await register(port, services[1:])  # the agent restarted; one pod went meanwhile

    asyncio.run(main())
    registered = rows(database, "SELECT detail FROM audit WHERE action = 'agent.registered'")
    assert all("more in the deltas that follow" in str(detail) for (detail,) in registered)
    assert (actions(database, "service.registered"), actions(database, "service.deregistered")) == (300, 1)
    assert rows(database, "SELECT count(*) FROM services WHERE unconfirmed = 1") == [(0,)]


def test_a_pod_with_a_megabyte_of_labels_is_truncated_and_registers(tmp_path: Path) -> None:
    labels = {f"label-{i:05d}": "v" * 100 for i in range(10_000)}  # ~1.1 MB
    heavy = pod("heavy-0", labels=labels, containers=[container("app", ports=[DeclaredPort(8080)])])
    services, problems, _ = derive_services(
        heavy, DiscoveryRules(), node_name="node-a", life=lifecycle(heavy.containers, now=0.0)
    )
    [service] = services
    size = sum(len(k) + len(v) for k, v in service.labels.items())
    assert size <= LABEL_BUDGET_BYTES and service.labels[TRUNCATED_LABEL].endswith("of 10000 labels dropped")
    assert [p.key for p in problems] == ["labels"]  # an error event, once

    async def main() -> dict[str, str]:
        colony = Colony(tmp_path / "colony.db", max_message_bytes=4 * 1024 * 1024)  # as an older colony
        await colony.start()
        sync = ColonySync(target(colony.port), backoff=Backoff(initial=0.05, maximum=0.2))
        sync.set_services({service.key: service}, {})
        task = asyncio.create_task(sync.run())
        try:
            await until(lambda: sync.in_sync, within=10)
            assert colony.registry is not None
            [stored] = colony.registry.services()
            return dict(stored.service.labels)
        finally:
            task.cancel()
            await colony.stop()

    assert TRUNCATED_LABEL in asyncio.run(main())


def test_a_delta_refused_as_too_large_is_dropped_and_the_agent_registers_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    services = [labelled(n, label_bytes=1024) for n in range(400)]  # ~430 KB: one delta, past the colony's limit

    async def main() -> tuple[int, int]:
        colony = Colony(tmp_path / "colony.db", max_message_bytes=256 * 1024)
        await colony.start()
        sync = ColonySync(target(colony.port), backoff=Backoff(initial=0.05, maximum=0.2))
        sync.set_services(by_key(services[:2]), {})
        task = asyncio.create_task(sync.run())
        try:
            await until(lambda: sync.in_sync, within=10)
            sync.set_services(by_key(services), {})
            await until(lambda: sync.in_sync, within=20)
            return len(colony.keys()), actions(colony.path, "agent.registered")
        finally:
            task.cancel()
            await colony.stop()

    assert asyncio.run(main()) == (400, 2)
    assert "colony.delta_refused" in logged(caplog)


class SlowDeltas(MeshService):
    """A colony whose deltas take long (a busy disk): it counts the heartbeats that arrive meanwhile."""

    heartbeats_during_delta = 0
    _in_delta = False

    async def UpdateServices(
        self, request: mesh_pb2.UpdateServicesRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> mesh_pb2.UpdateServicesResponse:
        self._in_delta = True
        try:
            await asyncio.sleep(1.0)
            return await super().UpdateServices(request, context)
        finally:
            self._in_delta = False

    async def Heartbeat(
        self, request: mesh_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> mesh_pb2.HeartbeatResponse:
        if self._in_delta:
            self.heartbeats_during_delta += 1
        return await super().Heartbeat(request, context)


class SlowColony(Colony):
    def mesh(self, writer: WriterThread) -> MeshService:
        return SlowDeltas(writer, colony_id="c1", colony_secret=SECRET)


def test_heartbeats_never_wait_behind_a_slow_delta(tmp_path: Path) -> None:
    async def main() -> int:
        colony = SlowColony(tmp_path / "colony.db")
        await colony.start()
        sync = ColonySync(replace(target(colony.port), heartbeat_interval_s=0.1, timeout_s=5.0))
        sync.set_services(by_key([svc(1)]), {})
        task = asyncio.create_task(sync.run())
        try:
            await until(lambda: sync.in_sync, within=10)
            sync.set_services(by_key([svc(1), svc(2)]), {})
            await until(lambda: sync.in_sync, within=10)
            assert isinstance(colony.service, SlowDeltas)
            return colony.service.heartbeats_during_delta
        finally:
            task.cancel()
            await colony.stop()

    assert asyncio.run(main()) >= 5
