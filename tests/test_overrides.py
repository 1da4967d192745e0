"""Annotations and config overrides: values, precedence, and errors that name pod, key and reason."""

from __future__ import annotations

import pytest

from cri_agent.discovery.overrides import apply_overrides, from_annotations, matches, parse_ports
from cri_agent.discovery.rules import HealthSpec, OverrideRule, Selector, ServiceSpec
from tests.builders import pod


@pytest.mark.parametrize(
    ("raw", "ports"),
    [
        ("8080", ((8080, "TCP"),)),
        ("8080, 9090", ((8080, "TCP"), (9090, "TCP"))),
        ("53/udp,53/TCP", ((53, "UDP"), (53, "TCP"))),
        ("80,80", ((80, "TCP"),)),
    ],
)
def test_port_annotation_values(raw: str, ports: tuple[tuple[int, str], ...]) -> None:
    assert parse_ports(raw) == ports


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("coral.io/port", "eighty", '"eighty" is not a port number'),
        ("coral.io/port", "70000", '"70000" is not a port number'),
        ("coral.io/port", "53/sctp", 'protocol "sctp" is not tcp or udp'),
        ("coral.io/name", "-bad name-", '"-bad name-" is not a valid name'),
        ("coral.io/type", "Web Server", '"Web Server" is not a service type'),
        ("coral.io/health-endpoint", "healthz", '"healthz" is not an HTTP path starting with /'),
        ("coral.io/health-interval", "often", "'often' is not a duration"),
        ("coral.io/health-interval", "100ms", '"100ms" is outside 1s..1h'),
        ("coral.io/health-interval", "2h", '"2h" is outside 1s..1h'),
    ],
)
def test_malformed_annotation_is_one_error_naming_pod_key_and_reason(key: str, value: str, reason: str) -> None:
    _, errors = from_annotations(pod(annotations={key: value}))
    assert len(errors) == 1 and errors[0].startswith(f"shop/web-0: {key}: ") and reason in errors[0]


def test_other_annotations_still_apply_next_to_a_malformed_one() -> None:
    metadata, errors = from_annotations(
        pod(annotations={"coral.io/port": "x", "coral.io/name": "payments-api", "coral.io/type": "HTTP"})
    )
    assert (metadata.name, metadata.service_type, metadata.ports, len(errors)) == ("payments-api", "http", None, 1)


def test_annotations_record_which_fields_they_set() -> None:
    metadata, _ = from_annotations(
        pod(annotations={"coral.io/health-endpoint": "/healthz", "coral.io/health-interval": "5s"})
    )
    assert (metadata.set_fields, metadata.health_interval_s) == (
        frozenset({"health_endpoint", "health_interval_s"}),
        5.0,
    )


def test_unknown_coral_annotations_are_ignored() -> None:
    assert from_annotations(pod(annotations={"coral.io/future-thing": "x"}))[1] == ()


@pytest.mark.parametrize(
    ("selector", "matched"),
    [
        (Selector(namespace="shop"), True),
        (Selector(namespace="billing"), False),
        (Selector(pod_labels={"app": "web"}), True),
        (Selector(pod_labels={"app": "web", "tier": "x"}), False),
        (Selector(namespace="shop", pod_name="web-0"), True),
        (Selector(pod_name="web-1"), False),
        (Selector(), False),
    ],
)
def test_selectors_match_on_every_field_they_set(selector: Selector, matched: bool) -> None:
    assert matches(selector, pod(labels={"app": "web"})) is matched


def test_config_override_beats_annotation_per_field_and_later_rules_win() -> None:
    target = pod(annotations={"coral.io/name": "from-annotation", "coral.io/type": "grpc"})
    rules = (
        OverrideRule(Selector(namespace="shop"), ServiceSpec(name="first", health=HealthSpec(endpoint="/a"))),
        OverrideRule(Selector(namespace="shop"), ServiceSpec(name="second")),
    )
    metadata = apply_overrides(from_annotations(target)[0], target, rules, container="app")
    assert (metadata.name, metadata.service_type, metadata.health_endpoint) == ("second", "grpc", "/a")


def test_container_scoped_override_applies_only_to_that_container() -> None:
    target = pod()
    rules = (OverrideRule(Selector(namespace="shop", container="sidecar"), ServiceSpec(type="metrics")),)
    base = from_annotations(target)[0]
    assert (
        apply_overrides(base, target, rules, container="sidecar").service_type,
        apply_overrides(base, target, rules, container="app").service_type,
        apply_overrides(base, target, rules, container=None).service_type,
    ) == ("metrics", None, None)
