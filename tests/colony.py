"""Real colonies on loopback for unit tests, in this process: the Mesh service alone (``Colony``),
or all of ``coral colony start`` (``serving`` on the test's loop, ``ColonyThread`` beside it)."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc.aio
import pytest

from coral_base.backoff import Backoff
from coral_base.clock import SYSTEM_CLOCK, Clock
from coral_base.message_limits import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES
from coral_base.vocabulary import EnrollMethod, Scope
from coral_base.wire.coral.mesh.v1 import mesh_pb2_grpc
from coral_colony.identity import init_colony, load_colony
from coral_colony.mesh_service import MeshService
from coral_colony.server import DEREGISTER_GRACE_S, HEARTBEAT_TIMEOUT_S, STALE_TTL_S, serve
from coral_colony.stores.reader import RegistryReader
from coral_colony.stores.writer import RegistryWriter, WriterThread
from coral_colony.tokens import OPERATOR_SCOPES, OperatorTokens
from cri_agent.enrollment import AgentIdentity, Credential
from cri_agent.sync import ColonyEndpoint, ColonySync

_T = TypeVar("_T")

SECRET = "colony-secret-do-not-log"


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Everything the records carry: event names and their structured fields."""
    return "\n".join(f"{r.getMessage()} {getattr(r, 'coral_fields', {})}" for r in caplog.records)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Colony:
    """A real colony Mesh server on a fixed loopback port that tests can kill and restart."""

    def __init__(
        self,
        path: Path,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,  # lower: as an older colony (gRPC's 4 MiB default) or a smaller one
    ) -> None:
        self.path = path
        self.max_message_bytes = max_message_bytes
        self.port = free_port()
        self.server: grpc.aio.Server | None = None
        self.writer: WriterThread | None = None
        self.registry: RegistryReader | None = None  # what the test reads, as the operator API does

    async def start(self) -> None:
        self.writer = WriterThread(RegistryWriter(self.path))  # owned here, as serve() owns it
        self.registry = RegistryReader(self.path)
        self.service = self.mesh(self.writer)
        receive = "grpc.max_receive_message_length"
        options = [*(o for o in CHANNEL_OPTIONS if o[0] != receive), (receive, self.max_message_bytes)]
        self.server = grpc.aio.server(options=options)
        mesh_pb2_grpc.add_MeshServicer_to_server(self.service, self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self.server.start()

    def mesh(self, writer: WriterThread) -> MeshService:
        """The Mesh service it serves (a test's subclass may misbehave on purpose)."""
        return MeshService(writer, colony_id="c1", colony_secret=SECRET)

    async def stop(self) -> None:
        assert self.server is not None and self.writer is not None and self.registry is not None
        await self.server.stop(None)
        self.writer.close()
        self.registry.close()

    def keys(self) -> dict[str, str]:
        assert self.registry is not None
        return {s.service.key: s.service.pod_ip for s in self.registry.services()}


def enrolling_sync(
    address: str,
    directory: Path,
    *,
    node: str,
    identity_path: Path,
    clock: Clock = SYSTEM_CLOCK,
    ca: Path | None = None,
    heartbeat_interval_s: float = 15.0,
    backoff: Backoff | None = None,
    credential: Credential | None = None,
) -> ColonySync:
    """A node agent's sync for the colony initialised in ``directory``, enrolling with its secret (kept at
    ``identity_path``) and then speaking as its certificate says: ``node-agent-<node>``."""
    colony = load_colony(directory)
    ca_pem = (ca or colony.ca_cert).read_bytes()
    secret = colony.secret()
    return ColonySync(
        ColonyEndpoint(
            address=address,
            colony_id=colony.colony_id,
            secret=secret,
            agent_id=f"configured-{node}",  # never used: the certificate names the agent
            node_name=node,
            version="0.1.0",
            node_labels={"topology.kubernetes.io/zone": node[-1]},
            heartbeat_interval_s=heartbeat_interval_s,
            ca_pem=ca_pem,
        ),
        clock=clock,
        backoff=backoff,
        identity=AgentIdentity(
            identity_path,
            address=address,
            ca_pem=ca_pem,
            colony_id=colony.colony_id,
            node_name=node,
            version="0.1.0",
            credential=credential or Credential(EnrollMethod.SECRET, secret),
            clock=clock,
        ),
    )


@asynccontextmanager
async def serving(
    directory: Path,
    *,
    port: int,
    agent_port: int = 0,  # 0: port + 1
    clock: Clock = SYSTEM_CLOCK,
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S,
    ttl: float = STALE_TTL_S,
    allow_shared_secret: bool = False,
    agent_cert_lifetime: float = 24 * 3600.0,
    audit_retention: float | None = None,
    deregister_grace: float = DEREGISTER_GRACE_S,
    probe_listen: str = "",
) -> AsyncIterator[None]:
    """What ``coral colony start --dir DIRECTORY`` runs (TLS, registry, expiry, health) on the test's loop and
    clock, listening once this enters; the status page is off, the probe endpoints too unless asked for."""
    stop, started = asyncio.Event(), asyncio.Event()
    listen = f"127.0.0.1:{port}"
    identity = load_colony(directory)
    task = asyncio.create_task(
        serve(
            identity,
            listen=listen,
            agent_listen=f"127.0.0.1:{agent_port or port + 1}",
            database=directory / "colony.db",
            stop=stop,
            web_listen="",
            allow_shared_secret=allow_shared_secret,
            agent_cert_lifetime=agent_cert_lifetime,
            probe_listen=probe_listen,
            heartbeat_timeout=heartbeat_timeout,
            ttl=ttl,
            audit_retention=audit_retention,
            deregister_grace=deregister_grace,
            clock=clock,
            started=started,
        )
    )
    await asyncio.wait([task, asyncio.create_task(started.wait())], return_when=asyncio.FIRST_COMPLETED)
    try:
        if task.done():
            task.result()  # it failed to start: say why
        yield
    finally:
        stop.set()
        await task


class ColonyThread:
    """``coral colony start`` on a thread of this process, for synchronous callers: the operator CLI
    blocks on its gRPC calls, so the colony cannot share their thread. Everything asynchronous that
    talks to it runs on its loop (``call``): gRPC's asyncio stack wants one loop at a time."""

    def __init__(self, directory: Path, *, colony_id: str = "test-colony") -> None:
        self.directory = directory
        self.colony_id = colony_id
        self.port = free_port()
        self.agent_port = free_port()
        if not (directory / "colony.yaml").exists():
            init_colony(directory, colony_id=colony_id, hosts=["localhost", "127.0.0.1"])
        self._loop = asyncio.new_event_loop()
        self._listening = threading.Event()
        self._stop = asyncio.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="colony", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def secret_file(self) -> Path:
        return self.directory / "colony-secret"

    def start(self) -> ColonyThread:
        self._thread.start()
        self._listening.wait()
        if self._failure is not None:
            raise self._failure
        return self

    def call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coroutine`` on the colony's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def stop(self) -> None:
        """Stop as SIGTERM would, and re-raise what made the colony fail, if anything did."""
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        async def main() -> None:
            async with serving(self.directory, port=self.port, agent_port=self.agent_port):
                self._listening.set()
                await self._stop.wait()

        try:
            self._loop.run_until_complete(main())
        except BaseException as exc:  # handed to start() or stop()
            self._failure = exc
        finally:
            self._listening.set()
            self._loop.close()

    def token(self, name: str, *, scopes: Iterable[Scope] = OPERATOR_SCOPES, namespaces: Iterable[str] = ()) -> str:
        return OperatorTokens(self.directory).create(name, scopes=scopes, namespaces=namespaces)

    def audit(self, kind: str) -> list[dict[str, Any]]:
        with sqlite3.connect(f"file:{self.directory / 'colony.db'}?mode=ro", uri=True) as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute("SELECT * FROM audit WHERE kind = ? ORDER BY id", (kind,))]
