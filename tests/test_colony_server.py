"""serve(): it owns the registry's writer (made before anything reads the file, closed on every way out),
and its housekeeping runs on the colony's clock (here a virtual one)."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coral_base.clock import VirtualClock
from coral_colony.health import CHECK_EVERY_S, STALE_AFTER_S, ColonyHealth, Verdict
from coral_colony.identity import ColonyIdentity, init_colony
from coral_colony.model import AgentState, AuditEntry, AuditKind, AuditQuery
from coral_colony.server import PRUNE_EVERY_S, serve
from coral_colony.stores.reader import RegistryReader
from coral_colony.stores.schema import SCHEMA_VERSION, version_of
from coral_colony.stores.writer import RegistryWriter, WriterThread
from cri_agent.sync import ColonySync
from tests.colony import enrolling_sync, free_port, serving
from tests.test_sync import svc


def writer_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("registry-writer")]


@pytest.fixture
def identity(tmp_path: Path) -> ColonyIdentity:
    return init_colony(tmp_path / "colony", colony_id="c1", hosts=["127.0.0.1"])


def test_serve_creates_the_registry_and_closes_its_writer_when_stopped(
    identity: ColonyIdentity, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "colony.db"
    closed = record_closes(monkeypatch)

    async def scenario() -> int:
        stop, started = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(
            serve(identity, listen="127.0.0.1:0", database=database, stop=stop, web_listen="", started=started)
        )
        await started.wait()
        with sqlite3.connect(database) as db:  # made and migrated before anything could read it
            version = version_of(db)
        stop.set()
        await task
        return version

    assert asyncio.run(scenario()) == SCHEMA_VERSION
    assert (closed, writer_threads()) == ([database], [])


def record_closes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    closed: list[Path] = []
    close = RegistryWriter.close

    def recorded(writer: RegistryWriter) -> None:
        closed.append(writer.path)
        close(writer)

    monkeypatch.setattr(RegistryWriter, "close", recorded)
    return closed


def test_a_colony_that_cannot_listen_still_closes_its_writer(
    identity: ColonyIdentity, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = record_closes(monkeypatch)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def scenario() -> None:
            await serve(
                identity,
                listen=f"127.0.0.1:{port}",
                database=tmp_path / "colony.db",
                stop=asyncio.Event(),
                web_listen="",
            )

        with pytest.raises(RuntimeError):
            asyncio.run(scenario())
    assert (closed, writer_threads()) == ([tmp_path / "colony.db"], [])


def test_a_silent_agent_is_marked_unreachable_then_dropped_on_the_colonys_clock(tmp_path: Path) -> None:
    directory = tmp_path / "colony"
    identity = init_colony(directory, colony_id="c1", hosts=["127.0.0.1"])
    clock = VirtualClock()
    port = free_port()

    async def scenario() -> tuple[float, float, list[str]]:
        async with serving(directory, port=port, clock=clock, heartbeat_timeout=45, ttl=600):
            sync = one_service_agent(identity, port=port, clock=clock)
            task = asyncio.create_task(sync.run())
            await sync.session()
            task.cancel()  # the agent falls silent: no heartbeat, no goodbye
            registry = RegistryReader(directory / "colony.db")
            # Measured from the colony's own record: virtual time may move while a real RPC is in flight.
            silent_at = registry.agents()[0].last_heartbeat - clock.time() + clock.monotonic()
            try:
                await clock.until(lambda: registry.agents()[0].state is AgentState.UNREACHABLE, within=60)
                unreachable = clock.monotonic() - silent_at
                await clock.until(lambda: not registry.agents(), within=600)
                dropped = clock.monotonic() - silent_at
                actions = [r.entry.action for r in registry.audit(AuditQuery(kind=AuditKind.AGENT))]
            finally:
                registry.close()
        return unreachable, dropped, actions

    unreachable, dropped, actions = clock.run(scenario())
    assert 45 < unreachable <= 50, "expiry runs every 5 s: within one round of the heartbeat timeout"
    assert 600 < dropped <= 605
    assert "agent.unreachable" in actions


def test_housekeeping_that_fails_is_logged_once_and_retried_not_fatal(
    identity: ColonyIdentity, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A registry locked by another process (or a full disk) for a while: the colony stays up and goes on."""
    calls: list[float] = []
    expire = RegistryWriter.expire

    def flaky(
        writer: RegistryWriter, *, now: float, heartbeat_timeout: float, ttl: float, grace: float
    ) -> tuple[list[str], list[str]]:
        calls.append(now)
        if len(calls) <= 3:
            raise sqlite3.OperationalError("database is locked")
        return expire(writer, now=now, heartbeat_timeout=heartbeat_timeout, ttl=ttl, grace=grace)

    monkeypatch.setattr(RegistryWriter, "expire", flaky)
    clock = VirtualClock()

    async def scenario() -> None:
        stop, started = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(
            serve(
                identity,
                listen="127.0.0.1:0",
                database=tmp_path / "colony.db",
                stop=stop,
                web_listen="",
                clock=clock,
                started=started,
            )
        )
        await started.wait()
        await clock.until(lambda: len(calls) >= 5, within=60)
        assert not task.done(), "the colony is still serving"
        stop.set()
        await task

    with caplog.at_level("INFO"):
        clock.run(scenario())
    events = [(r.getMessage(), getattr(r, "coral_fields", {})) for r in caplog.records]
    failed = [fields for event, fields in events if event == "registry.housekeeping_failed"]
    assert failed == [{"reason": "OperationalError: database is locked"}], "once, with its cause"
    assert [event for event, _ in events].count("registry.housekeeping_recovered") == 1


def test_a_wall_clock_jump_drops_no_agent(tmp_path: Path) -> None:
    """Two days forward (an NTP step, a restored VM) with an agent that heartbeats: it stays healthy."""
    directory = tmp_path / "colony"
    identity = init_colony(directory, colony_id="c1", hosts=["127.0.0.1"])
    clock = VirtualClock()
    port = free_port()

    async def scenario() -> tuple[list[str], list[str]]:
        async with serving(directory, port=port, clock=clock, heartbeat_timeout=45, ttl=86400):
            sync = one_service_agent(identity, port=port, clock=clock)
            task = asyncio.create_task(sync.run())
            await sync.session()
            registry = RegistryReader(directory / "colony.db")
            try:
                clock.step_wall(2 * 86400)
                await clock.until(lambda: bool(jumped(registry)), within=20)
                await clock.sleep(60)  # a minute of housekeeping and heartbeats after the jump
                states = [a.state.value for a in registry.agents()]
                actions = jumped(registry)
            finally:
                task.cancel()
                registry.close()
        return states, actions

    states, actions = clock.run(scenario())
    assert states == ["healthy"], "the agent was neither marked unreachable nor dropped"
    assert actions == ["colony.clock_jumped"]


def test_a_wall_clock_stepped_forward_prunes_no_recent_audit_entry(tmp_path: Path) -> None:
    """A month forward with a week's retention: pruning follows the time that passed, not the step."""
    directory = tmp_path / "colony"
    init_colony(directory, colony_id="c1", hosts=["127.0.0.1"])
    clock = VirtualClock()
    writer = RegistryWriter(directory / "colony.db")
    writer.record([AuditEntry(time=clock.time(), kind=AuditKind.AGENT, action="before.the.step")])
    writer.close()

    async def scenario() -> list[str]:
        async with serving(directory, port=free_port(), clock=clock, audit_retention=7 * 86400):
            registry = RegistryReader(directory / "colony.db")
            try:
                await clock.sleep(1)
                clock.step_wall(30 * 86400)
                await clock.until(lambda: bool(jumped(registry)), within=20)
                await clock.sleep(PRUNE_EVERY_S + 10)  # the next pruning round has run
                return [r.entry.action for r in registry.audit()]
            finally:
                registry.close()

    assert clock.run(scenario()) == ["before.the.step", "colony.clock_jumped"]


def jumped(registry: RegistryReader) -> list[str]:
    return [
        r.entry.action
        for r in registry.audit(AuditQuery(kind=AuditKind.AGENT))
        if r.entry.action == "colony.clock_jumped"
    ]


def one_service_agent(identity: ColonyIdentity, *, port: int, clock: VirtualClock) -> ColonySync:
    """Node agent ``node-agent-node-a`` of ``node-a`` with one service, to run against ``serving()`` on ``port``."""
    sync = enrolling_sync(
        f"127.0.0.1:{port}",
        identity.directory,
        node="node-a",
        identity_path=identity.directory.parent / "node-a-identity.json",
        clock=clock,
    )
    sync.set_services({svc(1).key: svc(1)}, {})
    return sync


def audit_actions(registry: RegistryReader) -> list[str]:
    return [r.entry.action for r in registry.audit(AuditQuery())]


def test_an_agent_that_deregisters_and_registers_again_within_the_grace_window_changes_nothing(
    tmp_path: Path,
) -> None:
    """A restart (a rolling update): goodbye, then the same agent with the same services 30 s later."""
    directory = tmp_path / "colony"
    identity = init_colony(directory, colony_id="c1", hosts=["127.0.0.1"])
    clock = VirtualClock()
    port = free_port()

    async def scenario() -> tuple[str, list[str], list[str], list[str]]:
        async with serving(directory, port=port, clock=clock, deregister_grace=120):
            registry = RegistryReader(directory / "colony.db")
            try:
                first = one_service_agent(identity, port=port, clock=clock)
                task = asyncio.create_task(first.run())
                await first.session()
                task.cancel()
                assert await first.deregister()
                left = registry.agents()[0].state.value
                before = audit_actions(registry)
                await clock.sleep(30)
                second = one_service_agent(identity, port=port, clock=clock)
                task = asyncio.create_task(second.run())
                await second.session()
                await clock.sleep(300)  # well past the grace window
                task.cancel()
                states = [a.state.value for a in registry.agents()] + [str(s.stale) for s in registry.services()]
                return left, before, audit_actions(registry), states
            finally:
                registry.close()

    left, before, after, states = clock.run(scenario())
    assert left == "left"
    assert after == [*before, "agent.registered"], "no service removed and added again"
    assert states == ["healthy", "False"]


def test_an_agent_that_deregisters_and_stays_away_is_removed_when_the_grace_window_ends(tmp_path: Path) -> None:
    directory = tmp_path / "colony"
    identity = init_colony(directory, colony_id="c1", hosts=["127.0.0.1"])
    clock = VirtualClock()
    port = free_port()

    async def scenario() -> tuple[list[bool], float, list[tuple[str, str, str]]]:
        async with serving(directory, port=port, clock=clock, deregister_grace=120):
            registry = RegistryReader(directory / "colony.db")
            try:
                sync = one_service_agent(identity, port=port, clock=clock)
                task = asyncio.create_task(sync.run())
                await sync.session()
                task.cancel()
                assert await sync.deregister()
                left_at = clock.monotonic()
                stale = [s.stale for s in registry.services()]
                await clock.until(lambda: not registry.agents(), within=200)
                removed = clock.monotonic() - left_at
                entries = [
                    (r.entry.action, r.entry.actor, r.entry.detail)
                    for r in registry.audit(AuditQuery(kind=AuditKind.DEREGISTRATION))
                ]
                return stale, removed, entries
            finally:
                registry.close()

    stale, removed, entries = clock.run(scenario())
    assert stale == [True], "while it is away its services are stale"
    assert 120 < removed <= 125, "removed at the first expiry round past the grace window"
    assert [(action, actor) for action, actor, _ in entries] == [
        ("service.deregistered", "node-agent-node-a"),
        ("agent.deregistered", "node-agent-node-a"),
    ]
    assert "did not register again within the 120s grace window" in entries[-1][2]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_colony_answers_probes_over_http_and_grpc_health(
    identity: ColonyIdentity, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ready while the registry takes writes; a registry that refuses them makes it unready, not dead."""
    writable = True
    check_writable = RegistryWriter.check_writable

    def maybe_writable(writer: RegistryWriter) -> None:
        if not writable:
            raise sqlite3.OperationalError("database is locked")
        check_writable(writer)

    monkeypatch.setattr(RegistryWriter, "check_writable", maybe_writable)
    clock = VirtualClock()
    port, probe_port = free_port(), free_port()
    base = f"http://127.0.0.1:{probe_port}"

    async def grpc_status(service: str) -> str:
        credentials = grpc.ssl_channel_credentials(root_certificates=identity.ca_cert.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

    async def probes() -> tuple[tuple[int, str], tuple[int, str], str, str]:
        live = await asyncio.to_thread(get, f"{base}/healthz")
        ready = await asyncio.to_thread(get, f"{base}/readyz")
        return live, ready, await grpc_status(""), await grpc_status("coral.mesh.v1.Mesh")

    async def settled(ready: bool) -> tuple[tuple[int, str], tuple[int, str], str, str]:
        """The probes once a check has seen the registry as it now is (a check runs on a thread: virtual
        time alone does not wait for it)."""
        for _ in range(20):
            await clock.sleep(CHECK_EVERY_S)
            seen = await probes()
            if (seen[1][0] == 200) == ready:
                return seen
        return seen

    async def scenario() -> list[tuple[tuple[int, str], tuple[int, str], str, str]]:
        nonlocal writable
        async with serving(identity.directory, port=port, clock=clock, probe_listen=f"127.0.0.1:{probe_port}"):
            seen = [await settled(True)]
            writable = False
            seen.append(await settled(False))
            writable = True
            seen.append(await settled(True))
            other = await asyncio.to_thread(get, f"{base}/")
            assert other[0] == 404, "the probe listener serves the probes and nothing else"
            return seen

    ok, locked, back = clock.run(scenario())
    assert ok == ((200, "ok\n"), (200, "ok\n"), "SERVING", "SERVING")
    assert locked[0] == (200, "ok\n"), "a registry that refuses writes does not call for a restart"
    assert locked[1][0] == 503 and "cannot be written: database is locked" in locked[1][1]
    assert locked[2:] == ("NOT_SERVING", "NOT_SERVING")
    assert back == ok


def test_a_colony_whose_loop_stopped_checking_is_not_live(identity: ColonyIdentity, tmp_path: Path) -> None:
    clock = VirtualClock()

    async def scenario() -> list[Verdict]:
        writer = WriterThread(RegistryWriter(tmp_path / "colony.db"))
        health = ColonyHealth(writer, tmp_path / "colony.db", clock=clock)
        health.serving = True
        reader = RegistryReader(tmp_path / "colony.db")
        try:
            await health.check(reader)
            seen = [health.live(), health.ready()]
            clock.advance(STALE_AFTER_S + 1)
            seen += [health.live(), health.ready()]
        finally:
            reader.close()
            writer.close()
        return seen

    fresh_live, fresh_ready, stale_live, stale_ready = clock.run(scenario())
    assert (fresh_live, fresh_ready) == ((True, "ok"), (True, "ok"))
    assert stale_live[0] is stale_ready[0] is False
    assert "last checked its health 61s ago" in stale_live[1]
