"""Reliability: 1,000 enrolled agents sync while strangers flood the colony and an operator stalls three taps.

    python -m bench.hostile --agents 1000 --services 50 --strangers 200 --seconds 60 --output BENCHMARKS.md

One real colony process (``coral colony start``, mutual TLS for agents as by default):

- **agents**: ``--agents`` agents enroll with the shared secret (``bench.enrollment``), each dials the
  agent endpoint with its own key and certificate, registers ``--services`` services, then lives as
  ``bench.colony`` does: a delta every ``--delta-interval`` seconds on average (two services change
  health), a heartbeat every 15 s, open loop. What is timed is each delta's round trip (applied).
- **strangers**: ``--strangers`` clients in a child process (its own event loop, so the flood does not
  slow the agents' load generator), each with its own connection, call as fast as the colony answers,
  in turn: ``Mesh/Register`` and ``AgentControl/Connect`` with garbage on the public endpoint,
  ``Enrollment/Enroll`` with a wrong secret and a junk CSR (4 KiB node names), ``Colony/ListServices``
  without a token, and ``Mesh/Register`` on the agent endpoint without a client certificate.
- **a stalled operator**: one more agent, enrolled like the others, answers every tap with 100 MiB in
  1 MiB chunks through a 32-message outbox (as ``cri_agent.control``); an operator token starts three
  taps on it, reads each one's first message and then nothing.

Reported: deltas applied (p50 / p99 / count, resyncs), the colony's RSS from the end of registration to
the peak of the hostile phase (sampled every 0.5 s from ``/proc``), the audit log's growth from strangers'
refusals (rows and bytes of ``agent.refused``, ``agent.enrollment_refused``, ``operator.refused`` added
during the phase, per minute), services lost (registered minus present, and stale ones), and how far
each tap got (bytes the fake agent handed to gRPC).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import secrets
import sqlite3
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from bench.colony import Load, service
from bench.enrollment import AgentKey, agent_channel, complaints, enroll_all, make_keys
from bench.report import memory_mib, percentile, publish
from coral_base.vocabulary import ArtifactKind, EnrollMethod, Outcome, Scope
from coral_base.wire.coral.agent.v1 import agent_pb2, agent_pb2_grpc
from coral_base.wire.coral.colony.v1 import colony_pb2, colony_pb2_grpc
from coral_base.wire.coral.identity.v1 import identity_pb2
from coral_base.wire.coral.mesh.v1 import mesh_pb2
from cri_agent import colony_codec
from cri_agent.operation import Artifact, OperationResult
from integration.harness.colony import ColonyProcess, free_port

MIB = 1024 * 1024
TAPS = 3
TAP_BYTES = 100 * MIB
OUTBOX = 32  # as cri_agent.control.OUTBOX
REFUSALS = ("agent.refused", "agent.enrollment_refused", "operator.refused")
RSS_TARGET_MIB, AUDIT_TARGET_MIB_PER_MIN = 64, 1.0


class EnrolledLoad(Load):
    """``bench.colony``'s load, each agent on its own mutual-TLS channel, speaking as its certificate."""

    def __init__(
        self,
        colony: ColonyProcess,
        services: int,
        keys: list[AgentKey],
        certificates: list[identity_pb2.Certificate],
    ) -> None:
        self.colony = colony
        self.agents = len(keys)
        self.services = services
        ca = colony.ca.read_bytes()
        made = [agent_channel(ca, key, answer) for key, answer in zip(keys, certificates, strict=True)]
        self.ids = [agent_id for agent_id, _ in made]
        self.channels = [channel for _, channel in made]
        self.sessions: dict[int, str] = {}
        self.sequences: dict[int, int] = {}

    def agent_id(self, agent: int) -> str:
        return self.ids[agent]

    def _call(self, agent: int, method: str, response: Any) -> Any:
        return self.channels[agent].unary_unary(
            f"/coral.mesh.v1.Mesh/{method}", request_serializer=None, response_deserializer=response.FromString
        )


@dataclass
class TapAgent:
    """An enrolled agent whose every tap streams ``TAP_BYTES``; ``sent`` per request: bytes handed to gRPC."""

    sent: Counter[str] = field(default_factory=Counter)
    requests: list[str] = field(default_factory=list)

    async def serve(self, channel: grpc.aio.Channel, *, agent_id: str, session: str) -> None:
        outbox: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue(OUTBOX)
        await outbox.put(colony_codec.hello(agent_id=agent_id, session=session))

        async def drain() -> AsyncIterator[agent_pb2.AgentMessage]:
            while True:
                message = await outbox.get()
                yield message
                if message.WhichOneof("body") == "chunk":
                    self.sent[message.chunk.request_id] += len(message.chunk.data)

        async def tap(request_id: str) -> None:
            chunk = colony_codec.artifact(Artifact(request_id, ArtifactKind.PCAP, bytes(MIB)))
            for _ in range(TAP_BYTES // MIB):
                await outbox.put(chunk)
            done = OperationResult(request_id, node_name="", outcome=Outcome.OK, bytes=TAP_BYTES)
            await outbox.put(colony_codec.result(done))

        taps: set[asyncio.Task[None]] = set()
        async for message in agent_pb2_grpc.AgentControlStub(channel).Connect(drain()):
            if message.WhichOneof("body") == "request":
                self.requests.append(message.request.request_id)
                taps.add(asyncio.create_task(tap(message.request.request_id)))


async def stalled_taps(colony: ColonyProcess, target: str, taps: int) -> list[grpc.aio.UnaryStreamCall[Any, Any]]:
    """``taps`` taps started and their first message read; then nobody reads them."""
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=colony.ca.read_bytes()),
        grpc.access_token_call_credentials(colony.token("stalled-operator", scopes=[Scope.OPERATE])),
    )
    stub = colony_pb2_grpc.ColonyStub(grpc.aio.secure_channel(colony.address, credentials))
    request = colony_pb2.RunOperationRequest(action="tap", target=target, duration_s=60)
    calls = [stub.RunOperation(request) for _ in range(taps)]
    for call in calls:
        first = await call.read()
        assert isinstance(first, colony_pb2.OperationOutput) and first.target.pod_name, first
    return calls


# -- strangers: a child process ------------------------------------------------------------------------


def _garbage(size: int) -> str:
    return secrets.token_hex(size // 2)


async def _stranger(address: str, agent_address: str, ca: bytes, until: float, tally: Counter[str]) -> None:
    tls = grpc.ssl_channel_credentials(root_certificates=ca)
    public = grpc.aio.secure_channel(address, tls)
    agents = grpc.aio.secure_channel(agent_address, tls)  # no client certificate: the handshake fails
    register = mesh_pb2.RegisterRequest(
        agent_id=_garbage(4096), colony_id=_garbage(64), colony_secret=_garbage(64), node_name=_garbage(4096)
    ).SerializeToString()
    enroll = colony_codec.enroll_request(
        colony_id=_garbage(64),
        node_name=_garbage(4096),
        csr_pem=_garbage(1024),
        method=EnrollMethod.SECRET,
        credential=_garbage(64),
        version="0.0.0",
    ).SerializeToString()
    junk = agent_pb2.AgentMessage(chunk=agent_pb2.Chunk(request_id=_garbage(64), data=os.urandom(4096)))

    async def connect() -> None:
        async def messages() -> AsyncIterator[agent_pb2.AgentMessage]:
            yield junk

        async for _ in agent_pb2_grpc.AgentControlStub(public).Connect(messages(), timeout=10):
            pass

    def raw(channel: grpc.aio.Channel, method: str, request: bytes) -> Any:
        return channel.unary_unary(method, request_serializer=None, response_deserializer=None)(request, timeout=10)

    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "Register (public)": lambda: raw(public, "/coral.mesh.v1.Mesh/Register", register),
        "Connect (public)": connect,
        "Enroll": lambda: raw(public, "/coral.identity.v1.Enrollment/Enroll", enroll),
        "ListServices without a token": lambda: colony_pb2_grpc.ColonyStub(public).ListServices(
            colony_pb2.ListServicesRequest(), timeout=10
        ),
        "Register (agent endpoint, no certificate)": lambda: raw(agents, "/coral.mesh.v1.Mesh/Register", register),
    }
    try:
        while time.monotonic() < until:
            for kind, call in calls.items():
                try:
                    await call()
                    tally[f"{kind}: OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    tally[f"{kind}: {exc.code().name}"] += 1
    finally:
        await public.close(None)
        await agents.close(None)


def strangers(
    address: str, agent_address: str, ca: bytes, count: int, seconds: float, out: multiprocessing.Queue[Any]
) -> None:
    """The child process: ``count`` strangers for ``seconds``; puts their calls, by kind and status."""

    async def flood() -> Counter[str]:
        tally: Counter[str] = Counter()
        until = time.monotonic() + seconds
        await asyncio.gather(*(_stranger(address, agent_address, ca, until, tally) for _ in range(count)))
        return tally

    out.put(dict(asyncio.run(flood())))


# -- the run ---------------------------------------------------------------------------------------------


@dataclass
class Figures:
    agents: int
    services: int
    strangers: int
    seconds: float
    taps: int = TAPS
    deltas_ms: list[float] = field(default_factory=list)
    resyncs: int = 0
    rss_start: float = 0.0  # MiB: the colony before anything ran
    rss_registered: float = 0.0  # ... once every agent registered, before the hostile phase
    rss_peak: float = 0.0  # ... the most sampled during the phase
    rss_end: float = 0.0
    stranger_calls: dict[str, int] = field(default_factory=dict)
    refusal_rows: int = 0
    refusal_bytes: int = 0
    audit_rows: int = 0  # every row added during the phase
    expected_services: int = 0
    present_services: int = 0
    stale_services: int = 0
    tap_sent: list[int] = field(default_factory=list)
    complaints: list[str] = field(default_factory=list)

    @property
    def rss_growth(self) -> float:
        return self.rss_peak - self.rss_registered

    @property
    def audit_mib_per_min(self) -> float:
        return self.refusal_bytes / MIB / (self.seconds / 60)

    @property
    def lost(self) -> int:
        return self.expected_services - self.present_services + self.stale_services


def audit_since(database: Path, after_id: int) -> tuple[int, int, int]:
    """(refusal rows, their bytes: every column's length, all rows) added after ``after_id``."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        columns = [row[1] for row in db.execute("PRAGMA table_info(audit)")]
        size = " + ".join(f"COALESCE(LENGTH({c}), 0)" for c in columns)
        marks = ", ".join("?" for _ in REFUSALS)
        rows, size_sum = db.execute(
            f"SELECT COUNT(*), COALESCE(SUM({size}), 0) FROM audit WHERE id > ? AND action IN ({marks})",
            [after_id, *REFUSALS],
        ).fetchone()
        total = db.execute("SELECT COUNT(*) FROM audit WHERE id > ?", [after_id]).fetchone()[0]
        return int(rows), int(size_sum), int(total)
    finally:
        db.close()


def last_audit_id(database: Path) -> int:
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COALESCE(MAX(id), 0) FROM audit").fetchone()[0])
    finally:
        db.close()


def services_now(database: Path) -> tuple[int, int]:
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        total, stale = db.execute("SELECT COUNT(*), COALESCE(SUM(stale), 0) FROM services").fetchone()
        return int(total), int(stale)
    finally:
        db.close()


async def sample_rss(pid: int, stop: asyncio.Event, figures: Figures) -> None:
    while not stop.is_set():
        figures.rss_peak = max(figures.rss_peak, memory_mib(pid)[0])
        await asyncio.sleep(0.5)


async def hostile(
    colony: ColonyProcess, agent_address: str, figures: Figures, delta_interval: float, in_flight: int
) -> None:
    assert colony.process is not None
    pid = colony.process.pid
    keys, _ = make_keys(figures.agents + 1)  # the last one is the tap agent
    _, certificates = await enroll_all(colony, pid, keys, in_flight)
    load = EnrolledLoad(colony, figures.services, keys, certificates)
    tap_agent, tap_index = TapAgent(), figures.agents
    try:
        await load.register_all()
        figures.expected_services = (figures.agents + 1) * figures.services
        tapping = asyncio.create_task(
            tap_agent.serve(
                load.channels[tap_index], agent_id=load.agent_id(tap_index), session=load.sessions[tap_index]
            )
        )
        await asyncio.sleep(1.0)  # its Connect is held
        figures.rss_registered = memory_mib(pid)[0]
        after_id = last_audit_id(colony.database)
        results: multiprocessing.Queue[Any] = multiprocessing.get_context("spawn").Queue()
        flood = multiprocessing.get_context("spawn").Process(
            target=strangers,
            args=(
                colony.address,
                agent_address,
                colony.ca.read_bytes(),
                figures.strangers,
                figures.seconds,
                results,
            ),
        )
        flood.start()
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(pid, stop, figures))
        target = service(tap_index, 0).service_key
        taps = await stalled_taps(colony, target, figures.taps)
        deltas, _, figures.resyncs = await load.live(figures.seconds, delta_interval)
        figures.deltas_ms = deltas
        figures.stranger_calls = await asyncio.to_thread(results.get, timeout=figures.seconds + 120)
        await asyncio.to_thread(flood.join, 30)
        stop.set()
        await sampler
        figures.rss_end = memory_mib(pid)[0]
        figures.tap_sent = sorted((tap_agent.sent[call_id] for call_id in tap_agent.requests), reverse=True)
        figures.refusal_rows, figures.refusal_bytes, figures.audit_rows = audit_since(colony.database, after_id)
        figures.present_services, figures.stale_services = services_now(colony.database)
        for call in taps:
            call.cancel()
        tapping.cancel()
        await asyncio.gather(tapping, return_exceptions=True)
    finally:
        await load.close()


def run(
    agents: int, services: int, strangers: int, taps: int, seconds: float, delta_interval: float, in_flight: int
) -> Figures:
    figures = Figures(agents=agents, services=services, strangers=strangers, seconds=seconds, taps=taps)
    with tempfile.TemporaryDirectory() as tmp:
        colony = ColonyProcess(Path(tmp) / "colony", heartbeat_timeout=3600)
        agent_address = f"127.0.0.1:{free_port()}"
        colony.extra_args = ["--agent-listen", agent_address]
        colony.start()
        assert colony.process is not None
        try:
            figures.rss_start = memory_mib(colony.process.pid)[0]
            asyncio.run(hostile(colony, agent_address, figures, delta_interval, in_flight))
        finally:
            colony.stop()
            figures.complaints = complaints(colony)
    return figures


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def report(f: Figures, delta_interval: float) -> str:
    calls = sum(f.stranger_calls.values())
    by_kind = ", ".join(f"{kind} {n:,}" for kind, n in sorted(f.stranger_calls.items()))
    lines = [
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, load average "
        f"{os.getloadavg()[0]:.1f} at the end; the colony, the agents' load generator and the strangers' process "
        f"share it. {f.agents:,} enrolled agents x {f.services} services on their own mutual-TLS channels, a delta "
        f"each every {delta_interval:g} s on average and a heartbeat every 15 s, for {f.seconds:g} s, while "
        f"{f.strangers} strangers flood and an operator holds {f.taps} taps of {TAP_BYTES // MIB} MiB unread.",
        "",
        "| measure | figure | target |",
        "|---|---|---|",
        f"| deltas applied, round trip p50 / **p99** (count; resyncs asked) | "
        f"{statistics.median(f.deltas_ms):.0f} / **{percentile(f.deltas_ms, 99):.0f} ms** "
        f"({len(f.deltas_ms):,}; {f.resyncs}) | - |",
        f"| colony RSS growth, end of registration -> peak of the hostile phase | **{f.rss_growth:.0f} MiB** "
        f"({f.rss_registered:.0f} -> {f.rss_peak:.0f}; {f.rss_start:.0f} at start, {f.rss_end:.0f} at the end) | "
        f"< {RSS_TARGET_MIB} MiB: {_verdict(f.rss_growth < RSS_TARGET_MIB)} |",
        f"| audit growth from strangers | **{f.audit_mib_per_min * 1024:.1f} KiB/min** ({f.refusal_rows} rows, "
        f"{f.refusal_bytes / 1024:.1f} KiB in {f.seconds:g} s, for {calls:,} refused calls) | "
        f"< {AUDIT_TARGET_MIB_PER_MIN:g} MiB/min: {_verdict(f.audit_mib_per_min < AUDIT_TARGET_MIB_PER_MIN)} |",
        f"| services lost (registered {f.expected_services:,}, present {f.present_services:,}, stale "
        f"{f.stale_services}) | **{f.lost}** | 0: {_verdict(f.lost == 0)} |",
        f"| stalled taps: bytes the agent could send before the colony stopped reading its stream | "
        f"{sum(f.tap_sent) / MIB:.0f} MiB in all ({', '.join(f'{s / MIB:.0f}' for s in f.tap_sent)} MiB by tap) "
        f"of {f.taps * TAP_BYTES // MIB} MiB | - |",
        f"| colony log lines at WARNING or above | {len(f.complaints)} | - |",
        "",
        f"Strangers' calls by kind and status ({calls:,} in all): {by_kind}. Audit rows added during the phase, "
        f"all kinds: {f.audit_rows:,} (the agents' own changes included).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--strangers", type=int, default=200)
    parser.add_argument("--taps", type=int, default=TAPS, help="stalled taps of 100 MiB")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--delta-interval", type=float, default=10.0)
    parser.add_argument("--in-flight", type=int, default=50, help="agents enrolling or registering at a time")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    figures = run(
        args.agents, args.services, args.strangers, args.taps, args.seconds, args.delta_interval, args.in_flight
    )
    for line in figures.complaints[:20]:
        print(f"colony: {line}")
    publish(report(figures, args.delta_interval), key="hostile", title="Reliability (issue 11)", output=args.output)


if __name__ == "__main__":
    main()
