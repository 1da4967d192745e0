"""Service health on real pods: probed on the pod IP, failing and recovering."""

from __future__ import annotations

import time
from pathlib import Path

from integration.conftest import AgentFactory
from integration.harness.pods import ContainerSpec, PodFactory, PortSpec

HTTPD = ContainerSpec("web", ("httpd", "-f", "-p", "8080", "-h", "/www"), ports=(PortSpec(8080, name="http"),))


def test_failing_health_endpoint_turns_unhealthy_within_two_intervals_and_recovers(
    start_agent: AgentFactory, pods: PodFactory
) -> None:
    agent = start_agent()
    pod = pods.create_pod(
        "checked",
        annotations={"coral.io/health-endpoint": "/healthz", "coral.io/health-interval": "1s"},
        containers=(HTTPD,),
    )
    [service] = agent.wait_for(lambda: agent.service_by_pod(pod.uid), timeout=5, what="service")
    agent.wait_for(lambda: agent.health(service.key) == "healthy", timeout=5, what="healthy")
    healthz = Path(f"/proc/{pods.container_pid(pod.container_ids[0])}/root/www/healthz")

    healthz.unlink()  # from the host, through the container's root: httpd now answers 404
    broke = time.monotonic()
    agent.wait_for(lambda: agent.health(service.key) == "unhealthy", timeout=5, what="unhealthy")
    to_unhealthy = time.monotonic() - broke

    healthz.write_text("ok\n")
    fixed = time.monotonic()
    agent.wait_for(lambda: agent.health(service.key) == "healthy", timeout=5, what="healthy again")
    to_healthy = time.monotonic() - fixed

    assert (to_unhealthy < 2.0, to_healthy < 2.0) == (True, True), (to_unhealthy, to_healthy)


def test_a_service_without_endpoint_is_checked_with_a_tcp_connect(start_agent: AgentFactory, pods: PodFactory) -> None:
    agent = start_agent()
    pod = pods.create_pod("tcp-only", annotations={"coral.io/health-interval": "1s"}, containers=(HTTPD,))
    [service] = agent.wait_for(lambda: agent.service_by_pod(pod.uid), timeout=5, what="service")

    agent.wait_for(lambda: agent.health(service.key) == "healthy", timeout=5, what="healthy")
    pods.delete_pod(pod)

    agent.wait_for(lambda: agent.health(service.key) == "absent", timeout=5, what="health row removed with the pod")
