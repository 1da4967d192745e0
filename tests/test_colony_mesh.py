"""The Mesh gRPC service over a real server on loopback: credentials, sessions, RFD 011 agents."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from coral_base.wire.coral.mesh.v1 import mesh_pb2, mesh_pb2_grpc
from coral_colony.mesh_service import MeshService
from coral_colony.stores.reader import RegistryReader
from coral_colony.stores.writer import RegistryWriter, WriterThread

SECRET = "s3cr3t-value"


def node_request(agent_id: str, *keys: str, secret: str = SECRET) -> Any:
    return mesh_pb2.RegisterRequest(
        agent_id=agent_id,
        colony_id="colony-1",
        colony_secret=secret,
        version="0.1.0",
        node_name=f"{agent_id}-node",
        node_labels={"zone": "a"},
        services=[
            mesh_pb2.ServiceInfo(
                component_name="web",
                port=8080,
                service_key=key,
                provenance=mesh_pb2.SERVICE_PROVENANCE_OVERRIDDEN,
                node_name=f"{agent_id}-node",
            )
            for key in keys
        ],
    )


def with_colony(tmp_path: Path, scenario: Callable[[Any, RegistryReader], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        writer = WriterThread(RegistryWriter(tmp_path / "colony.db"))
        registry = RegistryReader(tmp_path / "colony.db")
        service = MeshService(writer, colony_id="colony-1", colony_secret=SECRET)
        server = grpc.aio.server()
        mesh_pb2_grpc.add_MeshServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await scenario(mesh_pb2_grpc.MeshStub(channel), registry)
        finally:
            await server.stop(None)
            registry.close()
            writer.close()

    return asyncio.run(run())


def test_a_node_agent_registers_its_services_with_node_and_provenance(tmp_path: Path) -> None:
    async def scenario(stub: Any, registry: RegistryReader) -> Any:
        response = await stub.Register(node_request("a", "ns/1/web/8080"))
        return response.accepted, bool(response.session_token), registry.services(), registry.agents()

    accepted, has_token, services, agents = with_colony(tmp_path, scenario)
    assert (
        accepted,
        has_token,
        services[0].service.provenance,
        services[0].service.node_name,
        agents[0].agent.kind,
    ) == (
        True,
        True,
        "overridden",
        "a-node",
        "node-agent",
    )


def test_a_wrong_secret_is_refused_with_a_message_that_says_what_to_check(tmp_path: Path) -> None:
    async def scenario(stub: Any, registry: RegistryReader) -> Any:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Register(node_request("a", "ns/1/web/8080", secret="guess"))
        return raised.value

    error = with_colony(tmp_path, scenario)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "check the agent's colony Secret" in error.details() and SECRET not in error.details()


def test_a_single_service_registration_without_node_fields_still_works(tmp_path: Path) -> None:
    async def scenario(stub: Any, registry: RegistryReader) -> Any:
        await stub.Register(
            mesh_pb2.RegisterRequest(
                agent_id="laptop", component_name="api", colony_id="colony-1", colony_secret=SECRET
            )
        )
        return registry.services(), registry.agents()

    services, agents = with_colony(tmp_path, scenario)
    assert ([s.service.key for s in services], agents[0].agent.kind) == (["laptop/api"], "single-service")


def test_deltas_need_the_session_and_replays_change_nothing(tmp_path: Path) -> None:
    async def scenario(stub: Any, registry: RegistryReader) -> Any:
        token = (await stub.Register(node_request("a", "ns/1/web/8080"))).session_token
        delta = mesh_pb2.UpdateServicesRequest(
            agent_id="a",
            session_token=token,
            sequence=1,
            upserts=[mesh_pb2.ServiceInfo(component_name="api", service_key="ns/2/api/80")],
            removed_keys=["ns/1/web/8080"],
        )
        first = await stub.UpdateServices(delta)
        replay = await stub.UpdateServices(delta)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.UpdateServices(mesh_pb2.UpdateServicesRequest(agent_id="a", session_token="stolen", sequence=2))
        return (
            first.applied_sequence,
            replay.applied_sequence,
            raised.value.code(),
            [s.service.key for s in registry.services()],
        )

    assert with_colony(tmp_path, scenario) == (1, 1, grpc.StatusCode.UNAUTHENTICATED, ["ns/2/api/80"])


def test_a_colony_that_lost_its_registry_asks_agents_to_register_again(tmp_path: Path) -> None:
    async def scenario(stub: Any, registry: RegistryReader) -> Any:
        heartbeat = await stub.Heartbeat(mesh_pb2.HeartbeatRequest(agent_id="a", session_token="old", health="healthy"))
        delta = await stub.UpdateServices(mesh_pb2.UpdateServicesRequest(agent_id="a", session_token="old", sequence=7))
        return heartbeat.resync_required, delta.resync_required

    assert with_colony(tmp_path, scenario) == (True, True)


def test_agent_b_cannot_take_over_agent_a_services_through_the_service(tmp_path: Path) -> None:
    """b sending a's key gets a row of its own, on its node; a's stays as a sent it."""

    async def scenario(stub: Any, registry: RegistryReader) -> Any:
        await stub.Register(node_request("a", "ns/1/web/8080"))
        response = await stub.Register(node_request("b", "ns/1/web/8080"))
        return list(response.refused_keys), [(s.agent_id, s.service.node_name) for s in registry.services()]

    assert with_colony(tmp_path, scenario) == ([], [("a", "a-node"), ("b", "b-node")])
