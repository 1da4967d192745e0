"""Agent -> colony sync against a real colony server that dies, returns, and forgets.

The sync's backoff and heartbeats run on a VirtualClock: a retry is due as soon as the loop is
idle, and "within" means seconds of the sync's own time."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from coral_base.backoff import Backoff
from coral_base.clock import VirtualClock
from coral_base.vocabulary import AgentHealth
from coral_base.wire.coral.mesh.v1 import mesh_pb2, mesh_pb2_grpc
from coral_colony.model import AuditKind, AuditQuery
from cri_agent.model import DiscoveryEvent, EventKind, Health, HealthState, PodUID, Provenance, ServiceInfo, ServiceKey
from cri_agent.sync import ColonyEndpoint, ColonySync
from tests.colony import SECRET, Colony, logged


def svc(n: int, ip: str = "10.250.0.2") -> ServiceInfo:
    return ServiceInfo(
        key=ServiceKey(f"shop/uid-{n}/app/8080"),
        name=f"web-{n}",
        namespace="shop",
        pod_name=f"web-{n}",
        pod_uid=PodUID(f"uid-{n}"),
        container="app",
        port=8080,
        protocol="TCP",
        service_type="http",
        provenance=Provenance.DISCOVERED,
        pod_ip=ip,
        node_name="node-a",
    )


def target(port: int) -> ColonyEndpoint:
    return ColonyEndpoint(
        address=f"127.0.0.1:{port}",
        colony_id="c1",
        secret=SECRET,
        agent_id="node-agent-a",
        node_name="node-a",
        version="0.1.0",
        node_labels={"zone": "a"},
        heartbeat_interval_s=0.1,
        timeout_s=1.0,
    )


def run(tmp_path: Path, scenario: Callable[[Colony, ColonySync, VirtualClock], Any]) -> Any:
    clock = VirtualClock()

    async def main() -> Any:
        colony = Colony(tmp_path / "colony.db")
        await colony.start()
        sync = ColonySync(target(colony.port), backoff=Backoff(initial=0.05, maximum=0.2, clock=clock))
        task = asyncio.create_task(sync.run())
        try:
            return await scenario(colony, sync, clock)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await colony.stop()

    return clock.run(main())


def expected(*services: ServiceInfo) -> dict[str, str]:
    return {s.key: s.pod_ip for s in services}


def test_full_set_then_deltas_reach_the_colony(tmp_path: Path) -> None:
    async def scenario(colony: Colony, sync: ColonySync, clock: VirtualClock) -> tuple[dict[str, str], dict[str, str]]:
        sync.set_services({s.key: s for s in (svc(1), svc(2), svc(3))}, {})
        await clock.until(lambda: sync.in_sync and colony.keys() == expected(svc(1), svc(2), svc(3)), within=5)
        first = colony.keys()
        sync.set_services({s.key: s for s in (svc(1, ip="10.250.0.9"), svc(3), svc(4))}, {})
        await clock.until(lambda: sync.in_sync, within=5)
        return first, colony.keys()

    first, second = run(tmp_path, scenario)
    assert (first, second) == (expected(svc(1), svc(2), svc(3)), expected(svc(1, ip="10.250.0.9"), svc(3), svc(4)))


def test_changes_made_while_the_colony_is_down_arrive_as_the_net_change(tmp_path: Path) -> None:
    async def scenario(colony: Colony, sync: ColonySync, clock: VirtualClock) -> dict[str, str]:
        sync.set_services({s.key: s for s in (svc(1), svc(2))}, {})
        await clock.until(lambda: sync.in_sync, within=5)
        await colony.stop()
        for services in ([svc(2), svc(3)], [svc(3), svc(4), svc(5)], [svc(3), svc(5, ip="10.250.0.7")]):
            sync.set_services({s.key: s for s in services}, {})
            await clock.sleep(0.1)
        await colony.start()
        await clock.until(lambda: sync.in_sync and sync.connected, within=5)
        return colony.keys()

    assert run(tmp_path, scenario) == expected(svc(3), svc(5, ip="10.250.0.7"))


def test_a_colony_restarted_with_an_empty_registry_gets_the_full_set_again(tmp_path: Path) -> None:
    async def scenario(colony: Colony, sync: ColonySync, clock: VirtualClock) -> dict[str, str]:
        sync.set_services({s.key: s for s in (svc(1), svc(2))}, {})
        await clock.until(lambda: sync.in_sync and len(colony.keys()) == 2, within=5)
        await colony.stop()
        colony.path.unlink()
        await colony.start()
        await clock.until(lambda: colony.keys() == expected(svc(1), svc(2)), within=5)
        return colony.keys()

    assert run(tmp_path, scenario) == expected(svc(1), svc(2))


def test_health_travels_with_the_services(tmp_path: Path) -> None:
    async def scenario(
        colony: Colony, sync: ColonySync, clock: VirtualClock
    ) -> list[tuple[str, str, float, float, int]]:
        health = Health(
            svc(1).key, HealthState.UNHEALTHY, since=1.5, last_error="HTTP 503 Service Unavailable", latency_ms=12.5
        )
        sync.set_services({svc(1).key: svc(1)}, {svc(1).key: health})
        await clock.until(lambda: sync.in_sync and len(colony.keys()) == 1, within=5)
        assert colony.registry is not None
        return [
            (s.health_state, s.health_error, s.health_latency_ms, s.health_since, s.health_interval_ms)
            for s in (stored.service for stored in colony.registry.services())
        ]

    assert run(tmp_path, scenario) == [("unhealthy", "HTTP 503 Service Unavailable", 12.5, 1.5, 10_000)]


def test_the_secret_never_reaches_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario(colony: Colony, sync: ColonySync, clock: VirtualClock) -> str:
        sync.set_services({svc(1).key: svc(1)}, {})
        await clock.until(lambda: sync.in_sync, within=5)
        await colony.stop()
        sync.set_services({}, {})
        await clock.sleep(0.3)
        await colony.start()
        await clock.until(lambda: sync.in_sync and sync.connected, within=5)
        return repr(sync.endpoint)

    shown = run(tmp_path, scenario)
    assert SECRET not in logged(caplog) + shown and "colony.registered" in logged(caplog)


def added(n: int) -> DiscoveryEvent:
    return DiscoveryEvent(
        EventKind.ADDED,
        "shop",
        f"web-{n}",
        PodUID(f"uid-{n}"),
        svc(n).key,
        f"web-{n}",
        provenance=Provenance.DISCOVERED,
    )


def audited(colony: Colony) -> list[str]:
    assert colony.registry is not None
    return [r.entry.service_name for r in colony.registry.audit(AuditQuery(kind=AuditKind.DISCOVERY))]


def test_discovery_events_reach_the_audit_log_once_even_across_an_outage(tmp_path: Path) -> None:
    async def scenario(colony: Colony, sync: ColonySync, clock: VirtualClock) -> list[str]:
        sync.set_services({svc(1).key: svc(1)}, {})
        sync.add_events([added(1)], at=100.0)
        await clock.until(lambda: sync.in_sync and audited(colony) == ["web-1"], within=5)
        await colony.stop()
        sync.set_services({s.key: s for s in (svc(1), svc(2))}, {})
        sync.add_events([added(2), added(3)], at=100.0)
        await clock.sleep(0.3)
        await colony.start()
        await clock.until(lambda: sync.in_sync and sync.connected, within=5)
        return audited(colony)

    assert run(tmp_path, scenario) == ["web-1", "web-2", "web-3"]


def test_events_of_a_refused_delta_wait_for_the_next_session(tmp_path: Path) -> None:
    async def scenario(colony: Colony, sync: ColonySync, clock: VirtualClock) -> list[str]:
        sync.set_services({svc(1).key: svc(1)}, {})
        await clock.until(lambda: sync.in_sync, within=5)
        await colony.stop()
        colony.path.unlink()  # the colony forgets the session: the delta carrying the events is refused
        await colony.start()
        sync.add_events([added(4)], at=100.0)
        await clock.until(lambda: sync.in_sync and audited(colony) == ["web-4"], within=5)
        return audited(colony)

    assert run(tmp_path, scenario) == ["web-4"]


def test_a_change_of_the_agents_health_is_sent_at_once(tmp_path: Path) -> None:
    async def scenario(colony: Colony, sync: ColonySync, clock: VirtualClock) -> str:
        sync.endpoint = replace(sync.endpoint, heartbeat_interval_s=30.0)  # only a change can explain a fast update
        sync.set_services({svc(1).key: svc(1)}, {})
        sync.set_health(AgentHealth.HEALTHY)
        await clock.until(lambda: sync.in_sync, within=5)
        sync.set_health(AgentHealth.DEGRADED)
        assert colony.registry is not None
        registry = colony.registry
        await clock.until(lambda: registry.agents()[0].health == "degraded", within=1.0)
        return registry.agents()[0].health

    assert run(tmp_path, scenario) == "degraded"


def test_the_registry_keeps_no_session_token_and_no_one_else_reads_it(tmp_path: Path) -> None:
    """The file holds digests only, 0600: a value read from it deregisters nobody."""

    async def scenario(colony: Colony, sync: ColonySync, clock: VirtualClock) -> tuple[str, grpc.StatusCode]:
        sync.set_services({svc(1).key: svc(1)}, {})
        token = await sync.session()
        with sqlite3.connect(tmp_path / "colony.db") as db:
            [(stored,)] = db.execute("SELECT session FROM agents").fetchall()
        assert stored != token and stored == hashlib.sha256(token.encode()).hexdigest()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{colony.port}") as channel:
            stolen = mesh_pb2.DeregisterRequest(agent_id=sync.endpoint.agent_id, session_token=stored)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await mesh_pb2_grpc.MeshStub(channel).Deregister(stolen)
        assert len(colony.keys()) == 1, "the agent and its services are still there"
        return oct(stat.S_IMODE((tmp_path / "colony.db").stat().st_mode)), refused.value.code()

    assert run(tmp_path, scenario) == (oct(0o600), grpc.StatusCode.UNAUTHENTICATED)


@pytest.mark.parametrize("changed_while_away", [False, True], ids=["heartbeat-resumes", "delta-resumes"])
def test_the_colony_condition_turns_true_again_when_a_restarted_colony_answers(
    tmp_path: Path, changed_while_away: bool
) -> None:
    """A colony restarted with its registry knows the session: the agent's next heartbeat (nothing changed)
    or delta is answered without a new registration, and that alone must say "connected" again."""

    async def scenario(colony: Colony, sync: ColonySync, clock: VirtualClock) -> tuple[bool, list[bool]]:
        states: list[bool] = []

        async def record(connected: bool, reason: str) -> None:
            states.append(connected)

        sync.on_state = record
        sync.set_services({svc(1).key: svc(1)}, {})
        await clock.until(lambda: sync.in_sync and states == [True], within=5)
        await colony.stop()
        await clock.until(lambda: states[-1] is False, within=5)
        if changed_while_away:
            sync.set_services({s.key: s for s in (svc(1), svc(2))}, {})
        await colony.start()
        await clock.until(lambda: sync.in_sync and len(colony.keys()) == 1 + changed_while_away, within=5)
        await clock.sleep(1.0)  # ten heartbeats
        return sync.connected, states

    connected, states = run(tmp_path, scenario)
    assert (connected, states) == (True, [True, False, True])
