"""The agent as users deploy it, measured on the real single-node cluster (issue 12).

The cluster, the image, the colony and the release are integration/test_real_node.py's: ``docker build .``,
deploy/colony.yaml, ``helm install`` of the chart with only its CRI socket set. Then one Deployment of
busybox httpd pods is scaled from 0 to N (default 100) and the bench measures:

  1. pod created in the API (a ``kubectl get pods -w`` watch sees it) -> its service in the colony
     (``coral services``, polled), p50/p99, and the time until all N are listed;
  2. the agent container's memory (working set, RSS) and CPU as the kubelet reports them (its summary API,
     ``/api/v1/nodes/NODE/proxy/stats/summary``) with the N pods running: CPU over a quiet window, from
     the cumulative usage;
  3. the same pods' discovery latency, next to bench/discovery.py's harness figure in BENCHMARKS.md as a
     ratio: the pod's container created in the runtime (ListContainers' created_at) -> the service's
     ``added`` event in the agent's cache (the agent registers a created container's declared ports, so
     under the kubelet's load its started_at can come after that event); started_at -> added beside it.

Usage (root; after `make setup` and `make image-inputs`; one real node per machine):
    python -m bench.node --replicas 100 --output BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from bench.report import percentile, publish
from coral_base.wire.cri.runtime.v1 import api_pb2, api_pb2_grpc
from cri_agent.providers.cri import CriClient
from integration.harness.images import ensure_images
from integration.harness.kube import binary
from integration.harness.node import RealNode
from integration.test_real_node import (
    Operator,
    agent_pods,
    build_agent_image,
    deployment,
    install_colony,
    install_release,
)

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "bench"
NAME = "web"
KUBELET_MAX_PODS = 110  # the kubelet's default maxPods; the harness sets none (its pod CIDR is a /22)
CPU_WINDOW_S = 30.0  # as bench/discovery.py's steady state


class FirstSeen:
    """When (monotonic) each name first showed up, filled by a thread."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def saw(self, names: set[str]) -> None:
        now = time.monotonic()
        with self.lock:
            for name in names - self.at.keys():
                self.at[name] = now

    def snapshot(self) -> dict[str, float]:
        with self.lock:
            return dict(self.at)


@contextmanager
def pod_watch(node: RealNode) -> Iterator[FirstSeen]:
    """``kubectl get pods -w -o name``: its first line of a pod is the pod's creation in the API."""
    seen = FirstSeen()
    watch = subprocess.Popen(
        [str(binary("kubectl")), "--kubeconfig", str(node.kubeconfig), "-n", NAMESPACE,
         "get", "pods", "-w", "-o", "name"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip

    def read() -> None:
        assert watch.stdout is not None
        for line in watch.stdout:
            seen.saw({line.strip().removeprefix("pod/")})

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield seen
    finally:
        watch.terminate()
        watch.wait(10)


def colony_pods(colony: Operator) -> set[str]:
    return {s["pod_name"] for s in colony.services(NAMESPACE) if s["name"] == NAME and not s["stale"]}


@contextmanager
def colony_poll(colony: Operator) -> Iterator[tuple[FirstSeen, list[float]]]:
    """``coral services -n bench`` in a loop; also the time each poll took (the measure's resolution)."""
    seen, durations = FirstSeen(), []

    def poll() -> None:
        while not seen.stop.is_set():
            started = time.monotonic()
            seen.saw(colony_pods(colony))
            durations.append(time.monotonic() - started)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        yield seen, durations
    finally:
        seen.stop.set()
        poller.join(30)


def summary_of_agent(node: RealNode) -> dict[str, Any]:
    """The agent container's entry in the kubelet's summary API."""
    # only_cpu_and_memory (what metrics-server asks): the full summary fails here on the root
    # filesystem's stats (cAdvisor finds no filesystem info for the VM's disk), which the bench does not need.
    path = f"/api/v1/nodes/{node.name}/proxy/stats/summary?only_cpu_and_memory=true"
    summary = json.loads(node.kubectl("get", "--raw", path))
    for pod in summary.get("pods", []):
        if pod["podRef"]["namespace"] == "coral-system" and pod["podRef"]["name"].startswith("coral-node-agent"):
            for container in pod.get("containers", []):
                if container["name"] == "agent":
                    return dict(container)
    print(f"the kubelet's summary has no agent container: {json.dumps(summary)[:2000]}", file=sys.stderr)
    return {}


def usage(before: dict[str, Any], after: dict[str, Any], replicas: int) -> tuple[str, str]:
    """The CPU row (from the cumulative usage between two summaries) and the memory row."""
    cpu_before, cpu_after, memory = before.get("cpu", {}), after.get("cpu", {}), after.get("memory", {})
    cpu = "not reported by the kubelet"
    if "usageCoreNanoSeconds" in cpu_before and "usageCoreNanoSeconds" in cpu_after:
        window_s = rfc3339_seconds(cpu_after["time"]) - rfc3339_seconds(cpu_before["time"])
        used_ns = cpu_after["usageCoreNanoSeconds"] - cpu_before["usageCoreNanoSeconds"]
        if window_s > 0:
            cpu = f"{used_ns / 1e9 / window_s * 100:.2f} % of a core over {window_s:.0f} s"
    elif "usageNanoCores" in cpu_after:
        cpu = f"{cpu_after['usageNanoCores'] / 1e7:.2f} % of a core (the kubelet's last rate)"
    mib = {k: f"{memory[k] / 2**20:.1f}" if k in memory else "-" for k in ("workingSetBytes", "rssBytes")}
    return (
        f"| agent container CPU at {replicas} pods, kubelet summary | {cpu} |",
        f"| agent container memory at {replicas} pods, kubelet summary: working set / RSS | "
        f"{mib['workingSetBytes']} / {mib['rssBytes']} MiB |",
    )


def rfc3339_seconds(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def runtime_times(node: RealNode, pods: set[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Each pod's container created and started, on the runtime's clock (wall, seconds)."""
    with grpc.insecure_channel(f"unix://{node.containerd.socket_path}") as channel:
        listed = api_pb2_grpc.RuntimeServiceStub(channel).ListContainers(api_pb2.ListContainersRequest(), timeout=30)
    created = {
        c.labels["io.kubernetes.pod.name"]: c.created_at / 1e9
        for c in listed.containers
        if c.labels.get("io.kubernetes.pod.namespace") == NAMESPACE and c.labels.get("io.kubernetes.pod.name") in pods
    }
    runtime = CriClient(node.containerd.socket_path)

    async def started_at() -> dict[str, float]:
        try:
            records = await runtime.pods()
        finally:
            await runtime.close()
        return {
            p.name: max(c.started_at for c in p.containers)
            for p in records
            if p.namespace == NAMESPACE and p.name in pods and p.containers
        }

    return created, asyncio.run(started_at())


def added_in_cache(node: RealNode) -> dict[str, float]:
    """Each bench pod's first ``added`` event in the agent's cache (the agent's clock: the pass's snapshot)."""
    [agent] = agent_pods(node)
    out = node.kubectl("-n", "coral-system", "exec", agent["metadata"]["name"], "--", "coral", "agent", "events",
                       "--kind", "added", "-o", "json", timeout=120)  # fmt: skip
    added: dict[str, float] = {}
    for event in json.loads(out):
        if event["namespace"] == NAMESPACE:
            added.setdefault(event["pod_name"], rfc3339_seconds(event["time"]))
    return added


def since(added: dict[str, float], reference: dict[str, float]) -> list[float]:
    return [(added[name] - at) * 1000 for name, at in reference.items() if at and name in added]


def harness_discovery_figure() -> tuple[float, float] | None:
    """bench/discovery.py's "pod start -> cache, with events" p50 / p99 from BENCHMARKS.md, in ms."""
    text = (REPO / "BENCHMARKS.md").read_text()
    found = re.search(r"\| pod start -> cache, with events, p50 / p99 \(\d+ pods\) \| (\d+) / (\d+) ms", text)
    return (float(found.group(1)), float(found.group(2))) if found else None


def wait(predicate: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def measure(node: RealNode, colony: Operator, replicas: int) -> str:
    node.kubectl("create", "namespace", NAMESPACE)
    node.kubectl("apply", "-f", "-", input=deployment(NAME, NAMESPACE, 0))
    with pod_watch(node) as created, colony_poll(colony) as (listed, polls):
        time.sleep(2)  # the watch is established before the first pod exists
        started = time.monotonic()
        node.kubectl("-n", NAMESPACE, "scale", "deployment", NAME, f"--replicas={replicas}")
        wait(lambda: len(created.snapshot()) >= replicas, timeout=120, what=f"{replicas} pods in the API")
        wait(
            lambda: len(listed.snapshot().keys() & created.snapshot().keys()) >= replicas,
            timeout=600,
            what=f"{replicas} services in the colony",
        )
        all_listed_s = time.monotonic() - started
    seen_in_api, seen_in_colony = created.snapshot(), listed.snapshot()
    pods = set(seen_in_api) & set(seen_in_colony)
    to_colony = [(seen_in_colony[p] - seen_in_api[p]) * 1000 for p in pods]
    resolution = sorted(polls)[len(polls) // 2] * 1000

    print(f"API -> colony p50/p99 {percentile(to_colony, 50):.0f}/{percentile(to_colony, 99):.0f} ms "
          f"({len(pods)} pods, all in {all_listed_s:.1f} s)", flush=True)  # fmt: skip
    time.sleep(10)  # the health probes' first round and the deltas settle: steady state
    before = summary_of_agent(node)
    time.sleep(CPU_WINDOW_S)
    after = summary_of_agent(node)
    cpu_row, memory_row = usage(before, after, replicas)
    print(f"{memory_row}\n{cpu_row}", flush=True)

    created_at, started_at = runtime_times(node, pods)
    added = added_in_cache(node)
    latencies, from_start = since(added, created_at), since(added, started_at)
    harness = harness_discovery_figure()
    if not latencies:
        raise RuntimeError("no pod's container start and added event found to compare")
    node_p50, node_p99 = percentile(latencies, 50), percentile(latencies, 99)
    if harness is None:
        ratio = "harness figure not found in BENCHMARKS.md"
    else:
        ratios = f"{node_p50 / harness[0]:.1f}x / {node_p99 / harness[1]:.1f}x"
        ratio = f"{ratios} (harness: {harness[0]:.0f} / {harness[1]:.0f} ms)"
    return "\n".join(
        [
            f"Machine: 2 cores, Python {sys.version.split()[0]}; one real node (kubelet v1.32.3 on a private "
            f"containerd, maxPods {KUBELET_MAX_PODS}, pod CIDR {node.pod_cidr}); a Deployment of busybox httpd "
            f"scaled 0 -> {replicas}; the agent and the colony as the chart and deploy/colony.yaml install them.",
            "",
            "| measure | result |",
            "|---|---|",
            f"| pod created in the API -> service in the colony, p50 / p99 ({len(pods)} pods) | "
            f"{percentile(to_colony, 50):.0f} / {percentile(to_colony, 99):.0f} ms |",
            f"| &nbsp; all {replicas} listed in the colony after the scale-up | {all_listed_s:.1f} s |",
            f"| &nbsp; resolution (one `coral services` poll, median) | {resolution:.0f} ms |",
            memory_row,
            cpu_row,
            f"| container created in the runtime -> service in the agent's cache, p50 / p99 (the same "
            f"{len(latencies)} pods) | {node_p50:.0f} / {node_p99:.0f} ms |",
            f"| &nbsp; ratio to the harness figure (pod start -> cache, with events), p50 / p99 | {ratio} |",
            f"| &nbsp; container started (runtime's started_at) -> service in the cache, p50 / p99 | "
            f"{percentile(from_start, 50):.0f} / {percentile(from_start, 99):.0f} ms |",
        ]
    )


def run(replicas: int) -> str:
    if replicas + 2 > KUBELET_MAX_PODS:  # + the agent and the colony
        raise SystemExit(
            f"{replicas} replicas do not fit the kubelet's maxPods {KUBELET_MAX_PODS} with the agent and colony"
        )
    with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
        work = Path(tmp)
        (work / "image").mkdir()
        image = build_agent_image(work / "image")
        with RealNode(work / "node", images=ensure_images(REPO / ".cache" / "images")) as node:
            node.import_image(image)
            (work / "colony").mkdir()
            colony = install_colony(node, work / "colony")
            try:
                install_release(node)
                return measure(node, colony, replicas)
            finally:
                if colony.forward is not None:
                    colony.forward.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=100)
    parser.add_argument("--output", type=Path, help="write the figures into this BENCHMARKS.md")
    args = parser.parse_args()
    publish(run(args.replicas), key="node", title="The agent on a real node (issue 12)", output=args.output)


if __name__ == "__main__":
    main()
