"""The agent against a real containerd: pods created through CRI as kubelet does.

Every test runs ``coral agent node`` as a real process and observes it only
through its SQLite cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from integration.harness.agent import AgentProcess
from integration.harness.containerd import PrivateContainerd
from integration.harness.images import ImageSet
from integration.harness.pods import ContainerSpec, Pod, PodFactory, PortSpec

AgentFactory = Callable[..., AgentProcess]

HTTPD = ("httpd", "-f", "-p", "8080", "-h", "/www")


def web_pod(pods: PodFactory, name: str, **kwargs: object) -> Pod:
    return pods.create_pod(
        name,
        containers=(ContainerSpec("web", HTTPD, ports=(PortSpec(8080, name="http"),)),),
        **kwargs,  # type: ignore[arg-type]
    )


def settle(agent: AgentProcess, pods: PodFactory) -> None:
    """Guarantee one complete reconcile after everything done so far: a marker pod registers."""
    marker = pods.create_pod(f"settle-{time.monotonic_ns()}", namespace="settle")
    agent.wait_for(lambda: agent.service_by_pod(marker.uid), timeout=10, what="the settle marker")


def test_pod_is_registered_within_one_second_through_runtime_events(
    start_agent: AgentFactory, pods: PodFactory
) -> None:
    agent = start_agent()
    before = time.monotonic()
    pod = web_pod(pods, "checkout-7d4b9c6f5d-x2x9z", labels={"pod-template-hash": "7d4b9c6f5d"})
    created = time.monotonic()

    services = agent.wait_for(lambda: agent.service_by_pod(pod.uid), timeout=5, what="service")

    assert time.monotonic() - created < 1.0, f"took {time.monotonic() - before:.2f}s"
    [service] = services
    assert (service.name, service.port, service.provenance.value, service.pod_ip) == (
        "checkout",
        8080,
        "discovered",
        pod.ip,
    )


def test_annotation_marks_the_service_overridden(start_agent: AgentFactory, pods: PodFactory) -> None:
    agent = start_agent()
    pod = web_pod(
        pods,
        "payments",
        annotations={"coral.io/name": "payments-api", "coral.io/health-endpoint": "/healthz"},
    )

    [service] = agent.wait_for(lambda: agent.service_by_pod(pod.uid), timeout=5, what="service")

    assert (service.name, service.health_endpoint, service.provenance.value) == (
        "payments-api",
        "/healthz",
        "overridden",
    )


def test_without_events_a_pod_is_found_within_one_resync(start_agent: AgentFactory, pods: PodFactory) -> None:
    agent = start_agent("--no-events", "--resync-interval", "2s")
    agent.wait_pass_after(time.time())
    pod = web_pod(pods, "resync-only")
    created = time.monotonic()

    agent.wait_for(lambda: agent.service_by_pod(pod.uid), timeout=10, what="service")

    assert time.monotonic() - created < 2.0 + 1.0


def test_deleted_pod_is_removed_with_its_reason(start_agent: AgentFactory, pods: PodFactory) -> None:
    agent = start_agent()
    pod = web_pod(pods, "ephemeral")
    agent.wait_for(lambda: agent.service_by_pod(pod.uid), timeout=5, what="service")

    pods.delete_pod(pod)

    removed = agent.wait_for(
        lambda: [e for e in agent.events(kind="removed") if e.pod_uid == pod.uid],
        timeout=5,
        what="removed",
    )
    assert [e.reason for e in removed] == ["pod gone"]


def test_undeclared_listening_port_is_found_through_proc(start_agent: AgentFactory, pods: PodFactory) -> None:
    agent = start_agent()
    pod = pods.create_pod(
        "undeclared",
        containers=(ContainerSpec("app", ("httpd", "-f", "-p", "9090", "-h", "/www")),),
    )

    services = agent.wait_for(
        lambda: [s for s in agent.service_by_pod(pod.uid) if s.port == 9090],
        timeout=5,
        what="port 9090",
    )

    assert [(s.container, s.protocol) for s in services] == [("app", "TCP")]


def test_a_port_opened_later_in_a_running_pod_is_found_within_one_poll(
    start_agent: AgentFactory, pods: PodFactory
) -> None:
    agent = start_agent("--poll-interval", "1s")  # resync stays at 5 m: only the light pass can find it
    late = ContainerSpec("app", ("sh", "-c", "sleep 3; exec httpd -f -p 9191 -h /www"))
    pod = pods.create_pod("late-listener", containers=(late,))
    [portless] = agent.wait_for(lambda: agent.service_by_pod(pod.uid), timeout=5, what="the portless service")
    assert portless.port is None

    # httpd listens 3 s after the container started; then at most one poll interval (1 s) and a pass.
    agent.wait_for(lambda: [s for s in agent.service_by_pod(pod.uid) if s.port == 9191], timeout=5, what="port 9191")


def test_a_pod_that_lives_one_second_is_recorded_added_then_removed(
    start_agent: AgentFactory, pods: PodFactory
) -> None:
    agent = start_agent()
    pod = web_pod(pods, "blink")
    time.sleep(1.0)
    pods.delete_pod(pod)

    agent.wait_for(
        lambda: any(e.kind == "removed" for e in agent.events() if e.pod_uid == pod.uid),
        timeout=5,
        what="removed",
    )

    assert [e.kind for e in agent.events() if e.pod_uid == pod.uid] == ["added", "removed"]


def test_excluded_namespace_is_skipped_once(start_agent: AgentFactory, pods: PodFactory) -> None:
    agent = start_agent("--exclude-namespace", "kube-system")
    pod = web_pod(pods, "kube-proxy-abcde", namespace="kube-system")
    agent.wait_for(
        lambda: [e for e in agent.events(kind="skipped") if e.pod_uid == pod.uid],
        timeout=5,
        what="skip",
    )
    settle(agent, pods)

    skipped = [e for e in agent.events() if e.pod_uid == pod.uid]
    assert [(e.kind, e.reason) for e in skipped] == [("skipped", "namespace kube-system is excluded")]
    assert agent.service_by_pod(pod.uid) == []


def test_sigkilled_agent_restarts_from_its_cache_without_spurious_events(
    start_agent: AgentFactory, pods: PodFactory, tmp_path: Path
) -> None:
    cache = tmp_path / "restart.db"
    agent = start_agent(cache=cache)
    created = [
        web_pod(pods, f"stable-{i}", annotations={"coral.io/port": "oops"} if i == 0 else None) for i in range(3)
    ]
    agent.wait_for(lambda: all(agent.service_by_pod(p.uid) for p in created), timeout=10, what="services")
    settle(agent, pods)
    last = agent.last_event_id()
    services_before = {s.key: s for s in agent.services()}

    agent.kill()
    restart = time.time()
    restarted = start_agent(cache=cache)
    restarted.wait_pass_after(restart)  # the first pass of a new process always runs

    assert restarted.events(since_id=last) == []
    assert {s.key: s for s in restarted.services()} == services_before


def test_agent_recovers_by_itself_when_containerd_restarts(
    start_agent: AgentFactory, fresh_containerd: PrivateContainerd, tmp_path: Path
) -> None:
    agent = start_agent(socket=fresh_containerd.socket_path, cache=tmp_path / "recover.db")
    factory = PodFactory(fresh_containerd)
    try:
        first = web_pod(factory, "before-restart")
        agent.wait_for(lambda: agent.service_by_pod(first.uid), timeout=5, what="first service")

        fresh_containerd.kill()
        agent.wait_for(lambda: not agent.conditions()["runtime"][0], timeout=10, what="runtime down")
        fresh_containerd.restart()
        second = web_pod(factory, "after-restart")

        agent.wait_for(lambda: agent.service_by_pod(second.uid), timeout=15, what="service after restart")
        assert agent.service_by_pod(first.uid), "a pod that survived the restart must stay registered"
        assert agent.conditions()["runtime"][0]
    finally:
        factory.close()


def test_missing_cri_socket_is_a_clear_error_and_discovery_starts_when_it_appears(
    tmp_path: Path, harness_images: ImageSet
) -> None:
    runtime = PrivateContainerd(tmp_path / "late", images=harness_images)
    agent = AgentProcess(cri_socket=runtime.socket_path, cache=tmp_path / "late.db").start()
    try:
        ok, reason, _ = agent.wait_for(lambda: agent.conditions().get("runtime"), timeout=10, what="condition")
        assert not ok and "not found" in reason and str(runtime.socket_path) in reason
        time.sleep(1.5)  # several retries, and still alive
        assert agent.alive()

        with runtime:
            factory = PodFactory(runtime)
            try:
                pod = web_pod(factory, "late-bloomer")
                agent.wait_for(lambda: agent.service_by_pod(pod.uid), timeout=40, what="service")
                errors = [e for e in agent.events(kind="error") if "not found" in e.reason]
                assert len(errors) == 1, "the outage is reported once, not once per retry"
            finally:
                factory.close()
    finally:
        agent.stop()


def test_two_hundred_pods_with_malformed_annotations_give_two_hundred_errors(
    start_agent: AgentFactory, pods: PodFactory
) -> None:
    agent = start_agent()
    specs = [
        dict(
            name=f"bad-{i}",
            namespace="malformed",
            annotations={"coral.io/port": f"port-{i}"},
            containers=(ContainerSpec("app", ("sleep", "3600")),),
        )
        for i in range(200)
    ]
    created = pods.create_pods_concurrently(specs)
    uids = {p.uid for p in created}

    agent.wait_for(
        lambda: len({e.pod_uid for e in agent.events(kind="error") if e.pod_uid in uids}) == 200,
        timeout=60,
        what="200 error events",
    )
    settle(agent, pods)

    errors = [e for e in agent.events(kind="error") if e.pod_uid in uids]
    assert len(errors) == 200 and all("coral.io/port" in e.reason for e in errors)
    assert agent.alive() and all(ok for ok, _, _ in agent.conditions().values())
    assert len({s.pod_uid for s in agent.services() if s.pod_uid in uids}) == 200, "the rest still applies"
