"""Every agent proves who it is: each attack a security review proved, against a real colony over real TLS.

The colony runs as ``coral colony start`` does (``serving``: both endpoints, the registry, real TLS on
loopback) on the system clock; agents enroll with the real key child and speak over mutual TLS.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import pytest

from coral_base.vocabulary import EnrollMethod, Scope
from coral_base.wire.coral.agent.v1 import agent_pb2, agent_pb2_grpc
from coral_base.wire.coral.colony.v1 import colony_pb2, colony_pb2_grpc
from coral_base.wire.coral.mesh.v1 import mesh_pb2, mesh_pb2_grpc
from coral_colony.identity import init_colony, load_colony
from coral_colony.stores.reader import RegistryReader
from coral_colony.targets import resolve_pod
from coral_colony.tokens import OperatorTokens
from cri_agent import colony_codec
from cri_agent.enrollment import Credential
from cri_agent.model import ServiceInfo, ServiceKey
from cri_agent.sync import ColonyEndpoint, ColonySync
from tests.colony import enrolling_sync, free_port, serving
from tests.test_sync import svc

_T = TypeVar("_T")


@dataclass
class Running:
    directory: Path
    port: int
    agent_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def audit(self, action: str) -> list[sqlite3.Row]:
        with sqlite3.connect(f"file:{self.directory / 'colony.db'}?mode=ro", uri=True) as db:
            db.row_factory = sqlite3.Row
            return list(db.execute("SELECT * FROM audit WHERE action = ? ORDER BY id", [action]))

    def services(self) -> list[tuple[str, str, str]]:
        """(agent, node, key) of every row the registry holds."""
        with sqlite3.connect(f"file:{self.directory / 'colony.db'}?mode=ro", uri=True) as db:
            return list(db.execute("SELECT agent_id, node_name, key FROM services ORDER BY agent_id, key"))

    def operator(self, *scopes: Scope) -> colony_pb2_grpc.ColonyAsyncStub:
        token = OperatorTokens(self.directory).create(
            f"op-{len(self.audit('operator.refused'))}-{time.monotonic_ns()}", scopes=scopes or [Scope.ADMIN]
        )
        credentials = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(root_certificates=(self.directory / "ca.crt").read_bytes()),
            grpc.access_token_call_credentials(token),
        )
        return colony_pb2_grpc.ColonyStub(grpc.aio.secure_channel(self.address, credentials))


def colony_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "colony"
    init_colony(directory, colony_id="prod", hosts=["127.0.0.1"])
    return directory


@asynccontextmanager
async def running(directory: Path, *, ports: tuple[int, int] = (0, 0), **options: Any) -> AsyncIterator[Running]:
    """The colony of ``directory`` serving; ``ports`` (public, agents) keep a restarted colony's."""
    port, agent_port = ports[0] or free_port(), ports[1] or free_port()
    async with serving(directory, port=port, agent_port=agent_port, **options):
        yield Running(directory, port, agent_port)


def agent(colony: Running, node: str, *services: ServiceInfo, path: Path | None = None, **kw: Any) -> ColonySync:
    sync = enrolling_sync(
        colony.address,
        colony.directory,
        node=node,
        identity_path=path or colony.directory.parent / f"{node}.json",
        **kw,
    )
    sync.set_services({s.key: replace(s, node_name=node) for s in services}, {})
    return sync


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "not within the time given"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def synced(sync: ColonySync) -> AsyncIterator[ColonySync]:
    task = asyncio.create_task(sync.run())
    try:
        await until(lambda: sync.in_sync and sync.connected)
        yield sync
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def run(scenario: Awaitable[_T]) -> _T:
    return asyncio.run(scenario)  # type: ignore[arg-type]


async def refused(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


def legacy_register(colony: Running, agent_id: str, node: str, *keys: str) -> Awaitable[mesh_pb2.RegisterResponse]:
    """A Register with the shared secret, as an agent older than enrollment (or an attacker holding it) sends."""
    request = colony_codec.register_request(
        agent_id=agent_id,
        colony_id="prod",
        secret=load_colony(colony.directory).secret(),
        version="0.1.0",
        node_name=node,
        node_labels={},
        services=[
            colony_codec.service(replace(svc(0), key=ServiceKey(key), node_name=node), None).SerializeToString()
            for key in keys
        ],
    )
    channel = grpc.aio.secure_channel(
        colony.address, grpc.ssl_channel_credentials((colony.directory / "ca.crt").read_bytes())
    )
    return mesh_pb2_grpc.MeshStub(channel).Register(request, timeout=5)


# -- enrollment and identity -------------------------------------------------------------------------


def test_an_agent_enrolls_once_keeps_its_identity_privately_and_a_restart_enrolls_nothing(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int, str, int, list[tuple[str, str, str]]]:
        async with (
            running(colony_dir(tmp_path)) as colony,
            synced(agent(colony, "node-a", svc(1))) as first,
        ):
            agent_id = first.agent_id
            async with synced(agent(colony, "node-a", svc(1))):  # the agent restarted: same record
                pass
            path = colony.directory.parent / "node-a.json"
            return (
                len(colony.audit("agent.enrolled")),
                len(colony.audit("service.registered")),
                agent_id,
                stat.S_IMODE(path.stat().st_mode),
                colony.services(),
            )

    enrolled, registered, agent_id, mode, rows = run(scenario())
    assert (enrolled, registered, agent_id, mode) == (1, 1, "node-agent-node-a", 0o600)
    assert rows == [("node-agent-node-a", "node-a", svc(1).key)]


def test_a_second_key_for_an_enrolled_node_is_refused_and_audited_until_an_operator_revokes_it(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, str, int, str, str]:
        async with (
            running(colony_dir(tmp_path)) as colony,
            synced(agent(colony, "node-a", svc(1))),
        ):
            pass
            squatter = agent(colony, "node-a", svc(9), path=tmp_path / "other-key.json")
            task = asyncio.create_task(squatter.run())
            await until(lambda: bool(colony.audit("agent.enrollment_refused")))
            await asyncio.sleep(0.2)
            reason = (
                squatter.identity.current.certificate_pem if squatter.identity and squatter.identity.current else ""
            )
            task.cancel()
            refusal = colony.audit("agent.enrollment_refused")[0]["detail"]
            revoked = await colony.operator(Scope.ADMIN).RevokeAgent(colony_pb2.RevokeAgentRequest(node="node-a"))
            async with synced(agent(colony, "node-a", svc(2), path=tmp_path / "other-key.json")) as replacement:
                agent_id = replacement.agent_id
            return reason, refusal, revoked.services_removed, revoked.agent_id, agent_id

    certificate, refusal, removed, revoked_agent, new_agent = run(scenario())
    assert certificate == ""  # never signed
    assert "node node-a is enrolled to another key" in refusal
    assert (removed, revoked_agent, new_agent) == (1, "node-agent-node-a", "node-agent-node-a")


def test_a_bootstrap_token_enrolls_and_an_expired_or_operator_token_does_not(tmp_path: Path) -> None:
    directory = colony_dir(tmp_path)
    tokens = OperatorTokens(directory)
    bootstrap = tokens.create("rollout-1", scopes=[Scope.ENROLL], ttl_s=3600)
    operator = tokens.create("alice", scopes=[Scope.READ, Scope.OPERATE])

    async def scenario() -> tuple[str, str, list[str]]:
        async with running(directory) as colony:
            with_token = agent(colony, "node-a", svc(1), credential=Credential(EnrollMethod.BOOTSTRAP_TOKEN, bootstrap))
            async with synced(with_token):
                enrolled = colony.audit("agent.enrolled")[0]["detail"]
            wrong = agent(colony, "node-b", svc(2), credential=Credential(EnrollMethod.BOOTSTRAP_TOKEN, operator))
            task = asyncio.create_task(wrong.run())
            await until(lambda: bool(colony.audit("agent.enrollment_refused")))
            task.cancel()
            return enrolled, colony.audit("agent.enrollment_refused")[0]["detail"], [r[1] for r in colony.services()]

    enrolled, refusal, nodes = run(scenario())
    assert enrolled.startswith("enrolled by bootstrap-token rollout-1")
    assert refusal.startswith("unknown, expired or non-bootstrap token")
    assert nodes == ["node-a"]


# -- impersonation -----------------------------------------------------------------------------------


def test_the_shared_secret_cannot_impersonate_an_enrolled_agent(tmp_path: Path) -> None:
    """The review's attack: Register as ``node-agent-<node>`` with an empty set, to delete its services."""

    async def scenario() -> tuple[grpc.StatusCode, grpc.StatusCode, bool, list[tuple[str, str, str]]]:
        async with (
            running(colony_dir(tmp_path)) as colony,
            synced(agent(colony, "node-a", svc(1))) as victim,
        ):  # the default: shared-secret agents refused
            closed = await refused(legacy_register(colony, "node-agent-node-a", "node-a"))
            intact = victim.in_sync
        async with (
            running(colony.directory, ports=(colony.port, colony.agent_port), allow_shared_secret=True) as colony,
            synced(agent(colony, "node-a", svc(1))),
        ):
            denied = await refused(legacy_register(colony, "node-agent-node-a", "node-a"))
            return closed.code(), denied.code(), intact, colony.services()

    closed, denied, intact, rows = run(scenario())
    assert (closed, denied, intact) == (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED, True)
    assert rows == [("node-agent-node-a", "node-a", svc(1).key)]


def test_an_enrolled_agent_cannot_speak_for_another_agent_or_node(tmp_path: Path) -> None:
    async def scenario() -> tuple[
        tuple[grpc.StatusCode, grpc.StatusCode, int], tuple[str, ...], list[tuple[str, str, str]], list[str]
    ]:
        async with (
            running(colony_dir(tmp_path)) as colony,
            synced(agent(colony, "node-a", svc(1))),
            synced(agent(colony, "node-b")) as attacker,
        ):
            assert attacker.identity is not None
            async with attacker.identity.channel() as channel:
                mesh = mesh_pb2_grpc.MeshStub(channel)
                as_victim = colony_codec.register_request(
                    agent_id="node-agent-node-a",
                    colony_id="prod",
                    secret="",
                    version="0.1.0",
                    node_name="node-a",
                    node_labels={},
                    services=[],
                )
                # First the control stream as the victim (to be sent the victim's operations): the audit row
                # is this call's; the Register that follows within the minute is counted in it.
                hello = agent_pb2.AgentMessage(hello=agent_pb2.Hello(agent_id="node-agent-node-a"))
                control = agent_pb2_grpc.AgentControlStub(channel).Connect(iter([hello]), timeout=5)
                stream_denied = await refused(control.read())
                audited_at_once = len(colony.audit("agent.refused"))
                denied = await refused(mesh.Register(as_victim, timeout=5))
                # As itself, but with services naming the victim's node (the review's look-alike):
                look_alike = replace(svc(7), node_name="node-a", namespace="default", pod_name="payments")
                own = colony_codec.register_request(
                    agent_id="",
                    colony_id="prod",
                    secret="",
                    version="0.1.0",
                    node_name="node-a",  # ignored: the certificate names node-b
                    node_labels={},
                    services=[colony_codec.service(look_alike, None).SerializeToString()],
                )
                answer = await mesh.Register(own, timeout=5)
                denied_codes = (stream_denied.code(), denied.code(), audited_at_once)
            return (
                denied_codes,
                tuple(answer.refused_keys),
                colony.services(),
                [r["detail"] for r in colony.audit("agent.refused")],
            )

    codes, refused_keys, rows, refusals = run(scenario())
    assert codes == (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED, 1)
    assert refused_keys == (svc(7).key,)
    assert rows == [("node-agent-node-a", "node-a", svc(1).key)]  # node-b's row for node-a was refused
    assert [r.split(" (from ")[0] for r in refusals] == [  # one row for both calls: same caller, reason, minute
        "agent node-agent-node-b (node node-b) sent a request as agent node-agent-node-a"
    ]


def test_a_session_token_from_the_registry_or_another_node_opens_nothing(tmp_path: Path) -> None:
    async def scenario() -> tuple[grpc.StatusCode, bool]:
        async with (
            running(colony_dir(tmp_path)) as colony,
            synced(agent(colony, "node-a", svc(1))) as victim,
            synced(agent(colony, "node-b")) as other,
        ):
            assert other.identity is not None
            stolen = victim._session  # what node-a holds; the registry keeps only its digest
            async with other.identity.channel() as channel:
                heartbeat = colony_codec.heartbeat_request(
                    agent_id="", session=stolen, health=victim.health, sequence=0
                )
                denied = await refused(mesh_pb2_grpc.MeshStub(channel).Heartbeat(heartbeat, timeout=5))
            with sqlite3.connect(colony.directory / "colony.db") as db:
                stored = {row[0] for row in db.execute("SELECT session FROM agents")}
            return denied.code(), hashlib.sha256(stolen.encode()).hexdigest() in stored and stolen not in stored

    code, only_digests = run(scenario())
    assert (code, only_digests) == (grpc.StatusCode.UNAUTHENTICATED, True)


def test_without_a_colony_certificate_the_agent_endpoint_is_closed(tmp_path: Path) -> None:
    async def scenario() -> grpc.StatusCode:
        async with running(colony_dir(tmp_path)) as colony:
            ca = (colony.directory / "ca.crt").read_bytes()
            channel = grpc.aio.secure_channel(f"127.0.0.1:{colony.agent_port}", grpc.ssl_channel_credentials(ca))
            async with channel:
                request = mesh_pb2.HeartbeatRequest(agent_id="node-agent-node-a")
                return (await refused(mesh_pb2_grpc.MeshStub(channel).Heartbeat(request, timeout=5))).code()

    assert run(scenario()) == grpc.StatusCode.UNAVAILABLE  # no client certificate: no TLS session at all


# -- operations reach the pod's real node -----------------------------------------------------------


def test_a_look_alike_pod_on_another_node_makes_the_target_ambiguous_never_the_attackers(tmp_path: Path) -> None:
    """node-b reports a pod named like node-a's (on its own node, the only one it may name): both are
    candidates, the operator is told, and --node picks the real one."""
    victim_pod = replace(svc(1), namespace="default", pod_name="payments", name="payments-api")
    look_alike = replace(svc(2), namespace="default", pod_name="payments", name="payments-api")

    async def scenario() -> tuple[str, str, str, tuple[str, str]]:
        async with (
            running(colony_dir(tmp_path)) as colony,
            synced(agent(colony, "node-a", victim_pod)),
            synced(agent(colony, "node-b", look_alike)),
        ):
            reader = RegistryReader(colony.directory / "colony.db")
            try:
                errors = []
                for target in ("default/payments", "payments-api"):
                    with pytest.raises(LookupError) as ambiguous:
                        resolve_pod(reader, target)
                    errors.append(str(ambiguous.value))
                chosen = resolve_pod(reader, "default/payments", node="node-a")
                agent_id, node = chosen.agent_id, chosen.node
            finally:
                reader.close()
            return errors[0], errors[1], agent_id, (node, "")

    by_pod, by_name, agent_id, (node, _) = run(scenario())
    for error in (by_pod, by_name):
        assert "matches 2 pods" in error
        assert "default/payments on node node-a (agent node-agent-node-a)" in error
        assert "default/payments on node node-b (agent node-agent-node-b)" in error
    assert (agent_id, node) == ("node-agent-node-a", "node-a")


def test_keys_sent_first_by_another_node_squat_nothing(tmp_path: Path) -> None:
    async def scenario() -> tuple[tuple[str, ...], list[tuple[str, str, str]]]:
        async with running(colony_dir(tmp_path)) as colony:
            async with synced(agent(colony, "node-b", svc(1))):  # node-b pre-registers node-a's key
                pass
            async with synced(agent(colony, "node-a", svc(1))) as victim:
                return victim.in_sync, colony.services()  # type: ignore[return-value]

    in_sync, rows = run(scenario())
    assert in_sync
    assert rows == [("node-agent-node-a", "node-a", svc(1).key), ("node-agent-node-b", "node-b", svc(1).key)]


# -- revocation ---------------------------------------------------------------------------------------


def test_a_revoked_agent_is_disconnected_within_5_s_and_cannot_reconnect(tmp_path: Path) -> None:
    async def scenario() -> tuple[float, grpc.StatusCode, str, str, list[tuple[str, str, str]]]:
        async with (
            running(colony_dir(tmp_path)) as colony,
            synced(agent(colony, "node-a", svc(1), heartbeat_interval_s=0.2)) as victim,
        ):
            assert victim.identity is not None
            channel = victim.identity.channel()
            hello = colony_codec.hello(agent_id=victim.agent_id, session=await victim.session())
            stream = agent_pb2_grpc.AgentControlStub(channel).Connect(iter([hello]))
            ended = asyncio.create_task(_drain(stream))
            await asyncio.sleep(0.3)  # connected
            denied_by_scope = await refused(
                colony.operator(Scope.READ, Scope.OPERATE).RevokeAgent(colony_pb2.RevokeAgentRequest(node="node-a"))
            )
            assert denied_by_scope.code() == grpc.StatusCode.PERMISSION_DENIED
            started = time.monotonic()
            await colony.operator(Scope.ADMIN).RevokeAgent(colony_pb2.RevokeAgentRequest(node="node-a"))
            await asyncio.wait_for(ended, 5)
            took = time.monotonic() - started
            beat = colony_codec.heartbeat_request(agent_id="", session="", health=victim.health, sequence=0)
            again = await refused(mesh_pb2_grpc.MeshStub(channel).Heartbeat(beat, timeout=5))
            await until(lambda: bool(victim.identity and victim.identity.revoked))
            await channel.close(None)
            return took, again.code(), again.details() or "", victim.identity.revoked, colony.services()

    took, code, details, reason, rows = run(scenario())
    assert took < 5
    assert code == grpc.StatusCode.UNAUTHENTICATED and "revoked by op-" in details
    assert "remove" in reason and "to enroll again" in reason
    assert rows == []


async def _drain(stream: Any) -> None:
    try:
        async for _ in stream:
            pass
    except grpc.aio.AioRpcError:
        pass


# -- renewal and upgrade --------------------------------------------------------------------------------


def test_an_agent_of_the_shared_secret_era_enrolls_on_upgrade_without_churn(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], list[tuple[str, str, str]]]:
        async with running(colony_dir(tmp_path), allow_shared_secret=True) as colony:
            colony_identity = load_colony(colony.directory)
            old = ColonySync(
                ColonyEndpoint(
                    address=colony.address,
                    colony_id="prod",
                    secret=colony_identity.secret(),
                    agent_id="node-agent-node-a",  # the agent.id default: node-agent-{{ NODE_NAME }}
                    node_name="node-a",
                    version="0.0.9",
                    node_labels={},
                    ca_pem=colony_identity.ca_cert.read_bytes(),
                ),
            )
            old.set_services({s.key: replace(s, node_name="node-a") for s in (svc(1), svc(2))}, {})
            async with synced(old):
                pass
            last = max(r["id"] for r in colony.audit("agent.registered"))
            async with synced(agent(colony, "node-a", svc(1), svc(2))):  # the upgraded agent, same cache dir
                pass
            with sqlite3.connect(f"file:{colony.directory / 'colony.db'}?mode=ro", uri=True) as db:
                after = [r[0] for r in db.execute("SELECT action FROM audit WHERE id > ? ORDER BY id", [last])]
            return after, colony.services()

    after, rows = run(scenario())
    assert after == ["agent.enrolled", "agent.registered"]  # no service left or came back
    assert rows == [("node-agent-node-a", "node-a", svc(1).key), ("node-agent-node-a", "node-a", svc(2).key)]


def test_shared_secret_sessions_end_when_their_node_enrolls(tmp_path: Path) -> None:
    async def scenario() -> grpc.StatusCode:
        async with running(colony_dir(tmp_path), allow_shared_secret=True) as colony:
            await legacy_register(colony, "node-agent-node-a", "node-a", "k/1/c/1")
            async with synced(agent(colony, "node-a", svc(1))):
                return (await refused(legacy_register(colony, "node-agent-node-a", "node-a"))).code()

    assert run(scenario()) == grpc.StatusCode.PERMISSION_DENIED


def test_agent_control_messages_are_unchanged_by_enrollment() -> None:
    """The Hello an enrolled agent sends names no one the colony believes: the certificate does."""
    hello = colony_codec.hello(agent_id="", session="s")
    assert isinstance(hello, agent_pb2.AgentMessage) and hello.hello.agent_id == ""


def test_rotating_the_colony_secret_touches_no_enrolled_agent(tmp_path: Path) -> None:
    """The secret only enrolls: a new one (and a restarted colony) leaves enrolled agents as they were,
    and the old one enrolls nobody any more."""

    async def scenario() -> tuple[bool, int, str]:
        directory = colony_dir(tmp_path)
        old = load_colony(directory).secret()
        async with running(directory) as colony, synced(agent(colony, "node-a", svc(1))):
            ports = (colony.port, colony.agent_port)
        (directory / "colony-secret").write_text("a-new-secret\n")  # as `kubectl apply` of a new Secret would
        async with (
            running(directory, ports=ports) as colony,
            synced(agent(colony, "node-a", svc(1), svc(2))) as enrolled,  # its record: no secret needed
        ):
            late = agent(colony, "node-b", credential=Credential(EnrollMethod.SECRET, old))
            task = asyncio.create_task(late.run())
            await until(lambda: bool(colony.audit("agent.enrollment_refused")))
            task.cancel()
            refusal = colony.audit("agent.enrollment_refused")[0]["detail"]
            return enrolled.in_sync, len(colony.audit("agent.enrolled")), refusal

    in_sync, enrollments, refusal = run(scenario())
    assert (in_sync, enrollments, refusal.startswith("wrong colony secret")) == (True, 1, True)
