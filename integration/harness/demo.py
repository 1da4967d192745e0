"""``make demo``: the product's main job on this machine, end to end, in one command.

It starts, each in a fresh temporary directory:

1. a private containerd with the CRI plugin and a CNI bridge (``PrivateContainerd``: it never touches the
   host's containerd), with the offline test images;
2. a colony (``coral colony start``) with a new CA, id and secret, on two free loopback ports: one for
   operators and enrollment, one for the enrolled agents' mutual TLS (``--agent-listen``), and a status page;
3. the node agent (``coral agent node``), which enrolls with the colony secret, excluding ``kube-system``;
4. sample pods made through CRI exactly as kubelet makes them (``PodFactory``), one per thing to see:
   a plain Deployment-style pod (``discovered``), an annotated one (``overridden``), one in an excluded
   namespace (``skipped``), one with a malformed annotation (an ``error`` event, still registered) and a
   short-lived one (``added`` then ``removed``).

Once the colony shows what the agent found (it waits on conditions, never on fixed sleeps), it prints
``coral services``, ``coral agent events``, the status page address and the commands to paste in another
terminal, then runs until Ctrl-C (or SIGTERM) and removes everything: agent, pods, colony, containerd,
bridge, cgroups and the directory. A failure at any step cleans up the same way and exits 1.

Runs as root (containerd, runc and the CNI bridge need it)::

    python -m integration.harness.demo            # until Ctrl-C
    python -m integration.harness.demo --once     # print, clean up, exit (DEMO_ONCE=1 does the same)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import grpc
import yaml

from coral_base.vocabulary import HealthState
from cri_agent.model import EventKind
from integration.harness.agent import AgentProcess
from integration.harness.colony import ColonyProcess, free_port
from integration.harness.containerd import HarnessError, PrivateContainerd
from integration.harness.images import ensure_images
from integration.harness.pods import ContainerSpec, Pod, PodFactory, PortSpec

REPO = Path(__file__).resolve().parent.parent.parent
COLONY_ID = "demo"
NODE_NAME = "demo-node"
TOKEN_NAME = "demo"
EXCLUDED_NAMESPACE = "kube-system"
WAIT_S = 60.0  # for each condition: a loaded 2-core machine is slow, a healthy one takes a second or two


SLEEPER = ContainerSpec("app", ("sleep", "3600"))


def _httpd(port: int, *, declared: bool = True) -> ContainerSpec:
    ports = (PortSpec(port, name="http"),) if declared else ()
    return ContainerSpec("app", ("httpd", "-f", "-p", str(port), "-h", "/www"), ports=ports)


@dataclass(frozen=True, slots=True)
class SamplePod:
    """A pod the demo creates, and what the agent should make of it."""

    name: str
    shows: str  # one line for the newcomer
    namespace: str = "shop"
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    container: ContainerSpec = SLEEPER
    registered: bool = True  # False: the filters keep it out
    port: int | None = None  # the port its service must show
    error_key: str = ""  # the annotation the agent must report as malformed


CHECKOUT = SamplePod(
    "checkout-7d4b9c6f5d-x2x9z",
    "plain Deployment-style pod: discovered, named after its workload",
    labels={"app": "checkout", "pod-template-hash": "7d4b9c6f5d"},
    container=_httpd(8080),
    port=8080,
)
PAYMENTS = SamplePod(
    "payments",
    "coral.io/* annotations: overridden, health-checked with GET /healthz",
    annotations={
        "coral.io/name": "payments-api",
        "coral.io/type": "http",
        "coral.io/health-endpoint": "/healthz",
        "coral.io/health-interval": "5s",
    },
    container=_httpd(8080),
    port=8080,
)
KUBE_PROXY = SamplePod(
    "kube-proxy-x7k2p",
    f"namespace {EXCLUDED_NAMESPACE} is excluded: skipped, never registered",
    namespace=EXCLUDED_NAMESPACE,
    registered=False,
)
BILLING = SamplePod(
    "legacy-billing",
    'coral.io/port: "eighty" is malformed: one error event, and the pod still registers, named by coral.io/name',
    annotations={"coral.io/name": "billing", "coral.io/port": "eighty"},
    container=_httpd(9090),
    port=9090,
    error_key="coral.io/port",
)
MIGRATE = SamplePod(
    "db-migrate-28js1",
    "short-lived: added, then removed when its pod goes",
    labels={"job-name": "db-migrate"},
)
SAMPLES: tuple[SamplePod, ...] = (CHECKOUT, PAYMENTS, KUBE_PROXY, BILLING)
SHORT_LIVED = MIGRATE


def _say(line: str) -> None:
    print(line, flush=True)  # live through a pipe (make demo | tee) too


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and what to check."""


def _coral(*args: str, env: Mapping[str, str] | None = None) -> str:
    """``coral ARGS`` from this repository (``python -m coral_cli``), its output; a failure is a DemoError."""
    command = [sys.executable, "-m", "coral_cli", *args]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=REPO, check=False
    )
    if done.returncode != 0:
        raise DemoError(f"coral {shlex.join(args)} exited {done.returncode}:\n{done.stderr.strip()}")
    return done.stdout


class Demo:
    """Everything the demo started, stopped in reverse order by ``close()``."""

    def __init__(self, directory: Path, *, out: Callable[[str], None] = _say) -> None:
        self.dir = directory
        self.out = out
        self.started = time.monotonic()
        self._stack = contextlib.ExitStack()
        self.runtime: PrivateContainerd | None = None
        self.colony: ColonyProcess | None = None
        self.agent: AgentProcess | None = None
        self.pods: PodFactory | None = None
        self.token_file = directory / "operator-token"
        self.agent_port = 0

    def step(self, message: str) -> None:
        self.out(f"[{time.monotonic() - self.started:5.1f}s] {message}")

    # -- start-up, in the order of the data flow --------------------------------------------------------------

    def start(self) -> None:
        self.start_runtime()
        self.start_colony()
        self.start_agent()
        self.create_pods()
        self.wait_discovered()
        self.show_short_lived()
        self.wait_colony()

    def start_runtime(self) -> None:
        runtime = PrivateContainerd(self.dir / "containerd", images=ensure_images(REPO / ".cache" / "images"))
        self._stack.callback(runtime.stop)  # stop() also cleans up after a start that failed half-way
        self.runtime = runtime.start()
        self.step(f"containerd ready: socket {runtime.socket_path}, pod subnet {runtime.subnet}")

    def start_colony(self) -> None:
        colony = ColonyProcess(self.dir / "colony", colony_id=COLONY_ID)
        self.agent_port = free_port()
        while self.agent_port == colony.port:
            self.agent_port = free_port()
        colony.extra_args = ["--agent-listen", f"127.0.0.1:{self.agent_port}"]
        self._stack.callback(colony.stop)
        self.colony = colony.start()
        token = _coral(
            "colony",
            "token",
            "create",
            TOKEN_NAME,
            "--scope",
            "read,audit,operate",
            "--dir",
            str(colony.directory),
            "--quiet",
        ).strip()
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        self.step(
            f"colony {COLONY_ID!r} ready: operators and enrollment on {colony.address}, "
            f"agents (mutual TLS) on 127.0.0.1:{self.agent_port}, status page {self.status_page}"
        )

    def start_agent(self) -> None:
        assert self.runtime is not None and self.colony is not None
        config = self.dir / "agent.yaml"
        config.write_text(yaml.safe_dump({"colony": self.colony.agent_settings(heartbeatInterval="5s")}))
        agent = AgentProcess(
            cri_socket=self.runtime.socket_path,
            cache=self.dir / "agent.db",
            node_name=NODE_NAME,
            extra_args=["--config", str(config), "--exclude-namespace", EXCLUDED_NAMESPACE],
        )
        self._stack.callback(agent.stop)
        self.agent = agent.start()
        colony = self.colony
        colony.wait_for(lambda: colony.enrollments(), timeout=WAIT_S, what="the agent's enrollment")
        self.step(f"agent running on node {NODE_NAME} (pid {agent.pid}), enrolled with the colony secret")

    def create_pods(self) -> None:
        assert self.runtime is not None
        self.pods = PodFactory(self.runtime)
        self._stack.callback(self.pods.close)
        for sample in SAMPLES:
            pod = self._create(sample)
            self.step(f"pod {pod.namespace}/{pod.name} ({pod.ip}): {sample.shows}")

    def _create(self, sample: SamplePod) -> Pod:
        assert self.pods is not None
        return self.pods.create_pod(
            sample.name,
            namespace=sample.namespace,
            labels=sample.labels,
            annotations=sample.annotations,
            containers=(sample.container,),
        )

    # -- waiting on what the agent and the colony say --------------------------------------------------------

    def wait_discovered(self) -> None:
        agent = self._agent()
        assert self.pods is not None
        for pod in self.pods.created.values():
            sample = next(s for s in SAMPLES if s.name == pod.name)
            if sample.registered:
                agent.wait_for(
                    lambda: any(s.port == sample.port for s in agent.service_by_pod(pod.uid)),  # noqa: B023
                    timeout=WAIT_S,
                    what=f"{pod.namespace}/{pod.name} registered with port {sample.port}",
                )
            else:
                agent.wait_for(
                    lambda: self._event(EventKind.SKIPPED, pod.uid),  # noqa: B023
                    timeout=WAIT_S,
                    what=f"{pod.namespace}/{pod.name} skipped",
                )
            if sample.error_key:
                agent.wait_for(
                    lambda: self._event(EventKind.ERROR, pod.uid),  # noqa: B023
                    timeout=WAIT_S,
                    what=f"the error event of {pod.namespace}/{pod.name}",
                )
        self.step("the agent found them all")

    def show_short_lived(self) -> None:
        agent = self._agent()
        assert self.pods is not None
        pod = self._create(SHORT_LIVED)
        self.step(f"pod {pod.namespace}/{pod.name} ({pod.ip}): {SHORT_LIVED.shows}")
        agent.wait_for(lambda: agent.service_by_pod(pod.uid), timeout=WAIT_S, what=f"{pod.name} registered")
        self.pods.delete_pod(pod)
        agent.wait_for(lambda: self._event(EventKind.REMOVED, pod.uid), timeout=WAIT_S, what=f"{pod.name} removed")
        self.step(f"pod {pod.namespace}/{pod.name} deleted: the agent removed its service")

    def wait_colony(self) -> None:
        """Until the colony holds exactly the agent's services, each port healthy (a probe that ran before the
        pod's httpd listened said unhealthy: the next one, 5-10 s later, tells the truth)."""
        agent, colony = self._agent(), self.colony
        assert colony is not None

        def in_sync() -> bool:
            rows = [r for r in colony.services() if not r["stale"]]
            healthy = all(r["health_state"] == HealthState.HEALTHY for r in rows if r["port"])
            return healthy and {r["key"] for r in rows} == {s.key for s in agent.services()}

        colony.wait_for(in_sync, timeout=WAIT_S, what="the colony to hold the agent's services, healthy")
        self.step("the colony holds the agent's services, each healthy")

    def _event(self, kind: EventKind, pod_uid: str) -> bool:
        return any(e.pod_uid == pod_uid for e in self._agent().events(kind=kind))

    def _agent(self) -> AgentProcess:
        assert self.agent is not None
        return self.agent

    # -- what the newcomer sees -------------------------------------------------------------------------------

    @property
    def status_page(self) -> str:
        assert self.colony is not None
        return f"{self.colony.web_url}/"

    def operator_env(self) -> dict[str, str]:
        assert self.colony is not None
        return {
            "CORAL_COLONY": self.colony.address,
            "CORAL_COLONY_CA": str(self.colony.ca),
            "CORAL_TOKEN_FILE": str(self.token_file),
        }

    def report(self) -> None:
        env = self.operator_env()
        cache = str(self._agent().cache_path)
        for args, with_env in ((("services",), True), (("agent", "events", "--cache", cache), False)):
            self.out(f"\n$ coral {shlex.join(args)}")
            self.out(_coral(*args, env=env if with_env else None).rstrip())
        exports = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
        self.out(
            "\n".join(
                (
                    "",
                    f"Status page: {self.status_page}",
                    "",
                    "In another terminal (in this repository, as root), ask the colony and the agent yourself:",
                    f"  export {exports}",
                    "  coral agents",
                    "  coral services -o wide",
                    "  coral audit --kind discovery",
                    "  coral sample payments-api --duration 3s",
                    f"  coral agent events --cache {cache} --watch",
                    "and add a pod of your own (it appears in `coral services` within a second):",
                    f"  python -m integration.harness pod --dir {self.dir} web --namespace shop --port 8080",
                )
            )
        )

    def watch(self) -> None:
        """Until interrupted; an agent or colony that dies ends the demo with the tail of its log."""
        agent, colony = self._agent(), self.colony
        assert colony is not None and colony.process is not None
        while True:
            if not agent.alive():
                raise DemoError(f"the agent stopped:\n{agent.log_tail()}")
            if colony.process.poll() is not None:
                raise DemoError(f"the colony stopped:\n{colony.log()[-3000:]}")
            time.sleep(1.0)

    def close(self) -> None:
        self._stack.close()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run(*, once: bool, out: Callable[[str], None] = _say) -> int:
    """The demo; its exit code (0: shown and cleaned up, 1: a step failed, cleaned up).

    Ctrl-C and SIGTERM stop it, even where SIGINT came in ignored (a background job of a script); neither
    interrupts the clean-up once it began."""
    if os.geteuid() != 0:
        out("make demo runs as root: containerd, runc and the CNI bridge need it (sudo make demo)")
        return 1
    previous = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS}
    directory = Path(tempfile.mkdtemp(prefix="coral-demo-"))
    demo = Demo(directory, out=out)
    code = 0
    try:
        out(f"coral demo in {directory} (removed on exit)")
        demo.start()
        demo.report()
        if not once:
            out("\nRunning. Ctrl-C stops the demo and removes everything it made.")
            demo.watch()
    except KeyboardInterrupt:
        out("\ninterrupted")
    except (DemoError, HarnessError, AssertionError, grpc.RpcError, subprocess.SubprocessError) as exc:
        out(f"\ndemo failed: {exc}")
        code = 1
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        out("cleaning up: agent, pods, colony, containerd, bridge, directory")
        try:
            demo.close()
        finally:
            shutil.rmtree(directory, ignore_errors=True)  # containerd's part is unmounted and gone already
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    out("done" if code == 0 else f"done (exit {code})")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration.harness.demo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--once",
        action="store_true",
        default=os.environ.get("DEMO_ONCE", "") not in ("", "0"),
        help="print what the demo shows, clean up and exit (default: run until Ctrl-C; DEMO_ONCE=1 sets it)",
    )
    args = parser.parse_args(argv)
    return run(once=args.once)


if __name__ == "__main__":
    sys.exit(main())
