"""ServiceAccount enrollment end to end: a real colony process checks real projected tokens with a real
kube-apiserver's TokenReview, under the chart's own RBAC for the colony.

The apiserver signs tokens as the kubelet would get them for a projected
volume (``kubectl create token --bound-object-kind Pod``: TokenRequest bound
to a pod of a node, which puts the node in the token on Kubernetes >= 1.30).
The agent's side is the agent's own enrollment code (``AgentIdentity`` with a
``SERVICE_ACCOUNT`` credential re-read from a token file), over TLS on loopback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from coral_base.clock import SYSTEM_CLOCK
from coral_base.vocabulary import EnrollMethod
from cri_agent.enrollment import AgentIdentity, Credential
from cri_agent.identity import Identity
from integration.chart_render import docs, render
from integration.harness.colony import ColonyProcess
from integration.harness.kube import ControlPlane

NAMESPACE = "coral-system"
AGENTS = "coral-node-agent"  # the chart's agent ServiceAccount (release coral-node-agent)
AUDIENCE = "coral-colony"


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> ControlPlane:
    """Nodes, the agents' and an intruder's ServiceAccounts, and the chart's RBAC for its colony."""
    plane = control_plane
    objects: list[dict[str, object]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]
    objects += [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"sa-node-{n}"}} for n in "abcdef"]
    objects += [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": NAMESPACE}}
        for name in (AGENTS, "intruder")
    ]
    plane.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    rendered = render("colony.enabled=true", "colony.enrollment.method=serviceAccount", release="coral-node-agent")
    rbac = [
        d
        for d in docs(rendered)
        if d["kind"] in {"ClusterRole", "ClusterRoleBinding"}
        and d["metadata"]["labels"].get("app.kubernetes.io/component") == "colony"
    ]
    assert len(rbac) == 2
    plane.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac}))
    return plane


def pod_token(
    plane: ControlPlane, pod: str, *, node: str, account: str = AGENTS, audience: str = AUDIENCE, bound: bool = True
) -> str:
    """A token of ``account`` for ``audience``, bound to a pod on ``node`` as a projected volume's is."""
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod, "namespace": NAMESPACE},
        "spec": {
            "nodeName": node,
            "serviceAccountName": account,
            "automountServiceAccountToken": False,
            "containers": [{"name": "agent", "image": "coral-cri-agent"}],
        },
    }
    plane.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    binding = ["--bound-object-kind", "Pod", "--bound-object-name", pod] if bound else []
    return plane.kubectl("create", "token", account, "-n", NAMESPACE, "--audience", audience, *binding).strip()


@pytest.fixture(scope="module")
def colony(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ColonyProcess]:
    """A colony enrolling the agents' ServiceAccount, checking tokens as the chart's colony account."""
    process = ColonyProcess(tmp_path_factory.mktemp("sa-colony") / "colony")
    process.extra_args = [
        "--enroll-service-account",
        f"{NAMESPACE}/{AGENTS}",
        "--kubeconfig",
        str(cluster.kubeconfig("colony")),
    ]
    process.start()
    yield process
    assert process.stop() == 0, process.log()[-3000:]


def enroll(colony: ColonyProcess, token: str, *, node: str, directory: Path) -> Identity | grpc.aio.AioRpcError:
    """The agent's enrollment with ``token`` in its projected file, as node ``node``."""
    token_file = directory / "token"
    token_file.write_text(token)
    agent = AgentIdentity(
        directory / "identity.json",
        address=colony.address,
        ca_pem=colony.ca.read_bytes(),
        colony_id=colony.colony_id,
        node_name=node,
        version="test",
        credential=Credential(EnrollMethod.SERVICE_ACCOUNT, "", token_file=token_file),
        clock=SYSTEM_CLOCK,
        timeout_s=15.0,
    )
    try:
        return asyncio.run(agent.ensure())
    except grpc.aio.AioRpcError as exc:
        return exc


def refused_as(colony: ColonyProcess, answer: Identity | grpc.aio.AioRpcError, *, node: str) -> str:
    """The refusal's message, after checking the agent was told UNAUTHENTICATED and the colony audited it."""
    assert isinstance(answer, grpc.aio.AioRpcError), answer
    assert answer.code() == grpc.StatusCode.UNAUTHENTICATED, answer.details()
    audited = [e for e in colony.audit("auth") if e["action"] == "agent.enrollment_refused" and e["node_name"] == node]
    assert audited, colony.audit("auth")
    details = answer.details() or ""
    assert audited[-1]["detail"].startswith(details.removeprefix("enrollment refused: ")[:100])
    return details


def test_a_token_bound_to_a_pod_on_node_a_enrolls_node_a(
    colony: ColonyProcess, cluster: ControlPlane, tmp_path: Path
) -> None:
    token = pod_token(cluster, "agent-a", node="sa-node-a")
    identity = enroll(colony, token, node="sa-node-a", directory=tmp_path)
    assert isinstance(identity, Identity), identity
    assert identity.agent_id == "node-agent-sa-node-a" and identity.enrolled
    [enrollment] = [e for e in colony.enrollments() if e["node_name"] == "sa-node-a"]
    assert enrollment["method"] == "service-account"
    assert enrollment["credential"] == f"system:serviceaccount:{NAMESPACE}:{AGENTS} pod {NAMESPACE}/agent-a"
    assert token not in colony.log() and token.split(".")[2] not in colony.log()


def test_the_same_token_presented_for_another_node_is_refused_and_audited(
    colony: ColonyProcess, cluster: ControlPlane, tmp_path: Path
) -> None:
    token = pod_token(cluster, "agent-b", node="sa-node-b")
    answer = enroll(colony, token, node="sa-node-c", directory=tmp_path)
    assert "is bound to node 'sa-node-b', not 'sa-node-c'" in refused_as(colony, answer, node="sa-node-c")


def test_a_token_of_another_service_account_is_refused_and_audited(
    colony: ColonyProcess, cluster: ControlPlane, tmp_path: Path
) -> None:
    token = pod_token(cluster, "intruder-d", node="sa-node-d", account="intruder")
    answer = enroll(colony, token, node="sa-node-d", directory=tmp_path)
    message = refused_as(colony, answer, node="sa-node-d")
    assert f"system:serviceaccount:{NAMESPACE}:intruder is not a ServiceAccount this colony enrolls" in message


def test_a_token_for_another_audience_is_refused_and_audited(
    colony: ColonyProcess, cluster: ControlPlane, tmp_path: Path
) -> None:
    token = pod_token(cluster, "agent-e", node="sa-node-e", audience="https://kubernetes.default.svc")
    answer = enroll(colony, token, node="sa-node-e", directory=tmp_path)
    assert "did not authenticate the ServiceAccount token" in refused_as(colony, answer, node="sa-node-e")


def test_a_token_bound_to_no_pod_names_no_node_and_is_refused(
    colony: ColonyProcess, cluster: ControlPlane, tmp_path: Path
) -> None:
    token = pod_token(cluster, "agent-f", node="sa-node-f", bound=False)
    answer = enroll(colony, token, node="sa-node-f", directory=tmp_path)
    assert "names no node" in refused_as(colony, answer, node="sa-node-f")


def test_the_token_of_a_deleted_pod_is_refused(colony: ColonyProcess, cluster: ControlPlane, tmp_path: Path) -> None:
    token = pod_token(cluster, "agent-gone", node="sa-node-f")
    cluster.kubectl("delete", "pod", "-n", NAMESPACE, "agent-gone", "--grace-period=0", "--force")
    answer = enroll(colony, token, node="sa-node-f", directory=tmp_path)
    assert "did not authenticate the ServiceAccount token" in refused_as(colony, answer, node="sa-node-f")


def test_a_colony_whose_identity_may_not_create_tokenreviews_refuses_and_says_what_to_grant(
    cluster: ControlPlane, tmp_path: Path
) -> None:
    token = pod_token(cluster, "agent-a2", node="sa-node-a")
    unbound = ColonyProcess(tmp_path / "colony")
    unbound.extra_args = [
        "--enroll-service-account",
        f"{NAMESPACE}/{AGENTS}",
        "--kubeconfig",
        str(cluster.kubeconfig("nobody")),
    ]
    unbound.start()
    try:
        message = refused_as(unbound, enroll(unbound, token, node="sa-node-a", directory=tmp_path), node="sa-node-a")
    finally:
        unbound.stop()
    assert "HTTP 403" in message and "create` on tokenreviews" in message
    assert '"enrollment.token_review_failed"' in unbound.log()
