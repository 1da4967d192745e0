"""Discovery stays true when the node misbehaves: containers restart, pods stop back to back,
containers complete, the cache disappears or stops taking writes, a second agent starts.

Each test reproduces the fault on the harness (a real containerd, real pods, the real agent process,
a real colony where it matters) and observes the agent through its CLI, its cache and its log.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cri_agent.discovery.containers import SETTLE_S
from cri_agent.discovery.engine import CLOSE_GRACE_S
from integration.harness.agent import AgentProcess
from integration.harness.colony import ColonyProcess, free_port
from integration.harness.containerd import PrivateContainerd
from integration.harness.pods import ContainerSpec, PodFactory, PortSpec

AgentFactory = Callable[..., AgentProcess]

HTTPD = ContainerSpec("web", ("httpd", "-f", "-p", "8080", "-h", "/www"), ports=(PortSpec(8080, name="http"),))
# httpd on a port that is not well known, undeclared (found by listening), with a second undeclared port:
# the type comes from the process name, which only the running instance has.
LISTENER = ContainerSpec("app", ("sh", "-c", "httpd -p 9191 -h /www; exec httpd -f -p 8181 -h /www"))
# On SIGTERM it closes 8181, exits half a second later (a graceful shutdown); 9191 stays until then.
GRACEFUL = ContainerSpec(
    "app",
    (
        "sh",
        "-c",
        "httpd -f -p 8181 -h /www & first=$!; trap 'kill $first; sleep 0.5; exit 0' TERM; "
        "httpd -f -p 9191 -h /www & wait",
    ),
)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coral_cli", *args], capture_output=True, text=True, timeout=30, check=False
    )


def agent_status(agent: AgentProcess) -> dict[str, Any]:
    result = cli("agent", "status", "--cache", str(agent.cache_path), "-o", "json")
    assert result.returncode in (0, 1), result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def cache_condition(agent: AgentProcess) -> tuple[bool, str]:
    status = agent_status(agent)
    [cache] = [c for c in status["conditions"] if c["name"] == "cache"]
    return bool(cache["ok"]), str(cache["reason"])


def cache_failure(agent: AgentProcess) -> str | None:
    ok, reason = cache_condition(agent)
    return None if ok else reason


def log_events(agent: AgentProcess, name: str) -> list[dict[str, Any]]:
    lines = agent.log_path.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if f'"{name}"' in line]


def settle(agent: AgentProcess, pods: PodFactory) -> None:
    marker = pods.create_pod(f"settle-{time.monotonic_ns()}", namespace="settle")
    agent.wait_for(lambda: agent.service_by_pod(marker.uid), timeout=10, what="the settle marker")


@pytest.fixture(scope="module")
def colony(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ColonyProcess]:
    process = ColonyProcess(tmp_path_factory.mktemp("colony") / "colony").start()
    yield process
    assert process.stop() == 0, process.log()[-3000:]


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """``chattr +i``: the files refuse every write, as an operator's mistake or a broken mount would."""
    present = [p for p in paths if p.exists()]
    subprocess.run(["chattr", "+i", *map(str, present)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, present)], check=True)


@contextlib.contextmanager
def small_disk(directory: Path, size: str = "8m") -> Iterator[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system holding ``directory`` to the last block."""
    filler = directory / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False)
    return filler


def cache_files(cache: Path) -> list[Path]:
    return [cache, cache.with_name(cache.name + "-wal"), cache.with_name(cache.name + "-shm")]


# -- 1. the cache is a condition, not a precondition -----------------------------------------------------------


@pytest.mark.parametrize("fault", ["immutable", "full disk"])
def test_a_cache_that_refuses_writes_is_reported_and_discovery_health_and_sync_go_on(
    fault: str, pods: PodFactory, containerd: PrivateContainerd, colony: ColonyProcess, tmp_path: Path
) -> None:
    directory = tmp_path / "small" if fault == "full disk" else tmp_path
    with contextlib.ExitStack() as stack:
        if fault == "full disk":
            stack.enter_context(small_disk(directory))
        config = tmp_path / "agent.yaml"
        config.write_text(yaml.safe_dump({"colony": colony.agent_settings()}))
        agent = AgentProcess(
            cri_socket=containerd.socket_path,
            cache=directory / "agent.db",
            node_name=f"faulty-{fault.replace(' ', '-')}",
            extra_args=["--config", str(config), "--poll-interval", "1s"],
            log_path=tmp_path / "agent.log",
        ).start()
        stack.callback(agent.stop)
        before = pods.create_pod("before", containers=(HTTPD,))
        agent.wait_for(lambda: agent.service_by_pod(before.uid), timeout=10, what="the first pod")
        last = agent.last_event_id()

        with contextlib.ExitStack() as fault_scope:
            if fault == "immutable":
                fault_scope.enter_context(immutable(*cache_files(agent.cache_path)))
            else:
                fault_scope.callback((fill(directory)).unlink)
            during = pods.create_pod("during", containers=(HTTPD,))
            reason = agent.wait_for(lambda: cache_failure(agent), timeout=10, what="the cache condition")
            assert "discovery goes on from memory" in reason
            assert ("immutable" in reason) if fault == "immutable" else ("full" in reason), reason

            # Discovery, health probing and the colony go on from memory.
            registered = colony.wait_for(
                lambda: [r for r in colony.services() if r["pod_uid"] == during.uid and r["health_state"] == "healthy"],
                timeout=20,
                what="the pod created during the outage, healthy in the colony",
            )
            assert [r["port"] for r in registered] == [8080]
            assert agent.service_by_pod(during.uid) == [], "the file itself did not take the write"
            time.sleep(2.5)  # several retries fail meanwhile: logged once
            assert len(log_events(agent, "cache.unwritable")) == 1
            assert agent.alive()

        agent.wait_for(lambda: cache_condition(agent)[0], timeout=40, what="the cache to work again")
        added = [e for e in agent.events(since_id=last) if e.pod_uid == during.uid]
        assert [e.kind for e in added] == ["added"], "the outage's events are written late, with their own time"
        assert agent.service_by_pod(during.uid) and agent.service_by_pod(before.uid)
        [recovery] = [e for e in agent.events(since_id=last, kind="error") if e.fields == ("cache",)]
        assert "refused writes" in recovery.reason and "held in memory are written now" in recovery.reason
        assert added[0].at < recovery.at
        assert agent.read(lambda c: {r.name: r.ok for r in c.conditions()})["cache"] == 1


# -- 2. one writer ----------------------------------------------------------------------------------------------


def test_a_second_agent_on_the_same_cache_refuses_and_names_the_first(
    start_agent: AgentFactory, pods: PodFactory, tmp_path: Path
) -> None:
    first = start_agent(cache=tmp_path / "shared.db")
    second = AgentProcess(cri_socket=first.cri_socket, cache=first.cache_path, log_path=tmp_path / "second.log")
    result = subprocess.run(second.command, capture_output=True, text=True, timeout=30, check=False)

    assert result.returncode == 2, result.stderr
    assert f"in use by another agent (pid {first.pid})" in result.stderr
    pod = pods.create_pod("single-writer", containers=(HTTPD,))
    agent_events = first.wait_for(
        lambda: [e for e in first.events() if e.pod_uid == pod.uid], timeout=10, what="the pod's event"
    )
    settle(first, pods)
    assert [e.kind for e in first.events() if e.pod_uid == pod.uid] == ["added"] == [e.kind for e in agent_events]


# -- 3. a deleted or replaced cache ----------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["deleted", "replaced"])
def test_a_deleted_or_replaced_cache_is_rebuilt_from_memory_within_one_pass(
    fault: str, start_agent: AgentFactory, pods: PodFactory, tmp_path: Path
) -> None:
    agent = start_agent("--poll-interval", "1s", cache=tmp_path / "agent.db")
    pod = pods.create_pod("survivor", containers=(HTTPD,))
    agent.wait_for(lambda: agent.service_by_pod(pod.uid), timeout=10, what="the service")
    stale = tmp_path / "stale.db"
    if fault == "replaced":  # an old copy put back over the live file (a restore from a backup, say)
        subprocess.run(["sqlite3", str(agent.cache_path), f".backup {stale}"], check=True)
        late = pods.create_pod("after-backup", containers=(HTTPD,))
        agent.wait_for(lambda: agent.service_by_pod(late.uid), timeout=10, what="a service the copy lacks")

    if fault == "deleted":
        for path in cache_files(agent.cache_path):
            path.unlink(missing_ok=True)
        answer = cli("agent", "services", "--cache", str(agent.cache_path))
        assert "start `coral agent node`" not in answer.stderr
        if answer.returncode != 0:
            assert f"its agent (pid {agent.pid}) runs" in answer.stderr
    else:
        stale.replace(agent.cache_path)

    [event] = agent.wait_for(
        lambda: [e for e in agent.events(kind="error") if e.fields == ("cache",)], timeout=5, what="the gap event"
    )
    assert f"was {fault} while the agent ran" in event.reason and "recreated from memory" in event.reason
    assert {s.pod_uid for s in agent.services()} >= {pod.uid}
    if fault == "replaced":
        assert agent.service_by_pod(late.uid), "memory, not the old copy, decides"
    ok, _ = cache_condition(agent)
    assert ok


def test_an_agent_on_a_corrupt_cache_moves_it_aside_and_runs(
    start_agent: AgentFactory, pods: PodFactory, tmp_path: Path
) -> None:
    """A corrupt file on the hostPath used to fail every start (CrashLoopBackOff); it is kept aside instead."""
    cache = tmp_path / "agent.db"
    cache.write_bytes(b"half a page of something that is not SQLite " * 100)
    agent = start_agent(cache=cache)
    pod = pods.create_pod("after-corruption", containers=(HTTPD,))
    agent.wait_for(lambda: agent.service_by_pod(pod.uid), timeout=10, what="the service, in a new cache")
    [event] = agent.wait_for(
        lambda: [e for e in agent.events(kind="error") if e.fields == ("cache",)], timeout=5, what="the event"
    )
    assert "was corrupt (file is not a database): moved aside to" in event.reason
    [aside] = [p for p in tmp_path.iterdir() if p.name.startswith("agent.db.corrupt-")]
    assert aside.read_bytes().startswith(b"half a page of something")
    ok, _ = cache_condition(agent)
    assert ok and agent.alive()


# -- 4. restarted containers ------------------------------------------------------------------------------------


def test_a_restarted_container_whose_ports_did_not_change_emits_nothing(
    start_agent: AgentFactory, pods: PodFactory
) -> None:
    agent = start_agent("--poll-interval", "1s")
    pod = pods.create_pod("restarter", containers=(LISTENER,))
    before = agent.wait_for(
        lambda: found if len(found := agent.service_by_pod(pod.uid)) == 2 else None,
        timeout=10,
        what="both listening ports",
    )
    last = agent.last_event_id()

    for _ in range(3):
        pods.restart_container(pod, "app")
        time.sleep(1.5)  # several passes see the exited instance and the young running one
    time.sleep(SETTLE_S + 1.5)  # past the grace of the last restart, and a poll
    settle(agent, pods)

    assert [e for e in agent.events(since_id=last) if e.pod_uid == pod.uid] == []
    after = agent.service_by_pod(pod.uid)
    assert {(s.port, s.service_type, s.name) for s in after} == {(s.port, s.service_type, s.name) for s in before}


# -- 5. stops within a second -----------------------------------------------------------------------------------


def test_pods_stopped_back_to_back_are_removed_within_a_second_with_one_event_each(
    start_agent: AgentFactory, pods: PodFactory
) -> None:
    # No runtime event says a started container listens: a pass every second finds the ports a slow
    # start opens after its start event's pass (else the next poll, 30 s away); it sees stops half-done too.
    agent = start_agent("--poll-interval", "1s")
    for round_ in range(5):
        pair = [pods.create_pod(f"stop-{round_}-{i}", containers=(LISTENER,)) for i in range(2)]
        agent.wait_for(
            lambda: all(len(agent.service_by_pod(p.uid)) == 2 for p in pair),  # noqa: B023
            timeout=10,
            what="both pods' ports",
        )
        last = agent.last_event_id()
        for pod in pair:
            pods.stop_pod(pod)
        stopped = time.monotonic()
        agent.wait_for(
            lambda: not any(agent.service_by_pod(p.uid) for p in pair),  # noqa: B023
            timeout=5,
            what="removal",
        )
        assert time.monotonic() - stopped < 1.0, f"round {round_}: {time.monotonic() - stopped:.2f}s"
        for pod in pair:  # no "port closed", no portless entry on the way out
            events = [(e.kind, e.reason) for e in agent.events(since_id=last) if e.pod_uid == pod.uid]
            assert events == [("removed", "pod gone"), ("removed", "pod gone")]


def test_a_pod_whose_shutdown_closes_a_listener_first_leaves_as_pod_gone(
    start_agent: AgentFactory, pods: PodFactory
) -> None:
    """A graceful shutdown closes a listener half a second before the process exits: passes in between
    (one every 100 ms here) keep the port, and the pod leaves once, as "pod gone"."""
    agent = start_agent("--poll-interval", "100ms")
    for round_ in range(2):
        pod = pods.create_pod(f"graceful-{round_}", containers=(GRACEFUL,))
        agent.wait_for(lambda: len(agent.service_by_pod(pod.uid)) == 2, timeout=10, what="both ports")  # noqa: B023
        last = agent.last_event_id()
        pods.stop_pod_gracefully(pod)
        stopped = time.monotonic()
        agent.wait_for(lambda: not agent.service_by_pod(pod.uid), timeout=5, what="removal")  # noqa: B023
        assert time.monotonic() - stopped < 1.0, f"round {round_}: {time.monotonic() - stopped:.2f}s"
        events = [(e.kind, e.reason) for e in agent.events(since_id=last) if e.pod_uid == pod.uid]
        assert events == [("removed", "pod gone"), ("removed", "pod gone")]


def test_a_port_closed_in_a_running_pod_is_removed_as_closed_once_its_grace_is_over(
    start_agent: AgentFactory, pods: PodFactory
) -> None:
    agent = start_agent("--poll-interval", "100ms")
    command = "httpd -f -p 9191 -h /www & echo $! > /tmp/9191.pid; exec httpd -f -p 8181 -h /www"
    pod = pods.create_pod("closes-one", containers=(ContainerSpec("app", ("sh", "-c", command)),))
    agent.wait_for(lambda: len(agent.service_by_pod(pod.uid)) == 2, timeout=10, what="both ports")
    last = agent.last_event_id()
    pods.exec_in(pod.container_ids[0], "sh", "-c", "kill $(cat /tmp/9191.pid)")
    closed = time.monotonic()
    agent.wait_for(lambda: len(agent.service_by_pod(pod.uid)) == 1, timeout=CLOSE_GRACE_S + 5, what="removal")
    took = time.monotonic() - closed
    events = [(e.kind, e.key.rsplit("/", 1)[-1], e.reason) for e in agent.events(since_id=last)]
    assert events == [("updated", "8181", ""), ("removed", "9191", "port closed")]  # 8181 loses its ":8181"
    assert CLOSE_GRACE_S <= took < CLOSE_GRACE_S + 1.0, f"{took:.2f}s"  # pollInterval + the grace


# -- 6. completed and crash-looping containers -------------------------------------------------------------------


def test_a_completed_init_container_contributes_nothing_and_a_crash_looping_one_keeps_its_port(
    start_agent: AgentFactory, pods: PodFactory
) -> None:
    agent = start_agent()
    init = ContainerSpec("migrate", ("sh", "-c", "sleep 1; exit 0"), ports=(PortSpec(9100, name="metrics"),))
    pod = pods.create_pod("with-init", init_containers=(init,), containers=(HTTPD,))
    crashing = ContainerSpec("app", ("sh", "-c", "exit 3"), ports=(PortSpec(9200, name="http"),))
    crash = pods.create_pod("crash-loop", containers=(crashing,))

    agent.wait_for(lambda: agent.service_by_pod(pod.uid), timeout=10, what="the pod's service")
    time.sleep(SETTLE_S + 1.0)
    settle(agent, pods)

    assert [(s.container, s.port) for s in agent.service_by_pod(pod.uid)] == [("web", 8080)]
    removed = [e.reason for e in agent.events(kind="removed") if e.pod_uid == pod.uid]
    assert removed in ([], ["container completed"])
    [kept] = agent.service_by_pod(crash.uid)
    assert (kept.container, kept.port) == ("app", 9200)
    agent.wait_for(lambda: agent.health(kept.key) == "unhealthy", timeout=15, what="the crash-looper unhealthy")


# -- 7. the smaller items ----------------------------------------------------------------------------------------


def test_an_ipv4_mapped_loopback_listener_is_not_registered(start_agent: AgentFactory, pods: PodFactory) -> None:
    agent = start_agent()
    command = "httpd -p '[::ffff:127.0.0.1]:9300' -h /www; exec httpd -f -p '[::]:9301' -h /www"
    pod = pods.create_pod("mapped-loopback", containers=(ContainerSpec("app", ("sh", "-c", command)),))
    agent.wait_for(
        lambda: [s for s in agent.service_by_pod(pod.uid) if s.port == 9301], timeout=10, what="the reachable port"
    )
    settle(agent, pods)
    assert [s.port for s in agent.service_by_pod(pod.uid)] == [9301]


def test_the_events_condition_is_set_once_subscribed_before_any_runtime_event(
    fresh_containerd: PrivateContainerd, tmp_path: Path
) -> None:
    agent = AgentProcess(cri_socket=fresh_containerd.socket_path, cache=tmp_path / "quiet.db").start()
    try:
        ok, reason, _ = agent.wait_for(lambda: agent.conditions().get("events"), timeout=5, what="the condition")
        assert ok and reason == "streaming (containerd)"
        assert [e for e in agent.events()] == []
    finally:
        assert agent.stop() == 0


def test_a_host_network_pod_owns_only_its_own_listener(start_agent: AgentFactory, pods: PodFactory) -> None:
    agent = start_agent()
    with socket.socket() as host_listener:  # the node's own socket, in the same network namespace
        host_listener.bind(("0.0.0.0", 0))
        host_listener.listen()
        host_port = host_listener.getsockname()[1]
        pod_port = free_port()
        pod = pods.create_pod(
            "host-net",
            host_network=True,
            containers=(ContainerSpec("daemon", ("httpd", "-f", "-p", str(pod_port), "-h", "/www")),),
        )
        services = agent.wait_for(
            lambda: [s for s in agent.service_by_pod(pod.uid) if s.port == pod_port], timeout=10, what="its port"
        )
        settle(agent, pods)
        ports = {s.port for s in agent.service_by_pod(pod.uid)}
    assert host_port not in ports and ports == {pod_port}
    assert [s.container for s in services] == ["daemon"]


def test_an_exec_in_a_container_is_not_its_exit(start_agent: AgentFactory, pods: PodFactory) -> None:
    """An exec probe ends a process in the container: containerd reports that exit too (another exec id)."""
    agent = start_agent()
    pod = pods.create_pod("probed", containers=(LISTENER,))
    agent.wait_for(lambda: len(agent.service_by_pod(pod.uid)) == 2, timeout=10, what="both ports")
    last = agent.last_event_id()
    for _ in range(3):
        pods.exec_in(pod.container_ids[0], "true")
    time.sleep(SETTLE_S + 1.0)  # an exit taken for the container's would remove it once its grace ends
    settle(agent, pods)
    assert [e for e in agent.events(since_id=last) if e.pod_uid == pod.uid] == []
