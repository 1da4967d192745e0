"""Discovery benchmark on a real containerd with N pods (default 250).

Measures, on this machine:
  1. full snapshot time (CRI list + verbose status cache + /proc scan and
     enrichment), cold and warm, and the bare CRI calls it makes
     (ListPodSandbox + ListContainers) for the ratio;
  2. the agent process at steady state with N pods: RSS and CPU;
  3. pod started -> service in the cache latency, p50/p99, with runtime
     events and with resync only;
  4. (also alone with ``--faults``) on a misbehaving node: StopPodSandbox ->
     services removed from the cache, p50/p99 over pods stopped two at a
     time, and discovery events on a node where nothing changes after 20
     containers restarted once (per hour, with light passes and full
     resyncs running).

Usage (root; after `make setup`):
    python -m bench.discovery --pods 250 --output BENCHMARKS.md
    python -m bench.discovery --faults --output BENCHMARKS.md
Results are printed and written into BENCHMARKS.md between markers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import grpc

from bench.report import memory_mib, percentile, publish, timed
from coral_base.wire.cri.runtime.v1 import api_pb2, api_pb2_grpc
from cri_agent.discovery.containers import SETTLE_S
from cri_agent.providers.cri import CriClient
from cri_agent.providers.proc import ProcFS
from integration.harness.agent import AgentProcess
from integration.harness.containerd import PrivateContainerd
from integration.harness.images import ensure_images
from integration.harness.pods import ContainerSpec, PodFactory, PortSpec

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def web(name: str, namespace: str = "bench") -> dict[str, object]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": {"app": name.rsplit("-", 1)[0]},
        "containers": (
            ContainerSpec("web", ("httpd", "-f", "-p", "8080", "-h", "/www"), ports=(PortSpec(8080, name="http"),)),
        ),
    }


def measure_snapshot(socket: Path, repeat: int) -> dict[str, float]:
    proc = ProcFS()

    async def cri_pass(client: CriClient) -> int:
        return len(await client.pods())

    loop = asyncio.new_event_loop()
    client = CriClient(socket)
    cold = timed(lambda: loop.run_until_complete(cri_pass(client)), 1)[0]
    pods = loop.run_until_complete(client.pods())
    warm_cri = timed(lambda: loop.run_until_complete(cri_pass(client)), repeat)
    warm_proc = timed(lambda: proc.enrich(pods), repeat)

    def full() -> None:
        proc.enrich(loop.run_until_complete(client.pods()))

    warm_full = timed(full, repeat)
    loop.run_until_complete(client.close())
    loop.close()

    stub = api_pb2_grpc.RuntimeServiceStub(grpc.insecure_channel(f"unix://{socket}"))
    ready = api_pb2.PodSandboxFilter(state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_READY))

    def bare() -> None:
        stub.ListPodSandbox(api_pb2.ListPodSandboxRequest(filter=ready))
        stub.ListContainers(api_pb2.ListContainersRequest())

    bare_ms = timed(bare, repeat)
    return {
        "pods": float(len(pods)),
        "cold_ms": cold,
        "cri_ms": statistics.median(warm_cri),
        "proc_ms": statistics.median(warm_proc),
        "full_ms": statistics.median(warm_full),
        "full_p99_ms": percentile(warm_full, 99),
        "bare_ms": statistics.median(bare_ms),
    }


def rss_and_cpu(pid: int, seconds: float) -> tuple[float, float]:
    def cpu_ticks() -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    start_ticks, start = cpu_ticks(), time.monotonic()
    time.sleep(seconds)
    ticks, elapsed = cpu_ticks() - start_ticks, time.monotonic() - start
    return memory_mib(pid)[0], ticks / CLK_TCK / elapsed * 100


def latencies(agent: AgentProcess, pods: PodFactory, prefix: str, count: int) -> list[float]:
    samples = []
    for i in range(count):
        pod = pods.create_pod(**web(f"{prefix}-{i}"))  # type: ignore[arg-type]
        started = time.monotonic()
        agent.wait_for(partial(agent.service_by_pod, pod.uid), timeout=30, what=pod.name, poll=0.005)
        samples.append((time.monotonic() - started) * 1000)
    return samples


def removal_latencies(agent: AgentProcess, pods: PodFactory, count: int) -> list[float]:
    """StopPodSandbox (kubelet's stop, no removal) -> the pod's services gone from the cache, two pods at a time."""
    samples = []
    for i in range(0, count, 2):
        pair = [pods.create_pod(**web(f"stop-{i + j}", namespace="stops")) for j in range(2)]  # type: ignore[arg-type]
        for pod in pair:
            agent.wait_for(partial(agent.service_by_pod, pod.uid), timeout=30, what=pod.name, poll=0.005)
        stopped = []
        for pod in pair:
            pods.stop_pod(pod)
            stopped.append(time.monotonic())
        for pod, at in zip(pair, stopped, strict=True):
            agent.wait_for(lambda: not agent.service_by_pod(pod.uid), timeout=30, what="removal", poll=0.005)  # noqa: B023
            samples.append((time.monotonic() - at) * 1000)
        for pod in pair:
            pods.delete_pod(pod)
    return samples


def quiet_events_per_hour(agent: AgentProcess, pods: PodFactory, containers: int, window_s: float) -> float:
    """Discovery events on a node where nothing changes, after each of ``containers`` restarted once."""
    created = [pods.create_pod(**web(f"restarted-{i}", namespace="quiet")) for i in range(containers)]  # type: ignore[arg-type]
    for pod in created:
        agent.wait_for(partial(agent.service_by_pod, pod.uid), timeout=30, what=pod.name)
    for pod in created:
        pods.restart_container(pod, "web")
    time.sleep(SETTLE_S + 2)  # every restart past its grace: from here on nothing changes on the node
    last = agent.last_event_id()
    time.sleep(window_s)
    return len(agent.events(since_id=last)) * 3600 / window_s


def run_faults(removal_pods: int, restarted: int, window_s: float) -> str:
    work = Path(tempfile.mkdtemp(prefix="coral-bench-"))
    images = ensure_images(REPO / ".cache" / "images")
    with PrivateContainerd(work / "containerd", images=images) as runtime:
        factory = PodFactory(runtime)
        agent = AgentProcess(
            cri_socket=runtime.socket_path,
            cache=work / "faults.db",
            extra_args=("--poll-interval", "5s", "--resync-interval", "20s"),
        ).start()
        try:
            removal = removal_latencies(agent, factory, removal_pods)
            print(f"removal: p50 {percentile(removal, 50):.0f} ms, p99 {percentile(removal, 99):.0f} ms", flush=True)
            per_hour = quiet_events_per_hour(agent, factory, restarted, window_s)
        finally:
            agent.stop()
            factory.close()
    shutil.rmtree(work, ignore_errors=True)
    return "\n".join(
        [
            f"Machine: {os.cpu_count()} cores, containerd from Debian; the agent with runtime events, "
            "a light pass every 5 s and a full resync every 20 s.",
            "",
            "| measure | result | target |",
            "|---|---|---|",
            f"| StopPodSandbox -> services gone from the cache, p50 / p99 ({len(removal)} pods, stopped two "
            f"at a time) | {percentile(removal, 50):.0f} / {percentile(removal, 99):.0f} ms | p99 < 1 s |",
            f"| discovery events on a quiet node with {restarted} containers that restarted once "
            f"(observed {window_s:.0f} s) | {per_hour:.0f} per hour | 0 |",
        ]
    )


def run(count: int, repeat: int, idle_s: float, latency_pods: int) -> str:
    work = Path(tempfile.mkdtemp(prefix="coral-bench-"))
    images = ensure_images(REPO / ".cache" / "images")
    lines: list[str] = []
    with PrivateContainerd(work / "containerd", images=images) as runtime:
        factory = PodFactory(runtime)
        started = time.monotonic()
        factory.create_pods_concurrently([web(f"svc{i:03d}-{i}") for i in range(count)])
        create_s = time.monotonic() - started
        snap = measure_snapshot(runtime.socket_path, repeat)

        print(f"snapshot: {snap}", flush=True)
        agent = AgentProcess(cri_socket=runtime.socket_path, cache=work / "events.db").start()
        try:
            agent.wait_for(lambda: len(agent.services()) >= count, timeout=300, what=f"{count} services")
            time.sleep(2)
            rss, cpu = rss_and_cpu(agent.pid, idle_s)
            print(f"steady state: {rss:.1f} MiB, {cpu:.2f} % CPU", flush=True)
            with_events = latencies(agent, factory, "ev", latency_pods)
        finally:
            agent.stop()

        resync = 2.0
        polling = AgentProcess(
            cri_socket=runtime.socket_path,
            cache=work / "resync.db",
            extra_args=("--no-events", "--resync-interval", f"{resync}s"),
        )
        try:
            polling.start()
            polling.wait_for(lambda: len(polling.services()) >= count, timeout=300, what="services")
            resync_only = latencies(polling, factory, "rs", latency_pods)
        finally:
            polling.stop()
        factory.close()
    shutil.rmtree(work, ignore_errors=True)

    ratio = snap["full_ms"] / snap["bare_ms"]
    lines += [
        f"Machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, containerd from Debian, "
        f"{int(snap['pods'])} pods of 1 container each (+ pause), {count} created in {create_s:.1f} s.",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        f"| full snapshot, warm (CRI + /proc), median | {snap['full_ms']:.1f} ms "
        f"(p99 {snap['full_p99_ms']:.1f} ms) | < 200 ms |",
        f"| &nbsp; of which CRI list + cached status | {snap['cri_ms']:.1f} ms | |",
        f"| &nbsp; of which /proc scan + enrichment | {snap['proc_ms']:.1f} ms | |",
        f"| first snapshot, cold (verbose status of every sandbox and container) | {snap['cold_ms']:.1f} ms | |",
        f"| bare CRI calls (ListPodSandbox + ListContainers), median | {snap['bare_ms']:.1f} ms | |",
        f"| ratio full snapshot / bare CRI calls | {ratio:.1f}x | |",
        f"| ratio CRI part of the snapshot / bare CRI calls | {snap['cri_ms'] / snap['bare_ms']:.1f}x | |",
        f"| agent RSS at steady state, {count} pods | {rss:.1f} MiB | < 80 MiB |",
        f"| agent CPU at steady state over {idle_s:.0f} s | {cpu:.2f} % of a core | < 1 % |",
        f"| pod start -> cache, with events, p50 / p99 ({latency_pods} pods) | "
        f"{percentile(with_events, 50):.0f} / {percentile(with_events, 99):.0f} ms | p99 < 1 s |",
        f"| pod start -> cache, resync only ({resync:.0f} s), p50 / p99 | "
        f"{percentile(resync_only, 50):.0f} / {percentile(resync_only, 99):.0f} ms | within one resync |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pods", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of steady-state sampling")
    parser.add_argument("--latency-pods", type=int, default=40)
    parser.add_argument("--faults", action="store_true", help="only the misbehaving-node figures")
    parser.add_argument("--removal-pods", type=int, default=50)
    parser.add_argument("--restarted", type=int, default=20)
    parser.add_argument("--quiet-window", type=float, default=120.0, help="seconds of a node where nothing changes")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if not args.faults:
        body = run(args.pods, args.repeat, args.idle, args.latency_pods)
        publish(body, key="discovery", title="Discovery (issue 2)", output=args.output)
    faults = run_faults(args.removal_pods, args.restarted, args.quiet_window)
    title = "Discovery on a misbehaving node (issue 14)"
    publish(faults, key="discovery-faults", title=title, output=args.output, module="discovery")


if __name__ == "__main__":
    main()
