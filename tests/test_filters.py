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
    assert (decision.included, decision.errors) == (
        True,
        ('shop/web-0: coral.io/enabled: "maybe" is not true or false; ignored',),
    )
