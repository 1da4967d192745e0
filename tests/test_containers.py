"""Which instance of a container decides, and what it contributes: restarts, crashes, completions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cri_agent.discovery.containers import (
    SETTLE_S,
    WARMUP_STEPS_S,
    Phase,
    deciding_instances,
    phase,
    settles_at,
    warms_at,
)
from cri_agent.discovery.engine import KnownState, reconcile
from cri_agent.discovery.rules import DiscoveryRules
from cri_agent.model import (
    ContainerID,
    ContainerRecord,
    ContainerState,
    DeclaredPort,
    ListeningSocket,
    NodeSnapshot,
    PodRecord,
)
from tests.builders import container, pod

NOW = 10_000.0
RULES = DiscoveryRules(node_name="node-a")


def instance(attempt: int, state: ContainerState, **changes: object) -> ContainerRecord:
    base = container(
        "app",
        ports=[DeclaredPort(8081)],
        state=state,
        processes=("httpd",) if state == ContainerState.RUNNING else (),
        listening=[ListeningSocket(9191, "TCP", "0.0.0.0")] if state == ContainerState.RUNNING else [],
    )
    return replace(base, id=ContainerID(f"{attempt:0>64}"), attempt=attempt, **changes)  # type: ignore[arg-type]


RUNNING_1 = instance(1, ContainerState.RUNNING, started_at=NOW - 3600)
EXITED_0 = instance(0, ContainerState.EXITED, exit_code=137, finished_at=NOW - 3601)


@pytest.mark.parametrize("order", [(RUNNING_1, EXITED_0), (EXITED_0, RUNNING_1)])
def test_the_running_instance_decides_whatever_the_runtime_lists_first(
    order: tuple[ContainerRecord, ContainerRecord],
) -> None:
    assert deciding_instances(order) == [RUNNING_1]


def test_without_a_running_instance_the_highest_attempt_decides() -> None:
    older = instance(1, ContainerState.EXITED, exit_code=1)
    newer = instance(2, ContainerState.EXITED, exit_code=1)
    assert deciding_instances([newer, older]) == deciding_instances([older, newer]) == [newer]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"state": ContainerState.RUNNING, "attempt": 0, "started_at": NOW - 1}, Phase.ACTIVE),
        ({"state": ContainerState.RUNNING, "attempt": 2, "started_at": NOW - 1}, Phase.SETTLING),
        ({"state": ContainerState.RUNNING, "attempt": 2, "started_at": NOW - SETTLE_S}, Phase.ACTIVE),
        ({"state": ContainerState.CREATED, "attempt": 0}, Phase.ACTIVE),
        ({"state": ContainerState.CREATED, "attempt": 1}, Phase.SETTLING),
        ({"state": ContainerState.EXITED, "exit_code": 2, "finished_at": NOW - 9999}, Phase.FAILED),
        ({"state": ContainerState.EXITED, "exit_code": None}, Phase.FAILED),
        ({"state": ContainerState.EXITED, "exit_code": 0, "finished_at": NOW - 1}, Phase.EXITING),
        ({"state": ContainerState.EXITED, "exit_code": 0, "finished_at": NOW - SETTLE_S}, Phase.COMPLETED),
    ],
)
def test_phases(changes: dict[str, object], expected: Phase) -> None:
    assert phase(replace(container(), **changes), now=NOW) == expected  # type: ignore[arg-type]


def test_settles_at_is_the_earliest_end_of_a_grace() -> None:
    young = replace(container("a"), attempt=1, started_at=NOW - 4)
    exiting = replace(container("b"), state=ContainerState.EXITED, exit_code=0, finished_at=NOW - 2)
    assert settles_at([young, exiting], now=NOW) == NOW - 4 + SETTLE_S
    assert settles_at([container("c")], now=NOW) is None


def test_a_just_started_container_asks_for_passes_at_each_warm_up_age_then_none() -> None:
    started = replace(container("a"), started_at=NOW)
    ages = []
    at: float | None = NOW
    while at is not None:
        at = warms_at([started], now=at)
        ages.append(None if at is None else at - NOW)
    assert ages == [*WARMUP_STEPS_S, None]
    assert warms_at([replace(started, state=ContainerState.EXITED)], now=NOW) is None
    assert warms_at([container("old")], now=NOW) is None  # no start time known: nothing to time
    listens = replace(started, listening=(ListeningSocket(8080, "TCP", "0.0.0.0", 1),))
    assert warms_at([listens], now=NOW) is None  # found listening: a scale-up of such pods costs no extra pass


def test_a_port_opened_seconds_after_its_container_started_is_found_by_a_warm_up_pass() -> None:
    """No runtime event says a port opened: the passes the start asks for find it, not the next poll."""
    quiet = replace(container("app", processes=("java",)), started_at=NOW)
    listening = replace(quiet, listening=(ListeningSocket(8080, "TCP", "0.0.0.0", 1),))
    known = KnownState(services={}, pods={})
    passes = []
    at: float | None = NOW + 0.2  # the pass the container's start event triggers
    while at is not None and at < NOW + 60:
        current = pod(containers=(listening if at >= NOW + 2.5 else quiet,))  # listens 2.5 s after its start
        result = reconcile(known, NodeSnapshot("node-a", (current,), taken_at=at), RULES)
        known = KnownState(services=result.services, pods=result.pods)
        passes.append((round(at - NOW, 1), sorted(s.port or 0 for s in result.services.values())))
        at = result.recheck_at
    assert passes == [(0.2, [0]), (1.0, [0]), (3.0, [8080])]  # listening: no more warm-up passes


def restarting_pod(*containers: ContainerRecord) -> PodRecord:
    return pod("web-0", containers=list(containers))


def passes(*pods: PodRecord, start: float = NOW) -> list[tuple[str, ...]]:
    """Reconcile each pod state in turn (one second apart); the events of each pass after the first."""
    known = KnownState(services={}, pods={})
    seen: list[tuple[str, ...]] = []
    for index, current in enumerate(pods):
        result = reconcile(known, NodeSnapshot("node-a", (current,), taken_at=start + index), RULES)
        if index:
            seen.append(
                tuple(f"{e.kind.value} {e.service} {e.reason} {','.join(e.fields)}".strip() for e in result.events)
            )
        known = KnownState(services=result.services, pods=result.pods)
    return seen


def test_a_restart_whose_ports_did_not_change_emits_nothing() -> None:
    crashed = replace(
        RUNNING_1, state=ContainerState.EXITED, exit_code=143, finished_at=NOW, listening=(), process_names=()
    )
    restarted = replace(instance(2, ContainerState.RUNNING, started_at=NOW + 1), listening=(), process_names=("sh",))
    listening = replace(restarted, listening=RUNNING_1.listening, process_names=("httpd",))
    assert passes(
        restarting_pod(RUNNING_1, EXITED_0),
        restarting_pod(EXITED_0, crashed),  # the process died: no socket, no process name
        restarting_pod(crashed, restarted),  # attempt 2 runs, not listening yet
        restarting_pod(listening, crashed),
    ) == [(), (), ()]


def test_a_container_that_exited_zero_keeps_its_services_for_the_grace_then_they_are_removed_as_completed() -> None:
    exited = replace(
        RUNNING_1, state=ContainerState.EXITED, exit_code=0, finished_at=NOW + 1, listening=(), process_names=()
    )
    other = container("sidecar", ports=[DeclaredPort(15000)])
    state = [restarting_pod(RUNNING_1, other), restarting_pod(exited, other)]
    known = KnownState(services={}, pods={})
    results = []
    for at, current in [(NOW, state[0]), (NOW + 2, state[1]), (NOW + 1 + SETTLE_S, state[1])]:
        result = reconcile(known, NodeSnapshot("node-a", (current,), taken_at=at), RULES)
        known = KnownState(services=result.services, pods=result.pods)
        results.append(result)
    assert results[1].events == () and results[1].recheck_at == NOW + 1 + SETTLE_S
    assert sorted((e.kind.value, e.reason) for e in results[2].events) == [
        ("removed", "container completed"),
        ("removed", "container completed"),
        ("updated", ""),  # the sidecar's name loses its port suffix: it is the pod's only port now
    ]
    assert {s.container for s in results[2].services.values()} == {"sidecar"}


def test_a_completed_container_seen_only_after_it_exited_contributes_nothing() -> None:
    init = replace(
        container("migrate", ports=[DeclaredPort(9100)]), state=ContainerState.EXITED, exit_code=0, finished_at=NOW
    )
    web = container("web", ports=[DeclaredPort(8080)])
    result = reconcile(KnownState({}, {}), NodeSnapshot("node-a", (pod(containers=[init, web]),), taken_at=NOW), RULES)
    assert [(s.container, s.port) for s in result.services.values()] == [("web", 8080)]


def test_a_crash_looping_container_keeps_its_declared_ports() -> None:
    crashing = replace(container("app", ports=[DeclaredPort(9200)]), state=ContainerState.EXITED, exit_code=3)
    result = reconcile(KnownState({}, {}), NodeSnapshot("node-a", (pod(containers=[crashing]),), taken_at=NOW), RULES)
    assert [(s.container, s.port) for s in result.services.values()] == [("app", 9200)]
