"""`coral agents|services|audit` against a real colony (in this process, on its own thread): tokens,
grouping, filters, errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import grpc
import grpc.aio
import pytest
import yaml

from coral_base.vocabulary import Scope
from coral_base.wire.coral.colony.v1 import colony_pb2, colony_pb2_grpc
from coral_cli import main
from coral_colony.client import ColonyClient, OperatorEndpoint
from coral_colony.identity import init_colony
from coral_colony.model import Action, OperationRequest, OperationTarget
from coral_colony.tokens import OperatorTokens
from cri_agent.model import Provenance, ServiceInfo
from tests.colony import ColonyThread, enrolling_sync, free_port
from tests.test_sync import svc


def publish(colony: ColonyThread, node: str, services: list[ServiceInfo]) -> None:
    """Enroll and register ``services`` as the node agent of ``node`` would, then leave (no deregistration)."""

    async def register() -> bool:
        sync = enrolling_sync(
            colony.address, colony.directory, node=node, identity_path=colony.directory.parent / f"{node}.json"
        )
        sync.set_services({s.key: replace(s, node_name=node) for s in services}, {})
        task = asyncio.create_task(sync.run())
        await sync.session()  # the colony took the full set
        task.cancel()
        return sync.in_sync

    assert colony.call(register())


@pytest.fixture(autouse=True)
def no_cli_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's own ~/.config/coral/config.yaml plays no part here."""
    monkeypatch.setenv("CORAL_CONFIG", str(tmp_path / "coral-config.yaml"))


@pytest.fixture(scope="module")
def colony(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ColonyThread]:
    thread = ColonyThread(tmp_path_factory.mktemp("operator") / "colony").start()
    publish(thread, "node-a", [svc(1), replace(svc(2), provenance=Provenance.EXPLICIT)])
    publish(thread, "node-b", [replace(svc(3), namespace="billing")])
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def token(colony: ColonyThread) -> str:
    return colony.token("alice")


def coral(colony: ColonyThread, *args: str, token: str = "", ca: Path | None = None) -> list[str]:
    flags = ["--colony", colony.address, "--ca", str(ca or colony.ca)] + (["--token", token] if token else [])
    return [args[0], *flags, *args[1:]]


def test_an_operator_without_a_token_is_refused_and_audited(
    colony: ColonyThread, token: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CORAL_TOKEN", raising=False)
    assert main(coral(colony, "agents")) == 2
    assert "no operator token: pass --token or set CORAL_TOKEN" in capsys.readouterr().err
    assert main(coral(colony, "services", token="coral_forged")) == 2
    assert "does not know this operator token" in capsys.readouterr().err
    refusals = [r["detail"] for r in colony.audit("auth") if r["action"] == "operator.refused"]
    assert any(d.startswith("no token: ") and d.endswith("(from ipv4:127.0.0.1)") for d in refusals)
    assert any(d.startswith("unknown token: ") for d in refusals)


def test_agents_lists_both_nodes(colony: ColonyThread, token: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(coral(colony, "agents", "-o", "json", token=token)) == 0
    agents = json.loads(capsys.readouterr().out)
    assert [(a["node_name"], a["agent_id"], a["kind"], a["state"], a["services"]) for a in agents] == [
        ("node-a", "node-agent-node-a", "node-agent", "healthy", 2),
        ("node-b", "node-agent-node-b", "node-agent", "healthy", 1),
    ]
    assert main(coral(colony, "agents", token=token)) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["NODE", "AGENT", "KIND", "STATE"] and rows[0].startswith("node-a  ")
    assert header.index("AGENT") == rows[0].index("node-agent-node-a")  # aligned like kubectl


def test_services_are_one_flat_table_with_the_node_as_a_column(
    colony: ColonyThread, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(coral(colony, "services", "--no-headers", token=token)) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [(row[0], row[3]) for row in rows] == [("node-a", "web-1"), ("node-a", "web-2"), ("node-b", "web-3")]
    assert main(coral(colony, "services", "--provenance", "explicit", "-o", "json", token=token)) == 0
    [service] = json.loads(capsys.readouterr().out)
    assert (service["node_name"], service["agent_id"], service["name"], service["provenance"]) == (
        "node-a",
        "node-agent-node-a",
        "web-2",
        "explicit",
    )
    assert main(coral(colony, "services", "--node", "node-b", "-n", "billing", "-o", "wide", token=token)) == 0
    out = capsys.readouterr().out
    assert "web-3" in out and "web-1" not in out and "shop/uid-3/app/8080" in out and "POD IP" in out


def test_json_and_yaml_have_real_types_and_one_schema(
    colony: ColonyThread, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(coral(colony, "services", "-o", "json", token=token)) == 0
    service = json.loads(capsys.readouterr().out)[0]
    assert (service["port"], service["stale"], service["provenance"]) == (8080, False, "discovered")
    assert service["first_seen"].endswith("Z") and datetime.fromisoformat(service["first_seen"])
    assert main(coral(colony, "services", "-o", "yaml", token=token)) == 0
    assert yaml.safe_load(capsys.readouterr().out)[0] == service
    assert main(coral(colony, "agents", "-o", "yaml", token=token)) == 0
    agent = yaml.safe_load(capsys.readouterr().out)[0]
    assert (agent["services"], agent["state"]) == (2, "healthy") and isinstance(agent["last_heartbeat"], str)
    assert (agent["enrollment"]["method"], agent["enrollment"]["certificate_not_after"][-1]) == ("secret", "Z")


def test_an_empty_listing_says_so_on_stderr_and_succeeds(
    colony: ColonyThread, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(coral(colony, "services", "--node", "no-such-node", token=token)) == 0
    out, err = capsys.readouterr()
    assert (out, err.splitlines()[-1]) == ("", "No resources found")
    assert main(coral(colony, "services", "--node", "no-such-node", "-o", "json", token=token)) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_audit_shows_registrations_with_node_and_provenance(
    colony: ColonyThread, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(coral(colony, "audit", "--kind", "registration", "--node", "node-a", "-o", "json", token=token)) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [(e["action"], e["service_name"], e["provenance"]) for e in entries] == [
        ("service.registered", "web-1", "discovered"),
        ("service.registered", "web-2", "explicit"),
        ("agent.registered", None, None),
    ]
    assert all(isinstance(e["id"], int) and isinstance(e["detail"], dict) for e in entries)
    assert main(coral(colony, "audit", "--since", "1h30m", token=token)) == 0
    assert "service.registered" in capsys.readouterr().out
    after = entries[1]["id"]
    assert (
        main(coral(colony, "audit", "--kind", "registration", "--since-id", str(after), "-o", "json", token=token)) == 0
    )
    assert all(e["id"] > after for e in json.loads(capsys.readouterr().out))


def test_a_colony_signed_by_another_ca_is_refused_with_a_clear_error(
    colony: ColonyThread, token: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = init_colony(tmp_path / "other", colony_id="other", hosts=["127.0.0.1"])
    assert main(coral(colony, "agents", token=token, ca=other.ca_cert)) == 2
    err = capsys.readouterr().err
    assert f"TLS error with the colony at {colony.address}: its certificate is not signed by {other.ca_cert}" in err


def test_a_fresh_process_reports_a_tls_error_in_one_line_without_grpc_core_logs(
    colony: ColonyThread, token: str, tmp_path: Path
) -> None:
    other = init_colony(tmp_path / "other", colony_id="other", hosts=["127.0.0.1"])
    env = {**os.environ, "CORAL_TOKEN": token, "CORAL_CONFIG": str(tmp_path / "none.yaml")}
    env.pop("GRPC_VERBOSITY", None)
    command = [sys.executable, "-m", "coral_cli", "agents", "--colony", colony.address, "--ca", str(other.ca_cert)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=Path.cwd(), check=False)
    assert done.returncode == 2
    assert [line.split(":", 2)[:2] for line in done.stderr.splitlines()] == [
        ["error", " TLS error with the colony at 127.0.0.1"]
    ]


def test_an_unreachable_colony_exits_1_and_says_so(
    colony: ColonyThread, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["agents", "--colony", f"127.0.0.1:{free_port()}", "--ca", str(colony.ca), "--token", token]
    assert main(args) == 1
    assert "is unreachable: is `coral colony start` running there?" in capsys.readouterr().err


def test_a_missing_ca_is_a_configuration_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CORAL_COLONY_CA", raising=False)
    assert main(["agents", "--token", "x"]) == 2
    assert "pass --ca DIR/ca.crt, set CORAL_COLONY_CA" in capsys.readouterr().err


def test_a_read_token_cannot_tap_and_the_refusal_names_the_scope(
    colony: ColonyThread, capsys: pytest.CaptureFixture[str]
) -> None:
    reader = colony.token("rita", scopes={Scope.READ})
    assert main(coral(colony, "services", token=reader)) == 0
    capsys.readouterr()
    assert main(coral(colony, "tap", "web-1", "-w", "-", token=reader)) == 2
    assert "token 'rita' lacks the operate scope (it has: read)" in capsys.readouterr().err
    assert main(coral(colony, "audit", token=reader)) == 2
    assert "lacks the audit scope" in capsys.readouterr().err
    refusals = [r for r in colony.audit("auth") if r["actor"] == "rita"]
    assert {r["detail"].rsplit(": ", 1)[-1] for r in refusals} == {
        "RunOperation (from ipv4:127.0.0.1)",
        "QueryAudit (from ipv4:127.0.0.1)",
    }


def test_a_namespace_token_sees_and_operates_only_in_its_namespaces(
    colony: ColonyThread, capsys: pytest.CaptureFixture[str]
) -> None:
    billing = colony.token("bill", scopes={Scope.READ, Scope.OPERATE, Scope.AUDIT}, namespaces=["billing"])
    assert main(coral(colony, "services", "-o", "json", token=billing)) == 0
    assert [s["namespace"] for s in json.loads(capsys.readouterr().out)] == ["billing"]
    assert main(coral(colony, "services", "-n", "shop", token=billing)) == 2
    assert "limited to namespace(s) billing: shop is outside them" in capsys.readouterr().err
    for target in ("shop/web-1", "shop/no-such-pod", "web-1"):  # by pod, one that is not there, by service name
        assert main(coral(colony, "tap", target, "-w", "-", token=billing)) == 2
        assert "limited to namespace(s) billing: shop is outside them" in capsys.readouterr().err
    assert main(coral(colony, "audit", "-o", "json", token=billing)) == 0
    assert {e["namespace"] for e in json.loads(capsys.readouterr().out)} <= {"billing"}


def test_a_bootstrap_token_calls_nothing_and_whoami_shows_scopes(
    colony: ColonyThread, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = OperatorTokens(colony.directory).create("nodes", scopes={Scope.ENROLL}, ttl_s=3600)
    assert main(coral(colony, "agents", token=nodes)) == 2
    assert "is a bootstrap token: it enrolls agents and calls nothing else" in capsys.readouterr().err
    shop = colony.token("sam", scopes={Scope.READ, Scope.OPERATE}, namespaces=["shop"])
    assert main(coral(colony, "whoami", "-o", "json", token=shop)) == 0
    assert json.loads(capsys.readouterr().out) == {
        "name": "sam",
        "scopes": ["operate", "read"],
        "namespaces": ["shop"],
        "expires": None,
    }


def test_token_on_the_command_line_warns_and_a_huge_audit_limit_is_capped(
    colony: ColonyThread, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(coral(colony, "audit", "--limit", str(2**32 - 1), "-o", "json", token=token)) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)) <= 10_000
    assert "--token puts the token in this command's arguments" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--duration", "nan"], "argument --duration: 'nan' is not a duration (e.g. 500ms, 30s, 5m, 1h30m)"),
        (["--filter", "port 80 or " * 200], "characters, over the limit of 1024"),
    ],
)
def test_malformed_operations_are_refused_before_they_travel(
    colony: ColonyThread, token: str, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) if flags[0] == "--duration" else contextlib.nullcontext():
        code = main(coral(colony, "sample", "web-1", *flags, token=token))
        assert code == 2
    assert message in capsys.readouterr().err


def test_the_colony_refuses_a_non_finite_duration_from_any_client(colony: ColonyThread, token: str) -> None:
    async def call() -> grpc.StatusCode:
        credentials = grpc.ssl_channel_credentials(colony.ca.read_bytes())
        async with grpc.aio.secure_channel(colony.address, credentials) as channel:
            request = colony_pb2.RunOperationRequest(action="sample", target="web-1", duration_s=float("nan"))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in colony_pb2_grpc.ColonyStub(channel).RunOperation(
                    request, metadata=(("authorization", f"Bearer {token}"),)
                ):
                    pass
            assert "duration nans is not a positive number of seconds" in str(refused.value.details())
            return refused.value.code()

    assert asyncio.run(call()) == grpc.StatusCode.INVALID_ARGUMENT


def test_an_operation_routed_to_its_agent_is_audited_as_started_before_it_ends(
    colony: ColonyThread, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """agent-a holds no control stream: the operation fails, and its start was recorded before that."""
    assert main(coral(colony, "sample", "web-1", "--duration", "1s", token=token)) != 0
    capsys.readouterr()
    entries = [e for e in colony.audit("operation") if e["pod_name"] == "web-1"][-2:]
    details = [json.loads(e["detail"]) for e in entries]
    assert [e["action"] for e in entries] == ["operation.started", "sample"]
    assert details[0]["request_id"] == details[1]["request_id"] and details[1]["outcome"] == "failed"


def test_a_certificate_name_mismatch_is_a_tls_error_and_tls_server_name_fixes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented port-forward path: the colony's certificate names its Service, the operator dials 127.0.0.1."""
    init_colony(tmp_path / "in-cluster", colony_id="in-cluster", hosts=["coral-colony.coral.svc"])
    forwarded = ColonyThread(tmp_path / "in-cluster").start()
    try:
        monkeypatch.setenv("CORAL_TOKEN", forwarded.token("alice"))
        flags = ["--colony", forwarded.address, "--ca", str(forwarded.ca)]
        assert main(["agents", *flags]) == 2
        err = capsys.readouterr().err
        assert "its certificate does not name 127.0.0.1 (it names coral-colony.coral.svc)" in err
        assert "pass --tls-server-name" in err and "unreachable" not in err
        assert main(["agents", *flags, "--tls-server-name", "coral-colony.coral.svc"]) == 0
    finally:
        forwarded.stop()


def test_a_colony_that_never_answers_is_given_up_after_the_request_timeout(
    colony: ColonyThread, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as silent:  # listens, never speaks TLS
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        code = main(["agents", "--colony", address, "--ca", str(colony.ca), "--request-timeout", "300ms"])
        waited = time.monotonic() - started
    assert (code, waited < 5) == (1, True)
    assert f"the colony at {address} did not answer within 0.3s" in capsys.readouterr().err


def test_contexts_hold_the_connection_and_the_environment_wins_over_them(
    colony: ColonyThread,
    token: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("CORAL_COLONY", "CORAL_COLONY_CA", "CORAL_TOKEN", "CORAL_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    token_file = tmp_path / "alice.token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    set_context = ["config", "set-context", "test", "--colony", colony.address, "--ca", str(colony.ca)]
    assert main([*set_context, "--token-file", str(token_file)]) == 0
    assert main(["config", "set-context", "elsewhere", "--colony", f"127.0.0.1:{free_port()}"]) == 0
    assert main(["config", "current-context"]) == 0  # the first context made is the current one
    assert capsys.readouterr().out.splitlines()[-1] == "test"
    assert main(["whoami", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "alice"
    assert main(["config", "use-context", "elsewhere"]) == 0
    assert main(["config", "get-contexts", "--no-headers"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [row[:2] for row in rows] == [["test", colony.address], ["*", "elsewhere"]]
    monkeypatch.setenv("CORAL_COLONY", colony.address)  # the environment wins, setting by setting
    monkeypatch.setenv("CORAL_COLONY_CA", str(colony.ca))
    monkeypatch.setenv("CORAL_TOKEN_FILE", str(token_file))
    assert main(["whoami"]) == 0
    monkeypatch.delenv("CORAL_COLONY")
    assert main(["whoami", "--context", "test"]) == 0
    assert main(["whoami", "--context", "nope"]) == 2
    assert "no context 'nope'" in capsys.readouterr().err


def test_services_watch_prints_the_listing_then_what_changes_and_ends_cleanly_on_ctrl_c(
    colony: ColonyThread, token: str, tmp_path: Path
) -> None:
    """A fresh process, as an operator runs it: no gRPC C-core lines, no traceback on Ctrl-C."""
    token_file = tmp_path / "token"
    token_file.write_text(token)
    command = [sys.executable, "-m", "coral_cli", *coral(colony, "services", "--watch", "--watch-interval", "100ms")]
    command += ["--token-file", str(token_file)]
    env = {**os.environ, "CORAL_CONFIG": str(tmp_path / "none.yaml"), "PYTHONPATH": str(Path.cwd())}
    watcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert watcher.stdout is not None
        lines = [watcher.stdout.readline() for _ in range(4)]  # the header and the three services
        assert lines[0].split()[:2] == ["NODE", "NAMESPACE"]
        publish(colony, "node-c", [replace(svc(4), namespace="watched")])
        assert watcher.stdout.readline().split()[:2] == ["node-c", "watched"]  # only what changed, no header
    finally:
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=10)
    assert (watcher.returncode, err) == (0, "")


def test_a_token_file_holding_more_than_the_token_says_so(
    colony: ColonyThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    noisy = tmp_path / "token"
    noisy.write_text("token for alice (shown once):\n  abcdef\n")  # the create command's output without --quiet
    assert main(["services", "--colony", colony.address, "--ca", str(colony.ca), "--token-file", str(noisy)]) == 2
    assert "holds more than one token" in capsys.readouterr().err


def test_the_colony_tells_the_operator_which_node_runs_the_operation(colony: ColonyThread, token: str) -> None:
    endpoint = OperatorEndpoint(address=colony.address, ca_file=colony.ca, token=token)
    with ColonyClient(endpoint) as client:
        stream = client.run_operation(OperationRequest(action=Action.SAMPLE, target="web-1", duration_s=1.0))
        try:
            part, first = next(iter(stream))
        finally:
            stream.close()
    assert part == 0 and isinstance(first, OperationTarget) and (first.pod_name, first.node_name) == ("web-1", "node-a")
