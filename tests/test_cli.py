"""`coral agent services|events|status|validate-config`: tables, JSON and YAML, exit codes; completion."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from coral_cli import main
from coral_colony.cli import queries
from coral_colony.model import ServiceRecord, StoredService
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
    assert (rows[0]["port"], rows[0]["provenance"], rows[0]["node_name"]) == (8080, "overridden", "node-a")


def test_a_service_has_one_schema_in_the_agents_view_and_the_colonys(
    cache_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["agent", "services", "--cache", str(cache_path), "-o", "json"])
    agent_view = json.loads(capsys.readouterr().out)[0]
    colony_view = queries.service_document(StoredService(ServiceRecord(key="k", component_name="web"), agent_id="a"))
    assert list(agent_view) == list(colony_view)
    agent_health, colony_health = agent_view["health"], colony_view["health"]
    assert isinstance(colony_health, dict) and list(agent_health) == list(colony_health)


def test_services_yaml_and_headerless_tables(cache_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["agent", "services", "--cache", str(cache_path), "-o", "yaml"])
    assert [s["name"] for s in yaml.safe_load(capsys.readouterr().out)] == ["bad-api", "checkout-0"]
    main(["agent", "services", "--cache", str(cache_path), "--no-headers", "-o", "wide"])
    assert [line.split()[3] for line in capsys.readouterr().out.splitlines()] == ["bad-api", "checkout-0"]


def test_no_matching_service_says_no_resources_found_on_stderr(
    cache_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["agent", "services", "--cache", str(cache_path), "-n", "nowhere"]) == 0
    assert capsys.readouterr() == ("", "No resources found\n")


def test_events_since_and_since_id(cache_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["agent", "events", "--cache", str(cache_path), "-o", "json"])
    every = json.loads(capsys.readouterr().out)
    assert all(isinstance(e["id"], int) and e["time"] == "1970-01-01T00:00:01.000Z" for e in every)
    main(["agent", "events", "--cache", str(cache_path), "-o", "json", "--since-id", str(every[0]["id"])])
    assert json.loads(capsys.readouterr().out) == every[1:]
    main(["agent", "events", "--cache", str(cache_path), "--since", "1h30m"])  # recorded at t=1 s: long before
    assert capsys.readouterr() == ("", "No resources found\n")
    main(["agent", "events", "--cache", str(cache_path), "-o", "json", "--since", "1970-01-01T00:00:00Z"])
    assert json.loads(capsys.readouterr().out) == every


def test_events_watch_follows_new_events_and_ends_cleanly_on_ctrl_c(cache_path: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "coral_cli", "agent", "events", "--cache", str(cache_path), "--no-headers"]
    watcher = subprocess.Popen(
        [*command, "--watch", "--watch-interval", "100ms"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert watcher.stdout is not None
        first = watcher.stdout.readline().split()
        cache = Cache(cache_path)
        snapshot = NodeSnapshot(node_name="node-a", pods=(pod("late-0"),), taken_at=5.0)
        result = reconcile(KnownState(services={}, pods={}), snapshot, DiscoveryRules(node_name="node-a"))
        cache.apply(result, node_name="node-a", now=5.0, touch=True, retention_rows=1000, retention_days=1e6)
        cache.close()
        while "late-0" not in (line := watcher.stdout.readline()):
            assert int(line.split()[0]) <= int(first[0]) + 10
    finally:
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=10)
    assert (watcher.returncode, err) == (0, "")


def test_status_json_has_booleans_and_times(cache_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "status", "--cache", str(cache_path), "-o", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["healthy"], status["conditions"][0]["ok"], status["conditions"][0]["since"]) == (
        True,
        True,
        "1970-01-01T00:00:01.000Z",
    )


def test_validate_config_prints_ok_or_each_problem_with_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("ops: {maxBytes: 100Mi, maxDuration: 1h30m}\n")
    bad.write_text("agent: {mode: active}\nops: {maxBytes: lots}\n")
    assert main(["agent", "validate-config", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: OK\n"
    assert main(["agent", "validate-config", str(bad)]) == 1
    assert [line.split(": ", 2)[1] for line in capsys.readouterr().out.splitlines()] == ["agent.mode", "ops.maxBytes"]
    assert main(["agent", "validate-config", str(tmp_path / "none.yaml")]) == 1


def test_completion_scripts_know_every_command() -> None:
    for shell in ("bash", "zsh"):
        done = subprocess.run(
            [sys.executable, "-m", "coral_cli", "completion", shell], capture_output=True, text=True, check=True
        )
        assert all(word in done.stdout for word in ("validate-config", "use-context", "--tls-server-name"))


def test_profile_writes_its_file_with_w_and_o_is_not_a_file_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["profile", "web-1", "-o", "json"])
    assert "the following arguments are required: -w" in capsys.readouterr().err


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
