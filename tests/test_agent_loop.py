"""The reconcile loop with a scripted runtime: bursts coalesce, outages are
reported once and retried, recovery needs nobody. No daemons, no root.

Every scenario runs on a VirtualClock: backoffs, polls and re-checks take no
real time, and the number of passes in a virtual interval is exact."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from coral_base.clock import VirtualClock
from coral_colony.identity import init_colony
from coral_colony.model import AuditKind, AuditQuery
from coral_colony.stores.reader import RegistryReader
from cri_agent.agent import RECHECK_S, NodeAgent
from cri_agent.cache.reader import CacheReader
from cri_agent.config import load_settings
from cri_agent.discovery.engine import CLOSE_GRACE_S
from cri_agent.errors import RuntimeUnavailable
from cri_agent.model import (
    ContainerID,
    ContainerRecord,
    ContainerState,
    DeclaredPort,
    EventKind,
    ListeningSocket,
    PodRecord,
    PodUID,
    SandboxID,
)
from cri_agent.providers.cri import RuntimeEvent, RuntimeVersion
from cri_agent.status_file import Probe, read_status
from tests.colony import SECRET, Colony, free_port, serving


def pod(name: str) -> PodRecord:
    return PodRecord(
        uid=PodUID(f"uid-{name}"),
        name=name,
        namespace="shop",
        sandbox_id=SandboxID(f"sb-{name}"),
        ip="10.250.0.9",
        containers=(
            ContainerRecord(
                id=ContainerID(f"c-{name}"),
                name="app",
                state=ContainerState.RUNNING,
                declared_ports=(DeclaredPort(8080, "TCP", "http"),),
            ),
        ),
    )


class ScriptedRuntime:
    """A runtime whose pods, availability and events the test controls."""

    def __init__(self) -> None:
        self.current: list[PodRecord] = []
        self.down = False
        self.lists = 0
        self.events_queue: asyncio.Queue[RuntimeEvent] = asyncio.Queue()

    async def version(self) -> RuntimeVersion:
        return RuntimeVersion("scripted", "1.0", "v1")

    async def pods(self) -> list[PodRecord]:
        self.lists += 1
        if self.down:
            raise RuntimeUnavailable("CRI socket /x.sock not found: mount the host's runtime socket")
        return list(self.current)

    async def events(self) -> AsyncIterator[RuntimeEvent]:
        while True:
            yield await self.events_queue.get()

    async def close(self) -> None:
        pass


class NoProc:
    def enrich(self, pods: Sequence[PodRecord]) -> tuple[PodRecord, ...]:
        return tuple(pods)


def make_agent(tmp_path: Path, runtime: ScriptedRuntime, clock: VirtualClock) -> NodeAgent:
    settings = load_settings(
        None,
        flags={
            "cache": {"path": tmp_path / "agent.db"},
            "agent": {"nodeName": "node-a"},
            "discovery": {"coalesceInterval": "20ms", "kubernetes": {"resyncInterval": "1h"}},
        },
    )
    return NodeAgent(settings, runtime=runtime, proc=NoProc(), clock=clock)


def test_a_burst_of_runtime_events_collapses_into_one_pass(tmp_path: Path) -> None:
    clock = VirtualClock()

    async def scenario() -> tuple[int, int]:
        runtime = ScriptedRuntime()
        agent = make_agent(tmp_path, runtime, clock)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await clock.until(lambda: agent.passes >= 1, within=1)
        settled = runtime.lists
        runtime.current = [pod("a")]
        for _ in range(20):
            runtime.events_queue.put_nowait(RuntimeEvent("cri", "CONTAINER_STARTED_EVENT"))
        await clock.until(lambda: len(agent.known.services) == 1, within=1)
        await clock.sleep(0.1)
        stop.set()
        await task
        return settled, runtime.lists

    settled, total = clock.run(scenario())
    assert total - settled == 1


def test_a_light_pass_every_poll_interval_finds_what_no_runtime_event_announced(tmp_path: Path) -> None:
    clock = VirtualClock()

    async def scenario() -> tuple[int, int]:
        settings = load_settings(
            None,
            flags={
                "cache": {"path": tmp_path / "agent.db"},
                "agent": {"nodeName": "node-a"},
                "discovery": {"kubernetes": {"resyncInterval": "1h", "pollInterval": "100ms"}},
            },
        )
        runtime = ScriptedRuntime()
        agent = NodeAgent(settings, runtime=runtime, proc=NoProc(), clock=clock)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await clock.until(lambda: agent.passes >= 1, within=1)
        runtime.current = [pod("a")]  # e.g. a process in a running pod that starts listening: no event
        await clock.until(lambda: len(agent.known.services) == 1, within=0.1)
        before = runtime.lists
        await clock.sleep(0.55)
        stop.set()
        await task
        return before, runtime.lists

    before, after = clock.run(scenario())
    assert after - before == 5  # one pass per 100 ms: polling, and no busy loop


def test_an_outage_is_reported_once_retried_and_recovered_without_help(tmp_path: Path) -> None:
    clock = VirtualClock()

    async def scenario() -> tuple[NodeAgent, float]:
        runtime = ScriptedRuntime()
        runtime.down = True
        agent = make_agent(tmp_path, runtime, clock)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await clock.until(lambda: runtime.lists >= 3, within=10)
        retried_after = clock.monotonic()  # two backoffs: about 0.5 + 1 s (jitter +/- 20 %)
        runtime.down = False
        runtime.current = [pod("b")]
        runtime.events_queue.put_nowait(RuntimeEvent("cri", "CONTAINER_STARTED_EVENT"))
        await clock.until(lambda: len(agent.known.services) == 1, within=10)
        stop.set()
        await task
        return agent, retried_after

    agent, retried_after = clock.run(scenario())
    cache = CacheReader(tmp_path / "agent.db")
    outages = [e for e in cache.events(kind=EventKind.ERROR) if "not found" in e.reason]
    runtime_condition = {c.name: c.ok for c in cache.conditions()}["runtime"]
    assert (len(outages), runtime_condition, agent.healthy) == (1, 1, True)
    assert 1.2 <= retried_after <= 1.9


def test_a_restarted_agent_emits_nothing_for_unchanged_pods(tmp_path: Path) -> None:
    async def one_run(pods: list[PodRecord], clock: VirtualClock) -> None:
        runtime = ScriptedRuntime()
        runtime.current = pods
        agent = make_agent(tmp_path, runtime, clock)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await clock.until(lambda: agent.passes >= 1, within=1)
        stop.set()
        await task

    first_clock, second_clock = VirtualClock(), VirtualClock()
    first_clock.run(one_run([pod("a"), pod("b")], first_clock))
    first = len(CacheReader(tmp_path / "agent.db").events())
    second_clock.run(one_run([pod("a"), pod("b")], second_clock))
    assert len(CacheReader(tmp_path / "agent.db").events()) == first == 2


def test_stop_drains_and_persists_the_last_pass(tmp_path: Path) -> None:
    clock = VirtualClock()

    async def scenario() -> float:
        runtime = ScriptedRuntime()
        agent = make_agent(tmp_path, runtime, clock)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await clock.until(lambda: agent.passes >= 1, within=1)
        stop.set()
        await task
        return clock.time()

    stopped_at = clock.run(scenario())
    meta = CacheReader(tmp_path / "agent.db").meta()
    assert 0 < float(meta["last_pass_at"]) <= stopped_at


def test_discovered_services_reach_a_real_colony_and_leave_it_with_their_pod(tmp_path: Path) -> None:
    clock = VirtualClock()

    async def scenario() -> tuple[dict[str, str], dict[str, str], list[tuple[str, str, str, str]]]:
        colony = Colony(tmp_path / "colony.db")
        await colony.start()
        runtime = ScriptedRuntime()
        runtime.current = [pod("a"), pod("b")]
        settings = load_settings(
            None,
            flags={
                "cache": {"path": tmp_path / "agent.db"},
                "agent": {"nodeName": "node-a"},
                "discovery": {"coalesceInterval": "20ms", "kubernetes": {"resyncInterval": "1h"}},
                "colony": {"address": f"127.0.0.1:{colony.port}", "colonyId": "c1", "secret": SECRET, "insecure": True},
            },
        )
        agent = NodeAgent(settings, runtime=runtime, proc=NoProc(), clock=clock)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await clock.until(lambda: len(colony.keys()) == 2, within=10)
        registry = colony.registry
        assert registry is not None
        first = {s.service.pod_name: s.service.node_name for s in registry.services()}
        runtime.current = [pod("b")]
        runtime.events_queue.put_nowait(RuntimeEvent("cri", "CONTAINER_STOPPED_EVENT"))
        await clock.until(lambda: len(colony.keys()) == 1, within=10)
        second = {s.service.pod_name: s.service.provenance.value for s in registry.services()}
        discovery = AuditQuery(kind=AuditKind.DISCOVERY)
        await clock.until(lambda: len(registry.audit(discovery)) == 3, within=5)
        events = [
            (e.action, e.pod_name, e.node_name, e.provenance) for e in (r.entry for r in registry.audit(discovery))
        ]
        runtime.down = True  # discovery is blind: the agent must not claim to be healthy
        runtime.events_queue.put_nowait(RuntimeEvent("cri", "CONTAINER_STOPPED_EVENT"))
        await clock.until(lambda: registry.agents()[0].health == "unhealthy", within=5)
        stop.set()
        await task
        await colony.stop()
        return first, second, events

    first, second, events = clock.run(scenario())
    assert (first, second) == ({"a": "node-a", "b": "node-a"}, {"b": "discovered"})
    assert events == [
        ("added", "a", "node-a", "discovered"),
        ("added", "b", "node-a", "discovered"),
        ("removed", "a", "node-a", "discovered"),
    ]
    colony_condition = next(c for c in CacheReader(tmp_path / "agent.db").conditions() if c.name == "colony")
    assert colony_condition.ok and colony_condition.reason.startswith("registered with colony c1")


class SyncedApi:
    """The API fallback's view: this node's pods, already listed."""

    pods_synced = True
    events_received = 2

    def __init__(self, pods: list[PodRecord]) -> None:
        self.pods = pods

    def pod_records(self) -> list[PodRecord]:
        return self.pods

    def enrich(self, pods: list[PodRecord]) -> list[PodRecord]:
        return pods

    def node_labels(self) -> dict[str, str]:
        return {}


def test_without_the_runtime_the_api_fallback_keeps_discovery_going_and_health_says_degraded(tmp_path: Path) -> None:
    clock = VirtualClock()

    async def scenario() -> tuple[bool, list[str], str]:
        runtime = ScriptedRuntime()
        runtime.down = True
        agent = make_agent(tmp_path, runtime, clock)
        agent.kube = SyncedApi([pod("from-api")])  # type: ignore[assignment]
        agent.known = await agent.cache.open()
        passed = await agent.reconcile_once()
        names = sorted(s.name for s in agent.known.services.values())
        health = agent.agent_health()
        await agent.cache.writer.close()
        return passed, names, health

    assert clock.run(scenario()) == (True, ["from-api"], "degraded")


def test_a_task_exit_is_followed_by_a_second_pass_once_the_runtime_has_settled(tmp_path: Path) -> None:
    """The CRI plugin marks a stopped sandbox NOTREADY only after handling the exit: the pass the event
    triggers may still see it READY, and no later event comes. The agent passes again RECHECK_S later."""
    clock = VirtualClock()

    async def scenario() -> tuple[float, int, int]:
        runtime = ScriptedRuntime()
        runtime.current = [pod("a")]
        agent = make_agent(tmp_path, runtime, clock)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await clock.until(lambda: len(agent.known.services) == 1, within=1)
        runtime.events_queue.put_nowait(RuntimeEvent("containerd", "/tasks/exit", "sb-a", exited=True))
        await clock.until(lambda: runtime.lists >= 2, within=1)
        exited_at = clock.monotonic()
        runtime.current = []  # what the runtime says once it has handled the exit
        await clock.until(lambda: not agent.known.services, within=2 * RECHECK_S)
        rechecked_after = clock.monotonic() - exited_at
        quiet = runtime.lists
        await clock.sleep(2 * RECHECK_S)
        stop.set()
        await task
        return rechecked_after, quiet, runtime.lists

    rechecked_after, quiet, later = clock.run(scenario())
    assert rechecked_after <= RECHECK_S
    assert later == quiet, "one re-check, not a polling loop"


def test_a_closed_port_is_removed_by_the_pass_the_agent_asks_for_once_its_grace_is_over(tmp_path: Path) -> None:
    """No runtime event announces a listener that closes: the pass that found it closed asks for the one
    CLOSE_GRACE_S later, which removes it as "port closed" if it is still closed; then the agent is quiet."""
    clock = VirtualClock()
    app = ContainerRecord(id=ContainerID("c-a"), name="app", state=ContainerState.RUNNING, process_names=("httpd",))

    def listening_on(*ports: int) -> PodRecord:
        sockets = tuple(ListeningSocket(port, "TCP", "0.0.0.0") for port in ports)
        return replace(pod("a"), containers=(replace(app, listening=sockets),))

    async def scenario() -> tuple[float, list[str], int, int]:
        runtime = ScriptedRuntime()
        runtime.current = [listening_on(8181, 9191)]
        agent = make_agent(tmp_path, runtime, clock)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await clock.until(lambda: len(agent.known.services) == 2, within=1)
        runtime.current = [listening_on(9191)]
        runtime.events_queue.put_nowait(RuntimeEvent("cri", "CONTAINER_STARTED_EVENT"))  # some other change
        passes = agent.passes
        await clock.until(lambda: agent.passes > passes, within=1)
        found_at, kept = clock.monotonic(), len(agent.known.services)
        await clock.until(lambda: len(agent.known.services) == 1, within=CLOSE_GRACE_S + 0.1)
        removed_after = clock.monotonic() - found_at
        quiet = runtime.lists
        await clock.sleep(5.0)  # less than pollInterval (30 s)
        stop.set()
        await task
        removed = CacheReader(tmp_path / "agent.db").events(kind=EventKind.REMOVED)
        return removed_after, [e.reason for e in removed], kept, runtime.lists - quiet

    removed_after, reasons, kept, later = clock.run(scenario())
    assert (kept, reasons, later) == (2, ["port closed"], 0)
    assert CLOSE_GRACE_S <= removed_after <= CLOSE_GRACE_S + 0.05


def test_the_events_condition_is_set_as_soon_as_the_stream_is_open(tmp_path: Path) -> None:
    clock = VirtualClock()

    async def scenario() -> tuple[bool, str]:
        runtime = ScriptedRuntime()
        runtime.events_queue.put_nowait(RuntimeEvent.subscribed("containerd"))
        agent = make_agent(tmp_path, runtime, clock)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await clock.until(lambda: "events" in agent.conditions, within=1)
        stop.set()
        await task
        condition = agent.conditions.get("events")
        assert condition is not None
        return condition.ok, condition.reason

    assert clock.run(scenario()) == (True, "streaming (containerd)")


def probes(agent: NodeAgent, clock: VirtualClock) -> tuple[bool, bool]:
    live = read_status(agent.settings.cache.path)
    assert live is not None
    return live.probe(Probe.LIVE, now=clock.time())[0], live.probe(Probe.READY, now=clock.time())[0]


def test_the_probes_follow_the_loop_and_the_runtime_never_the_colony(tmp_path: Path) -> None:
    """Live through a long idle spell and a runtime outage; ready only when the runtime answers; a colony
    that never answers changes neither (a colony outage must not restart or unready every agent)."""
    clock = VirtualClock()

    async def scenario() -> list[tuple[bool, bool]]:
        runtime = ScriptedRuntime()
        runtime.current = [pod("a")]
        runtime.down = True
        settings = load_settings(
            None,
            flags={
                "cache": {"path": tmp_path / "agent.db"},
                "agent": {"nodeName": "node-a"},
                "discovery": {"kubernetes": {"resyncInterval": "1h", "pollInterval": "5m"}},
                "colony": {"address": f"127.0.0.1:{free_port()}", "colonyId": "c1", "secret": SECRET, "insecure": True},
            },
        )
        agent = NodeAgent(settings, runtime=runtime, proc=NoProc(), clock=clock)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await clock.until(lambda: runtime.lists >= 2, within=10)
        seen = [probes(agent, clock)]  # the runtime is down from the start
        runtime.down = False
        await clock.until(lambda: agent.passes >= 1, within=60)
        seen.append(probes(agent, clock))
        await clock.sleep(280)  # idle: no pass due before the 5 min poll, heartbeats all the same
        seen.append(probes(agent, clock))
        assert not agent.conditions.ok("colony", default=False), "the colony was never reached"
        stop.set()
        await task
        seen.append(probes(agent, clock))  # stopped: no agent holds the cache
        return seen

    assert clock.run(scenario()) == [(True, False), (True, True), (True, True), (False, False)]


def test_a_stopping_agent_deregisters_and_its_restart_changes_nothing_in_the_colony(tmp_path: Path) -> None:
    """SIGTERM (stop) says goodbye; the same agent back within the grace window (a rolling update) leaves the
    colony's services and audit log as they were but for its registration."""
    directory = tmp_path / "colony"
    init_colony(directory, colony_id="c1", hosts=["127.0.0.1"])
    clock = VirtualClock()
    port = free_port()
    settings = load_settings(
        None,
        flags={
            "cache": {"path": tmp_path / "agent.db"},
            "agent": {"nodeName": "node-a"},
            "discovery": {"coalesceInterval": "20ms", "kubernetes": {"resyncInterval": "1h"}},
            "colony": {
                "address": f"127.0.0.1:{port}",
                "colonyId": "c1",
                "secretFile": directory / "colony-secret",
                "caFile": directory / "ca.crt",
            },
        },
    )

    async def start_agent(runtime: ScriptedRuntime) -> tuple[asyncio.Event, asyncio.Task[None]]:
        agent = NodeAgent(settings, runtime=runtime, proc=NoProc(), clock=clock)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await clock.until(lambda: agent.sync is not None and agent.sync.in_sync and agent.passes >= 1, within=30)
        return stop, task

    async def scenario() -> tuple[str, list[str], list[str], list[str]]:
        async with serving(directory, port=port, clock=clock, deregister_grace=120):
            registry = RegistryReader(directory / "colony.db")
            try:
                runtime = ScriptedRuntime()
                runtime.current = [pod("a"), pod("b")]
                stop, task = await start_agent(runtime)
                stop.set()
                await task
                state = registry.agents()[0].state.value
                before = [r.entry.action for r in registry.audit(AuditQuery())]
                await clock.sleep(20)
                stop, task = await start_agent(runtime)
                await clock.sleep(300)  # past the first one's grace window
                after = [r.entry.action for r in registry.audit(AuditQuery())]
                services = sorted(s.service.pod_name for s in registry.services())
                stop.set()
                await task
                return state, before, after, services
            finally:
                registry.close()

    state, before, after, services = clock.run(scenario())
    assert state == "left"
    assert after[: len(before)] == before
    assert [a for a in after[len(before) :] if not a.startswith("discovery")] == ["agent.registered"]
    assert services == ["a", "b"]


def test_without_a_serviceaccount_token_the_agent_discovers_from_the_runtime_and_its_condition_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restricted install (automountServiceAccountToken: false) with the API on: no crash, no API."""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    clock = VirtualClock()

    async def scenario() -> NodeAgent:
        settings = load_settings(
            None,
            flags={
                "cache": {"path": tmp_path / "agent.db"},
                "agent": {"nodeName": "node-a"},
                "discovery": {"kubernetes": {"api": "on", "resyncInterval": "1h"}},
            },
        )
        runtime = ScriptedRuntime()
        runtime.current = [pod("a")]
        agent = NodeAgent(settings, runtime=runtime, proc=NoProc(), clock=clock)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await clock.until(lambda: len(agent.known.services) == 1, within=1)
        stop.set()
        await task
        return agent

    agent = clock.run(scenario())
    condition = agent.conditions.get("kubernetes")
    assert agent.kube is None and condition is not None and not condition.ok
    assert "cannot be loaded" in condition.reason and "serviceAccount.automount" in condition.reason
