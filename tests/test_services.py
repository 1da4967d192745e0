"""Pod -> services: ports, names, types, keys and provenance."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cri_agent.discovery.containers import lifecycle
from cri_agent.discovery.rules import DiscoveryRules, ExplicitService, HealthSpec, OverrideRule, Selector, ServiceSpec
from cri_agent.discovery.services import derive_services, service_key, static_service, workload_name
from cri_agent.model import ContainerState, DeclaredPort, PodRecord, Provenance, ServiceInfo
from tests.builders import container, listening, pod

RULES = DiscoveryRules(node_name="node-a")


def services(target: PodRecord, rules: DiscoveryRules = RULES) -> tuple[ServiceInfo, ...]:
    return derive_services(target, rules, node_name="node-a", life=lifecycle(target.containers, now=0.0))[0]


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


def test_every_service_of_a_pod_carries_the_workload_the_api_named() -> None:
    app = container(ports=[DeclaredPort(8080)], listening=[listening(8080), listening(9090)])
    owned = pod("nightly-29001-q7x2k", owner="CronJob/nightly", containers=[app])
    assert {(s.name, s.workload) for s in services(owned)} == {
        ("nightly:8080", "CronJob/nightly"),
        ("nightly:9090", "CronJob/nightly"),
    }
    assert {s.workload for s in services(pod("bare"))} == {""}


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
    target = pod(annotations={"coral.io/port": "x", "coral.io/name": "api"})
    found, errors, _ = derive_services(target, RULES, node_name="node-a", life=lifecycle(target.containers, now=0.0))
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


@pytest.mark.parametrize(
    ("address", "registered"),
    [
        ("0.0.0.0", True),
        ("::", True),
        ("10.250.1.2", True),
        ("127.0.0.1", False),
        ("127.0.0.53", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback: still only reachable from inside the pod
        ("::ffff:10.250.1.2", True),
    ],
)
def test_only_listeners_reachable_on_the_pod_ip_register(address: str, registered: bool) -> None:
    target = pod(containers=[container(ports=[DeclaredPort(8080)], listening=[listening(7000, address=address)])])
    assert (7000 in [s.port for s in services(target)]) is registered


def test_a_pod_with_only_loopback_listeners_is_portless() -> None:
    target = pod(containers=[container(listening=[listening(7000, address="127.0.0.1")])])
    assert [s.port for s in services(target)] == [None]


def test_unattributed_listeners_go_to_the_first_running_container() -> None:
    target = replace(
        pod(
            containers=[
                container("init", state=ContainerState.EXITED),
                container("app"),
                container("sidecar"),
            ]
        ),
        unattributed_listening=(listening(9000),),
    )
    assert [(s.container, s.port) for s in services(target)] == [("app", 9000)]


def test_a_port_both_declared_and_listening_is_one_service() -> None:
    target = pod(containers=[container(ports=[DeclaredPort(8080, "TCP", "http")], listening=[listening(8080)])])
    assert [(s.port, s.name) for s in services(target)] == [(8080, "web-0")]


def test_created_containers_keep_their_declared_ports() -> None:
    target = pod(containers=[container(ports=[DeclaredPort(8080)], state=ContainerState.CREATED)])
    assert [s.port for s in services(target)] == [8080]


def test_a_pod_with_only_unknown_containers_has_no_service() -> None:
    assert services(pod(containers=[container(state=ContainerState.UNKNOWN)])) == ()


@pytest.mark.parametrize(
    ("ports", "processes", "expected"),
    [
        ([DeclaredPort(7000)], ["redis-server"], "redis"),  # the container's only port
        ([DeclaredPort(6379), DeclaredPort(7000)], ["redis-server"], "redis"),  # well-known port agrees
        ([DeclaredPort(7000), DeclaredPort(7001)], ["redis-server"], "tcp"),  # which port? no guess
        ([DeclaredPort(7000, "TCP", "http-metrics")], [], "metrics"),
        ([DeclaredPort(7000, "TCP", "grpc-web")], [], "grpc"),
        ([DeclaredPort(7000, "TCP", "web-https")], [], "https"),
        ([DeclaredPort(7000, "TCP", "http2")], [], "http"),
        ([DeclaredPort(7000, "TCP", "mongo")], [], "mongodb"),
        ([DeclaredPort(7000, "TCP", "admin")], [], "tcp"),
        ([DeclaredPort(5432)], [], "postgres"),
        ([DeclaredPort(8080, "TCP", "admin")], [], "http"),
        ([DeclaredPort(53, "UDP")], [], "dns"),
        ([DeclaredPort(8080, "UDP")], [], "udp"),  # well-known ports are TCP ports
        ([DeclaredPort(7000, "UDP")], [], "udp"),
        ([], [], "unknown"),
        ([DeclaredPort(8080, "TCP", "metrics")], ["postgres"], "postgres"),  # process beats port name
    ],
)
def test_default_service_type(ports: list[DeclaredPort], processes: list[str], expected: str) -> None:
    target = pod(containers=[container(ports=ports, processes=processes)])
    assert services(target)[0].service_type == expected


def test_process_hint_applies_to_the_sole_port_of_its_own_container() -> None:
    target = pod(
        containers=[
            container("app", ports=[DeclaredPort(8080)]),
            container("cache", ports=[DeclaredPort(7000)], processes=["redis-server"]),
        ]
    )
    assert {s.container: s.service_type for s in services(target)} == {"app": "http", "cache": "redis"}


@pytest.mark.parametrize(
    ("ports", "names"),
    [
        ([DeclaredPort(8080, "TCP", "http"), DeclaredPort(9090, "TCP", "metrics")], ["web-0:http", "web-0:metrics"]),
        ([DeclaredPort(8080, "TCP", "http"), DeclaredPort(9090)], ["web-0:9090", "web-0:http"]),
        ([DeclaredPort(53, "UDP", "dns"), DeclaredPort(53, "TCP", "dns")], ["web-0:53", "web-0:53-udp"]),
        ([DeclaredPort(53, "UDP"), DeclaredPort(53, "TCP")], ["web-0:53", "web-0:53-udp"]),
        ([DeclaredPort(53, "UDP", "dns"), DeclaredPort(53, "TCP", "dns-tcp")], ["web-0:dns", "web-0:dns-tcp"]),
        ([DeclaredPort(80, "TCP", "53-udp"), DeclaredPort(53, "UDP")], ["web-0:53-udp", "web-0:80"]),
    ],
)
def test_several_ports_get_unique_suffixed_names(ports: list[DeclaredPort], names: list[str]) -> None:
    assert sorted(s.name for s in services(pod(containers=[container(ports=ports)]))) == names


def test_name_annotation_keeps_the_port_suffix_on_several_ports() -> None:
    target = pod(
        annotations={"coral.io/name": "api"},
        containers=[container(ports=[DeclaredPort(8080, "TCP", "http"), DeclaredPort(9090, "TCP", "metrics")])],
    )
    assert sorted(s.name for s in services(target)) == ["api:http", "api:metrics"]


def test_same_pod_twice_gives_the_same_keys() -> None:
    target = pod(
        containers=[container(ports=[DeclaredPort(8080), DeclaredPort(53, "UDP")], listening=[listening(9000)])]
    )
    assert [s.key for s in services(target)] == [s.key for s in services(target)]


@pytest.mark.parametrize(
    ("owner", "labels", "expected"),
    [
        ("Deployment/payments-api", {"pod-template-hash": "7d4b9c6f5d"}, "payments-api"),
        ("ReplicaSet/payments-api-7d4b9c6f5d", {"pod-template-hash": "7d4b9c6f5d"}, "payments-api"),
        ("StatefulSet/web", {}, "web"),
        ("DaemonSet/fluentd", {"app": "logging"}, "fluentd"),
        ("Job/backup-28391234", {}, "backup-28391234"),
    ],
)
def test_owner_names_the_workload(owner: str, labels: dict[str, str], expected: str) -> None:
    assert workload_name(pod("x-7d4b9c6f5d-abcde", labels=labels, owner=owner)) == expected


def test_port_annotation_attaches_each_port_to_the_container_that_has_it() -> None:
    target = pod(
        annotations={"coral.io/port": "9090,53/udp"},
        containers=[
            container("app", ports=[DeclaredPort(8080)]),
            container("exporter", listening=[listening(9090)]),
        ],
    )
    assert [(s.container, s.port, s.protocol) for s in services(target)] == [
        ("exporter", 9090, "TCP"),
        ("app", 53, "UDP"),
    ]


def test_health_defaults_to_no_endpoint_and_the_configured_interval() -> None:
    [service] = services(pod(), DiscoveryRules(default_health_interval_s=30.0))
    assert (service.health_endpoint, service.health_interval_s) == ("", 30.0)


def test_services_carry_pod_labels_ip_and_node() -> None:
    [service] = services(pod(labels={"app": "web"}, ip="10.1.2.3"))
    assert (dict(service.labels), service.pod_ip, service.node_name) == ({"app": "web"}, "10.1.2.3", "node-a")


@pytest.mark.parametrize(
    ("annotations", "rules", "provenance", "overridden_fields"),
    [
        ({}, DiscoveryRules(), Provenance.DISCOVERED, ()),
        ({"coral.io/type": "grpc"}, DiscoveryRules(), Provenance.OVERRIDDEN, ("service_type",)),
        ({"coral.io/port": "8080"}, DiscoveryRules(), Provenance.OVERRIDDEN, ("port",)),
        ({"coral.io/health-interval": "5s"}, DiscoveryRules(), Provenance.OVERRIDDEN, ("health_interval_s",)),
        ({}, DiscoveryRules(overrides=(OVERRIDE,)), Provenance.OVERRIDDEN, ("name",)),
        (
            {"coral.io/type": "grpc"},
            DiscoveryRules(overrides=(OVERRIDE,)),
            Provenance.OVERRIDDEN,
            ("name", "service_type"),
        ),
        ({"coral.io/type": "grpc"}, DiscoveryRules(services=(EXPLICIT,)), Provenance.EXPLICIT, ()),
        ({"coral.io/type": "x y"}, DiscoveryRules(), Provenance.DISCOVERED, ()),  # malformed: not applied
    ],
)
def test_provenance_and_overridden_fields(
    annotations: dict[str, str], rules: DiscoveryRules, provenance: Provenance, overridden_fields: tuple[str, ...]
) -> None:
    [service] = services(pod(labels={"app": "pay"}, annotations=annotations), rules)
    assert (service.provenance, service.overridden_fields) == (provenance, overridden_fields)


@pytest.mark.parametrize(
    ("annotations", "overrides", "explicit", "endpoint"),
    [
        ({}, (), None, ""),
        ({"coral.io/health-endpoint": "/a"}, (), None, "/a"),
        ({"coral.io/health-endpoint": "/a"}, (OverrideRule(PAY, ServiceSpec(health=HealthSpec("/o"))),), None, "/o"),
        (
            {"coral.io/health-endpoint": "/a"},
            (OverrideRule(PAY, ServiceSpec(health=HealthSpec("/o"))),),
            HealthSpec("/e"),
            "/e",
        ),
        ({"coral.io/health-endpoint": "/a"}, (), HealthSpec(), "/a"),  # explicit without health: falls through
    ],
)
def test_health_endpoint_precedence_per_field(
    annotations: dict[str, str], overrides: tuple[OverrideRule, ...], explicit: HealthSpec | None, endpoint: str
) -> None:
    explicit_services = (
        () if explicit is None else (ExplicitService(name="e", port=8080, selector=PAY, health=explicit),)
    )
    rules = DiscoveryRules(overrides=overrides, services=explicit_services)
    [service] = services(pod(labels={"app": "pay"}, annotations=annotations), rules)
    assert service.health_endpoint == endpoint


def test_explicit_service_keeps_the_discovered_key() -> None:
    target = pod(labels={"app": "pay"})
    [service] = services(target, DiscoveryRules(services=(EXPLICIT,)))
    assert (service.key, service.name) == (services(target)[0].key, "explicit")


def test_explicit_service_declares_its_port_on_a_portless_pod() -> None:
    target = pod(labels={"app": "pay"}, containers=[container(ports=[])])
    [service] = services(target, DiscoveryRules(services=(EXPLICIT,)))
    assert (service.key, service.provenance) == ("shop/uid-shop-web-0/app/8080", Provenance.EXPLICIT)


def test_override_port_restricts_the_pod_like_the_annotation() -> None:
    rules = DiscoveryRules(overrides=(OverrideRule(PAY, ServiceSpec(port=9090)),))
    target = pod(labels={"app": "pay"}, containers=[container(ports=[DeclaredPort(8080)], listening=[listening(9090)])])
    assert [(s.port, s.overridden_fields) for s in services(target, rules)] == [(9090, ("port",))]


@pytest.mark.parametrize(
    ("explicit", "key", "service_type"),
    [
        (ExplicitService(name="node-exporter", port=9100, type="metrics"), "explicit/-/node-exporter/9100", "metrics"),
        (ExplicitService(name="dns", port=53, protocol="UDP", namespace="infra"), "explicit/infra/dns/53", "dns"),
        (ExplicitService(name="agent", port=7000), "explicit/-/agent/7000", "tcp"),
        (ExplicitService(name="beacon"), "explicit/-/beacon/-", "unknown"),
    ],
)
def test_static_explicit_service(explicit: ExplicitService, key: str, service_type: str) -> None:
    service = static_service(explicit, DiscoveryRules(), node_name="node-a")
    assert (service.key, service.service_type, service.provenance, service.node_name) == (
        key,
        service_type,
        Provenance.EXPLICIT,
        "node-a",
    )
