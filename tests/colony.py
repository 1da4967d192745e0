"""A real colony Mesh server on loopback for agent-side tests."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc.aio
import pytest

from coral_base.wire.coral.mesh.v1 import mesh_pb2_grpc
from coral_colony.mesh_service import MeshService
from coral_colony.stores.reader import RegistryReader
from coral_colony.stores.writer import RegistryWriter, WriterThread

SECRET = "colony-secret-do-not-log"


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Everything the records carry: event names and their structured fields."""
    return "\n".join(f"{r.getMessage()} {getattr(r, 'coral_fields', {})}" for r in caplog.records)


class Colony:
    """A real colony Mesh server on a fixed loopback port that tests can kill and restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server: grpc.aio.Server | None = None
        self.writer: WriterThread | None = None
        self.registry: RegistryReader | None = None  # what the test reads, as the operator API does

    async def start(self) -> None:
        self.writer = WriterThread(RegistryWriter(self.path))  # owned here, as serve() owns it
        self.registry = RegistryReader(self.path)
        self.service = MeshService(self.writer, colony_id="c1", colony_secret=SECRET)
        self.server = grpc.aio.server()
        mesh_pb2_grpc.add_MeshServicer_to_server(self.service, self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self.server.start()

    async def stop(self) -> None:
        assert self.server is not None and self.writer is not None and self.registry is not None
        await self.server.stop(None)
        self.writer.close()
        self.registry.close()

    def keys(self) -> dict[str, str]:
        assert self.registry is not None
        return {s.service.key: s.service.pod_ip for s in self.registry.services()}
