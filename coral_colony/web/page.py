"""Renders the status page: one section per node agent, its services in a table.

A pure function of the registry's records and the filters, so it is tested
without a server. Every value is HTML-escaped: pod names, labels and errors come
from workloads, which the colony does not trust.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

from coral_colony.model import PROVENANCES, AgentState, AgentStatus, Provenance, ServiceFilter, StoredService


@dataclass(frozen=True, slots=True)
class Filters:
    node: str = ""
    namespace: str = ""
    provenance: Provenance | None = None
    name: str = ""

    @classmethod
    def from_query(cls, query: Mapping[str, Sequence[str]]) -> Filters:
        def first(key: str) -> str:
            return (query.get(key) or [""])[0].strip()

        provenance = first("provenance")
        return cls(
            node=first("node"),
            namespace=first("namespace"),
            provenance=Provenance(provenance) if provenance in PROVENANCES else None,
            name=first("name"),
        )

    @property
    def active(self) -> bool:
        return bool(self.namespace or self.provenance or self.name)

    def services(self) -> ServiceFilter:
        return ServiceFilter(node=self.node, namespace=self.namespace, provenance=self.provenance, name=self.name)


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1d2630;background:#f6f7f9}
h1{font-size:1.3rem;margin:0 0 .2rem} h2{font-size:1.05rem;margin:0}
.summary{color:#56606b;margin-bottom:1rem}
form{display:flex;gap:.5rem;flex-wrap:wrap;margin-bottom:1rem}
form input,form select{padding:.25rem .4rem}
section{background:#fff;border:1px solid #d9dde3;border-radius:6px;margin-bottom:1rem;padding:.75rem 1rem}
section.unreachable{border-color:#d9822b;background:#fffaf3}
.agent{display:flex;gap:.75rem;align-items:baseline;flex-wrap:wrap;margin-bottom:.5rem}
.meta{color:#56606b;font-size:.85rem}
table{border-collapse:collapse;width:100%} th,td{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #eef0f3}
th{font-size:.8rem;color:#56606b;text-transform:uppercase}
.badge{display:inline-block;border-radius:3px;padding:0 .4rem;font-size:.8rem;font-weight:600}
.prov-explicit{background:#dbe9ff;color:#0b4aa2} .prov-discovered{background:#e3f5e1;color:#1f6f1a}
.prov-overridden{background:#fff0c2;color:#7a5a00} .prov-unknown{background:#eee;color:#555}
.state-healthy,.health-healthy{background:#e3f5e1;color:#1f6f1a}
.state-unreachable,.health-unhealthy{background:#fde2e1;color:#a21c16}
.health-degraded{background:#fff0c2;color:#7a5a00} .health-unknown{background:#eee;color:#555}
.stale-stale{background:#d9822b;color:#fff} tr.stale-row td{color:#8a6d4b}
.empty{color:#56606b;font-style:italic}
"""


def _badge(kind: str, value: str, text: str | None = None) -> str:
    return f'<span class="badge {kind}-{escape(value)}">{escape(text or value)}</span>'


def _time(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _select(name: str, options: Sequence[str], current: str, *, blank: str) -> str:
    items = [f'<option value="">{escape(blank)}</option>']
    items += [f'<option value="{escape(o)}"{" selected" if o == current else ""}>{escape(o)}</option>' for o in options]
    return f'<select name="{name}" aria-label="{name}">{"".join(items)}</select>'


def render(
    *,
    colony_id: str,
    agents: Sequence[AgentStatus],
    services: Sequence[StoredService],
    nodes: Sequence[str],
    filters: Filters,
    now: float,
) -> str:
    """The whole page. ``agents`` and ``services`` are already filtered by node."""
    by_agent: dict[str, list[StoredService]] = {}
    for stored in services:
        by_agent.setdefault(stored.agent_id, []).append(stored)
    sections = [
        _section(status, by_agent.get(status.agent.agent_id, []))
        for status in agents
        if by_agent.get(status.agent.agent_id) or not filters.active
    ]
    unreachable = sum(1 for a in agents if a.state is AgentState.UNREACHABLE)
    summary = (
        f"{len(agents)} agent(s), {unreachable} unreachable · {len(services)} service(s) shown · rendered {_time(now)}"
    )
    form = (
        '<form method="get" action="/">'
        + _select("node", nodes, filters.node, blank="all nodes")
        + f'<input name="namespace" placeholder="namespace" value="{escape(filters.namespace)}" aria-label="namespace">'
        + _select("provenance", [p.value for p in PROVENANCES], filters.provenance or "", blank="any provenance")
        + f'<input name="name" placeholder="service name contains" value="{escape(filters.name)}" aria-label="name">'
        + '<button type="submit">Filter</button> <a href="/">reset</a></form>'
    )
    body = "".join(sections) or '<p class="empty">No agent matches these filters.</p>'
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="refresh" content="15">'
        f"<title>Coral colony {escape(colony_id)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Coral colony <code>{escape(colony_id)}</code></h1>"
        f'<div class="summary" id="summary">{escape(summary)}</div>{form}{body}</body></html>'
    )


def _section(status: AgentStatus, services: Sequence[StoredService]) -> str:
    agent = status.agent
    state = status.state.value
    health = status.health or "unknown"
    node = agent.node_name or "(no node)"
    header = (
        f'<div class="agent"><h2>{escape(node)}</h2>'
        f"{_badge('state', state)} {_badge('health', health, 'agent ' + health)}"
        f'<span class="meta">agent {escape(agent.agent_id)} · {escape(agent.kind.value)} '
        f"{escape(agent.version)} · last heartbeat {_time(status.last_heartbeat)}</span></div>"
    )
    if not services:
        return (
            f'<section class="{escape(state)}" data-node="{escape(node)}">{header}'
            '<p class="empty">No services.</p></section>'
        )
    rows = "".join(_row(s) for s in services)
    table = (
        "<table><thead><tr><th>Service</th><th>Namespace</th><th>Pod</th><th>Workload</th><th>Port</th><th>Type</th>"
        f"<th>Provenance</th><th>Health</th><th>Pod IP</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return f'<section class="{escape(state)}" data-node="{escape(node)}">{header}{table}</section>'


def _row(stored: StoredService) -> str:
    service = stored.service
    stale = stored.stale
    port = f"{service.port}/{service.protocol.lower()}" if service.port else "-"
    health = service.health_state or "unknown"
    title = f' title="{escape(service.health_error)}"' if service.health_error else ""
    stale_badge = " " + _badge("stale", "stale", "stale") if stale else ""
    return (
        f'<tr class="{"stale-row" if stale else ""}" data-key="{escape(service.key)}">'
        f"<td>{escape(service.component_name)}{stale_badge}</td>"
        f"<td>{escape(service.namespace)}</td><td>{escape(service.pod_name)}</td>"
        f"<td>{escape(service.workload or '-')}</td>"
        f"<td>{escape(port)}</td><td>{escape(service.service_type)}</td>"
        f"<td>{_badge('prov', service.provenance.value)}</td>"
        f"<td{title}>{_badge('health', health)}</td><td>{escape(service.pod_ip)}</td></tr>"
    )
