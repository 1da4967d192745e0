"""The agent as users deploy it, on a real node (issue 12).

The image is built as a user builds it (``docker build .``; offline, the
private engine holds a debootstrap root under the default base's name),
imported into a real single-node cluster's containerd
(integration/harness/node.py), and installed with ``helm install`` of
deploy/helm/coral-node-agent setting only what a user of this cluster sets:
where its CRI socket is. The colony runs in the cluster from
deploy/colony.yaml with the identity Secrets docs/install.md describes; the
agents reach it through its Service by name (cluster DNS), and the operator
uses the ``coral`` CLI with a token through ``kubectl port-forward``.

One cluster, one colony and one release for the module; each scenario uses
its own namespace.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from coral_base import __version__
from integration.harness.docker import PrivateDocker
from integration.harness.images import WORKLOAD_IMAGE, ImageSet
from integration.harness.kube import binary
from integration.harness.node import RealNode

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "coral-node-agent"
IMAGE = f"coral-cri-agent:{__version__}"
AGENT_LABEL = "app.kubernetes.io/name=coral-node-agent"
RELEASE = "coral-node-agent"  # as docs/install.md names it: the DaemonSet and ServiceAccount are then coral-node-agent
COLONY_UID = 10001  # deploy/colony.yaml runs the colony as this user, fsGroup too

_T = TypeVar("_T")


def wait_until(predicate: Callable[[], _T | None], *, timeout: float, what: str, interval: float = 0.5) -> _T:
    deadline = time.monotonic() + timeout
    last: _T | None = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def coral(*args: str, env: dict[str, str] | None = None) -> str:
    """The ``coral`` CLI of this checkout, as an operator runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "coral_cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, f"coral {' '.join(args)}: {done.stderr}"
    return done.stdout


@dataclass
class Operator:
    """An operator with a token, reaching the colony through ``kubectl port-forward``."""

    env: dict[str, str]
    forward: PortForward | None = None

    def reconnect(self, node: RealNode) -> None:
        """A new ``kubectl port-forward``, to the colony's pod of now (the old one ends with its pod)."""
        if self.forward is not None:
            self.forward.stop()
        self.forward = PortForward(node, "coral-system", "svc/coral-colony", 9000, node.dir / "port-forward.log")
        self.env["CORAL_COLONY"] = f"localhost:{self.forward.port}"

    def json(self, *args: str) -> Any:
        return json.loads(coral(*args, "-o", "json", env=self.env))

    def services(self, namespace: str) -> list[dict[str, Any]]:
        return list(self.json("services", "-n", namespace))

    def discovery_audit(self) -> list[dict[str, Any]]:
        return list(self.json("audit", "--kind", "discovery", "--limit", "100000"))


class PortForward:
    def __init__(self, node: RealNode, namespace: str, target: str, port: int, log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(binary("kubectl")), "--kubeconfig", str(node.kubeconfig), "-n", namespace,
                 "port-forward", target, f":{port}"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        found = wait_until(
            self._forwarding,
            timeout=60,
            what=f"kubectl port-forward {target}",
            interval=0.1,
        )
        self.port = int(found.group(1))

    def _forwarding(self) -> re.Match[str] | None:
        if self.process.poll() is not None:
            pytest.fail(f"kubectl port-forward exited: {self.log.read_text()}")
        return re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", self.log.read_text())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(10)


def helm(node: RealNode, *args: str) -> str:
    done = subprocess.run(
        [str(binary("helm")), "--kubeconfig", str(node.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"helm {' '.join(args)}: {done.stderr}"
    return done.stdout


# -- the cluster, the image, the colony, the release ------------------------------------


def build_agent_image(workdir: Path) -> Path:
    """``docker build .`` of this checkout, saved as a tar to import into the node's containerd."""
    (workdir / "docker").mkdir(parents=True, exist_ok=True)
    engine = PrivateDocker(workdir / "docker").start()
    try:
        engine.import_base()
        engine.docker("build", "--network", "none", "-t", IMAGE, str(REPO))
        tar = workdir / "coral-cri-agent.tar"
        engine.docker("save", "-o", str(tar), IMAGE)
    finally:
        engine.stop()
    return tar


@pytest.fixture(scope="module")
def agent_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_agent_image(tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, harness_images: ImageSet, agent_image: Path) -> Iterator[RealNode]:
    with RealNode(tmp_path_factory.mktemp("node"), images=harness_images) as real:
        real.import_image(agent_image)
        yield real


def provide_volume(node: RealNode, name: str, owner: int) -> None:
    """What the cluster's storage does for the colony's claim: a PersistentVolume (a directory on the node)."""
    path = node.dir / "volumes" / name
    path.mkdir(parents=True)
    os.chown(path, owner, owner)
    path.chmod(0o770)
    node.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "hostPath": {"path": str(path), "type": "Directory"},
                },
            }
        ),
    )


def install_colony(node: RealNode, workdir: Path) -> Operator:
    """docs/install.md §1 and §2: the identity made outside the cluster, then deploy/colony.yaml."""
    identity = workdir / "colony"
    coral("colony", "init", str(identity), "--colony-id", "prod",
          "--host", "coral-colony.coral-system.svc", "--host", "localhost")  # fmt: skip
    token = coral(
        "colony", "token", "create", "alice", "--scope", "read,audit,operate", "--dir", str(identity), "--quiet"
    ).strip()
    node.kubectl("apply", "-f", str(DEPLOY / "namespace.yaml"))
    node.kubectl("-n", "coral-system", "create", "secret", "generic", "coral-colony-identity",
                 f"--from-file={identity}")  # fmt: skip
    node.kubectl("-n", "coral-system", "create", "secret", "generic", "coral-colony",
                 f"--from-file=ca.crt={identity / 'ca.crt'}",
                 f"--from-file=colony-secret={identity / 'colony-secret'}")  # fmt: skip
    provide_volume(node, "coral-colony-data", COLONY_UID)
    node.kubectl("apply", "-f", str(DEPLOY / "colony.yaml"))
    node.kubectl("-n", "coral-system", "rollout", "status", "deploy/coral-colony", "--timeout=180s", timeout=200)
    operator = Operator({"CORAL_COLONY_CA": str(identity / "ca.crt"), "CORAL_TOKEN": token})
    operator.reconnect(node)
    return operator


@pytest.fixture(scope="module")
def colony(node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    operator = install_colony(node, tmp_path_factory.mktemp("colony"))
    yield operator
    if operator.forward is not None:
        operator.forward.stop()


def install_release(node: RealNode) -> None:
    """``helm install`` of the chart: the one value a user of this cluster sets is its CRI socket."""
    helm(node, "install", RELEASE, str(CHART), "--namespace", "coral-system",
         "--set", f"criSocket={node.containerd.socket_path}", "--wait", "--timeout", "4m")  # fmt: skip
    # helm's --wait counts a DaemonSet done while maxUnavailable (10%, rounded up: 1 of 1 node) pods are not Ready.
    done = node.kubectl("-n", "coral-system", "rollout", "status", "ds/coral-node-agent", "--timeout=180s",
                        check=False, timeout=200)  # fmt: skip
    if "successfully rolled out" not in done:
        describe = node.kubectl("-n", "coral-system", "describe", "pods", "-l", AGENT_LABEL, check=False)
        logs = node.kubectl("-n", "coral-system", "logs", "-l", AGENT_LABEL, "--tail=60", check=False)
        pytest.fail(f"the agent DaemonSet did not become Ready:\n{describe}\n{logs}\n{node.log_tail('kubelet')}")


@pytest.fixture(scope="module")
def release(node: RealNode, colony: Operator) -> Iterator[str]:
    install_release(node)
    yield RELEASE
    installed = subprocess.run([str(binary("helm")), "--kubeconfig", str(node.kubeconfig), "status", RELEASE,
                                "--namespace", "coral-system"], capture_output=True, check=False)  # fmt: skip
    if installed.returncode == 0:  # the last scenario uninstalls it
        helm(node, "uninstall", RELEASE, "--namespace", "coral-system", "--wait", "--timeout", "2m")


def agent_pods(node: RealNode) -> list[dict[str, Any]]:
    pods = node.kubectl_json("-n", "coral-system", "get", "pods", "-l", AGENT_LABEL)["items"]
    assert isinstance(pods, list)
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def running_pods(node: RealNode, namespace: str, selector: str) -> set[tuple[str, str]]:
    """(name, pod IP) of the pods kubectl lists as running and not being deleted."""
    items = node.kubectl_json("-n", namespace, "get", "pods", "-l", selector)["items"]
    assert isinstance(items, list)
    return {
        (p["metadata"]["name"], p["status"].get("podIP", ""))
        for p in items
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    }


def registered(colony: Operator, namespace: str, name: str) -> set[tuple[str, str]]:
    return {(s["pod_name"], s["pod_ip"]) for s in colony.services(namespace) if s["name"] == name and not s["stale"]}


def health(service: dict[str, Any]) -> str:
    """The service's health as a word."""
    return str(service["health"]["state"])


def deployment(name: str, namespace: str, replicas: int) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "terminationGracePeriodSeconds": 2,  # busybox httpd as pid 1 ignores SIGTERM
                        "containers": [
                            {
                                "name": "web",
                                "image": WORKLOAD_IMAGE,
                                "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
                                "ports": [{"name": "http", "containerPort": 8080}],
                            }
                        ],
                    },
                },
            },
        }
    )


# -- the scenarios ---------------------------------------------------------------------


def test_helm_install_runs_the_agent_pod_ready_and_the_colony_lists_it_with_the_node_labels(
    node: RealNode, colony: Operator, release: str
) -> None:
    [pod] = agent_pods(node)
    assert ready(pod) and pod["spec"]["nodeName"] == node.name
    assert pod["spec"]["hostPID"] is True and pod["spec"]["serviceAccountName"] == "coral-node-agent"

    def listed() -> dict[str, Any] | None:
        agents = [a for a in colony.json("agents") if a["node_name"] == node.name]
        if agents and agents[0]["node_labels"].get("topology.kubernetes.io/zone"):
            return dict(agents[0])
        return None

    agent = wait_until(listed, timeout=90, what="the node agent with its node's labels in `coral agents`")
    assert agent["agent_id"] == f"node-agent-{node.name}"
    assert (agent["kind"], agent["enrollment"]["method"]) == ("node-agent", "secret"), agent  # enrolled by the chart
    assert agent["node_labels"]["kubernetes.io/hostname"] == node.name
    assert agent["node_labels"]["topology.kubernetes.io/zone"] == "harness-a"
    assert agent["node_labels"]["coral.io/test-node"] == "true"
    assert agent["state"] == "healthy" or agent["agent_state"] == "AGENT_STATE_HEALTHY", agent


def test_a_deployment_is_registered_as_its_pods_healthy_on_their_ips_and_follows_scale_down(
    node: RealNode, colony: Operator, release: str
) -> None:
    node.kubectl("create", "namespace", "shop")
    node.kubectl("apply", "-f", "-", input=deployment("checkout", "shop", 3))
    selector = "app=checkout"

    def matches(count: int) -> set[tuple[str, str]] | None:
        pods = running_pods(node, "shop", selector)
        if len(pods) != count or any(not ip for _, ip in pods):
            return None
        services = [s for s in colony.services("shop") if s["name"] == "checkout"]
        healthy = all(health(s) == "healthy" for s in services)
        return pods if registered(colony, "shop", "checkout") == pods and healthy else None

    started = time.monotonic()
    pods = wait_until(lambda: matches(3), timeout=120, what="3 healthy checkout services equal to kubectl's pods")
    print(f"3 replicas registered and healthy in {time.monotonic() - started:.1f}s")
    services = [s for s in colony.services("shop") if s["name"] == "checkout"]
    assert len(services) == 3
    for service in services:
        info = service
        assert info["provenance"] == "discovered", info
        assert info["port"] == 8080 and info["protocol"] == "TCP" and info["node_name"] == node.name
        assert info["workload"] == "Deployment/checkout", info
        assert (info["pod_name"], info["pod_ip"]) in pods

    victim = sorted(pods)[0][0]
    node.kubectl("-n", "shop", "delete", "pod", victim)

    def replaced_pods() -> set[tuple[str, str]] | None:
        now = matches(3)
        return now if now and victim not in {name for name, _ in now} else None

    replaced = wait_until(replaced_pods, timeout=120, what="the deleted pod replaced in the registry as in kubectl")
    assert victim not in {name for name, _ in registered(colony, "shop", "checkout")}

    node.kubectl("-n", "shop", "scale", "deployment", "checkout", "--replicas=1")
    [kept] = wait_until(lambda: matches(1), timeout=120, what="the registry down to the one pod kubectl lists")
    gone = {name for name, _ in replaced} - {kept[0]}
    assert len(gone) == 2
    removed = {e["pod_name"] for e in colony.discovery_audit() if e["action"] == "removed"}
    assert gone <= removed, (gone, removed)


def test_the_agent_pod_recreated_by_the_daemonset_finds_its_cache_and_reports_no_discovery_events(
    node: RealNode, colony: Operator, release: str
) -> None:
    node.kubectl("create", "namespace", "restart")
    node.kubectl("apply", "-f", "-", input=deployment("cart", "restart", 2))
    wait_until(
        lambda: len(registered(colony, "restart", "cart")) == 2 and running_pods(node, "restart", "app=cart"),
        timeout=120,
        what="2 cart services registered",
    )
    time.sleep(3)  # let the agent's first health probes and deltas settle before counting
    before = {e["id"] for e in colony.discovery_audit()}
    [old] = agent_pods(node)
    node.kubectl("-n", "coral-system", "delete", "pod", old["metadata"]["name"])

    def replacement() -> dict[str, Any] | None:
        pods = [p for p in agent_pods(node) if p["metadata"]["uid"] != old["metadata"]["uid"]]
        return pods[0] if pods and ready(pods[0]) else None

    started = time.monotonic()
    new = wait_until(replacement, timeout=120, what="the DaemonSet's new agent pod Ready")
    print(f"agent pod recreated and Ready in {time.monotonic() - started:.1f}s")
    assert new["spec"]["nodeName"] == node.name

    def reconnected() -> str | None:
        status = node.kubectl(
            "-n", "coral-system", "exec", new["metadata"]["name"], "--", "coral", "agent", "status", check=False
        )
        return status if "registered with colony prod" in status else None

    wait_until(reconnected, timeout=90, what="the new agent registered with the colony (`coral agent status`)")
    time.sleep(5)  # a discovery pass of the new agent has long run: anything it would add is in the audit
    after = [e for e in colony.discovery_audit() if e["id"] not in before]
    # The one new pod is the agent's own (coral.io/enabled: "false"): skipped, as any new pod would be.
    about_workloads = [e for e in after if e["pod_name"] != new["metadata"]["name"]]
    assert about_workloads == [], after
    assert all(e["action"] == "skipped" for e in after), after
    assert registered(colony, "restart", "cart") == running_pods(node, "restart", "app=cart")
    # The old agent deregistered on SIGTERM; the new one registered within the grace window: no churn.
    removed = colony.json("audit", "--kind", "deregistration", "--limit", "100000")
    assert [e for e in removed if e.get("namespace") == "restart"] == [], removed


def test_autoscaling_3_to_30_to_2_keeps_the_registry_equal_to_kubectls_pods(
    node: RealNode, colony: Operator, release: str
) -> None:
    node.kubectl("create", "namespace", "scale")
    node.kubectl("apply", "-f", "-", input=deployment("catalog", "scale", 3))
    for replicas in (3, 30, 2):
        started = time.monotonic()
        node.kubectl("-n", "scale", "scale", "deployment", "catalog", f"--replicas={replicas}")

        def converged(count: int = replicas) -> set[tuple[str, str]] | None:
            pods = running_pods(node, "scale", "app=catalog")
            if len(pods) != count or any(not ip for _, ip in pods):
                return None
            return pods if registered(colony, "scale", "catalog") == pods else None

        pods = wait_until(converged, timeout=240, what=f"the registry equal to kubectl's {replicas} catalog pods")
        print(f"scaled to {replicas}: registry equal to kubectl's pods after {time.monotonic() - started:.1f}s")
        assert len(pods) == replicas


def test_a_cronjobs_short_lived_pods_are_audited_as_added_then_removed(
    node: RealNode, colony: Operator, release: str
) -> None:
    node.kubectl("create", "namespace", "batch")
    cronjob = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "report", "namespace": "batch"},
        "spec": {
            "schedule": "*/30 * * * *",
            "jobTemplate": {
                "spec": {
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "terminationGracePeriodSeconds": 1,
                            "containers": [
                                {
                                    "name": "report",
                                    "image": WORKLOAD_IMAGE,
                                    "command": ["sh", "-c", "httpd -p 8080 -h /www; sleep 5"],
                                    "ports": [{"name": "http", "containerPort": 8080}],
                                }
                            ],
                        }
                    }
                }
            },
        },
    }
    node.kubectl("apply", "-f", "-", input=json.dumps(cronjob))
    for run in ("report-now-1", "report-now-2"):  # what an operator runs instead of waiting for the schedule
        node.kubectl("-n", "batch", "create", "job", run, "--from=cronjob/report")

    def finished() -> set[str] | None:
        items = node.kubectl_json("-n", "batch", "get", "pods", "-l", "batch.kubernetes.io/job-name")["items"]
        assert isinstance(items, list)
        names = {p["metadata"]["name"] for p in items if p["status"].get("phase") == "Succeeded"}
        return names if len(names) == 2 else None

    pods = wait_until(finished, timeout=120, what="both report job pods Succeeded")

    def audited() -> dict[str, set[str]] | None:
        actions: dict[str, set[str]] = {name: set() for name in pods}
        for entry in colony.discovery_audit():
            if entry["namespace"] == "batch" and entry["pod_name"] in actions:
                actions[entry["pod_name"]].add(entry["action"])
        return actions if all({"added", "removed"} <= a for a in actions.values()) else None

    wait_until(audited, timeout=60, what=f"every job pod of {sorted(pods)} audited as added and then removed")
    added = [e for e in colony.discovery_audit() if e["pod_name"] in pods and e["action"] == "added"]
    removed = [e for e in colony.discovery_audit() if e["pod_name"] in pods and e["action"] == "removed"]
    for name in pods:
        first_added = min(int(e["id"]) for e in added if e["pod_name"] == name)
        assert all(int(e["id"]) > first_added for e in removed if e["pod_name"] == name)


def test_tap_sample_and_profile_of_an_auto_discovered_service_run_in_the_daemonset_pod(
    node: RealNode, colony: Operator, release: str, tmp_path: Path
) -> None:
    node.kubectl("create", "namespace", "ops")
    node.kubectl("apply", "-f", "-", input=deployment("payments", "ops", 1))
    [(_, payments_ip)] = wait_until(
        lambda: registered(colony, "ops", "payments"), timeout=120, what="payments registered"
    )
    loop = f"while true; do wget -q -O /dev/null http://{payments_ip}:8080/; sleep 0.2; done"
    shopper = json.loads(deployment("shopper", "ops", 1))
    shopper["spec"]["template"]["spec"]["containers"][0]["command"] = ["sh", "-c", loop]
    node.kubectl("apply", "-f", "-", input=json.dumps(shopper))
    wait_until(lambda: running_pods(node, "ops", "app=shopper"), timeout=120, what="the shopper pod running")

    pcap = tmp_path / "payments.pcap"
    coral("tap", "payments", "--duration", "3s", "--filter", "tcp port 8080", "-w", str(pcap), env=colony.env)
    uris = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "http.request", "-T", "fields", "-e", "ip.dst", "-e", "http.request.uri"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split("\n")  # fmt: skip
    assert [u for u in uris if u.strip() == f"{payments_ip}\t/"], uris

    flows = coral("sample", "payments", "--duration", "3s", "--top", "4", env=colony.env)
    assert payments_ip in flows and "8080" in flows, flows

    # A service that uses CPU to be profiled (busybox httpd at 5 requests/s gives no samples), capped at 0.2 CPU.
    pricing = json.loads(deployment("pricing", "ops", 1))
    container = pricing["spec"]["template"]["spec"]["containers"][0]
    container["command"] = ["sh", "-c", "yes > /dev/null & exec httpd -f -p 8080 -h /www"]
    container["resources"] = {"limits": {"cpu": "200m", "memory": "32Mi"}}
    node.kubectl("apply", "-f", "-", input=json.dumps(pricing))
    wait_until(lambda: registered(colony, "ops", "pricing"), timeout=120, what="pricing registered")
    profile = tmp_path / "pricing.pb.gz"
    coral("profile", "pricing", "--duration", "3s", "-w", str(profile), env=colony.env)
    node.kubectl("-n", "ops", "delete", "deployment", "pricing", "--wait=false")
    go = shutil.which("go") or "/usr/local/go/bin/go"
    top = subprocess.run([go, "tool", "pprof", "-top", str(profile)], capture_output=True, text=True, timeout=120)
    assert top.returncode == 0 and "flat" in top.stdout, top.stderr

    operations = [e for e in colony.json("audit", "--kind", "operation") if e["actor"] == "alice"]
    done = {(e["service_name"], e["action"]) for e in operations}
    assert {("payments", "tap"), ("payments", "sample"), ("pricing", "profile")} <= done, operations


def test_helm_upgrade_with_new_filters_makes_the_registry_follow_them(
    node: RealNode, colony: Operator, release: str
) -> None:
    node.kubectl("create", "namespace", "billing")
    node.kubectl("apply", "-f", "-", input=deployment("invoices", "billing", 1))
    wait_until(lambda: registered(colony, "billing", "invoices"), timeout=120, what="invoices registered")
    helm(node, "upgrade", release, str(CHART), "--namespace", "coral-system", "--reuse-values",
         "--set", "config.discovery.kubernetes.excludeNamespaces={kube-system,billing}",
         "--wait", "--timeout", "4m")  # fmt: skip
    node.kubectl("-n", "coral-system", "rollout", "status", "ds/coral-node-agent", "--timeout=180s", timeout=200)
    started = time.monotonic()
    wait_until(
        lambda: not registered(colony, "billing", "invoices"),
        timeout=120,
        what="the billing namespace's services gone from the registry after the upgrade excluded it",
    )
    print(f"registry followed the new filters {time.monotonic() - started:.1f}s after the rollout")
    assert registered(colony, "restart", "cart") == running_pods(node, "restart", "app=cart")


def test_observe_only_through_the_chart_refuses_tap_and_profile_allows_sample_and_audits_each(
    node: RealNode, colony: Operator, release: str, tmp_path: Path
) -> None:
    old = {p["metadata"]["uid"] for p in agent_pods(node)}
    helm(node, "upgrade", release, str(CHART), "--namespace", "coral-system", "--reuse-values",
         "--set", "mode=observe-only", "--wait", "--timeout", "4m")  # fmt: skip
    node.kubectl("-n", "coral-system", "rollout", "status", "ds/coral-node-agent", "--timeout=180s", timeout=200)
    [new] = wait_until(
        lambda: [p for p in agent_pods(node) if p["metadata"]["uid"] not in old and ready(p)] or None,
        timeout=120,
        what="the observe-only agent pod Ready",
    )
    caps = new["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
    assert "PERFMON" not in caps
    wait_until(
        lambda: (
            "registered with colony prod"
            in node.kubectl(
                "-n", "coral-system", "exec", new["metadata"]["name"], "--", "coral", "agent", "status", check=False
            )
        ),
        timeout=90,
        what="the observe-only agent registered",
    )
    since = max((int(e["id"]) for e in colony.json("audit", "--kind", "operation")), default=0)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "coral_cli", *args], capture_output=True, text=True,
                              timeout=60, cwd=REPO, env={**os.environ, **colony.env}, check=False)  # fmt: skip

    tap = run("tap", "payments", "--duration", "2s", "-w", str(tmp_path / "refused.pcap"))
    assert tap.returncode == 2 and "observe-only" in tap.stderr, tap.stderr
    profile = run("profile", "payments", "--duration", "2s", "-w", str(tmp_path / "refused.pb.gz"))
    assert profile.returncode == 2 and "observe-only" in profile.stderr, profile.stderr
    sample = run("sample", "payments", "--duration", "2s")
    assert sample.returncode == 0, sample.stderr

    entries = [e for e in colony.json("audit", "--kind", "operation") if int(e["id"]) > since]
    outcomes = {
        (e["action"], e["detail"]["outcome"])
        for e in entries
        if e["actor"] == "alice" and e["action"] != "operation.started"  # the routing's own entry has no outcome
    }
    assert outcomes == {("tap", "refused"), ("profile", "refused"), ("sample", "ok")}, entries


def agent_status(node: RealNode, pod: dict[str, Any]) -> dict[str, Any]:
    """``coral agent status -o json`` in the agent's pod (it exits 1 when a condition is false: read it anyway)."""
    done = subprocess.run(
        [str(binary("kubectl")), "--kubeconfig", str(node.kubeconfig), "-n", "coral-system", "exec",
         pod["metadata"]["name"], "--", "coral", "agent", "status", "-o", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    try:
        status = json.loads(done.stdout)
    except json.JSONDecodeError:
        return {}
    return dict(status) if isinstance(status, dict) else {}


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in status.get("conditions", [])}


def test_draining_the_node_removes_the_evicted_pods_services_and_keeps_the_agent_pod(
    node: RealNode, colony: Operator, release: str
) -> None:
    """``kubectl drain`` as an operator runs it. On this one node the colony's pod is evicted too (where a
    real cluster moves it to another node): the agent's own cache shows the removals at once, and the
    colony, back after ``kubectl uncordon``, lists none of the evicted pods."""
    node.kubectl("create", "namespace", "drain")
    node.kubectl("apply", "-f", "-", input=deployment("ledger", "drain", 2))

    def both_registered() -> set[tuple[str, str]] | None:
        pods = running_pods(node, "drain", "app=ledger")
        return pods if len(pods) == 2 and registered(colony, "drain", "ledger") == pods else None

    evicted = {name for name, _ in wait_until(both_registered, timeout=120, what="2 ledger services registered")}
    [agent] = agent_pods(node)
    started = time.monotonic()
    node.kubectl("drain", node.name, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=180s",
                 timeout=200)  # fmt: skip
    print(f"node drained in {time.monotonic() - started:.1f}s")
    try:
        [kept] = agent_pods(node)
        assert kept["metadata"]["uid"] == agent["metadata"]["uid"] and ready(kept), kept

        def removed_in_the_agents_cache() -> bool:
            out = node.kubectl("-n", "coral-system", "exec", kept["metadata"]["name"], "--",
                               "coral", "agent", "services", "-n", "drain", "-o", "json", check=False)  # fmt: skip
            try:
                rows = json.loads(out)
            except json.JSONDecodeError:
                return False
            return not {r.get("pod_name") for r in rows} & evicted

        wait_until(removed_in_the_agents_cache, timeout=60, what="the evicted pods' services gone from the agent")
    finally:
        node.kubectl("uncordon", node.name)
    node.kubectl("-n", "coral-system", "rollout", "status", "deploy/coral-colony", "--timeout=180s", timeout=200)
    colony.reconnect(node)

    def replaced() -> set[tuple[str, str]] | None:
        pods = running_pods(node, "drain", "app=ledger")
        if len(pods) != 2 or any(not ip for _, ip in pods):
            return None
        return pods if registered(colony, "drain", "ledger") == pods else None

    wait_until(replaced, timeout=180, what="the registry equal to kubectl's new ledger pods after the uncordon")
    listed = {s["pod_name"] for s in colony.services("drain")}  # stale ones too
    assert not listed & evicted, (listed, evicted)
    [after] = agent_pods(node)
    assert after["metadata"]["uid"] == agent["metadata"]["uid"]
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0


def node_agent_states(colony: Operator, node: RealNode) -> list[str]:
    return [a["state"] for a in colony.json("agents") if a["node_name"] == node.name]


def test_helm_uninstall_deregisters_the_agent_from_the_colony(node: RealNode, colony: Operator, release: str) -> None:
    """The agent says goodbye on SIGTERM (``left`` at once, where a silent one stays ``healthy`` for the 45 s
    heartbeat timeout); the colony removes it and its services when the 2 min grace window ends."""
    helm(node, "uninstall", release, "--namespace", "coral-system", "--wait", "--timeout", "2m")
    wait_until(lambda: not agent_pods(node) or None, timeout=120, what="the agent pod gone after helm uninstall")
    wait_until(
        lambda: node_agent_states(colony, node) == ["left"] or None,
        timeout=30,
        what="the colony listing the node agent as left (it deregistered)",
    )
    started = time.monotonic()
    wait_until(
        lambda: not node_agent_states(colony, node),
        timeout=180,
        what="the colony no longer listing the node agent once the 2 min grace window ended",
    )
    print(f"agent removed from the colony {time.monotonic() - started:.1f}s after it was seen leaving")
    assert not [s for s in colony.services("restart") if s["agent_id"] == f"node-agent-{node.name}"]


def test_restricted_rbac_without_a_token_discovers_from_cri_says_why_and_registers(
    node: RealNode, colony: Operator, release: str
) -> None:
    """A cluster that lets the agent read nothing: no ClusterRole (``rbac.create=false``) and no token in
    its pod (``serviceAccount.automount=false``). Discovery goes on from the runtime, the ``kubernetes``
    condition says why, nothing restarts, and the agent registers with the colony."""
    helm(node, "upgrade", "--install", release, str(CHART), "--namespace", "coral-system",
         "--set", f"criSocket={node.containerd.socket_path}",
         "--set", "rbac.create=false", "--set", "serviceAccount.automount=false",
         "--wait", "--timeout", "4m")  # fmt: skip
    node.kubectl("-n", "coral-system", "rollout", "status", "ds/coral-node-agent", "--timeout=180s", timeout=200)
    assert not node.kubectl("get", "clusterrole", RELEASE, "--ignore-not-found")
    [pod] = wait_until(lambda: [p for p in agent_pods(node) if ready(p)] or None, timeout=120, what="agent Ready")
    assert pod["spec"]["automountServiceAccountToken"] is False
    mounts = pod["spec"]["containers"][0].get("volumeMounts", [])
    assert not [m for m in mounts if m["mountPath"].startswith("/var/run/secrets/kubernetes.io")], mounts

    def says_why() -> dict[str, Any] | None:
        status = agent_status(node, pod)
        kube = conditions(status).get("kubernetes")
        return kube if kube is not None and not kube["ok"] else None

    kube = wait_until(says_why, timeout=90, what="the agent's kubernetes condition false")
    assert "cannot be loaded" in kube["reason"] and "serviceAccount.automount" in kube["reason"], kube
    wait_until(
        lambda: all(conditions(agent_status(node, pod)).get(c, {}).get("ok") for c in ("runtime", "colony")),
        timeout=90,
        what="the agent's runtime and colony conditions true",
    )

    node.kubectl("create", "namespace", "locked")
    node.kubectl("apply", "-f", "-", input=deployment("vault", "locked", 2))

    def from_cri() -> set[tuple[str, str]] | None:
        pods = running_pods(node, "locked", "app=vault")
        if len(pods) != 2 or any(not ip for _, ip in pods):
            return None
        return pods if registered(colony, "locked", "vault") == pods else None

    wait_until(from_cri, timeout=120, what="the vault pods registered from the runtime alone")
    services = [s for s in colony.services("locked") if s["name"] == "vault"]
    # No owner without the API: the name comes from the pod's app label.
    assert [(s["workload"] or None, s["provenance"]) for s in services] == [(None, "discovered")] * 2, services
    # Listed with its heartbeats arriving, its own health degraded: a condition of its own fails.
    wait_until(
        lambda: (
            [(a["state"], a["health"]) for a in colony.json("agents") if a["node_name"] == node.name]
            == [("healthy", "degraded")]
        ),
        timeout=60,
        what="the agent listed, healthy (heartbeats) and degraded (its health)",
    )
    [after] = agent_pods(node)
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0, after["status"]
