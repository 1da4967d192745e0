"""Reconcile: only real changes become events; removals and skips say why."""

from __future__ import annotations

from dataclasses import replace

from cri_agent.discovery.engine import CLOSE_GRACE_S, KnownState, Reconciliation, reconcile
from cri_agent.discovery.rules import DiscoveryRules, ExplicitService, FilterRules, Selector
from cri_agent.model import DeclaredPort, EventKind, NodeSnapshot, PodProblem, PodRecord, PodUID, Provenance
from tests.builders import container, listening, pod

RULES = DiscoveryRules(filters=FilterRules(exclude_namespaces=frozenset({"kube-system"})), node_name="node-a")
EMPTY = KnownState(services={}, pods={})


def run(
    pods: list[PodRecord], known: KnownState = EMPTY, rules: DiscoveryRules = RULES, *, at: float = 0.0
) -> Reconciliation:
    return reconcile(known, NodeSnapshot(node_name="node-a", pods=tuple(pods), taken_at=at), rules)


def state(result: Reconciliation) -> KnownState:
    return KnownState(services=result.services, pods=result.pods, closing=result.closing)


def kinds(result: Reconciliation) -> list[tuple[str, str]]:
    return [(e.kind.value, e.reason) for e in result.events]


def test_new_pod_is_added() -> None:
    result = run([pod()])
    assert (kinds(result), len(result.upserted)) == ([("added", "")], 1)


def test_identical_snapshot_emits_nothing() -> None:
    first = run([pod(), pod("kube-proxy", namespace="kube-system"), pod("bad", annotations={"coral.io/port": "x"})])
    again = run(
        [pod(), pod("kube-proxy", namespace="kube-system"), pod("bad", annotations={"coral.io/port": "x"})],
        state(first),
    )
    assert (again.events, again.upserted, again.removed) == ((), (), ())


def test_ip_change_is_an_update_of_the_same_key() -> None:
    first = run([pod(ip="10.0.0.1")])
    second = run([pod(ip="10.0.0.2")], state(first))
    assert [(e.kind, e.fields) for e in second.events] == [(EventKind.UPDATED, ("pod_ip",))]


def test_annotation_change_updates_name_and_provenance() -> None:
    first = run([pod()])
    second = run([pod(annotations={"coral.io/name": "api"})], state(first))
    assert second.events[0].fields == ("name", "provenance", "overridden_fields")


def test_removed_pod_says_pod_gone() -> None:
    first = run([pod()])
    assert kinds(run([], state(first))) == [("removed", "pod gone")]


def test_closed_port_says_port_closed() -> None:
    two_ports = pod(containers=[container(ports=[DeclaredPort(8080), DeclaredPort(9090)])])
    first = run([two_ports])
    one_port = pod(containers=[container(ports=[DeclaredPort(8080)])])
    second = run([one_port], state(first))  # kept for the grace (see the tests below)
    third = run([one_port], state(second), at=CLOSE_GRACE_S)
    assert ("removed", "port closed") in kinds(third)


def listener(*ports: int, uid: str = "u") -> PodRecord:
    """A running container that declares nothing and listens on ``ports`` (what /proc shows)."""
    return pod(uid=uid, containers=[container(listening=[listening(p) for p in ports], processes=["httpd"])])


def test_a_port_that_closes_in_a_running_container_is_kept_for_the_grace_then_removed_as_closed() -> None:
    first = run([listener(8181, 9191)], at=100.0)
    found_closed = run([listener(9191)], state(first), at=100.5)
    within = run([listener(9191)], state(found_closed), at=100.5 + CLOSE_GRACE_S - 0.1)
    after = run([listener(9191)], state(within), at=100.5 + CLOSE_GRACE_S)

    assert (found_closed.events, found_closed.services) == ((), first.services)  # unchanged: names, types
    assert (found_closed.closing, found_closed.recheck_at) == ({"shop/u/app/8181": 100.5}, 100.5 + CLOSE_GRACE_S)
    assert (within.events, within.closing) == ((), {"shop/u/app/8181": 100.5})  # still since the first pass
    assert [(e.kind.value, e.key, e.reason) for e in after.events] == [
        ("removed", "shop/u/app/8181", "port closed"),
        ("updated", "shop/u/app/9191", ""),  # the port left alone loses its ":9191"
    ]
    assert (after.closing, after.recheck_at) == ({}, None)


def test_a_pod_stopped_while_its_listeners_close_leaves_once_as_pod_gone() -> None:
    """The listeners vanish a moment before the runtime says the containers exited or the sandbox is
    gone: no "port closed", no portless entry, no renamed sibling on the way out."""
    first = run([listener(8181, 9191)])
    one_closed = run([listener(9191)], state(first), at=0.01)
    none_left = run([listener()], state(one_closed), at=0.02)
    gone = run([], state(none_left), at=0.3)
    assert (one_closed.events, none_left.events, none_left.services) == ((), (), first.services)
    assert kinds(gone) == [("removed", "pod gone"), ("removed", "pod gone")]
    assert gone.closing == {}


def test_a_port_that_listens_again_within_the_grace_changes_nothing() -> None:
    first = run([listener(8181, 9191)])
    closed = run([listener(9191)], state(first), at=1.0)
    reopened = run([listener(8181, 9191)], state(closed), at=2.0)
    later = run([listener(8181, 9191)], state(reopened), at=2.0 + CLOSE_GRACE_S)
    assert (closed.events, reopened.events, later.events) == ((), (), ())
    assert (reopened.closing, reopened.recheck_at) == ({}, None)


def test_all_ports_closed_for_the_grace_leave_as_closed_for_the_portless_entry() -> None:
    first = run([listener(8181)])
    closed = run([listener()], state(first), at=1.0)
    after = run([listener()], state(closed), at=1.0 + CLOSE_GRACE_S)
    assert (closed.events, [(e.kind.value, e.key, e.reason) for e in after.events]) == (
        (),
        [("added", "shop/u/app/-", ""), ("removed", "shop/u/app/8181", "port closed")],
    )


def test_a_port_named_by_coral_io_port_is_never_closed() -> None:
    """It is there whether it listens or not: no grace to time, no re-check asked for."""
    named = pod(uid="u", annotations={"coral.io/port": "8080"}, containers=[container()])
    first = run([named])
    results = [run([named], state(first), at=at) for at in (1.0, 1.0 + CLOSE_GRACE_S)]
    assert [(r.events, r.closing, r.recheck_at) for r in results] == [((), {}, None)] * 2


def test_a_port_an_explicit_service_names_for_its_pod_is_never_closed() -> None:
    rules = replace(RULES, services=(ExplicitService(name="ledger", port=7000, selector=Selector(pod_name="web-0")),))
    first = run([listener(8181)], rules=rules)
    results = [run([listener(8181)], state(first), rules=rules, at=at) for at in (1.0, 1.0 + CLOSE_GRACE_S)]
    assert sorted(first.services) == ["shop/u/app/7000", "shop/u/app/8181"]
    assert [(r.events, r.closing, r.recheck_at) for r in results] == [((), {}, None)] * 2


def test_a_wall_clock_stepped_back_restarts_the_grace_instead_of_holding_the_port_for_longer() -> None:
    first = run([listener(8181, 9191)], at=1000.0)
    closed = run([listener(9191)], state(first), at=1000.0)
    stepped_back = run([listener(9191)], state(closed), at=10.0)
    after = run([listener(9191)], state(stepped_back), at=10.0 + CLOSE_GRACE_S)
    assert (stepped_back.closing, stepped_back.recheck_at) == ({"shop/u/app/8181": 10.0}, 10.0 + CLOSE_GRACE_S)
    assert ("removed", "port closed") in kinds(after)


def test_opt_out_removes_with_its_reason() -> None:
    first = run([pod()])
    second = run([pod(annotations={"coral.io/enabled": "false"})], state(first))
    assert kinds(second) == [
        ("skipped", "opt-out: coral.io/enabled=false"),
        ("removed", "opt-out: coral.io/enabled=false"),
    ]


def test_newly_filtered_pod_is_removed_as_filtered_out() -> None:
    first = run([pod()], rules=DiscoveryRules())
    second = run(
        [pod()], state(first), rules=DiscoveryRules(filters=FilterRules(exclude_namespaces=frozenset({"shop"})))
    )
    assert kinds(second) == [
        ("skipped", "namespace shop is excluded"),
        ("removed", "filtered out: namespace shop is excluded"),
    ]


def test_excluded_pod_is_skipped_once() -> None:
    excluded = pod("kube-proxy", namespace="kube-system")
    first = run([excluded])
    second = run([excluded], state(first))
    assert (kinds(first), kinds(second)) == ([("skipped", "namespace kube-system is excluded")], [])


def test_each_error_is_reported_once_per_pod() -> None:
    bad = [pod(f"bad-{i}", annotations={"coral.io/port": f"p{i}"}) for i in range(200)]
    first = run(bad)
    second = run(bad, state(first))
    errors = [e for e in first.events if e.kind == EventKind.ERROR]
    assert (len(errors), {e.fields for e in errors}, len(first.services), second.events) == (
        200,
        {("coral.io/port",)},
        200,
        (),
    )


def test_a_fixed_annotation_can_break_again_and_is_reported_again() -> None:
    broken = pod(annotations={"coral.io/port": "x"})
    first = run([broken])
    fixed = run([pod()], state(first))
    again = run([broken], state(fixed))
    assert [e.kind for e in again.events if e.kind == EventKind.ERROR] == [EventKind.ERROR]


def test_provider_errors_become_error_events() -> None:
    problem = PodProblem("io.kubernetes.container.ports", "malformed JSON (x)", container="app")
    result = run([pod(provider_problems=[problem])])
    assert [(e.reason, e.fields) for e in result.events if e.kind == EventKind.ERROR] == [
        (
            "shop/web-0: container app: io.kubernetes.container.ports: malformed JSON (x)",
            ("io.kubernetes.container.ports",),
        )
    ]


def test_static_explicit_service_is_added_and_removed_with_the_config() -> None:
    rules = replace(RULES, services=(ExplicitService(name="node-exporter", port=9100, type="metrics"),))
    first = run([], rules=rules)
    second = run([], state(first))
    assert ([s.key for s in first.upserted], kinds(second)) == (
        ["explicit/-/node-exporter/9100"],
        [("removed", "removed from config")],
    )


def test_events_are_in_a_stable_order() -> None:
    pods = [pod("b"), pod("a"), pod("c", namespace="billing")]
    assert [e.pod_name for e in run(pods).events] == ["c", "a", "b"]


def test_restart_from_the_cached_state_emits_nothing() -> None:
    pods = [pod(), pod("kube-proxy", namespace="kube-system"), pod("bad", annotations={"coral.io/type": "?"})]
    first = run(pods)
    reloaded = KnownState(services=dict(first.services), pods=dict(first.pods))  # as read back from the cache
    assert run(pods, reloaded).events == ()


def test_excluded_pod_is_skipped_again_when_its_reason_changes() -> None:
    first = run([pod(namespace="kube-system", uid="u")])
    second = run([pod(namespace="kube-system", uid="u", annotations={"coral.io/enabled": "false"})], state(first))
    assert kinds(second) == [("skipped", "opt-out: coral.io/enabled=false")]


def test_pod_that_becomes_included_is_added_without_a_skip() -> None:
    first = run([pod(annotations={"coral.io/enabled": "false"})])
    assert kinds(run([pod()], state(first))) == [("added", "")]


def test_error_event_names_pod_uid_and_key() -> None:
    [error] = [e for e in run([pod(annotations={"coral.io/port": "80x"})]).events if e.kind == EventKind.ERROR]
    assert (error.namespace, error.pod_name, error.pod_uid, error.fields, error.reason) == (
        "shop",
        "web-0",
        "uid-shop-web-0",
        ("coral.io/port",),
        'shop/web-0: coral.io/port: "80x" is not a port number (1-65535); ignored',
    )


def test_malformed_enabled_annotation_is_an_error_and_the_pod_still_registers() -> None:
    result = run([pod(annotations={"coral.io/enabled": "maybe"})])
    assert [e.kind for e in result.events] == [EventKind.ERROR, EventKind.ADDED]


def test_pod_decisions_keep_sorted_errors() -> None:
    result = run([pod(uid="u", annotations={"coral.io/type": "?", "coral.io/port": "x"})])
    assert [e.split(": ")[1] for e in result.pods[PodUID("u")].errors] == ["coral.io/port", "coral.io/type"]


def test_pods_absent_from_the_snapshot_drop_out_of_the_decisions() -> None:
    first = run([pod("a"), pod("b")])
    assert [d.name for d in run([pod("a")], state(first)).pods.values()] == ["a"]


def test_removed_keys_are_listed() -> None:
    first = run([pod(uid="u")])
    assert run([], state(first)).removed == ("shop/u/app/8080",)


def test_updated_service_is_upserted_with_the_new_values() -> None:
    first = run([pod(ip="10.0.0.1")])
    assert [s.pod_ip for s in run([pod(ip="10.0.0.2")], state(first)).upserted] == ["10.0.0.2"]


def test_health_annotation_change_updates_only_health_fields() -> None:
    first = run([pod(annotations={"coral.io/health-interval": "5s"})])
    second = run([pod(annotations={"coral.io/health-interval": "15s"})], state(first))
    assert [(e.kind, e.fields) for e in second.events] == [(EventKind.UPDATED, ("health_interval_s",))]


def test_node_name_comes_from_the_snapshot_when_the_rules_have_none() -> None:
    snapshot = NodeSnapshot(node_name="node-b", pods=(pod(),), taken_at=0.0)
    result = reconcile(EMPTY, snapshot, DiscoveryRules())
    assert [s.node_name for s in result.services.values()] == ["node-b"]


def test_label_filter_removal_says_filtered_out() -> None:
    first = run([pod()], rules=DiscoveryRules())
    rules = DiscoveryRules(filters=FilterRules(include_labels={"coral": "on"}))
    removed = [e.reason for e in run([pod()], state(first), rules=rules).events if e.kind == EventKind.REMOVED]
    assert removed == ["filtered out: labels coral=on required"]


def test_pod_that_opens_its_first_port_replaces_its_portless_entry() -> None:
    first = run([pod(uid="u", containers=[container(ports=[])])])
    second = run([pod(uid="u")], state(first))
    assert [(e.kind.value, e.key, e.reason) for e in second.events] == [
        ("removed", "shop/u/app/-", "replaced by the ports it listens on"),
        ("added", "shop/u/app/8080", ""),
    ]


def test_explicit_service_with_a_selector_follows_its_pod() -> None:
    rules = replace(RULES, services=(ExplicitService(name="ledger", port=8080, selector=Selector(pod_name="web-0")),))
    result = run([pod(uid="u")], rules=rules)
    assert [(s.key, s.name, s.provenance) for s in result.services.values()] == [
        ("shop/u/app/8080", "ledger", Provenance.EXPLICIT)
    ]


def test_service_events_carry_the_provenance_of_the_service_they_describe() -> None:
    first = run([pod("web-0")])
    annotated = run([pod("web-0", annotations={"coral.io/name": "web-api"})], state(first))
    gone = run([], state(annotated))
    assert [(e.kind, e.provenance) for e in (*first.events, *annotated.events, *gone.events)] == [
        (EventKind.ADDED, Provenance.DISCOVERED),
        (EventKind.UPDATED, Provenance.OVERRIDDEN),
        (EventKind.REMOVED, Provenance.OVERRIDDEN),
    ]
