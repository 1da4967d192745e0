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
        ("coral.io/port", "80x", '"80x" is not a port number (1-65535)'),
        ("coral.io/port", "eighty", '"eighty" is not a port number (1-65535)'),
        ("coral.io/port", "70000", '"70000" is not a port number (1-65535)'),
        ("coral.io/port", "0", '"0" is not a port number (1-65535)'),
        ("coral.io/port", "-1", '"-1" is not a port number (1-65535)'),
        ("coral.io/port", "\u00b2", '"\u00b2" is not a port number (1-65535)'),
        ("coral.io/port", "", '"" is not a port number (1-65535)'),
        ("coral.io/port", "8080,80x", '"80x" in "8080,80x" is not a port number (1-65535)'),
        ("coral.io/port", "8080,", '"" in "8080," is not a port number (1-65535)'),
        ("coral.io/port", "53/sctp", '"53/sctp": protocol "sctp" is not tcp or udp'),
        ("coral.io/name", "-bad name-", '"-bad name-" is not a valid name (letters, digits, -._:, at most 253)'),
        ("coral.io/name", "a" * 254, f'"{"a" * 254}" is not a valid name (letters, digits, -._:, at most 253)'),
        ("coral.io/type", "Web Server", '"Web Server" is not a service type (a short lowercase word such as http)'),
        ("coral.io/health-endpoint", "healthz", '"healthz" is not an HTTP path starting with /'),
        ("coral.io/health-endpoint", "/a b", '"/a b" is not an HTTP path starting with /'),
        ("coral.io/health-interval", "often", '"often" is not a duration (e.g. 5s, 500ms, 1m, or seconds)'),
        ("coral.io/health-interval", "100ms", '"100ms" is outside 1s..1h'),
        ("coral.io/health-interval", "0s", '"0s" is outside 1s..1h'),
        ("coral.io/health-interval", "2h", '"2h" is outside 1s..1h'),
        # A fullwidth 5 and an Arabic-Indic 5: digits to Python's float(), not to a person typing a duration.
        ("coral.io/health-interval", "\uff15s", '"\uff15s" is not a duration (e.g. 5s, 500ms, 1m, or seconds)'),
        ("coral.io/health-interval", "\u0665", '"\u0665" is not a duration (e.g. 5s, 500ms, 1m, or seconds)'),
    ],
)
def test_malformed_annotation_is_one_error_naming_pod_key_and_reason(key: str, value: str, reason: str) -> None:
    _, errors = from_annotations(pod(annotations={key: value}))
    assert [e.render("shop/web-0") for e in errors] == [f"shop/web-0: {key}: {reason}; ignored"]


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("5s", 5.0), ("5", 5.0), ("1500ms", 1.5), ("1m", 60.0), ("1h", 3600.0), (" 30s ", 30.0)],
)
def test_health_interval_annotation_values(raw: str, seconds: float) -> None:
    metadata, _ = from_annotations(pod(annotations={"coral.io/health-interval": raw}))
    assert metadata.health_interval_s == seconds


@pytest.mark.parametrize("name", ["payments-api", "a", "payments.api", "a" * 253])
def test_valid_names_are_taken_as_they_are(name: str) -> None:
    assert from_annotations(pod(annotations={"coral.io/name": name}))[0].name == name


def test_type_annotation_is_lowercased() -> None:
    assert from_annotations(pod(annotations={"coral.io/type": "GRPC"}))[0].service_type == "grpc"


def test_every_malformed_annotation_is_reported_separately() -> None:
    _, errors = from_annotations(
        pod(annotations={"coral.io/port": "x", "coral.io/type": "!", "coral.io/health-interval": "soon"})
    )
    assert [e.key for e in errors] == ["coral.io/type", "coral.io/port", "coral.io/health-interval"]


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


def test_matching_overrides_apply_in_order_and_the_later_one_wins() -> None:
    target = pod()
    rules = (
        OverrideRule(Selector(namespace="shop"), ServiceSpec(type="grpc")),
        OverrideRule(Selector(pod_name="web-0"), ServiceSpec(type="http")),
    )
    assert apply_overrides(from_annotations(target)[0], target, rules, container="app").service_type == "http"


def test_override_for_another_pod_is_ignored() -> None:
    target = pod(annotations={"coral.io/name": "mine"})
    rules = (OverrideRule(Selector(namespace="shop", pod_name="other"), ServiceSpec(name="theirs")),)
    assert apply_overrides(from_annotations(target)[0], target, rules, container="app").name == "mine"


def test_empty_selector_overrides_nothing() -> None:
    target = pod()
    metadata = apply_overrides(
        from_annotations(target)[0], target, (OverrideRule(Selector(), ServiceSpec(name="x")),), container="app"
    )
    assert metadata.set_fields == frozenset()


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
