"""Which pods may register: the filter truth table of docs/configuration.md."""

from __future__ import annotations

import pytest

from cri_agent.discovery.filters import evaluate
from cri_agent.discovery.rules import FilterRules
from tests.builders import pod

RULES = FilterRules(
    include_namespaces=frozenset({"shop", "kube-system"}),
    exclude_namespaces=frozenset({"kube-system"}),
    include_labels={"team": "web"},
    exclude_labels={"tier": "debug"},
)


@pytest.mark.parametrize(
    ("namespace", "labels", "enabled", "included", "reason"),
    [
        ("shop", {"team": "web"}, None, True, "included"),
        ("shop", {"team": "web"}, "false", False, "opt-out: coral.io/enabled=false"),
        ("kube-system", {"team": "web"}, None, False, "namespace kube-system is excluded"),
        ("kube-system", {"team": "web"}, "true", False, "namespace kube-system is excluded"),
        ("billing", {"team": "web"}, None, False, "namespace billing is not included"),
        ("shop", {"team": "web", "tier": "debug"}, None, False, "label tier=debug is excluded"),
        ("shop", {"team": "web", "tier": "debug"}, "true", False, "label tier=debug is excluded"),
        ("shop", {}, None, False, "labels team=web required"),
        ("shop", {"team": "api"}, None, False, "labels team=web required"),
        ("shop", {}, "true", True, "included"),
        ("shop", {}, "Yes", True, "included"),
        ("shop", {"team": "web"}, "FALSE", False, "opt-out: coral.io/enabled=false"),
    ],
)
def test_filter_truth_table(
    namespace: str, labels: dict[str, str], enabled: str | None, included: bool, reason: str
) -> None:
    annotations = {"coral.io/enabled": enabled} if enabled is not None else {}
    decision = evaluate(pod(namespace=namespace, labels=labels, annotations=annotations), RULES)
    assert (decision.included, decision.reason) == (included, reason)


def test_no_rules_include_everything() -> None:
    assert evaluate(pod(namespace="anything"), FilterRules()).included


def test_opt_out_wins_even_without_any_rule() -> None:
    decision = evaluate(pod(annotations={"coral.io/enabled": "false"}), FilterRules())
    assert (decision.included, decision.opt_out) == (False, True)


def test_malformed_enabled_annotation_is_an_error_and_counts_as_unset() -> None:
    decision = evaluate(pod(annotations={"coral.io/enabled": "maybe"}), FilterRules())
    assert (decision.included, [e.render("shop/web-0") for e in decision.errors]) == (
        True,
        ['shop/web-0: coral.io/enabled: "maybe" is not true or false; ignored'],
    )


@pytest.mark.parametrize(
    ("labels", "included"),
    [
        ({"team": "web", "env": "prod"}, True),
        ({"team": "web", "env": "prod", "extra": "x"}, True),
        ({"team": "web"}, False),
        ({"team": "web", "env": "dev"}, False),
    ],
)
def test_include_labels_must_all_match(labels: dict[str, str], included: bool) -> None:
    rules = FilterRules(include_labels={"team": "web", "env": "prod"})
    assert evaluate(pod(labels=labels), rules).included is included


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ({"tier": "debug"}, "label tier=debug is excluded"),
        ({"canary": "yes"}, "label canary=yes is excluded"),
        ({"canary": "yes", "tier": "debug"}, "label canary=yes,tier=debug is excluded"),
        ({"canary": "no"}, "included"),
    ],
)
def test_any_exclude_label_excludes(labels: dict[str, str], reason: str) -> None:
    rules = FilterRules(exclude_labels={"tier": "debug", "canary": "yes"})
    assert evaluate(pod(labels=labels), rules).reason == reason


def test_a_namespace_in_both_lists_is_excluded() -> None:
    rules = FilterRules(include_namespaces=frozenset({"shop"}), exclude_namespaces=frozenset({"shop"}))
    assert evaluate(pod(namespace="shop"), rules).reason == "namespace shop is excluded"


@pytest.mark.parametrize("value", ["true", "TRUE", " yes ", "1", "on", "false", "No", "0", "off"])
def test_enabled_annotation_accepts_boolean_words(value: str) -> None:
    assert evaluate(pod(annotations={"coral.io/enabled": value}), FilterRules()).errors == ()


def test_malformed_enabled_annotation_is_no_opt_in() -> None:
    decision = evaluate(pod(annotations={"coral.io/enabled": "ture"}), FilterRules(include_labels={"team": "web"}))
    assert (decision.included, decision.reason, len(decision.errors)) == (False, "labels team=web required", 1)


def test_reasons_are_stable_across_label_order() -> None:
    rules = FilterRules(include_labels={"b": "2", "a": "1"})
    assert evaluate(pod(labels={}), rules).reason == "labels a=1,b=2 required"
