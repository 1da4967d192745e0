"""Health probes against real servers on loopback, and the scheduler around them (on a virtual clock)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest

from coral_base.clock import VirtualClock
from cri_agent.health import HealthChecker, aggregate, probe, probeable
from cri_agent.model import Health, HealthState, PodUID, Provenance, ServiceInfo, ServiceKey

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def service(number: int, endpoint: str = "", **changes: object) -> ServiceInfo:
    base = ServiceInfo(
        key=ServiceKey(f"shop/uid/app/{number}"),
        name="web",
        namespace="shop",
        pod_name="web-0",
        pod_uid=PodUID("uid"),
        container="app",
        port=number,
        protocol="TCP",
        service_type="http",
        provenance=Provenance.DISCOVERED,
        health_endpoint=endpoint,
        health_interval_s=0.05,
        pod_ip="127.0.0.1",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def answering(status: bytes) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(status + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    return handle


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # never answers: the probe gives up first and closes the connection


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[int]:
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    async with srv:
        yield srv.sockets[0].getsockname()[1]


async def probe_with(handler: Handler | None, endpoint: str = "/healthz") -> tuple[bool, str]:
    if handler is None:  # a port nobody listens on
        async with server(answering(b"HTTP/1.1 200 OK")) as port:
            pass
        result = await probe(service(port, endpoint), within=1.0)
    else:
        async with server(handler) as port:
            result = await probe(service(port, endpoint), within=0.05)
    return result.ok, result.error


@pytest.mark.parametrize(
    ("handler", "endpoint", "ok", "error"),
    [
        (answering(b"HTTP/1.1 200 OK"), "/healthz", True, ""),
        (answering(b"HTTP/1.1 204 No Content"), "/healthz", True, ""),
        (answering(b"HTTP/1.1 503 Service Unavailable"), "/healthz", False, "HTTP 503 Service Unavailable"),
        (answering(b"SSH-2.0-OpenSSH"), "/healthz", False, "not an HTTP answer: 'SSH-2.0-OpenSSH'"),
        (silent, "/healthz", False, "no answer within 0.05s"),
        (silent, "", True, ""),  # no endpoint: a TCP connect is the whole check
        (None, "", False, "Connection refused"),
    ],
)
def test_probe_outcomes(handler: Handler | None, endpoint: str, ok: bool, error: str) -> None:
    assert asyncio.run(probe_with(handler, endpoint)) == (ok, error)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [({}, True), ({"pod_ip": ""}, False), ({"port": None, "protocol": None}, False), ({"protocol": "UDP"}, False)],
)
def test_only_tcp_services_with_a_pod_ip_are_probed(changes: dict[str, object], expected: bool) -> None:
    assert probeable(service(80, **changes)) is expected  # type: ignore[arg-type]


def test_the_checker_reports_state_changes_once_and_follows_recovery() -> None:
    clock = VirtualClock()

    async def scenario() -> tuple[list[tuple[str, str]], list[float]]:
        status = {"line": b"HTTP/1.1 200 OK"}

        async def flipping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await answering(status["line"])(reader, writer)

        changes: list[tuple[str, str]] = []
        rounds: list[float] = []

        async def report(results: list[Health], changed: list[Health]) -> None:
            rounds.append(clock.monotonic())
            changes.extend((h.state.value, h.last_error) for h in changed)

        async with server(flipping) as port:
            checker = HealthChecker(report=report, timeout=0.5, clock=clock)
            checker.set_services({service(port, "/healthz").key: service(port, "/healthz")})
            task = asyncio.create_task(checker.run())
            # Conditions, not durations: virtual time must not move while a probe's answer is in flight.
            await clock.until(lambda: len(changes) == 1, within=1)
            status["line"] = b"HTTP/1.1 500 Internal Server Error"
            await clock.until(lambda: len(changes) == 2, within=1)
            status["line"] = b"HTTP/1.1 200 OK"
            await clock.until(lambda: len(changes) == 3, within=1)
            task.cancel()
        return changes, rounds

    changes, rounds = clock.run(scenario())
    assert changes == [
        ("healthy", ""),
        ("unhealthy", "HTTP 500 Internal Server Error"),
        ("healthy", ""),
    ]
    assert rounds == [0.0, 0.05, 0.1], "one round per health interval (50 ms), the first at once"


def test_probes_in_flight_are_capped() -> None:
    async def scenario() -> int:
        in_flight = peak = 0
        three = asyncio.Event()

        async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            if in_flight == 3:
                three.set()
            await three.wait()  # the first probes stay in flight until as many as the cap are
            in_flight -= 1
            await answering(b"HTTP/1.1 200 OK")(reader, writer)

        async def report(results: list[Health], changed: list[Health]) -> None:
            pass

        async with server(slow) as port:
            checker = HealthChecker(report=report, max_in_flight=3)
            services = {ServiceKey(f"k{i}"): service(port, "/h", key=ServiceKey(f"k{i}")) for i in range(12)}
            checker.set_services(services)
            await checker.round(list(services))
        return peak

    assert asyncio.run(scenario()) == 3


def test_removed_services_lose_their_health() -> None:
    async def noop(results: list[Health], changed: list[Health]) -> None:
        pass

    checker = HealthChecker(report=noop)
    checker.set_services({service(80).key: service(80)})
    checker.set_services({})
    assert checker.health == {}


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([], "healthy"),
        (["healthy", "unknown"], "healthy"),
        (["healthy", "unhealthy"], "degraded"),
        (["unhealthy", "unknown"], "unhealthy"),
    ],
)
def test_aggregate_tells_the_truth(states: list[str], expected: str) -> None:
    health = {ServiceKey(str(i)): Health(ServiceKey(str(i)), HealthState(s), 0.0) for i, s in enumerate(states)}
    assert aggregate(health) == expected
