"""Reconcile: only real changes become events; removals and skips say why."""

from __future__ import annotations

from dataclasses import replace

from cri_agent.discovery.engine import KnownState, Reconciliation, reconcile
from cri_agent.discovery.rules import DiscoveryRules, ExplicitService, FilterRules, Selector
from cri_agent.model import DeclaredPort, EventKind, NodeSnapshot, PodProblem, PodRecord, PodUID, Provenance
from tests.builders import container, pod

RULES = DiscoveryRules(filters=FilterRules(exclude_namespaces=frozenset({"kube-system"})), node_name="node-a")
EMPTY = KnownState(services={}, pods={})


def run(pods: list[PodRecord], known: KnownState = EMPTY, rules: DiscoveryRules = RULES) -> Reconciliation:
    return reconcile(known, NodeSnapshot(node_name="node-a", pods=tuple(pods), taken_at=0.0), rules)


def state(result: Reconciliation) -> KnownState:
    return KnownState(services=result.services, pods=result.pods)


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
    second = run([pod(containers=[container(ports=[DeclaredPort(8080)])])], state(first))
    assert ("removed", "port closed") in kinds(second)


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
