"""`coral agent services|events|status` read the cache: tables, JSON, exit codes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from coral_cli import main
from cri_agent.cache.services import SERVICE_COLUMNS
from cri_agent.cache.writer import Cache
from cri_agent.cli import cache_views
from cri_agent.conditions import Condition
from cri_agent.discovery.engine import KnownState, reconcile
from cri_agent.discovery.rules import DiscoveryRules
from cri_agent.model import EventKind, NodeSnapshot
from cri_agent.status_file import StatusFile
from tests.builders import pod


@pytest.fixture
def cache_path(tmp_path: Path) -> Path:
    path = tmp_path / "agent.db"
    cache = Cache(path)
    snapshot = NodeSnapshot(
        node_name="node-a",
        pods=(pod("checkout-0"), pod("bad", annotations={"coral.io/port": "x", "coral.io/name": "bad-api"})),
        taken_at=0.0,
    )
    result = reconcile(KnownState(services={}, pods={}), snapshot, DiscoveryRules(node_name="node-a"))
    cache.apply(result, node_name="node-a", now=1.0, touch=True, retention_rows=1000, retention_days=1e6)
    cache.set_condition(Condition("runtime", True, "containerd 1.6.20", since=1.0, updated=1.0))
    cache.close()
    return path


def test_services_table_lists_every_service_with_its_provenance(
    cache_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["agent", "services", "--cache", str(cache_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = ["NAMESPACE", "POD", "CONTAINER", "NAME", "PORT", "TYPE", "PROVENANCE", "HEALTH", "POD", "IP", "AGE"]
    assert lines[0].split() == header
    assert [line.split()[3:8] for line in lines[1:]] == [
        ["bad-api", "8080/TCP", "http", "overridden", "unknown"],
        ["checkout-0", "8080/TCP", "http", "discovered", "unknown"],
    ]


def test_services_json_decodes_labels_and_fields(cache_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["agent", "services", "--cache", str(cache_path), "-o", "json", "-n", "shop"])
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["overridden_fields"]) for r in rows] == [("bad-api", ["name"]), ("checkout-0", [])]
    assert set(rows[0]) == {*SERVICE_COLUMNS, "health", "health_since", "health_latency_ms", "health_error"}


def test_events_can_be_filtered_by_kind(cache_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["agent", "events", "--cache", str(cache_path), "--kind", "error", "-o", "json"])
    [event] = json.loads(capsys.readouterr().out)
    assert (event["pod_name"], event["fields"]) == ("bad", ["coral.io/port"])


def test_events_limit_keeps_the_newest(cache_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["agent", "events", "--cache", str(cache_path), "-o", "json"])
    every = json.loads(capsys.readouterr().out)
    main(["agent", "events", "--cache", str(cache_path), "-o", "json", "--limit", "2"])
    assert len(every) > 2 and json.loads(capsys.readouterr().out) == every[-2:]


def test_status_exit_code_tells_health(cache_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    healthy = main(["agent", "status", "--cache", str(cache_path)])
    cache = Cache(cache_path)
    cache.set_condition(Condition("runtime", False, "CRI socket /x not found", since=2.0, updated=2.0))
    cache.close()
    degraded = main(["agent", "status", "--cache", str(cache_path)])
    assert (healthy, degraded, "degraded" in capsys.readouterr().out) == (0, 1, True)


def test_a_missing_cache_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "services", "--cache", str(tmp_path / "none.db")]) == 2
    assert "start `coral agent node` first" in capsys.readouterr().err


def test_invalid_flag_value_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["agent", "node", "--cache", str(tmp_path / "a.db"), "--include-label", "novalue"])
    assert (code, "not key=value" in capsys.readouterr().err) == (2, True)


def test_the_events_kind_choices_are_the_event_kinds() -> None:
    assert tuple(EventKind) == cache_views.EVENT_KINDS


def test_status_probe_answers_from_the_status_file_with_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "agent.db"
    absent = main(["agent", "status", "--probe", "live", "--cache", str(cache)])
    status = StatusFile(cache)
    status.acquire({"heartbeat_at": time.time(), "heartbeat_every": 10.0, "passes": 0, "conditions": []})
    try:
        live = main(["agent", "status", "--probe", "live", "--cache", str(cache)])
        ready = main(["agent", "status", "--probe", "ready", "--cache", str(cache)])
    finally:
        status.release()
    lines = capsys.readouterr().out.splitlines()
    assert (absent, live, ready) == (1, 0, 1)
    assert lines[1].startswith("live: ok: ") and lines[2] == "ready: no: the first discovery pass is not done yet"
