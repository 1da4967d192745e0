"""A real Prometheus scrapes a real agent and a real colony (issue 13, deliverable 2).

The agent runs on the harness's containerd with ``metrics.listen`` set and
registers into a ``coral colony start --metrics-listen`` process; Debian's
Prometheus scrapes both every second. What discovery did shows in
Prometheus' own query results, and both expositions pass ``promtool check
metrics``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from integration.conftest import AgentFactory
from integration.harness.agent import AgentProcess
from integration.harness.colony import ColonyProcess, free_port
from integration.harness.pods import ContainerSpec, PodFactory, PortSpec
from integration.harness.prometheus import PrometheusProcess, promtool_check, scrape

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "coral-dashboard.json"
HTTPD = ContainerSpec("web", ("httpd", "-f", "-p", "8080", "-h", "/"), ports=(PortSpec(8080, name="http"),))


@dataclass
class Scraped:
    agent: AgentProcess
    agent_metrics: str
    colony: ColonyProcess
    colony_metrics: str
    prometheus: PrometheusProcess


@pytest.fixture
def scraped(tmp_path: Path, start_agent: AgentFactory, pods: PodFactory) -> Iterator[Scraped]:
    colony = ColonyProcess(tmp_path / "colony", heartbeat_timeout=5.0)
    colony_metrics = f"127.0.0.1:{free_port()}"
    colony.extra_args = ["--metrics-listen", colony_metrics]
    colony.start()
    prometheus: PrometheusProcess | None = None
    try:
        agent_metrics = f"127.0.0.1:{free_port()}"
        config = tmp_path / "agent.yaml"
        config.write_text(yaml.safe_dump({"colony": colony.agent_settings(), "metrics": {"listen": agent_metrics}}))
        pods.create_pod("web-1", namespace="shop", containers=(HTTPD,))
        pods.create_pod("web-2", namespace="shop", containers=(HTTPD,), annotations={"coral.io/name": "storefront"})
        agent = start_agent("--config", str(config))
        targets = {"coral-agent": agent_metrics, "coral-colony": colony_metrics}
        prometheus = PrometheusProcess(tmp_path / "prometheus", targets=targets).start()
        yield Scraped(agent, agent_metrics, colony, colony_metrics, prometheus)
    finally:
        if prometheus is not None:
            assert prometheus.stop() == 0, prometheus.log()[-3000:]
        assert colony.stop() == 0, colony.log()[-3000:]


def test_prometheus_scrapes_the_agent_and_the_colony_and_sees_what_discovery_did(scraped: Scraped) -> None:
    prometheus = scraped.prometheus
    prometheus.wait_for(
        lambda: prometheus.targets() == {"coral-agent": "up", "coral-colony": "up"}, timeout=30, what="both targets up"
    )

    def value(promql: str) -> float | None:
        results = prometheus.query(promql)
        return results[0][1] if results else None

    wanted = {
        'coral_agent_services{provenance="discovered"}': 1.0,
        'coral_agent_services{provenance="overridden"}': 1.0,
        'coral_agent_discovery_events_total{kind="added"}': 2.0,
        'coral_agent_condition{condition="colony"}': 1.0,
        'coral_agent_condition{condition="runtime"}': 1.0,
        'coral_agent_sync_pending{item="services"}': 0.0,
        'coral_colony_agents{state="healthy"}': 1.0,
        'sum(coral_colony_services{provenance=~"discovered|overridden"})': 2.0,
        "coral_colony_registrations_total": 1.0,
    }
    seen = prometheus.wait_for(
        lambda: (now := {q: value(q) for q in wanted}) == wanted and now,
        timeout=30,
        what=f"Prometheus to read {wanted}",
    )
    assert seen == wanted
    counted = {
        "passes": value("coral_agent_discovery_pass_duration_seconds_count"),
        "cache writes": value("coral_agent_cache_write_duration_seconds_count"),
        "probes": value("sum(coral_agent_health_probes_total)"),
        "deltas or registrations": value(
            "coral_colony_delta_apply_duration_seconds_count + coral_colony_registrations_total"
        ),
        "audit": value('coral_colony_audit_entries_total{kind="registration"}'),
    }
    assert all(count and count >= 1 for count in counted.values()), counted


def test_every_dashboard_panel_query_runs_on_prometheus_and_finds_series(scraped: Scraped) -> None:
    """deploy/grafana/coral-dashboard.json, with Grafana's variables as it substitutes them."""
    prometheus = scraped.prometheus
    panels = json.loads(DASHBOARD.read_text())["panels"]
    queries = {
        t["expr"].replace("$instance", ".*").replace("$__rate_interval", "1m"): p["title"]
        for p in panels
        for t in p.get("targets", [])
    }
    # With no condition failing, nothing else reads no series, once two scrapes make a rate (a syntax error raises).
    quiet = {"Conditions failing, by name"}

    def empty() -> list[tuple[str, str]]:
        return [(title, q) for q, title in queries.items() if title not in quiet and not prometheus.query(q)]

    prometheus.wait_for(lambda: not empty(), timeout=30, what="every panel to find its series")
    assert [prometheus.query(q) for q, title in queries.items() if title in quiet] == [[]]


def test_both_expositions_pass_promtool_check_metrics(scraped: Scraped) -> None:
    scraped.agent.wait_for(lambda: len(scraped.agent.services()) == 2, timeout=20, what="both services")
    checks = {
        "agent": promtool_check(scrape(scraped.agent_metrics)),
        "colony": promtool_check(scrape(scraped.colony_metrics)),
    }
    assert {name: (c.returncode, c.stdout + c.stderr) for name, c in checks.items()} == {
        "agent": (0, ""),
        "colony": (0, ""),
    }
