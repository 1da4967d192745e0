"""Control operations on real pods: tap, sample and profile through a real colony.

A server pod (busybox httpd) and a client pod that requests it in a loop run
on a private containerd; the agent process is connected to a colony
process; the operator runs the real `coral` CLI. Every check goes through
what an operator or auditor sees: the pcap file (read by tshark), the CLI's
output and exit code, the colony's audit log and the agent's operations table.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from coral_base.pcap import PcapStream
from coral_base.wire.pprof import profile_pb2
from integration.harness.agent import AgentProcess
from integration.harness.colony import ColonyProcess
from integration.harness.containerd import PrivateContainerd
from integration.harness.images import ImageSet
from integration.harness.pods import ContainerSpec, Pod, PodFactory, PortSpec

HTTPD = ContainerSpec("web", ("httpd", "-f", "-p", "8080", "-h", "/www"), ports=(PortSpec(8080, name="http"),))
BUSY_C = r"""
#include <stdint.h>
volatile uint64_t sink;
__attribute__((noinline)) uint64_t leaf_hot(uint64_t x) {
    for (int i = 0; i < 1000; i++) x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    return x;
}
__attribute__((noinline)) void outer_loop(void) { uint64_t x = 1; for (;;) { x = leaf_hot(x); sink = x; } }
int main(void) { outer_loop(); return 0; }
"""
RATE_PER_MINUTE = 4


@dataclass
class Cluster:
    colony: ColonyProcess
    runtime: PrivateContainerd
    pods: PodFactory
    agent: AgentProcess
    server: Pod
    client: Pod
    directory: Path

    def coral(self, *args: str, operator: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "coral_cli", *args],
            env=self.env(operator),
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def env(self, operator: str) -> dict[str, str]:
        token_file = self.directory / f"{operator}.token"
        if not token_file.exists():
            token_file.write_text(self.colony.token(operator))
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "CORAL_COLONY": self.colony.address,
            "CORAL_COLONY_CA": str(self.colony.ca),
            "CORAL_TOKEN_FILE": str(token_file),
        }

    def operations_all(self) -> list[dict[str, object]]:
        """The operations' final entries (each also has an ``operation.started`` entry, written when routed)."""
        return [
            {**r, **json.loads(str(r["detail"]))}
            for r in self.colony.audit("operation")
            if r["action"] != "operation.started"
        ]

    def operations(self, operator: str) -> list[dict[str, object]]:
        return [r for r in self.operations_all() if r["actor"] == operator]


def agent_config(path: Path, colony: ColonyProcess, **ops: object) -> Path:
    config = {
        "colony": colony.agent_settings(),
        "discovery": {"kubernetes": {"excludeNamespaces": ["kube-system"]}},
        "ops": {"ratePerMinute": RATE_PER_MINUTE, **ops},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def start_node(
    directory: Path, images: ImageSet, colony: ColonyProcess, name: str, **ops: object
) -> tuple[PrivateContainerd, PodFactory, AgentProcess]:
    runtime = PrivateContainerd(directory / "ctrd", images=images).start()
    pods = PodFactory(runtime)
    agent = AgentProcess(
        cri_socket=runtime.socket_path,
        cache=directory / "agent.db",
        node_name=name,
        extra_args=["--config", str(agent_config(directory / "agent.yaml", colony, **ops))],
    ).start()
    return runtime, pods, agent


def registered(colony: ColonyProcess, pod: str) -> bool:
    return any(r["pod_name"] == pod for r in colony.services())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, harness_images: ImageSet) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("ops")
    colony = ColonyProcess(directory / "colony").start()
    runtime, pods, agent = start_node(directory / "node", harness_images, colony, "ops-node")
    try:
        server = pods.create_pod("web-server", containers=(HTTPD,))
        loop = f"while true; do wget -q -O /dev/null http://{server.ip}:8080/ ; sleep 0.1; done"
        client = pods.create_pod("web-client", containers=(ContainerSpec("curl", ("sh", "-c", loop)),))
        colony.wait_for(lambda: registered(colony, "web-server"), timeout=15, what="web-server in the colony")
        cluster = Cluster(colony, runtime, pods, agent, server, client, directory)
        colony.wait_for(lambda: connections(colony, "ops-node"), timeout=15, what="the agent's control stream")
        yield cluster
    finally:
        if agent.alive():
            assert agent.stop() == 0, agent.log_tail()
        pods.close()
        runtime.stop()
        assert colony.stop() == 0


def connections(colony: ColonyProcess, node: str) -> int:
    """How many times the node's agent opened its control stream (from the colony's log)."""
    return sum(1 for line in colony.log().splitlines() if "control.connected" in line and f"node-agent-{node}" in line)


def tshark_requests(pcap: Path | None, data: bytes | None = None) -> list[tuple[str, str, str]]:
    result = subprocess.run(
        [
            "tshark",
            "-r",
            str(pcap) if pcap else "-",
            "-Y",
            "http.request",
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "http.request.uri",
        ],
        input=data,
        capture_output=True,
        check=True,
        timeout=30,
    )
    return [tuple(line.split("\t")) for line in result.stdout.decode().splitlines() if line]  # type: ignore[misc]


def test_tap_returns_a_pcap_with_the_clients_requests_and_stops_on_time(cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "web.pcapng"
    started = time.monotonic()
    done = cluster.coral(
        "tap", "web-server", "--duration", "3s", "--filter", "tcp port 8080", "-w", str(out), operator="alice"
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr.decode()
    requests = tshark_requests(out)
    assert requests and all(r == (cluster.client.ip, cluster.server.ip, "/") for r in requests), requests[:5]
    interfaces, times = zip(*tshark_fields(out, "frame.interface_name", "frame.time_epoch"), strict=True)
    assert set(interfaces) == {"default/web-server"}, "one pod, one interface, named after it"
    assert float(times[-1]) - float(times[0]) >= 2.5, "the capture lost its tail"  # the client talks every ~0.1 s
    [audit] = cluster.operations("alice")
    assert (audit["outcome"], audit["stopped_by"], audit["namespace"], audit["pod_name"]) == (
        "ok",
        "duration",
        "default",
        "web-server",
    )
    assert 3.0 <= float(str(audit["duration_s"])) < 4.0 and elapsed < 6.0, (audit["duration_s"], elapsed)
    assert "packets" in done.stderr.decode() and "stopped by duration" in done.stderr.decode()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600, "a capture holds payload: only its owner reads it"
    assert [p.name for p in tmp_path.iterdir()] == ["web.pcapng"], "no temporary file left behind"


def test_tap_to_stdout_pipes_into_tshark(cluster: Cluster) -> None:
    done = cluster.coral("tap", "default/web-server", "--duration", "2s", "-w", "-", operator="bob")
    assert done.returncode == 0, done.stderr.decode()
    assert any(src == cluster.client.ip for src, _, _ in tshark_requests(None, done.stdout))


def test_the_byte_ceiling_is_honoured_and_the_file_stays_valid(cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "small.pcap"
    done = cluster.coral(
        "tap", "web-server", "--duration", "10s", "--max-bytes", "3000", "--format", "pcap", "-w", str(out),
        operator="carol",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert 24 < out.stat().st_size <= 3000
    subprocess.run(["tshark", "-r", str(out)], check=True, capture_output=True, timeout=30)  # not cut mid-packet
    assert len(list(PcapStream().feed(out.read_bytes()))) >= 1  # classic pcap, as the node wrote it
    [audit] = cluster.operations("carol")
    assert (audit["stopped_by"], audit["bytes"]) == ("max-bytes", out.stat().st_size)
    assert float(str(audit["duration_s"])) < 5.0


def tshark_fields(capture: Path, *fields: str) -> list[tuple[str, ...]]:
    shown = subprocess.run(
        ["tshark", "-r", str(capture), "-T", "fields", *(a for f in fields for a in ("-e", f))],
        capture_output=True,
        check=True,
        timeout=30,
        text=True,
    )
    return [tuple(line.split("\t")) for line in shown.stdout.splitlines() if line]


def test_tap_of_a_deployment_captures_each_pod_into_one_pcapng_an_interface_each(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Pods found as a Deployment's by their names and labels (this agent has no API), on its node's agent."""
    talk = "httpd -p 8080 -h /www; while true; do wget -q -O /dev/null http://127.0.0.1:8080/ ; sleep 0.1; done"
    template = "6f7d9c8b5"
    replicas = [
        cluster.pods.create_pod(
            f"fan-{template}-{suffix}",
            labels={"app": "fan", "pod-template-hash": template},
            containers=(ContainerSpec("web", ("sh", "-c", talk), ports=(PortSpec(8080, name="http"),)),),
        )
        for suffix in ("bcdfg", "hjklm")
    ]
    decoy = cluster.pods.create_pod("fan-tastic", containers=(HTTPD,))  # a name like it, not of the Deployment
    for pod in (*replicas, decoy):
        cluster.colony.wait_for(lambda: registered(cluster.colony, pod.name), timeout=15, what=pod.name)  # noqa: B023
    out = tmp_path / "fan.pcapng"
    done = cluster.coral(
        "tap", "deploy/fan", "--duration", "3s", "--filter", "tcp port 8080", "-w", str(out), operator="nina"
    )
    assert done.returncode == 0, done.stderr.decode()
    by_interface: dict[str, set[str]] = {}
    for interface, source in tshark_fields(out, "frame.interface_name", "ip.src"):
        by_interface.setdefault(interface, set()).add(source)
    assert by_interface == {f"default/{p.name}": {"127.0.0.1"} for p in replicas}, "each pod its interface, no decoy"
    summary = done.stderr.decode()
    assert all(f"tap default/{p.name} on ops-node:" in summary for p in replicas) and "dropped by the kernel" in summary
    info = subprocess.run(["capinfos", "-M", str(out)], capture_output=True, text=True, check=True, timeout=30).stdout
    assert "Number of interfaces in file: 2" in info and info.count("Number of stat entries = 1") == 2, info
    audited = sorted((r["pod_name"], r["outcome"], r["pods"]) for r in cluster.operations("nina"))
    assert audited == [(p.name, "ok", 2) for p in replicas], "each pod's capture audited, as one of two"
    for pod in (*replicas, decoy):
        cluster.pods.delete_pod(pod)


def test_sample_lists_the_client_to_server_flow_without_payload(cluster: Cluster) -> None:
    done = cluster.coral("sample", "web-server", "--duration", "3s", "--top", "500", operator="dave")
    assert done.returncode == 0, done.stderr.decode()
    rows = [line.split() for line in done.stdout.decode().splitlines()[1:]]
    flows = {(r[1], r[2]): (int(r[3]), int(r[4])) for r in rows if r[0] == "tcp"}
    to_server = [
        v
        for (src, dst), v in flows.items()
        if src.startswith(cluster.client.ip + ":") and dst == f"{cluster.server.ip}:8080"
    ]
    assert to_server, flows
    packets, size = max(to_server)
    assert packets >= 3 and 54 * packets <= size <= 1500 * packets, (packets, size)
    [audit] = cluster.operations("dave")
    assert audit["outcome"] == "ok" and int(str(audit["bytes"])) > 0


def test_profile_shows_the_hot_function_of_a_busy_process(cluster: Cluster, tmp_path: Path) -> None:
    source = tmp_path / "busy.c"
    source.write_text(BUSY_C)
    binary = tmp_path / "busy"
    subprocess.run(["gcc", "-O1", "-fno-omit-frame-pointer", "-static", "-o", str(binary), str(source)], check=True)
    wait = "while [ ! -x /tmp/busy ]; do sleep 0.1; done; exec /tmp/busy"
    pod = cluster.pods.create_pod("busy", containers=(ContainerSpec("cpu", ("sh", "-c", wait)),))
    root = Path(f"/proc/{cluster.pods.container_pid(pod.container_ids[0])}/root")
    (root / "tmp" / "busy").write_bytes(binary.read_bytes())
    (root / "tmp" / "busy").chmod(0o755)
    cluster.colony.wait_for(lambda: registered(cluster.colony, "busy"), timeout=15, what="busy pod in the colony")
    out, folded, svg = tmp_path / "profile.pb.gz", tmp_path / "folded.txt", tmp_path / "flame.svg"
    done = cluster.coral(
        "profile", "default/busy", "--duration", "3s", "--frequency", "49", "-w", str(out),
        "--folded", str(folded), "--svg", str(svg), operator="erin",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    stacks = {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in folded.read_text().splitlines()}
    hot = sum(count for stack, count in stacks.items() if stack.endswith(";leaf_hot"))
    assert hot >= 0.8 * sum(stacks.values()) and sum(stacks.values()) >= 49, stacks
    assert all(stack.startswith("busy;") for stack in stacks)
    profile = profile_pb2.Profile.FromString(gzip.decompress(out.read_bytes()))
    names = {profile.string_table[f.name] for f in profile.function}
    assert "leaf_hot" in names and sum(s.value[0] for s in profile.sample) == sum(stacks.values())
    go = shutil.which("go") or "/usr/local/go/bin/go"  # the machine's Go toolchain (its pprof reads our output)
    top = subprocess.run([go, "tool", "pprof", "-top", str(out)], capture_output=True, text=True, timeout=120)
    assert top.returncode == 0 and "leaf_hot" in top.stdout, top.stderr
    assert "leaf_hot" in svg.read_text() and svg.read_text().startswith("<svg")
    assert "not eBPF" in done.stderr.decode()  # this kernel has no headers: the CLI says which engine ran
    cluster.pods.delete_pod(pod)


def test_a_second_operation_on_the_same_pod_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    first = tap_in_background(cluster, "frank", duration="4s", out=tmp_path / "1.pcap")
    second = cluster.coral("sample", "web-server", "--duration", "1s", operator="frank")
    assert first.wait(15) == 0
    assert second.returncode == 2
    assert "one operation per pod: a tap is already running on this pod" in second.stderr.decode()


def test_the_rate_limit_refuses_and_names_the_limit(cluster: Cluster) -> None:
    outcomes = [
        cluster.coral("sample", "web-client", "--duration", "0.3s", operator="gina").returncode
        for _ in range(RATE_PER_MINUTE)
    ]
    refused = cluster.coral("sample", "web-client", "--duration", "0.3s", operator="gina")
    assert outcomes == [0] * RATE_PER_MINUTE and refused.returncode == 2
    assert (
        f"rate limit: at most ops.ratePerMinute={RATE_PER_MINUTE} operations a minute for gina"
        in refused.stderr.decode()
    )
    assert cluster.coral("sample", "web-client", "--duration", "0.3s", operator="hank").returncode == 0  # per operator


def test_an_excluded_namespace_is_refused_by_the_agent(cluster: Cluster) -> None:
    cluster.pods.create_pod("kube-proxy-x7k2p", namespace="kube-system")
    time.sleep(1.0)  # let one reconcile see it (it is skipped, so nothing registers to wait for)
    done = cluster.coral("tap", "kube-system/kube-proxy-x7k2p", "--node", "ops-node", "-w", "-", operator="ivan")
    assert done.returncode == 2
    assert "namespace kube-system is excluded by this agent's filters" in done.stderr.decode()


def test_ctrl_c_cancels_on_the_node_and_the_capture_process_is_gone(cluster: Cluster, tmp_path: Path) -> None:
    cli = tap_in_background(cluster, "judy", duration="60s", out=tmp_path / "c.pcap")
    cli.send_signal(signal.SIGINT)
    assert cli.wait(10) == 130
    stopped = time.monotonic()
    cluster.colony.wait_for(lambda: not _capture_running(cluster), timeout=5, what="dumpcap to exit")
    assert time.monotonic() - stopped < 3.0
    cluster.colony.wait_for(lambda: cluster.operations("judy"), timeout=5, what="the audit entry")
    assert cluster.operations("judy")[0]["outcome"] == "cancelled"
    rows = cluster.agent.read(lambda c: c.operations())
    assert any(r.operator == "judy" and r.outcome == "cancelled" for r in rows)


def test_an_agent_that_dies_mid_operation_gives_a_clear_error_not_a_hang(cluster: Cluster, tmp_path: Path) -> None:
    cli = tap_in_background(cluster, "kim", duration="60s", out=tmp_path / "d.pcap")
    cluster.agent.kill()
    code = cli.wait(15)
    error = cli.stderr.read().decode() if cli.stderr else ""
    assert code == 1 and "disconnected during the operation" in error, error
    cluster.colony.wait_for(
        lambda: not _capture_running(cluster), timeout=5, what="the orphan capture to die with the agent"
    )
    cluster.agent.start()
    cluster.colony.wait_for(lambda: connections(cluster.colony, "ops-node") >= 2, timeout=20, what="reconnect")


def test_observe_only_refuses_tap_and_profile_but_allows_sample(
    cluster: Cluster, tmp_path: Path, harness_images: ImageSet
) -> None:
    runtime, pods, agent = start_node(tmp_path, harness_images, cluster.colony, "observer", observeOnly=True)
    try:
        watched = pods.create_pod("watched", containers=(HTTPD,))
        cluster.colony.wait_for(lambda: registered(cluster.colony, "watched"), timeout=15, what="watched pod")
        cluster.colony.wait_for(
            lambda: connections(cluster.colony, "observer"), timeout=15, what="the observer's stream"
        )
        tap = cluster.coral("tap", "default/watched", "-w", "-", operator="lee")
        profile = cluster.coral("profile", "default/watched", "-w", str(tmp_path / "p.pb.gz"), operator="lee")
        sample = cluster.coral("sample", "default/watched", "--duration", "0.5s", operator="lee")
        assert (tap.returncode, profile.returncode, sample.returncode) == (2, 2, 0)
        assert "observe-only mode: tap is refused on this node" in tap.stderr.decode()
        assert "observe-only mode: profile is refused on this node" in profile.stderr.decode()
        # A filter that tests payload bytes would make sample's counts a payload oracle: refused on the node.
        oracle = cluster.coral(
            "sample", "default/watched", "--duration", "0.5s", "--filter", "tcp[20:4] = 0x47455420", operator="lee"
        )
        assert oracle.returncode == 2, oracle.stderr.decode()
        assert "a sample filter may use only host, net, port and protocol primitives" in oracle.stderr.decode()
        headers = cluster.coral(
            "sample", "default/watched", "--duration", "0.5s", "--filter", "tcp and port 8080", operator="lee"
        )
        assert headers.returncode == 0, headers.stderr.decode()
        pods.delete_pod(watched)

        # A Deployment across both nodes: one capture per pod, each under its own node's guardrails.
        labels = {"pod-template-hash": "7b6c5d4f8"}
        mixed = [
            cluster.pods.create_pod("mix-7b6c5d4f8-bcdfg", labels=labels, containers=(HTTPD,)),
            pods.create_pod("mix-7b6c5d4f8-hjklm", labels=labels, containers=(HTTPD,)),  # on the observer
        ]
        for pod in mixed:
            cluster.colony.wait_for(lambda: registered(cluster.colony, pod.name), timeout=15, what=pod.name)  # noqa: B023
        out = tmp_path / "mix.pcapng"
        both = cluster.coral("tap", "deploy/mix", "--duration", "1s", "-w", str(out), operator="oscar")
        said = both.stderr.decode()
        assert both.returncode == 2, said  # one pod's capture refused: the worst outcome is the exit code
        assert "tap default/mix-7b6c5d4f8-bcdfg on ops-node:" in said
        assert "error: tap default/mix-7b6c5d4f8-hjklm: refused: observe-only mode: tap is refused" in said
        info = subprocess.run(["capinfos", "-M", str(out)], capture_output=True, text=True, check=True, timeout=30)
        assert "Number of interfaces in file: 1" in info.stdout and "default/mix-7b6c5d4f8-bcdfg" in info.stdout
        audited = sorted((r["node_name"], r["outcome"]) for r in cluster.operations("oscar"))
        assert audited == [("observer", "refused"), ("ops-node", "ok")]
        cluster.pods.delete_pod(mixed[0])
    finally:
        assert agent.stop() == 0
        pods.close()
        runtime.stop()


def test_every_request_is_audited_with_the_operators_identity(cluster: Cluster, tmp_path: Path) -> None:
    kept = tmp_path / "yesterday.pcap"
    kept.write_bytes(b"an earlier capture")
    unknown = cluster.coral("tap", "no-such-service", "-w", str(kept), operator="mia")
    assert unknown.returncode == 2 and "no service or pod 'no-such-service'" in unknown.stderr.decode()
    assert kept.read_bytes() == b"an earlier capture", "a refused tap leaves the file it was pointed at alone"
    assert [p.name for p in tmp_path.iterdir()] == ["yesterday.pcap"]
    audited = {(r["actor"], r["action"], r["outcome"]) for r in cluster.operations_all()}
    assert {
        ("alice", "tap", "ok"),
        ("carol", "tap", "ok"),
        ("dave", "sample", "ok"),
        ("erin", "profile", "ok"),
        ("frank", "sample", "refused"),
        ("gina", "sample", "refused"),
        ("ivan", "tap", "refused"),
        ("judy", "tap", "cancelled"),
        ("kim", "tap", "failed"),
        ("lee", "tap", "refused"),
        ("lee", "profile", "refused"),
        ("lee", "sample", "ok"),
        ("mia", "tap", "refused"),
        ("nina", "tap", "ok"),
        ("oscar", "tap", "ok"),
        ("oscar", "tap", "refused"),
    } <= audited
    agent_rows = {(r.operator, r.action, r.outcome) for r in cluster.agent.read(lambda c: c.operations())}
    assert {("alice", "tap", "ok"), ("gina", "sample", "refused"), ("ivan", "tap", "refused")} <= agent_rows


def tap_in_background(cluster: Cluster, operator: str, *, duration: str, out: Path) -> subprocess.Popen[bytes]:
    """`coral tap web-server` as a process of its own, returned once its capture runs on the node."""
    cli = subprocess.Popen(
        [sys.executable, "-m", "coral_cli", "tap", "web-server", "--duration", duration, "-w", str(out)],
        env=cluster.env(operator),
        stderr=subprocess.PIPE,
    )
    cluster.colony.wait_for(lambda: _capture_running(cluster), timeout=10, what="the capture to start")
    return cli


def _capture_running(cluster: Cluster) -> bool:
    """A dumpcap runs in the server pod's network namespace (others on this machine, another test's
    say, do not count: they would make a race of the test)."""
    pod_netns = Path(f"/proc/{cluster.pods.container_pid(cluster.server.container_ids[0])}/ns/net").stat().st_ino
    found = subprocess.run(["pgrep", "-f", "dumpcap -i any -P -w -"], capture_output=True, check=False, text=True)
    for pid in found.stdout.split():
        with contextlib.suppress(OSError):  # it ended meanwhile
            if Path(f"/proc/{pid}/ns/net").stat().st_ino == pod_netns:
                return True
    return False
