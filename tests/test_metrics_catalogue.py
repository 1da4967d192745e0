"""Every metric the agent and the colony export is documented (docs/metrics.md) and drawn on the Grafana
dashboard (deploy/grafana/coral-dashboard.json), and the dashboard asks for no metric that does not exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from coral_base.clock import VirtualClock
from coral_colony.metrics import ColonyMetrics
from coral_colony.stores.writer import RegistryWriter
from cri_agent.metrics import AgentMetrics

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = json.loads((REPO / "deploy" / "grafana" / "coral-dashboard.json").read_text())
DOCS = (REPO / "docs" / "metrics.md").read_text()


def exported(tmp_path: Path) -> dict[str, str]:
    """Family name (as scraped: counters with _total) -> its type, for both programs."""
    writer = RegistryWriter(tmp_path / "colony.db")
    colony = ColonyMetrics(tmp_path / "colony.db")
    texts = [generate_latest(AgentMetrics(clock=VirtualClock()).registry), colony.exposition()[0]]
    colony.close()
    writer.close()
    families = {}
    for text in texts:
        for family in text_string_to_metric_families(text.decode()):
            name = family.name + "_total" if family.type == "counter" else family.name
            families[name] = family.type
    return families


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", [])]


def referenced() -> set[str]:
    """Family names the queries read (a histogram's _bucket, _count and _sum are its family)."""
    return {re.sub(r"_(bucket|count|sum)$", "", n) for q in dashboard_queries() for n in re.findall(r"\bcoral_\w+", q)}


def test_the_dashboard_draws_every_exported_metric_and_nothing_else(tmp_path: Path) -> None:
    families = set(exported(tmp_path)) - {"coral_colony_build_info"}  # the agents' build_info counts agents
    assert referenced() == families


@pytest.mark.parametrize("name", ["coral_agent_services", "coral_colony_agents", "coral_agent_errors_total"])
def test_names_follow_prometheus_conventions(tmp_path: Path, name: str) -> None:
    families = exported(tmp_path)
    assert name in families
    assert all(n.startswith(("coral_agent_", "coral_colony_")) for n in families)
    assert all(n.endswith("_total") == (t == "counter") for n, t in families.items())
    assert all(n.endswith("_seconds") for n, t in families.items() if t == "histogram")


def test_every_exported_metric_is_documented(tmp_path: Path) -> None:
    assert [name for name in exported(tmp_path) if f"`{name}`" not in DOCS] == []
