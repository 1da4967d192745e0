"""The colony under load: 1,000 agents x 250 services register, then live.

    python -m bench.colony --agents 1000 --services 250 --output BENCHMARKS.md

A real colony process (TLS, its SQLite registry; agents with the shared
secret allowed on its public endpoint) and a load generator
speaking mesh.v1 from one process: every agent registers its full set
(requests serialized beforehand, 64 in flight, over 8 channels), then the
agents live for a while: each sends a delta (two services change health) on
average every ``--delta-interval`` seconds and a heartbeat every 15 s,
open loop (sends do not wait for answers). Measured: the time to register
all (first send to last answer, then the registry is counted), the delta
round-trip latency under that load, and the colony's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from bench.report import memory_mib, percentile, publish
from coral_base.wire.coral.mesh.v1 import mesh_pb2
from integration.harness.colony import ColonyProcess

CHANNELS = 8
IN_FLIGHT = 64
HEARTBEAT_S = 15.0


def service(agent: int, index: int, *, health: str = "healthy") -> Any:
    namespace = f"ns-{index % 20}"
    info = mesh_pb2.ServiceInfo(
        component_name=f"svc-{index}",
        port=8080,
        service_type="http",
        labels={"app": f"svc-{index}", "team": f"team-{index % 7}"},
        provenance=mesh_pb2.SERVICE_PROVENANCE_DISCOVERED,
        node_name=f"node-{agent}",
        node_labels={"topology.kubernetes.io/zone": f"zone-{agent % 3}"},
        service_key=f"{namespace}/agent{agent}-pod{index}/app/8080",
        namespace=namespace,
        pod_name=f"svc-{index}-{agent}",
        pod_uid=f"agent{agent}-pod{index}",
        container_name="app",
        protocol="TCP",
        pod_ip=f"10.{agent // 250}.{agent % 250}.{index % 250}",
        health_interval_ms=10_000,
    )
    info.health.state = health
    return info


class Load:
    def __init__(self, colony: ColonyProcess, agents: int, services: int) -> None:
        self.colony = colony
        self.agents = agents
        self.services = services
        credentials = grpc.ssl_channel_credentials(root_certificates=colony.ca.read_bytes())
        self.channels = [grpc.aio.secure_channel(colony.address, credentials) for _ in range(CHANNELS)]
        self.sessions: dict[int, str] = {}
        self.sequences: dict[int, int] = {}

    def agent_id(self, agent: int) -> str:
        return f"agent-{agent}"

    def _call(self, agent: int, method: str, response: Any) -> Any:
        channel = self.channels[agent % CHANNELS]
        # Requests are serialized beforehand: no request serializer, bytes go out as they are.
        return channel.unary_unary(
            f"/coral.mesh.v1.Mesh/{method}", request_serializer=None, response_deserializer=response.FromString
        )

    async def register_all(self) -> float:
        secret = self.colony.secret_file.read_text().strip()
        requests = [
            mesh_pb2.RegisterRequest(
                agent_id=self.agent_id(a),
                colony_id=self.colony.colony_id,
                colony_secret=secret,
                version="0.1.0",
                node_name=f"node-{a}",
                node_labels={"topology.kubernetes.io/zone": f"zone-{a % 3}"},
                services=[service(a, i) for i in range(self.services)],
            ).SerializeToString()
            for a in range(self.agents)
        ]
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def register(agent: int) -> None:
            async with gate:
                answer = await self._call(agent, "Register", mesh_pb2.RegisterResponse)(requests[agent], timeout=120)
            assert answer.accepted and not answer.refused_keys
            self.sessions[agent], self.sequences[agent] = answer.session_token, 0

        started = time.perf_counter()
        await asyncio.gather(*(register(a) for a in range(self.agents)))
        return time.perf_counter() - started

    async def live(self, seconds: float, delta_interval: float) -> tuple[list[float], list[float], int]:
        """Open-loop deltas and heartbeats for ``seconds``; (delta latencies, heartbeat latencies, resyncs)."""
        deltas: list[float] = []
        beats: list[float] = []
        resyncs = 0
        tasks: set[asyncio.Task[None]] = set()
        rng = random.Random(7)

        async def delta(agent: int) -> None:
            nonlocal resyncs
            self.sequences[agent] += 1
            changed = [service(agent, rng.randrange(self.services), health=rng.choice(["healthy", "unhealthy"]))]
            changed.append(service(agent, rng.randrange(self.services), health="healthy"))
            request = mesh_pb2.UpdateServicesRequest(
                agent_id=self.agent_id(agent),
                session_token=self.sessions[agent],
                sequence=self.sequences[agent],
                upserts=changed,
            )
            sent = time.perf_counter()
            answer = await self._call(agent, "UpdateServices", mesh_pb2.UpdateServicesResponse)(
                request.SerializeToString(), timeout=30
            )
            deltas.append((time.perf_counter() - sent) * 1000)
            resyncs += answer.resync_required

        async def heartbeat(agent: int) -> None:
            request = mesh_pb2.HeartbeatRequest(
                agent_id=self.agent_id(agent), session_token=self.sessions[agent], health="healthy"
            )
            sent = time.perf_counter()
            await self._call(agent, "Heartbeat", mesh_pb2.HeartbeatResponse)(request.SerializeToString(), timeout=30)
            beats.append((time.perf_counter() - sent) * 1000)

        # Deltas of one agent must stay in order: each agent's next delta waits for its previous one.
        busy: dict[int, asyncio.Task[None]] = {}
        rate = self.agents / delta_interval + self.agents / HEARTBEAT_S
        start = time.perf_counter()
        k = 0
        while (now := time.perf_counter()) - start < seconds:
            due = start + k / rate
            if due > now:
                await asyncio.sleep(due - now)
            agent = rng.randrange(self.agents)
            is_delta = rng.random() < (1 / delta_interval) / (1 / delta_interval + 1 / HEARTBEAT_S)
            if is_delta and (agent not in busy or busy[agent].done()):
                task = asyncio.create_task(delta(agent))
                busy[agent] = task
            else:
                task = asyncio.create_task(heartbeat(agent))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
        await asyncio.gather(*tasks)
        return deltas, beats, resyncs

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close(None)


def count_services(colony: ColonyProcess) -> int:
    db = sqlite3.connect(f"file:{colony.database}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM services").fetchone()[0])
    finally:
        db.close()


def run(agents: int, services: int, seconds: float, delta_interval: float) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        colony = ColonyProcess(Path(tmp) / "colony", heartbeat_timeout=3600)
        colony.extra_args = ["--allow-shared-secret-agents"]  # the public endpoint, as agents before enrollment
        colony.start()
        assert colony.process is not None
        pid = colony.process.pid
        try:

            async def scenario() -> tuple[float, list[float], list[float], int]:
                load = Load(colony, agents, services)
                try:
                    took = await load.register_all()
                    deltas, beats, resyncs = await load.live(seconds, delta_interval)
                    return took, deltas, beats, resyncs
                finally:
                    await load.close()

            idle_rss = memory_mib(pid)[0]
            took, deltas, beats, resyncs = asyncio.run(scenario())
            registered = count_services(colony)
            final_rss, peak_rss = memory_mib(pid)
        finally:
            colony.stop()
    assert registered == agents * services, (registered, agents * services)
    assert resyncs == 0, f"{resyncs} deltas were answered resync_required"
    rate = len(deltas) / seconds
    lines = [
        f"Machine: 2 cores, Python {platform.python_version()}; the load generator runs on the same machine.",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        f"| register {agents:,} agents x {services} services ({agents * services:,} services, 64 in flight) | "
        f"{took:.1f} s ({agents * services / took:,.0f} services/s); registry holds {registered:,} | < 30 s |",
        f"| delta round trip under load ({rate:,.0f} deltas/s + {len(beats) / seconds:,.0f} heartbeats/s "
        f"for {seconds:.0f} s, 2 services per delta), p50 / p99 / max | "
        f"{statistics.median(deltas):.1f} / {percentile(deltas, 99):.1f} / {max(deltas):.1f} ms | p99 < 20 ms |",
        f"| heartbeat round trip, p50 / p99 | {statistics.median(beats):.1f} / {percentile(beats, 99):.1f} ms | |",
        f"| colony RSS: idle / after the run / peak | {idle_rss:.0f} / {final_rss:.0f} / {peak_rss:.0f} MiB "
        "| < 1 GiB |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--services", type=int, default=250)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the agents live after registering")
    parser.add_argument("--delta-interval", type=float, default=5.0, help="mean seconds between an agent's deltas")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    body = run(args.agents, args.services, args.seconds, args.delta_interval)
    publish(body, key="colony", title="Colony registry under load (issue 3)", output=args.output)


if __name__ == "__main__":
    main()
