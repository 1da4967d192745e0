"""The status page's rendering: grouping, badges, stale markers, filters, escaping."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from coral_base.vocabulary import AgentHealth, HealthState
from coral_colony.model import (
    AgentKind,
    AgentRecord,
    AgentState,
    AgentStatus,
    Provenance,
    ServiceRecord,
    StoredService,
)
from coral_colony.web.page import Filters, render


def agent(agent_id: str, node: str, state: AgentState = AgentState.HEALTHY) -> AgentStatus:
    return AgentStatus(
        agent=AgentRecord(agent_id=agent_id, kind=AgentKind.NODE_AGENT, node_name=node, version="0.1.0"),
        state=state,
        health=AgentHealth.DEGRADED,
        last_heartbeat=0.0,
    )


def service(agent_id: str, name: str, *, stale: bool = False, **changes: Any) -> StoredService:
    record = ServiceRecord(
        key=f"shop/{name}/app/80",
        component_name=name,
        namespace="shop",
        pod_name=f"{name}-0",
        port=80,
        protocol="TCP",
        service_type="http",
        provenance=Provenance.DISCOVERED,
        health_state=HealthState.HEALTHY,
        health_error="",
        pod_ip="10.0.0.2",
    )
    return StoredService(service=replace(record, **changes), agent_id=agent_id, stale=stale)


def page(**kwargs: Any) -> str:
    defaults: dict[str, Any] = {"colony_id": "prod", "nodes": ["node-a", "node-b"], "filters": Filters(), "now": 0.0}
    return render(**{**defaults, **kwargs})


def test_services_are_grouped_under_their_node_with_badges_and_stale_markers() -> None:
    html = page(
        agents=[agent("a", "node-a"), agent("b", "node-b", state=AgentState.UNREACHABLE)],
        services=[service("a", "web", provenance=Provenance.OVERRIDDEN), service("b", "api", stale=True)],
    )
    a, b = html.index('data-node="node-a"'), html.index('data-node="node-b"')
    assert a < html.index("web") < b < html.index("api")
    assert 'class="badge prov-overridden">overridden' in html
    assert 'class="badge stale-stale">stale' in html and 'class="badge state-unreachable"' in html
    assert "2 agent(s), 1 unreachable" in html


def test_workload_strings_are_escaped() -> None:
    html = page(agents=[agent("a", "node-a")], services=[service("a", "<script>alert(1)</script>")])
    assert "<script>alert" not in html and "&lt;script&gt;" in html


def test_filters_hide_agents_without_matching_services_and_keep_the_form_state() -> None:
    filters = Filters.from_query({"provenance": ["explicit"], "namespace": ["shop"], "node": ["node-a"]})
    html = page(agents=[agent("a", "node-a"), agent("b", "node-b")], services=[service("a", "web")], filters=filters)
    assert 'data-node="node-b"' not in html
    assert '<option value="explicit" selected>' in html and 'value="shop"' in html
    assert Filters.from_query({"provenance": ["bogus"]}).provenance is None


def test_no_match_says_so() -> None:
    html = page(agents=[agent("a", "node-a")], services=[], filters=Filters(name="zzz"))
    assert "No agent matches these filters." in html
