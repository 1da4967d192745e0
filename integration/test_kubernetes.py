"""The agent with a real kube-apiserver: enrichment under the shipped RBAC, 403, and the API fallback.

The API objects are created as controllers would leave them (no
controller manager runs): a Deployment, its ReplicaSet, and pods bound to a
node. Pods that also exist in containerd are created there with the same
UID, as kubelet does; for pods that exist only in the API, kwok plays
kubelet and marks them Running with an IP.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from integration.conftest import AgentFactory
from integration.harness.agent import AgentProcess
from integration.harness.colony import ColonyProcess
from integration.harness.kube import KUBE_BIN, ControlPlane
from integration.harness.pods import ContainerSpec, PodFactory, PortSpec

REPO = Path(__file__).resolve().parent.parent
HTTPD = ContainerSpec("web", ("httpd", "-f", "-p", "8080", "-h", "/www"), ports=(PortSpec(8080, name="http"),))
NODE = "test-node"  # the harness agents' default node name


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> ControlPlane:
    control_plane.kubectl("apply", "-f", "-", input=_namespaces())
    control_plane.kubectl("apply", "-f", str(REPO / "deploy" / "rbac.yaml"))
    for name, zone in ((NODE, "zone-a"), ("other-node", "zone-b")):
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
        }
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(node))
    return control_plane


def _namespaces() -> str:
    return yaml.safe_dump_all(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in ("coral-system", "shop")
    )


def apply(plane: ControlPlane, manifest: dict[str, object]) -> dict[str, object]:
    out = plane.kubectl("apply", "-o", "json", "-f", "-", input=json.dumps(manifest))
    return dict(json.loads(out))


def deployment_pod(plane: ControlPlane, pod_name: str, *, deployment: str, node: str = NODE) -> dict[str, object]:
    """Deployment -> ReplicaSet -> Pod bound to ``node``, with owner references as controllers write them."""
    labels = {"app": deployment, "pod-template-hash": "7d4b9c6f5d"}
    template = {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "web", "image": "busybox"}]}}
    dep = apply(plane, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": deployment, "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": deployment}}, "template": template},
    })  # fmt: skip
    rs_name = f"{deployment}-7d4b9c6f5d"
    rs = apply(plane, {
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {
            "name": rs_name, "namespace": "shop", "labels": labels,
            "ownerReferences": [_owner(dep, "apps/v1", "Deployment")],
        },
        "spec": {"selector": {"matchLabels": labels}, "template": template},
    })  # fmt: skip
    return api_pod(plane, pod_name, node=node, labels=labels, owner=_owner(rs, "apps/v1", "ReplicaSet"))


def cronjob_pod(plane: ControlPlane, cronjob: str, *, node: str) -> dict[str, object]:
    """CronJob -> Job -> Pod bound to ``node``, as the CronJob and Job controllers write them."""
    pod_spec = {"restartPolicy": "Never", "containers": [{"name": "web", "image": "busybox"}]}
    cron = apply(plane, {
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": cronjob, "namespace": "shop"},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": pod_spec}}}},
    })  # fmt: skip
    job = apply(plane, {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": f"{cronjob}-29001", "namespace": "shop",
                     "ownerReferences": [_owner(cron, "batch/v1", "CronJob")]},
        "spec": {"template": {"spec": pod_spec}},
    })  # fmt: skip
    return api_pod(plane, f"{cronjob}-29001-q7x2k", node=node, owner=_owner(job, "batch/v1", "Job"))


def api_pod(
    plane: ControlPlane,
    name: str,
    *,
    node: str = NODE,
    labels: dict[str, str] | None = None,
    owner: dict[str, object] | None = None,
) -> dict[str, object]:
    metadata: dict[str, object] = {"name": name, "namespace": "shop", "labels": labels or {}}
    if owner:
        metadata["ownerReferences"] = [owner]
    container = {"name": "web", "image": "busybox", "ports": [{"containerPort": 8080, "name": "http"}]}
    pod = apply(
        plane,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": {"nodeName": node, "containers": [container]},
        },
    )
    return pod


def _owner(obj: dict[str, object], api_version: str, kind: str) -> dict[str, object]:
    meta = obj["metadata"]
    assert isinstance(meta, dict)
    return {"apiVersion": api_version, "kind": kind, "name": meta["name"], "uid": meta["uid"], "controller": True}


def uid(obj: dict[str, object]) -> str:
    meta = obj["metadata"]
    assert isinstance(meta, dict)
    return str(meta["uid"])


def test_the_shipped_cluster_role_allows_what_the_agent_needs_and_nothing_more(cluster: ControlPlane) -> None:
    def can(verb: str, resource: str, *extra: str) -> str:
        return cluster.kubectl("auth", "can-i", verb, resource, *extra, who="agent", check=False).strip()

    needed = [
        ("list", "pods"),
        ("watch", "pods"),
        ("get", "nodes"),
        ("watch", "nodes"),
        ("get", "replicasets.apps"),
        ("get", "jobs.batch"),
    ]
    forbidden = [
        ("get", "secrets"),
        ("list", "secrets"),
        ("create", "pods"),
        ("delete", "pods"),
        ("update", "nodes"),
        ("list", "configmaps"),
        ("create", "pods/exec"),
        ("list", "replicasets.apps"),  # owners are looked up one by one: no cluster-wide informer
        ("watch", "jobs.batch"),
    ]
    assert [can(v, r) for v, r in needed] == ["yes"] * len(needed)
    assert [can(v, r) for v, r in forbidden] == ["no"] * len(forbidden)


def test_enrichment_names_services_after_their_deployment_under_the_shipped_rbac(
    cluster: ControlPlane, start_agent: AgentFactory, pods: PodFactory, tmp_path: Path
) -> None:
    api = deployment_pod(cluster, "custom-name-x1", deployment="storefront")
    cri = pods.create_pod(
        "custom-name-x1",
        namespace="shop",
        uid=uid(api),
        containers=(HTTPD,),
        labels={"pod-template-hash": "7d4b9c6f5d"},
    )
    colony = ColonyProcess(tmp_path / "colony").start()
    try:
        config = tmp_path / "agent.yaml"
        config.write_text(yaml.safe_dump({"colony": colony.agent_settings()}))
        agent = start_agent("--kubeconfig", str(cluster.kubeconfig("agent")), "--config", str(config))
        [service] = agent.wait_for(
            lambda: [s for s in agent.service_by_pod(cri.uid) if s.name == "storefront"], timeout=15, what="enrichment"
        )
        assert (service.namespace, service.workload) == ("shop", "Deployment/storefront")
        # A CronJob's pod is named after the CronJob: one get of its Job finds it.
        job = cronjob_pod(cluster, "nightly", node=NODE)
        job_cri = pods.create_pod("nightly-29001-q7x2k", namespace="shop", uid=uid(job), containers=(HTTPD,))
        [nightly] = agent.wait_for(
            lambda: [s for s in agent.service_by_pod(job_cri.uid) if s.name == "nightly"], timeout=15, what="CronJob"
        )
        assert nightly.workload == "CronJob/nightly"
        agent.wait_for(lambda: agent.conditions().get("kubernetes", (False,))[0], timeout=10, what="watches healthy")
        labels = colony.wait_for(
            lambda: [
                r["node_labels"]
                for r in colony.services()
                if r["pod_name"] == "custom-name-x1" and "zone" in r["node_labels"]
            ],
            timeout=15,
            what="node labels in the colony",
        )
        assert json.loads(labels[0]) == {"topology.kubernetes.io/zone": "zone-a"}
        workloads = {r["pod_name"]: r["workload"] for r in colony.services()}
        assert workloads["custom-name-x1"] == "Deployment/storefront", workloads
    finally:
        colony.stop()


def test_a_killed_agent_restarts_with_its_api_enrichment_and_no_churn(
    cluster: ControlPlane, start_agent: AgentFactory, pods: PodFactory, tmp_path: Path
) -> None:
    # A CronJob's pod: without the API its service would be named after the Job (hourly-29001).
    job = cronjob_pod(cluster, "hourly", node=NODE)
    cri = pods.create_pod("hourly-29001-q7x2k", namespace="shop", uid=uid(job), containers=(HTTPD,))
    cache, kubeconfig = tmp_path / "restart.db", str(cluster.kubeconfig("agent"))
    agent = start_agent("--kubeconfig", kubeconfig, cache=cache)
    agent.wait_for(lambda: [s for s in agent.service_by_pod(cri.uid) if s.name == "hourly"], timeout=15, what="name")
    time.sleep(1)
    last, before = agent.last_event_id(), {s.key: s for s in agent.services()}

    agent.kill()
    restart = time.time()
    restarted = start_agent("--kubeconfig", kubeconfig, cache=cache)
    restarted.wait_pass_after(restart)
    time.sleep(1)  # owner lookups that came late would show up as updates now

    assert restarted.events(since_id=last) == []
    assert {s.key: s for s in restarted.services()} == before


def test_without_rbac_the_agent_discovers_from_cri_and_reports_the_403_once(
    cluster: ControlPlane, start_agent: AgentFactory, pods: PodFactory
) -> None:
    agent = start_agent("--kubeconfig", str(cluster.kubeconfig("nobody")))
    pod = pods.create_pod("plain", namespace="shop", containers=(HTTPD,))
    agent.wait_for(lambda: agent.service_by_pod(pod.uid), timeout=10, what="CRI discovery")
    agent.wait_for(lambda: len(forbidden(agent)) >= 2, timeout=10, what="the 403 reports")
    time.sleep(3)  # no repeats, no flood
    reports = forbidden(agent)
    assert len(reports) == 2 and len(set(reports)) == 2, reports
    assert any("list/watch pods (on this node)" in r for r in reports)
    assert all("discovery continues from the container runtime" in r for r in reports)
    ok, reason, _ = agent.conditions()["kubernetes"]
    assert not ok and "forbids" in reason
    assert agent.conditions()["runtime"][0]


def test_an_owner_the_agent_may_not_get_is_reported_once_and_its_pods_keep_their_replicaset_name(
    cluster: ControlPlane, start_agent: AgentFactory, pods: PodFactory
) -> None:
    rules = [{"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]}]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "pods-only"},
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "pods-only"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pods-only"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "pods-only"}]},
    ]))  # fmt: skip
    api = deployment_pod(cluster, "hidden-owner-x1", deployment="checkout")
    labels = {"pod-template-hash": "7d4b9c6f5d"}
    cri = pods.create_pod("hidden-owner-x1", namespace="shop", uid=uid(api), containers=(HTTPD,), labels=labels)
    agent = start_agent("--kubeconfig", str(cluster.kubeconfig("pods-only")))
    agent.wait_for(lambda: forbidden(agent), timeout=15, what="the 403 on the owner lookup")
    # The pod watch still names the owner: ReplicaSet checkout-7d4b9c6f5d, less its pod-template-hash.
    agent.wait_for(
        lambda: [s for s in agent.service_by_pod(cri.uid) if s.name == "checkout"], timeout=10, what="owner name"
    )
    time.sleep(2)  # no repeats: one report per missing permission (earlier tests' pods may name a Job too)
    reports = forbidden(agent)
    needs = [r.split(" to this agent")[0].removeprefix("Kubernetes API forbids ") for r in reports]
    assert needs.count("get replicasets") == 1 and len(set(needs)) == len(needs), reports


def forbidden(agent: AgentProcess) -> list[str]:
    return [e.reason for e in agent.events() if e.kind == "error" and "forbids" in e.reason]


@pytest.fixture
def kwok(cluster: ControlPlane, tmp_path: Path) -> Iterator[list[str]]:
    """Two fake nodes whose pods kwok marks Running with an IP, as kubelet would."""
    nodes = ["kwok-ours", "kwok-other"]
    for name in nodes:
        manifest = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"}},
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    log = (tmp_path / "kwok.log").open("ab")
    process = subprocess.Popen(
        [
            str(KUBE_BIN / "kwok"), f"--kubeconfig={cluster.kubeconfig('admin')}",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake", "--cidr=10.77.0.1/16",
            "--node-ip=10.77.255.1",
        ],
        stdout=log,
        stderr=log,
    )  # fmt: skip
    log.close()
    yield nodes
    process.terminate()
    process.wait(20)


def test_without_a_cri_socket_the_agent_falls_back_to_this_nodes_pods_from_the_api(
    cluster: ControlPlane, kwok: list[str], tmp_path: Path
) -> None:
    ours, other = kwok
    mine = api_pod(cluster, "fallback-a", node=ours)
    api_pod(cluster, "elsewhere", node=other)
    agent = AgentProcess(
        cri_socket=tmp_path / "no-such.sock",
        cache=tmp_path / "agent.db",
        node_name=ours,
        extra_args=["--kubeconfig", str(cluster.kubeconfig("agent"))],
    ).start()
    try:
        found = agent.wait_for(lambda: agent.service_by_pod(uid(mine)), timeout=30, what="fallback discovery")
        assert [(s.name, s.port) for s in found] == [("fallback-a", 8080)] and found[0].pod_ip.startswith("10.77.")
        assert "elsewhere" not in {s.pod_name for s in agent.services()}

        # The API server restarts, and etcd compacts away the watch's resourceVersion (410 on resume).
        revision = json.loads(subprocess.run(
            ["etcdctl", f"--endpoints=127.0.0.1:{cluster.etcd_port}", "endpoint", "status", "-w", "json"],
            capture_output=True, text=True, check=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        ).stdout)[0]["Status"]["header"]["revision"]  # fmt: skip
        cluster.stop_apiserver()
        subprocess.run(
            ["etcdctl", f"--endpoints=127.0.0.1:{cluster.etcd_port}", "compact", str(revision)],
            check=True, capture_output=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        cluster.start_apiserver()
        later = api_pod(cluster, "fallback-b", node=ours)
        agent.wait_for(lambda: agent.service_by_pod(uid(later)), timeout=40, what="discovery after restart and 410")
        added = [e.pod_name for e in agent.events() if e.kind == "added"]
        assert added.count("fallback-a") == 1 and added.count("fallback-b") == 1, added  # nothing missed or repeated
        assert "elsewhere" not in added
    finally:
        assert agent.stop() == 0, agent.log_tail()
