"""Service health: every registered service probed at its own interval.

HTTP GET ``http://<pod IP>:<port><endpoint>`` when a health endpoint is set
(annotation or override; any 2xx is healthy), a TCP connect otherwise. The
target is always the pod's IP: a node agent probing ``localhost`` would test
itself. Probes run concurrently with a timeout and a cap on probes in
flight, so 250 pods cannot stall the agent. Portless entries and pods
without an IP stay ``unknown``.

The aggregate (healthy / degraded / unhealthy) is what the agent reports
about the node's services as a whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from coral_base.clock import SYSTEM_CLOCK, Clock
from coral_base.vocabulary import AgentHealth
from cri_agent.model import Health, HealthState, ServiceInfo, ServiceKey

MAX_RESPONSE_LINE = 1024


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    latency_ms: float
    error: str = ""


async def probe(service: ServiceInfo, *, within: float) -> ProbeResult:
    """One probe of one service, never raising."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(within):
            if not service.health_endpoint:
                await _connect(service.pod_ip, service.port or 0)
                error = ""
            else:
                reader, writer = await asyncio.open_connection(service.pod_ip, service.port)
                try:
                    error = await _http_get(reader, writer, service)
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
    except TimeoutError:
        error = f"no answer within {within:g}s"
    except OSError as exc:
        error = os.strerror(exc.errno) if exc.errno else str(exc)
    latency = (time.perf_counter() - started) * 1000
    return ProbeResult(ok=not error, latency_ms=round(latency, 2), error=error)


async def _connect(host: str, port: int) -> None:
    """A bare TCP connect and close: no transport, no streams (at 250 pods, 25 probes a second)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))


async def _http_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, service: ServiceInfo) -> str:
    request = (
        f"GET {service.health_endpoint} HTTP/1.1\r\nHost: {service.pod_ip}:{service.port}\r\n"
        "User-Agent: coral-cri-agent\r\nConnection: close\r\n\r\n"
    )
    writer.write(request.encode())
    await writer.drain()
    status_line = (await reader.readline())[:MAX_RESPONSE_LINE].decode("latin-1").strip()
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return f"not an HTTP answer: {status_line[:80]!r}"
    if not 200 <= int(parts[1]) < 300:
        return f"HTTP {status_line.split(' ', 1)[1]}"
    return ""


def probeable(service: ServiceInfo) -> bool:
    return bool(service.pod_ip and service.port and service.protocol == "TCP")


def aggregate(health: Mapping[ServiceKey, Health]) -> AgentHealth:
    """healthy (no unhealthy service), degraded (some), unhealthy (all probed ones)."""
    probed = [h for h in health.values() if h.state != HealthState.UNKNOWN]
    failing = [h for h in probed if h.state == HealthState.UNHEALTHY]
    if not failing:
        return AgentHealth.HEALTHY
    return AgentHealth.UNHEALTHY if len(failing) == len(probed) else AgentHealth.DEGRADED


Report = Callable[[list[Health], list[Health]], Awaitable[None]]


class HealthChecker:
    """Schedules probes per service interval; reports results and state changes.

    ``report(results, changes)`` receives every result of a round (to
    persist) and the subset whose state changed (to log). Between rounds it
    sleeps until the next probe is due, and a new or changed service cuts
    the sleep short: no polling tick.
    """

    def __init__(
        self,
        *,
        report: Report,
        timeout: float = 2.0,
        max_in_flight: int = 32,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.report = report
        self.timeout = timeout
        self.clock = clock
        self._limit = asyncio.Semaphore(max_in_flight)
        self._services: dict[ServiceKey, ServiceInfo] = {}
        self._due: dict[ServiceKey, float] = {}  # monotonic
        self._changed = asyncio.Event()
        self.health: dict[ServiceKey, Health] = {}

    def set_services(self, services: Mapping[ServiceKey, ServiceInfo]) -> None:
        """The current registered set; new or changed services are probed at once."""
        for key in set(self._services) - set(services):
            self._due.pop(key, None)
            self.health.pop(key, None)
        for key, service in services.items():
            if self._services.get(key) != service:
                self._due[key] = self.clock.monotonic()
                self._changed.set()
                if key not in self.health:
                    self.health[key] = Health(key=key, state=HealthState.UNKNOWN, since=self.clock.time())
        self._services = dict(services)

    async def run(self) -> None:
        """Probe what is due, forever (cancel to stop)."""
        while True:
            self._changed.clear()
            now = self.clock.monotonic()
            if due := [k for k, at in self._due.items() if at <= now]:
                await self.round(due)
                continue
            await self.clock.sleep(min(self._due.values(), default=float("inf")) - now, self._changed)

    async def round(self, keys: list[ServiceKey]) -> None:
        services = [self._services[k] for k in keys if k in self._services]
        for service in services:
            self._due[service.key] = self.clock.monotonic() + service.health_interval_s
        probed = [s for s in services if probeable(s)]
        results = await asyncio.gather(*(self._limited(s) for s in probed))
        now = self.clock.time()
        updated, changed = [], []
        for service, result in zip(probed, results, strict=True):
            if service.key not in self._services:
                continue  # removed while probing
            old = self.health.get(service.key)
            state = HealthState.HEALTHY if result.ok else HealthState.UNHEALTHY
            since = old.since if old is not None and old.state == state else now
            health = Health(service.key, state, since, now, result.latency_ms, result.error)
            self.health[service.key] = health
            updated.append(health)
            if old is None or old.state != state:
                changed.append(health)
        if updated:
            await self.report(updated, changed)

    async def _limited(self, service: ServiceInfo) -> ProbeResult:
        async with self._limit:
            return await probe(service, within=self.timeout)
