"""Two nodes, one colony: real containerd per node, real agents, a real colony process.

Each node is a private containerd with its own CNI bridge and its own
``coral agent node`` process; both register into one ``coral colony start``
process over TLS. The colony's registry is compared to the truth: the
union of what each agent's cache holds.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from pathlib import Path

import grpc
import pytest
import yaml

from coral_base.vocabulary import EnrollMethod
from coral_base.wire.coral.identity.v1 import identity_pb2_grpc
from coral_base.wire.coral.mesh.v1 import mesh_pb2, mesh_pb2_grpc
from coral_cli import main
from cri_agent import colony_codec
from cri_agent.keygen import key_and_request
from integration.harness.agent import AgentProcess
from integration.harness.colony import ColonyProcess
from integration.harness.containerd import PrivateContainerd
from integration.harness.images import ImageSet
from integration.harness.pods import ContainerSpec, Pod, PodFactory, PortSpec

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / ".cache" / "artifacts"
HTTPD = ContainerSpec("web", ("httpd", "-f", "-p", "8080", "-h", "/www"), ports=(PortSpec(8080, name="http"),))
OUTAGE_S = 30.0


@dataclass
class Node:
    name: str
    runtime: PrivateContainerd
    pods: PodFactory
    agent: AgentProcess

    def web(self, name: str, namespace: str = "shop", **kwargs: object) -> Pod:
        return self.pods.create_pod(name, namespace=namespace, containers=(HTTPD,), **kwargs)  # type: ignore[arg-type]

    def truth(self) -> dict[str, tuple[str, str]]:
        return {s.key: (self.name, s.pod_ip) for s in self.agent.services()}


def agent_config(path: Path, colony: ColonyProcess, **colony_changes: object) -> Path:
    config = {
        "colony": colony.agent_settings(**colony_changes),
        "discovery": {"kubernetes": {"resyncInterval": "30s"}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def colony(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ColonyProcess]:
    process = ColonyProcess(tmp_path_factory.mktemp("colony") / "colony", heartbeat_timeout=5.0).start()
    yield process
    assert process.stop() == 0, process.log()[-3000:]
    assert process.secret_file.read_text().strip() not in process.log()


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory, harness_images: ImageSet, colony: ColonyProcess
) -> Iterator[tuple[Node, Node]]:
    started: list[Node] = []
    try:
        for name in ("node-a", "node-b"):
            directory = tmp_path_factory.mktemp(name)
            runtime = PrivateContainerd(directory / "ctrd", images=harness_images).start()
            pods = PodFactory(runtime)
            agent = AgentProcess(
                cri_socket=runtime.socket_path,
                cache=directory / "agent.db",
                node_name=name,
                extra_args=["--config", str(agent_config(directory / "agent.yaml", colony))],
            )
            started.append(Node(name, runtime, pods, agent))
            agent.start()
        yield started[0], started[1]
    finally:
        for node in started:
            if node.agent.alive():
                assert node.agent.stop() == 0, node.agent.log_tail()
            secret = colony.secret_file.read_text().strip()
            assert secret not in node.agent.log_path.read_text()
            node.pods.close()
            node.runtime.stop()


def registry(colony: ColonyProcess, *, fresh_only: bool = True) -> dict[str, tuple[str, str]]:
    return {r["key"]: (r["node_name"], r["pod_ip"]) for r in colony.services() if not (fresh_only and r["stale"])}


def truth(*nodes: Node) -> dict[str, tuple[str, str]]:
    return {key: value for node in nodes for key, value in node.truth().items()}


def settle(*nodes: Node) -> None:
    """One complete reconcile on every node after everything done so far."""
    markers = [
        (node.agent, node.pods.create_pod(f"settle-{time.monotonic_ns()}", namespace="settle")) for node in nodes
    ]
    for agent, marker in markers:
        agent.wait_for(lambda: agent.service_by_pod(marker.uid), timeout=10, what="the settle marker")  # noqa: B023


def converged(colony: ColonyProcess, nodes: tuple[Node, Node], timeout: float = 20.0) -> dict[str, tuple[str, str]]:
    settle(*nodes)
    colony.wait_for(
        lambda: registry(colony) == truth(*nodes) != {},
        timeout=timeout,
        what="the colony's registry to equal the agents' truth",
    )
    return registry(colony)


def test_two_nodes_register_into_one_colony_each_service_carrying_its_node(
    colony: ColonyProcess, nodes: tuple[Node, Node]
) -> None:
    a, b = nodes
    web_a, web_b = a.web("cart-0"), b.web("ledger-0", namespace="billing")
    services = converged(colony, nodes)
    by_pod = {
        r["pod_name"]: (r["node_name"], r["namespace"], r["provenance"], r["agent_id"]) for r in colony.services()
    }
    assert by_pod["cart-0"] == ("node-a", "shop", "discovered", "node-agent-node-a")
    assert by_pod["ledger-0"] == ("node-b", "billing", "discovered", "node-agent-node-b")
    assert {r["agent_id"]: (r["kind"], r["node_name"], r["state"]) for r in colony.agents()} == {
        "node-agent-node-a": ("node-agent", "node-a", "healthy"),
        "node-agent-node-b": ("node-agent", "node-b", "healthy"),
    }
    assert {node for node, _ in services.values()} == {"node-a", "node-b"}
    ips = {r["pod_name"]: r["pod_ip"] for r in colony.services()}
    assert ip_address(ips["cart-0"]) in ip_network(a.runtime.subnet)
    assert ip_address(ips["ledger-0"]) in ip_network(b.runtime.subnet)
    added = {(r["pod_name"], r["node_name"]) for r in colony.audit("discovery") if r["action"] == "added"}
    assert {("cart-0", "node-a"), ("ledger-0", "node-b")} <= added
    a.pods.delete_pod(web_a)
    b.pods.delete_pod(web_b)


def test_colony_killed_for_30s_while_pods_come_and_go_then_registry_equals_truth(
    colony: ColonyProcess, nodes: tuple[Node, Node]
) -> None:
    a, b = nodes
    doomed_a, doomed_b = a.web("doomed-a"), b.web("doomed-b")
    converged(colony, nodes)
    last_id = max((r["id"] for r in colony.audit()), default=0)

    colony.kill()
    down = time.monotonic()
    created: list[tuple[Node, Pod]] = []
    for step in range(3):  # pods come and go while the colony is away
        created.append((a, a.web(f"outage-a-{step}")))
        created.append((b, b.web(f"outage-b-{step}")))
        time.sleep(OUTAGE_S / 6)
    a.pods.delete_pod(doomed_a)
    b.pods.delete_pod(doomed_b)
    short_lived = a.web("short-lived")
    time.sleep(1.0)
    a.pods.delete_pod(short_lived)
    settle(a, b)
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))
    assert not a.agent.conditions()["colony"][0]  # the agents noticed and kept discovering

    colony.start()
    final = converged(colony, nodes)
    pods_in_colony = {r["pod_name"] for r in colony.services()}
    assert {p.name for _, p in created} <= pods_in_colony
    assert not {"doomed-a", "doomed-b", "short-lived"} & pods_in_colony
    assert len(final) == len(truth(a, b))
    # Exactly the net change: each pod of the outage registered once, no duplicate audit rows.
    registered = [
        r["pod_name"] for r in colony.audit("registration") if r["id"] > last_id and r["action"] == "service.registered"
    ]
    assert sorted(p for p in registered if p.startswith("outage-")) == sorted(p.name for _, p in created)
    reported = [(r["action"], r["pod_name"]) for r in colony.audit("discovery") if r["id"] > last_id]
    assert reported.count(("added", "short-lived")) == 1 and reported.count(("removed", "short-lived")) == 1
    for node, pod in created:
        node.pods.delete_pod(pod)


def test_colony_restarted_with_its_database_deleted_gets_every_service_again(
    colony: ColonyProcess, nodes: tuple[Node, Node]
) -> None:
    before = converged(colony, nodes)
    assert colony.stop() == 0
    for suffix in ("", "-wal", "-shm"):
        Path(f"{colony.database}{suffix}").unlink(missing_ok=True)
    colony.start()
    colony.wait_for(lambda: registry(colony) == before, timeout=20, what="full re-registration")
    assert registry(colony) == before == truth(*nodes)
    assert {r["action"] for r in colony.audit("registration")} == {"service.registered", "agent.registered"}


def test_a_colony_with_an_audit_retention_prunes_what_is_past_it_and_audits_that(
    colony: ColonyProcess, nodes: tuple[Node, Node]
) -> None:
    converged(colony, nodes)
    assert colony.stop() == 0
    stopped = time.time()
    time.sleep(1.5)
    colony.extra_args = ["--audit-retention", "1s"]
    try:
        colony.start()
        [pruned] = colony.wait_for(lambda: colony.audit("retention"), timeout=10, what="the pruning entry")
        assert pruned["action"] == "audit.pruned" and pruned["actor"] == "colony", pruned
        assert [r for r in colony.audit() if r["time"] < stopped] == []  # everything from before the restart
        colony.wait_for(lambda: registry(colony) == truth(*nodes), timeout=20, what="agents back")
    finally:
        colony.extra_args = []
        colony.stop()
        colony.start()


def test_a_failing_health_endpoint_turns_unhealthy_in_the_colony_within_two_intervals(
    colony: ColonyProcess, nodes: tuple[Node, Node]
) -> None:
    a, _ = nodes
    pod = a.web("checked", annotations={"coral.io/health-endpoint": "/healthz", "coral.io/health-interval": "1s"})

    def colony_health() -> str:
        return next((r["health_state"] for r in colony.services() if r["pod_name"] == "checked"), "absent")

    colony.wait_for(lambda: colony_health() == "healthy", timeout=15, what="healthy in the colony")
    healthz = Path(f"/proc/{a.pods.container_pid(pod.container_ids[0])}/root/www/healthz")
    healthz.unlink()  # httpd answers 404 from now on
    broke = time.monotonic()
    colony.wait_for(lambda: colony_health() == "unhealthy", timeout=10, what="unhealthy in the colony")
    to_unhealthy = time.monotonic() - broke
    error = next(r["health_error"] for r in colony.services() if r["pod_name"] == "checked")
    healthz.write_text("ok\n")
    fixed = time.monotonic()
    colony.wait_for(lambda: colony_health() == "healthy", timeout=10, what="healthy again in the colony")
    to_healthy = time.monotonic() - fixed
    a.pods.delete_pod(pod)
    assert (to_unhealthy < 2.0, to_healthy < 2.0) == (True, True), (to_unhealthy, to_healthy)
    assert "404" in error


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("secret", "check the agent's colony Secret"),
        ("ca", "TLS handshake with the colony"),
    ],
)
def test_an_agent_with_a_wrong_secret_or_ca_is_rejected_with_a_clear_error(
    colony: ColonyProcess, nodes: tuple[Node, Node], tmp_path: Path, change: str, expected: str
) -> None:
    a, _ = nodes
    if change == "secret":
        (tmp_path / "wrong-secret").write_text("not-the-colony-secret\n")
        overrides = {"secretFile": str(tmp_path / "wrong-secret")}
    else:
        impostor = ColonyProcess(tmp_path / "impostor", colony_id=colony.colony_id)  # init only: another CA
        overrides = {"caFile": str(impostor.ca)}
    intruder = AgentProcess(
        cri_socket=a.runtime.socket_path,
        cache=tmp_path / "intruder.db",
        node_name="intruder",
        extra_args=["--config", str(agent_config(tmp_path / "intruder.yaml", colony, **overrides))],
    ).start()
    try:
        ok, reason, _ = intruder.wait_for(
            lambda: intruder.conditions().get("colony"), timeout=10, what="the colony condition"
        )
        assert (ok, expected in reason) == (False, True), reason
        assert "node-agent-intruder" not in {r["agent_id"] for r in colony.agents()}
        assert expected in intruder.log_tail(200)
    finally:
        assert intruder.stop() == 0
    if change == "secret":
        refused = [r for r in colony.audit("auth") if r["action"] == "agent.enrollment_refused"]
        assert refused and refused[-1]["agent_id"] == "node-agent-intruder"


def test_the_colony_secret_can_neither_impersonate_nor_re_enroll_an_enrolled_node(
    colony: ColonyProcess, nodes: tuple[Node, Node]
) -> None:
    """Whoever holds the secret (any node) tries the review's attacks on node-b's agent: Register as it with
    the secret, then enroll node-b with a key of its own. Both are refused; node-b's services are as they were."""
    _, b = nodes
    b.web("victim-0")
    converged(colony, nodes)
    victim = next(r for r in colony.services() if r["pod_name"] == "victim-0")
    secret = colony.secret_file.read_text().strip()

    async def attack() -> tuple[grpc.StatusCode, grpc.StatusCode]:
        credentials = grpc.ssl_channel_credentials(root_certificates=colony.ca.read_bytes())
        async with grpc.aio.secure_channel(colony.address, credentials) as channel:
            forged = mesh_pb2.ServiceInfo(
                service_key=victim["key"], component_name="hijacked", port=8080, pod_ip="10.99.0.1", node_name="node-b"
            )
            as_victim = mesh_pb2.RegisterRequest(
                agent_id="node-agent-node-b",
                colony_id=colony.colony_id,
                colony_secret=secret,
                node_name="node-b",
                services=[forged],
            )
            with pytest.raises(grpc.aio.AioRpcError) as register:
                await mesh_pb2_grpc.MeshStub(channel).Register(as_victim, timeout=5)
            made = key_and_request("node-b")
            enroll = colony_codec.enroll_request(
                colony_id=colony.colony_id,
                node_name="node-b",
                csr_pem=made["csr_pem"],
                method=EnrollMethod.SECRET,
                credential=secret,
                version="rogue",
            )
            with pytest.raises(grpc.aio.AioRpcError) as enrolled:
                await identity_pb2_grpc.EnrollmentStub(channel).Enroll(enroll, timeout=5)
            return register.value.code(), enrolled.value.code()

    assert asyncio.run(attack()) == (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.ALREADY_EXISTS)
    after = next(r for r in colony.services() if r["key"] == victim["key"])
    assert (after["agent_id"], after["component_name"], after["pod_ip"]) == (
        victim["agent_id"],
        victim["component_name"],
        victim["pod_ip"],
    )
    refusals = [r for r in colony.audit("auth") if r["action"] == "agent.enrollment_refused"]
    assert refusals and "node node-b is enrolled to another key" in refusals[-1]["detail"]


def test_an_operator_needs_a_token_and_then_sees_services_with_their_node(
    colony: ColonyProcess, nodes: tuple[Node, Node], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    converged(colony, nodes)
    monkeypatch.delenv("CORAL_TOKEN", raising=False)
    monkeypatch.setenv("CORAL_COLONY", colony.address)
    monkeypatch.setenv("CORAL_COLONY_CA", str(colony.ca))
    assert main(["services"]) == 2
    assert "no operator token" in capsys.readouterr().err
    monkeypatch.setenv("CORAL_TOKEN", colony.token("integration-operator"))
    assert main(["services"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[0] == "NODE" and {row.split()[0] for row in rows} == {"node-a", "node-b"}
    assert main(["audit", "--kind", "auth"]) == 0
    assert "operator.refused" in capsys.readouterr().out


def test_the_status_page_renders_both_nodes_services_in_chromium(
    colony: ColonyProcess, nodes: tuple[Node, Node]
) -> None:
    a, b = nodes
    a.web("storefront-0", annotations={"coral.io/type": "http"})  # overridden provenance
    b.web("ledger-1", namespace="billing")
    converged(colony, nodes)
    chromium = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    dom = subprocess.run([*chromium, "--dump-dom", colony.web_url + "/"], capture_output=True, text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'data-node="node-a"' in html and 'data-node="node-b"' in html
    assert html.index('data-node="node-a"') < html.index("storefront-0") < html.index('data-node="node-b"')
    assert html.index('data-node="node-b"') < html.index("ledger-1")
    assert "badge prov-overridden" in html and "badge prov-discovered" in html
    filtered = subprocess.run(
        [*chromium, "--dump-dom", colony.web_url + "/?provenance=overridden"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "storefront-0" in filtered and "ledger-1" not in filtered and 'data-node="node-b"' not in filtered
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "status-page.png"
    screenshot.unlink(missing_ok=True)
    shot = subprocess.run(
        [*chromium, "--hide-scrollbars", "--window-size=1400,1000", f"--screenshot={screenshot}", colony.web_url + "/"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
