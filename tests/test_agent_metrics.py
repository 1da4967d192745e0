"""The agent's Prometheus metrics: off (no port, no prometheus-client) unless configured; when on, what
the loop does shows in them, with the vocabulary's words as label values. Scenarios on a VirtualClock."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from coral_base.clock import VirtualClock
from coral_base.errors import ConfigError
from coral_base.vocabulary import Action, Outcome
from cri_agent.agent import NodeAgent
from cri_agent.config import load_settings
from cri_agent.metrics import AgentMetrics
from cri_agent.model import Health, HealthState, ServiceKey
from cri_agent.providers.cri import RuntimeEvent
from cri_agent.sync import Backlog, ColonySync
from tests.colony import Colony
from tests.test_agent_loop import NoProc, ScriptedRuntime, pod
from tests.test_sync import run, svc


def value(metrics: AgentMetrics, name: str, **labels: str) -> float | None:
    """One sample of the exposition (as a scraper parses it), None when absent."""
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def agent_with_metrics(tmp_path: Path, runtime: ScriptedRuntime, clock: VirtualClock, listen: str) -> NodeAgent:
    flags: dict[str, object] = {
        "cache": {"path": tmp_path / "agent.db"},
        "agent": {"nodeName": "node-a"},
        "discovery": {"coalesceInterval": "20ms", "kubernetes": {"resyncInterval": "1h"}},
    }
    if listen:
        flags["metrics"] = {"listen": listen}
    return NodeAgent(load_settings(None, flags=flags), runtime=runtime, proc=NoProc(), clock=clock)


def test_without_metrics_listen_the_agent_has_no_metrics_and_never_loads_prometheus_client(tmp_path: Path) -> None:
    agent = agent_with_metrics(tmp_path, ScriptedRuntime(), VirtualClock(), listen="")
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, cri_agent.agent, cri_agent.cli; print('prometheus_client' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert (agent.metrics, loaded) == (None, "False")


@pytest.mark.parametrize("listen", ["9102", "localhost", ":x", "host:70000"])
def test_a_metrics_listen_that_is_not_host_port_is_refused_naming_the_key(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        load_settings(None, flags={"metrics": {"listen": listen}})


def test_passes_show_as_services_by_provenance_events_by_kind_and_a_pass_duration(tmp_path: Path) -> None:
    clock = VirtualClock()

    async def scenario() -> NodeAgent:
        runtime = ScriptedRuntime()
        runtime.current = [pod("a"), pod("b")]
        agent = agent_with_metrics(tmp_path, runtime, clock, listen="127.0.0.1:0")
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await clock.until(lambda: len(agent.known.services) == 2, within=1)
        runtime.current = [pod("b")]
        runtime.events_queue.put_nowait(RuntimeEvent("cri", "CONTAINER_STOPPED_EVENT"))
        await clock.until(lambda: len(agent.known.services) == 1, within=1)
        stop.set()
        await task
        return agent

    metrics = clock.run(scenario()).metrics
    assert metrics is not None
    seen = {
        "discovered": value(metrics, "coral_agent_services", provenance="discovered"),
        "explicit": value(metrics, "coral_agent_services", provenance="explicit"),
        "added": value(metrics, "coral_agent_discovery_events_total", kind="added"),
        "removed": value(metrics, "coral_agent_discovery_events_total", kind="removed"),
        "error": value(metrics, "coral_agent_discovery_events_total", kind="error"),
        "runtime": value(metrics, "coral_agent_condition", condition="runtime"),
    }
    assert seen == {"discovered": 1, "explicit": 0, "added": 2, "removed": 1, "error": 0, "runtime": 1}
    assert (value(metrics, "coral_agent_discovery_pass_duration_seconds_count") or 0) >= 2
    assert (value(metrics, "coral_agent_cache_write_duration_seconds_count") or 0) >= 2


def test_a_runtime_outage_counts_errors_by_reason_and_drops_the_runtime_condition_gauge(tmp_path: Path) -> None:
    clock = VirtualClock()

    async def scenario() -> NodeAgent:
        runtime = ScriptedRuntime()
        runtime.down = True
        agent = agent_with_metrics(tmp_path, runtime, clock, listen="127.0.0.1:0")
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await clock.until(lambda: runtime.lists >= 3, within=10)
        stop.set()
        await task
        return agent

    metrics = clock.run(scenario()).metrics
    assert metrics is not None
    assert value(metrics, "coral_agent_condition", condition="runtime") == 0
    assert (value(metrics, "coral_agent_errors_total", reason="runtime") or 0) >= 3
    assert value(metrics, "coral_agent_errors_total", reason="colony") == 0


def test_probes_count_by_result_and_operations_by_action_and_outcome() -> None:
    metrics = AgentMetrics(clock=VirtualClock())
    key = ServiceKey("shop/uid-a/app/8080")
    metrics.probed([Health(key, HealthState.HEALTHY, 0.0), Health(key, HealthState.UNHEALTHY, 0.0)])
    metrics.probed([Health(key, HealthState.HEALTHY, 0.0)])
    metrics.operation_ended({"action": Action.TAP, "outcome": "refused"})
    assert [
        value(metrics, "coral_agent_health_probes_total", result="healthy"),
        value(metrics, "coral_agent_health_probes_total", result="unhealthy"),
        value(metrics, "coral_agent_operations_total", action="tap", outcome="refused"),
        value(metrics, "coral_agent_operations_total", action=Action.PROFILE.value, outcome=Outcome.OK.value),
    ] == [2, 1, 1, 0]


@dataclass
class FakeSync:
    changes: int = 0
    events: int = 0

    def backlog(self) -> Backlog:
        return Backlog(changes=self.changes, events=self.events)


def test_sync_lag_grows_while_the_colony_is_behind_and_is_zero_once_it_caught_up() -> None:
    clock = VirtualClock()
    sync = FakeSync()

    async def scenario() -> list[tuple[float | None, ...]]:
        metrics = AgentMetrics(clock=clock)
        task = asyncio.create_task(metrics.serve("127.0.0.1:0", sync=sync))
        await clock.until(lambda: metrics.address, within=5)
        seen = []

        def scrape() -> tuple[float | None, ...]:
            return (
                value(metrics, "coral_agent_sync_pending", item="services"),
                value(metrics, "coral_agent_sync_pending", item="events"),
                value(metrics, "coral_agent_sync_lag_seconds"),
            )

        seen.append(scrape())
        sync.changes, sync.events = 3, 2
        seen.append(scrape())
        clock.advance(7.0)
        seen.append(scrape())
        sync.changes = sync.events = 0
        seen.append(scrape())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen

    assert clock.run(scenario()) == [(0, 0, 0), (3, 2, 0), (3, 2, 7), (0, 0, 0)]


def test_the_listener_serves_the_text_format_and_closes_when_its_stage_stops() -> None:
    async def scenario() -> tuple[str, str, bool]:
        metrics = AgentMetrics(clock=VirtualClock())
        task = asyncio.create_task(metrics.serve("127.0.0.1:0", sync=None))
        await asyncio.sleep(0)  # the stage listens before its first wait
        url = f"http://{metrics.address}/metrics"
        with await asyncio.to_thread(urllib.request.urlopen, url, timeout=5) as answer:
            body, content_type = answer.read().decode(), answer.headers["Content-Type"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        try:
            await asyncio.to_thread(urllib.request.urlopen, url, timeout=2)
        except OSError:
            return body, content_type, True
        return body, content_type, False

    body, content_type, closed = asyncio.run(scenario())
    assert "coral_agent_build_info" in body and content_type.startswith("text/plain") and closed


def test_the_syncs_backlog_is_what_the_colony_has_not_acknowledged(tmp_path: Path) -> None:
    async def scenario(colony: Colony, sync: ColonySync, clock: VirtualClock) -> tuple[Backlog, Backlog]:
        sync.set_services({s.key: s for s in (svc(1), svc(2))}, {})
        before = sync.backlog()
        await clock.until(lambda: sync.in_sync, within=5)
        return before, sync.backlog()

    assert run(tmp_path, scenario) == (Backlog(changes=2, events=0), Backlog(changes=0, events=0))
