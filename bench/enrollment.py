"""Enrollment under load: 1,000 agents enroll and register 250 services each over mutual TLS, next to the
same registration with the shared secret on the public endpoint (TLS only).

    python -m bench.enrollment --agents 1000 --services 250 --output BENCHMARKS.md

Two runs, each against its own real colony process (``coral colony start``):

- **TLS only**: the colony runs with ``--allow-shared-secret-agents``; every
  agent dials the public endpoint (server TLS) and registers its full set with
  the shared secret, as agents did before enrollment.
- **mutual TLS**: the colony runs as it does by default. Every agent first
  enrolls: a channel to the public endpoint, ``coral.identity.v1.Enrollment/
  Enroll`` with the shared secret and a CSR (the request ``cri_agent.
  colony_codec.enroll_request`` builds), the channel closed, as
  ``cri_agent.enrollment.AgentIdentity`` does. Once all have enrolled, each
  dials the agent endpoint with its key and certificate (as
  ``AgentIdentity.channel()`` builds it) and registers there.

In both runs each agent has its own channel (its own TLS handshake, as a node
agent does), ``--in-flight`` agents at a time; the registration channels stay
open until the run ends, as agents keep theirs. Keys and CSRs are made in this
process before the clock starts (``cri_agent.keygen.key_and_request``, what
the agent's child process runs), and the registration requests are serialized
beforehand: what is timed is the colony's work and the wire. The agent's own
cost of a key (``python -m cri_agent.keygen``, a child process) is timed apart.
Measured per phase: wall time, each agent's call (channel, handshake, RPC),
the colony's CPU (utime + stime of ``/proc/<pid>/stat``); and the colony's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio

from bench.colony import service
from bench.report import memory_mib, percentile, publish
from coral_base.vocabulary import EnrollMethod
from coral_base.wire.coral.identity.v1 import identity_pb2, identity_pb2_grpc
from coral_base.wire.coral.mesh.v1 import mesh_pb2
from cri_agent import colony_codec
from cri_agent.keygen import key_and_request
from integration.harness.colony import ColonyProcess, free_port

VERSION = "0.1.0"
KEYGEN_RUNS = 5
TIMEOUT_S = 120.0
TLS_ONLY, MUTUAL_TLS = "TLS only (shared secret, public endpoint)", "mutual TLS (enrolled, agent endpoint)"


@dataclass(frozen=True, slots=True)
class AgentKey:
    node_name: str
    key_pem: str
    csr_pem: str


@dataclass(frozen=True, slots=True)
class Phase:
    """One phase of a run: its wall time, each agent's call, the colony's CPU."""

    wall_s: float
    calls_ms: list[float]
    colony_cpu_s: float


@dataclass(slots=True)
class Run:
    mode: str
    phases: dict[str, Phase] = field(default_factory=dict)
    idle_rss: float = 0.0
    final_rss: float = 0.0
    peak_rss: float = 0.0
    load_cpu_s: float = 0.0  # this process (the load generator), over the run: serializing included
    services: int = 0
    agents: int = 0
    enrollments: int = 0
    complaints: list[str] = field(default_factory=list)  # the colony's log lines at WARNING or above

    @property
    def total_s(self) -> float:
        return sum(p.wall_s for p in self.phases.values())

    @property
    def colony_cpu_s(self) -> float:
        return sum(p.colony_cpu_s for p in self.phases.values())


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_keys(agents: int) -> tuple[list[AgentKey], float]:
    """A key and CSR per agent, made here; (keys, seconds it took)."""
    started = time.perf_counter()
    keys = []
    for a in range(agents):
        node = f"node-{a}"
        made = key_and_request(node)  # the agent passes its node name (cri_agent.enrollment)
        keys.append(AgentKey(node_name=node, key_pem=made["key_pem"], csr_pem=made["csr_pem"]))
    return keys, time.perf_counter() - started


def keygen_child_ms(runs: int) -> list[float]:
    """Wall milliseconds of ``python -m cri_agent.keygen``, the child process an agent runs for a key."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "cri_agent.keygen", "node-x"], capture_output=True, stdin=subprocess.DEVNULL
        )
        samples.append((time.perf_counter() - started) * 1000)
        assert done.returncode == 0 and "csr_pem" in json.loads(done.stdout), done.stderr
    return samples


def register_requests(colony: ColonyProcess, agents: int, services: int, *, secret: str) -> list[bytes]:
    """Each agent's full set, serialized; with ``secret`` for the public endpoint, without for an enrolled agent
    (whose certificate names it)."""
    return [
        mesh_pb2.RegisterRequest(
            agent_id=f"node-agent-node-{a}",  # what an enrolled agent's certificate names (signer.agent_id_for)
            colony_id=colony.colony_id,
            colony_secret=secret,
            version=VERSION,
            node_name=f"node-{a}",
            node_labels={"topology.kubernetes.io/zone": f"zone-{a % 3}"},
            services=[service(a, i) for i in range(services)],
        ).SerializeToString()
        for a in range(agents)
    ]


async def timed_phase(pid: int, agents: int, in_flight: int, call: Callable[[int], Awaitable[None]]) -> Phase:
    """``call(agent)`` for every agent, ``in_flight`` at a time; each call's milliseconds."""
    gate = asyncio.Semaphore(in_flight)
    calls: list[float] = [0.0] * agents

    async def one(agent: int) -> None:
        async with gate:
            sent = time.perf_counter()
            await call(agent)
            calls[agent] = (time.perf_counter() - sent) * 1000

    cpu = cpu_seconds(pid)
    started = time.perf_counter()
    await asyncio.gather(*(one(a) for a in range(agents)))
    wall = time.perf_counter() - started
    return Phase(wall_s=wall, calls_ms=calls, colony_cpu_s=cpu_seconds(pid) - cpu)


async def register(
    channel: grpc.aio.Channel, request: bytes, channels: list[grpc.aio.Channel], *, expect_agent: str
) -> None:
    channels.append(channel)  # kept open until the run ends, as an agent keeps its channel
    # Requests are serialized beforehand: no request serializer, bytes go out as they are.
    call = channel.unary_unary(
        "/coral.mesh.v1.Mesh/Register",
        request_serializer=None,
        response_deserializer=mesh_pb2.RegisterResponse.FromString,
    )
    answer = await call(request, timeout=TIMEOUT_S)
    assert answer.accepted and not answer.refused_keys and answer.session_token, (expect_agent, answer)


async def tls_only(colony: ColonyProcess, pid: int, agents: int, services: int, in_flight: int) -> dict[str, Phase]:
    ca = colony.ca.read_bytes()
    requests = register_requests(colony, agents, services, secret=colony.secret_file.read_text().strip())
    channels: list[grpc.aio.Channel] = []

    async def one(agent: int) -> None:
        channel = grpc.aio.secure_channel(colony.address, grpc.ssl_channel_credentials(root_certificates=ca))
        await register(channel, requests[agent], channels, expect_agent=f"node-agent-node-{agent}")

    try:
        return {"register": await timed_phase(pid, agents, in_flight, one)}
    finally:
        await asyncio.gather(*(c.close(None) for c in channels))


async def enroll_all(
    colony: ColonyProcess, pid: int, keys: Sequence[AgentKey], in_flight: int
) -> tuple[Phase, list[identity_pb2.Certificate]]:
    """Every agent enrolled with the shared secret on the public endpoint; the phase and each certificate."""
    ca = colony.ca.read_bytes()
    secret = colony.secret_file.read_text().strip()
    enroll = [
        colony_codec.enroll_request(
            colony_id=colony.colony_id,
            node_name=k.node_name,
            csr_pem=k.csr_pem,
            method=EnrollMethod.SECRET,
            credential=secret,
            version=VERSION,
        )
        for k in keys
    ]
    certificates: list[identity_pb2.Certificate | None] = [None] * len(keys)

    async def enroll_one(agent: int) -> None:
        # As AgentIdentity._enroll: a channel to the public endpoint for the one call, then closed.
        channel = grpc.aio.secure_channel(colony.address, grpc.ssl_channel_credentials(root_certificates=ca))
        async with channel:
            certificates[agent] = await identity_pb2_grpc.EnrollmentStub(channel).Enroll(
                enroll[agent], timeout=TIMEOUT_S
            )

    phase = await timed_phase(pid, len(keys), in_flight, enroll_one)
    return phase, [c for c in certificates if c is not None]


def agent_channel(ca: bytes, key: AgentKey, answer: identity_pb2.Certificate) -> tuple[str, grpc.aio.Channel]:
    """(agent id, a channel to the agent endpoint) as ``AgentIdentity.channel()`` builds it: the pinned CA and
    those the colony sent, the agent's key and certificate."""
    agent_id, certificate_pem, ca_pem, _, _, agent_port = colony_codec.certificate(answer)
    assert agent_id == f"node-agent-{key.node_name}", agent_id
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca + b"\n" + ca_pem.encode(),
        private_key=key.key_pem.encode(),
        certificate_chain=certificate_pem.encode(),
    )
    return agent_id, grpc.aio.secure_channel(f"127.0.0.1:{agent_port}", credentials)


async def mutual_tls(
    colony: ColonyProcess, pid: int, keys: Sequence[AgentKey], services: int, in_flight: int
) -> dict[str, Phase]:
    ca = colony.ca.read_bytes()
    enrolled, certificates = await enroll_all(colony, pid, keys, in_flight)
    requests = register_requests(colony, len(keys), services, secret="")
    phases = {"enroll": enrolled}
    channels: list[grpc.aio.Channel] = []

    async def register_one(agent: int) -> None:
        agent_id, channel = agent_channel(ca, keys[agent], certificates[agent])
        await register(channel, requests[agent], channels, expect_agent=agent_id)

    try:
        phases["register"] = await timed_phase(pid, len(keys), in_flight, register_one)
    finally:
        await asyncio.gather(*(c.close(None) for c in channels))
    return phases


def count(colony: ColonyProcess, table: str) -> int:
    db = sqlite3.connect(f"file:{colony.database}?mode=ro", uri=True)
    try:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        db.close()


def complaints(colony: ColonyProcess) -> list[str]:
    """The colony's log lines at WARNING or above (its log is JSON, one event a line)."""
    found = []
    for line in colony.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            found.append(line)  # not the colony's own structured log: a traceback, grpc's C core
            continue
        if str(record.get("level", "")).upper() in ("WARNING", "ERROR", "CRITICAL"):
            found.append(line)
    return found


def run(mode: str, agents: int, services: int, in_flight: int, keys: Sequence[AgentKey]) -> Run:
    result = Run(mode)
    with tempfile.TemporaryDirectory() as tmp:
        colony = ColonyProcess(Path(tmp) / "colony", heartbeat_timeout=3600)
        colony.extra_args = ["--agent-listen", f"127.0.0.1:{free_port()}"]
        if mode == TLS_ONLY:
            colony.extra_args.append("--allow-shared-secret-agents")
        colony.start()
        assert colony.process is not None
        pid = colony.process.pid
        try:
            result.idle_rss = memory_mib(pid)[0]
            load_cpu = own_cpu_seconds()
            if mode == TLS_ONLY:
                result.phases = asyncio.run(tls_only(colony, pid, agents, services, in_flight))
            else:
                result.phases = asyncio.run(mutual_tls(colony, pid, keys, services, in_flight))
            result.load_cpu_s = own_cpu_seconds() - load_cpu  # includes serializing the requests
            result.final_rss, result.peak_rss = memory_mib(pid)
            result.services, result.agents, result.enrollments = (
                count(colony, table) for table in ("services", "agents", "enrollments")
            )
        finally:
            colony.stop()
            result.complaints = complaints(colony)
    assert result.services == agents * services, (result.services, agents * services)
    assert result.agents == agents, (result.agents, agents)
    assert result.enrollments == (agents if mode == MUTUAL_TLS else 0), result.enrollments
    return result


def _per_agent(phase: Phase | None) -> str:
    if phase is None:
        return "-"
    return f"{statistics.median(phase.calls_ms):.0f} / {percentile(phase.calls_ms, 99):.0f} ms"


def _wall(phase: Phase | None, services: int = 0) -> str:
    if phase is None:
        return "-"
    rate = f" ({services / phase.wall_s:,.0f} services/s)" if services else ""
    return f"{phase.wall_s:.1f} s{rate}"


def _cpu(phase: Phase | None) -> str:
    return "-" if phase is None else f"{phase.colony_cpu_s:.1f} s"


def report(
    agents: int,
    services: int,
    in_flight: int,
    runs: Sequence[Run],
    keys_s: float,
    keygen_ms: list[float],
) -> str:
    total = agents * services
    head = "| measure | " + " | ".join(r.mode for r in runs) + " |"

    def row(measure: str, cell: Callable[[Run], str]) -> str:
        return f"| {measure} | " + " | ".join(cell(r) for r in runs) + " |"

    lines = [
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, load average "
        f"{os.getloadavg()[0]:.1f} at the end; the load generator runs on the same machine. {agents:,} agents x "
        f"{services} services ({total:,}), {in_flight} agents in flight, one channel (one TLS handshake) per agent "
        "and per call of the table.",
        "",
        head,
        "|---|" + "---|" * len(runs),
        row(
            f"**total**: every agent enrolled (mutual TLS only) and registered its {services} services",
            lambda r: f"**{r.total_s:.1f} s**",
        ),
        row(f"enrollment of {agents:,} agents (Enroll, CSR signed), wall", lambda r: _wall(r.phases.get("enroll"))),
        row(
            "enrollment per agent (channel + TLS handshake + Enroll), p50 / p99",
            lambda r: _per_agent(r.phases.get("enroll")),
        ),
        row(f"registration of {total:,} services, wall", lambda r: _wall(r.phases.get("register"), total)),
        row(
            f"registration per agent ({services} services: channel + handshake + Register), p50 / p99",
            lambda r: _per_agent(r.phases.get("register")),
        ),
        row(
            "colony CPU (utime + stime): enrollment / registration / **total**",
            lambda r: f"{_cpu(r.phases.get('enroll'))} / {_cpu(r.phases.get('register'))} / **{r.colony_cpu_s:.1f} s**",
        ),
        row(
            "colony CPU per agent: enrollment / registration",
            lambda r: " / ".join(
                "-" if (p := r.phases.get(name)) is None else f"{p.colony_cpu_s / agents * 1000:.1f} ms"
                for name in ("enroll", "register")
            ),
        ),
        row(
            "colony RSS: idle / after the run / peak",
            lambda r: f"{r.idle_rss:.0f} / {r.final_rss:.0f} / {r.peak_rss:.0f} MiB",
        ),
        row("load generator CPU (this process, serializing included)", lambda r: f"{r.load_cpu_s:.1f} s"),
        row(
            "registry after the run: services / agents / enrollments",
            lambda r: f"{r.services:,} / {r.agents:,} / {r.enrollments:,}",
        ),
        row("colony log lines at WARNING or above", lambda r: str(len(r.complaints))),
        "",
        f"Not in the figures: each agent's key and CSR, made in this process before the clock started "
        f"({keys_s / agents * 1000:.1f} ms per agent, {keys_s:.1f} s for {agents:,}). A node agent makes its key in "
        f"a child process, `python -m cri_agent.keygen` (interpreter start and the `cryptography` import): "
        f"{statistics.median(keygen_ms):.0f} ms wall, median of {len(keygen_ms)} (min {min(keygen_ms):.0f}, "
        f"max {max(keygen_ms):.0f}), once per enrollment and renewal, on its own node.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--services", type=int, default=250)
    parser.add_argument("--in-flight", type=int, default=50, help="agents enrolling or registering at a time")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    keygen_ms = keygen_child_ms(KEYGEN_RUNS)
    keys, keys_s = make_keys(args.agents)
    runs = [run(mode, args.agents, args.services, args.in_flight, keys) for mode in (TLS_ONLY, MUTUAL_TLS)]
    for r in runs:
        for line in r.complaints[:20]:
            print(f"colony ({r.mode}): {line}", file=sys.stderr)
    body = report(args.agents, args.services, args.in_flight, runs, keys_s, keygen_ms)
    publish(body, key="enrollment", title="Enrollment: registration with mutual TLS (issue 10)", output=args.output)


if __name__ == "__main__":
    main()
