"""Pod -> services: ports, names, types, keys and provenance."""

from __future__ import annotations

import pytest

from cri_agent.discovery.rules import DiscoveryRules, ExplicitService, HealthSpec, OverrideRule, Selector, ServiceSpec
from cri_agent.discovery.services import derive_services, service_key, workload_name
from cri_agent.model import ContainerState, DeclaredPort, PodRecord, Provenance, ServiceInfo
from tests.builders import container, listening, pod

RULES = DiscoveryRules(node_name="node-a")


def services(target: PodRecord, rules: DiscoveryRules = RULES) -> tuple[ServiceInfo, ...]:
    return derive_services(target, rules, node_name="node-a")[0]


@pytest.mark.parametrize(
    ("name", "labels", "owner", "expected"),
    [
        ("payments-api-7d4b9c6f5d-x2x9z", {"pod-template-hash": "7d4b9c6f5d"}, "", "payments-api"),
        ("web-2", {"statefulset.kubernetes.io/pod-name": "web-2"}, "", "web"),
        ("fluentd-x7k2p", {}, "", "fluentd"),
        ("redis", {}, "", "redis"),
        ("anything-abcde", {}, "", "anything-abcde"),  # vowels never appear in generated suffixes
        ("p-123", {"app.kubernetes.io/name": "cart", "app": "legacy"}, "", "cart"),
        ("p-123", {"app": "legacy"}, "", "legacy"),
        ("p-123", {"app": "legacy"}, "Deployment/checkout", "checkout"),
    ],
)
def test_workload_name(name: str, labels: dict[str, str], owner: str, expected: str) -> None:
    assert workload_name(pod(name, labels=labels, owner=owner)) == expected


def test_one_declared_port_gives_one_discovered_service() -> None:
    [service] = services(pod("checkout-7d4b9c6f5d-x2x9z", labels={"pod-template-hash": "7d4b9c6f5d"}))
    assert (service.name, service.port, service.protocol, service.service_type, service.provenance) == (
        "checkout",
        8080,
        "TCP",
        "http",
        Provenance.DISCOVERED,
    )


def test_keys_use_namespace_uid_container_and_port_never_the_ip() -> None:
    first = services(pod(uid="u1", ip="10.0.0.1"))[0].key
    second = services(pod(uid="u1", ip="10.0.0.99"))[0].key
    assert first == second == "shop/u1/app/8080"


@pytest.mark.parametrize(
    ("port", "protocol", "key"),
    [(8080, "TCP", "ns/u/c/8080"), (53, "UDP", "ns/u/c/53-udp"), (None, None, "ns/u/c/-")],
)
def test_service_key_format(port: int | None, protocol: str | None, key: str) -> None:
    assert service_key("ns", "u", "c", port, protocol) == key  # type: ignore[arg-type]


def test_declared_and_listening_ports_are_merged_and_suffixed() -> None:
    target = pod(
        "cache",
        containers=[
            container(
                ports=[DeclaredPort(6379, "TCP", "redis")],
                listening=[listening(6379), listening(9121), listening(6000, address="127.0.0.1")],
                processes=["redis-server"],
            )
        ],
    )
    assert [(s.name, s.port, s.service_type) for s in services(target)] == [
        ("cache:redis", 6379, "redis"),
        ("cache:9121", 9121, "tcp"),
    ]


def test_process_name_hints_the_type_of_a_single_port() -> None:
    target = pod("db", containers=[container(listening=[listening(7000)], processes=["redis-server"])])
    assert services(target)[0].service_type == "redis"


def test_a_pod_without_ports_registers_one_portless_entry() -> None:
    [service] = services(pod("batch", containers=[container(ports=[])]))
    assert (service.port, service.protocol, service.key, service.service_type) == (
        None,
        None,
        "shop/uid-shop-batch/app/-",
        "unknown",
    )


def test_exited_containers_keep_their_declared_ports_and_unknown_ones_are_ignored() -> None:
    target = pod(
        containers=[
            container("crashy", ports=[DeclaredPort(8080)], state=ContainerState.EXITED),
            container("ghost", ports=[DeclaredPort(9090)], state=ContainerState.UNKNOWN),
        ]
    )
    assert [(s.container, s.port) for s in services(target)] == [("crashy", 8080)]


def test_udp_ports_get_their_own_key() -> None:
    target = pod(containers=[container(ports=[DeclaredPort(53, "UDP", "dns"), DeclaredPort(53, "TCP", "dns-tcp")])])
    assert sorted(s.key.rsplit("/", 1)[1] for s in services(target)) == ["53", "53-udp"]


def test_annotations_make_a_service_overridden_with_the_fields_they_set() -> None:
    target = pod(annotations={"coral.io/name": "payments-api", "coral.io/health-endpoint": "/healthz"})
    [service] = services(target)
    assert (service.name, service.health_endpoint, service.provenance, service.overridden_fields) == (
        "payments-api",
        "/healthz",
        Provenance.OVERRIDDEN,
        ("health_endpoint", "name"),
    )


def test_port_annotation_restricts_the_pod_to_those_ports() -> None:
    target = pod(
        annotations={"coral.io/port": "9090"},
        containers=[container(ports=[DeclaredPort(8080)], listening=[listening(9090)])],
    )
    [service] = services(target)
    assert (service.port, service.overridden_fields) == (9090, ("port",))


PAY = Selector(pod_labels={"app": "pay"})
OVERRIDE = OverrideRule(PAY, ServiceSpec(name="overridden"))
EXPLICIT = ExplicitService(name="explicit", port=8080, type="http", selector=PAY, health=HealthSpec("/ready"))


@pytest.mark.parametrize(
    ("annotated", "rules", "expected"),
    [
        (False, DiscoveryRules(), ("pay", "http", Provenance.DISCOVERED)),
        (True, DiscoveryRules(), ("annotated", "grpc", Provenance.OVERRIDDEN)),
        (True, DiscoveryRules(overrides=(OVERRIDE,)), ("overridden", "grpc", Provenance.OVERRIDDEN)),
        (True, DiscoveryRules(overrides=(OVERRIDE,), services=(EXPLICIT,)), ("explicit", "http", Provenance.EXPLICIT)),
    ],
)
def test_precedence_is_explicit_over_override_over_annotation_over_discovered(
    annotated: bool, rules: DiscoveryRules, expected: tuple[str, str, Provenance]
) -> None:
    annotations = {"coral.io/name": "annotated", "coral.io/type": "grpc"} if annotated else {}
    [service] = services(pod(labels={"app": "pay"}, annotations=annotations), rules)
    assert (service.name, service.service_type, service.provenance) == expected


def test_malformed_annotation_is_reported_and_the_rest_still_applies() -> None:
    found, errors = derive_services(
        pod(annotations={"coral.io/port": "x", "coral.io/name": "api"}), RULES, node_name="node-a"
    )
    assert ([s.name for s in found], len(errors)) == (["api"], 1)


def test_clashing_port_names_fall_back_to_numbers() -> None:
    target = pod(
        containers=[
            container("a", ports=[DeclaredPort(8080, "TCP", "http")]),
            container("b", ports=[DeclaredPort(9090, "TCP", "http")]),
        ]
    )
    assert sorted(s.name for s in services(target)) == ["web-0:8080", "web-0:9090"]


def test_explicit_service_naming_a_container_that_is_not_there_waits_for_it() -> None:
    target = pod(
        labels={"app": "pay"},
        containers=[container("app"), container("ghost", state=ContainerState.UNKNOWN)],
    )
    explicit = ExplicitService(
        name="ledger", port=7000, selector=Selector(pod_labels={"app": "pay"}, container="ghost")
    )
    [service] = services(target, DiscoveryRules(services=(explicit,)))
    assert (service.name, service.container, service.port) == ("pay", "app", None)
