"""What an operation runs on: one pod, or every pod of a workload or a service name, on their own agents."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import replace
from pathlib import Path

import pytest

from coral_base.vocabulary import WorkloadKind, workload_of
from coral_colony.model import Action, AgentKind, AgentRecord, OperationRequest, ServiceRecord
from coral_colony.operator_service import merged
from coral_colony.stores.reader import RegistryReader
from coral_colony.stores.writer import RegistryWriter
from coral_colony.targets import MAX_PODS, Resolved, TooManyPods, resolve

HASH = "5d8f7c9b4"


def service(namespace: str, pod: str, *, name: str = "web", workload: str = "", **labels: str) -> ServiceRecord:
    return ServiceRecord(
        key=f"{namespace}/{pod}-uid/app/8080",
        component_name=name,
        namespace=namespace,
        pod_name=pod,
        pod_uid=f"{pod}-uid",
        workload=workload,
        labels=labels,
    )


def registry(tmp_path: Path, nodes: dict[str, list[ServiceRecord]]) -> RegistryReader:
    writer = RegistryWriter(tmp_path / "colony.db")
    for node, services in nodes.items():
        agent = AgentRecord(agent_id=f"agent-{node}", kind=AgentKind.NODE_AGENT, node_name=node)
        writer.register(agent, [replace(s, node_name=node) for s in services], session="s", now=1.0)
    writer.close()
    return RegistryReader(tmp_path / "colony.db")


def tap(target: str, **changes: object) -> OperationRequest:
    return OperationRequest(Action.TAP, target, **changes)  # type: ignore[arg-type]


def pods(found: list[Resolved]) -> list[tuple[str, str, str]]:
    return [(p.target.namespace, p.target.pod_name, p.node) for p in found]


@pytest.fixture
def reader(tmp_path: Path) -> RegistryReader:
    return registry(
        tmp_path,
        {
            "n1": [
                service("shop", "web-a", workload="Deployment/web"),  # the agent had the API
                service("shop", f"web-{HASH}-x2x9z", **{"pod-template-hash": HASH}),  # restricted RBAC: names
                service("shop", "web-0", **{"statefulset.kubernetes.io/pod-name": "web-0"}),  # sts/web, not deploy
                service("shop", "webhook-7c9d8b6f5-abcde", name="hook", **{"pod-template-hash": "7c9d8b6f5"}),
                service("shop", "db-0", name="db", **{"statefulset.kubernetes.io/pod-name": "db-0"}),
                service(
                    "kube-system",
                    "proxy-x7k2p",
                    name="proxy",
                    **{"controller-revision-hash": "1", "pod-template-generation": "1"},
                ),
            ],
            "n2": [
                service("shop", f"web-{HASH}-q8w7r", **{"pod-template-hash": HASH}),
                service("lab", "web-b", workload="Deployment/web"),
            ],
        },
    )


def test_kubectl_workload_words_name_a_workload_and_nothing_else_does() -> None:
    assert [workload_of(t) for t in ("deploy/web", "deployments/web", "STS/db", "ds/proxy", "cj/nightly")] == [
        (WorkloadKind.DEPLOYMENT, "web"),
        (WorkloadKind.DEPLOYMENT, "web"),
        (WorkloadKind.STATEFUL_SET, "db"),
        (WorkloadKind.DAEMON_SET, "proxy"),
        (WorkloadKind.CRON_JOB, "nightly"),
    ]
    assert [workload_of(t) for t in ("shop/web-0", "web", "deploy/", "deploy/a/b")] == [None, None, None, None]


def test_a_deployments_pods_are_those_its_agents_named_and_those_whose_names_show_it(reader: RegistryReader) -> None:
    found = resolve(reader, tap("deploy/web", namespace="shop"))
    assert pods(found) == [  # by namespace and pod
        ("shop", f"web-{HASH}-q8w7r", "n2"),
        ("shop", f"web-{HASH}-x2x9z", "n1"),
        ("shop", "web-a", "n1"),
    ]
    assert {p.agent_id for p in found} == {"agent-n1", "agent-n2"}  # each pod on its own node's agent
    assert all(not p.target.service_key for p in found)  # a pod, not one of its services
    assert pods(resolve(reader, tap("sts/web"))) == [("shop", "web-0", "n1")]
    assert pods(resolve(reader, tap("ds/proxy"))) == [("kube-system", "proxy-x7k2p", "n1")]
    assert pods(resolve(reader, tap("deploy/web", namespace="shop", node="n2"))) == [
        ("shop", f"web-{HASH}-q8w7r", "n2")
    ]


def test_a_workload_in_several_namespaces_must_be_named_with_one(reader: RegistryReader) -> None:
    with pytest.raises(LookupError, match=r"'deploy/web' is in namespaces lab, shop: name one with --namespace"):
        resolve(reader, tap("deploy/web"))
    assert pods(resolve(reader, tap("deploy/web", namespace="lab"))) == [("lab", "web-b", "n2")]


def test_a_service_name_of_several_pods_is_refused_unless_all_pods_are_asked(reader: RegistryReader) -> None:
    with pytest.raises(LookupError, match=r"'web' matches 5 pods: .* or take them all with --all-pods"):
        resolve(reader, tap("web"))
    every = resolve(reader, tap("web", all_pods=True, namespace="shop"))
    assert len(every) == 4 and all(p.target.service_name == "web" and p.target.service_key for p in every)


def test_profile_and_sample_run_on_one_pod_even_of_a_workload(reader: RegistryReader) -> None:
    with pytest.raises(LookupError, match=r"matches 3 pods and profile runs on one: name it as namespace/pod"):
        resolve(reader, OperationRequest(Action.PROFILE, "deploy/web", namespace="shop"))
    [one] = resolve(reader, OperationRequest(Action.SAMPLE, "sts/db"))
    assert one.target.pod_name == "db-0"


def test_a_namespace_called_like_a_kubectl_word_is_still_a_namespace(tmp_path: Path) -> None:
    reader = registry(tmp_path, {"n1": [service("deploy", "web")]})
    assert pods(resolve(reader, tap("deploy/web"))) == [("deploy", "web", "n1")]


def test_more_pods_than_one_operation_takes_are_refused_with_how_to_narrow(tmp_path: Path) -> None:
    many = [service("shop", f"web-{i}", workload="Deployment/web") for i in range(MAX_PODS + 1)]
    reader = registry(tmp_path, {"n1": many})
    with pytest.raises(TooManyPods, match=rf"matches {MAX_PODS + 1} pods, more than the {MAX_PODS} .* --node or"):
        resolve(reader, tap("deploy/web"))


def test_merged_streams_interleave_and_closing_it_closes_every_part() -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        closed: list[str] = []

        async def part(name: str, count: int) -> AsyncGenerator[str, None]:
            try:
                for i in range(count):
                    yield f"{name}{i}"
                    await asyncio.sleep(0)
                await asyncio.sleep(3600 if name == "slow" else 0)
            finally:
                closed.append(name)

        got = [m async for m in merged([part("a", 3), part("b", 2)])]
        stream = merged([part("slow", 1), part("c", 1)])
        got.append(await anext(stream))
        await stream.aclose()  # the operator went away while "slow" still runs
        return got, closed

    got, closed = asyncio.run(scenario())
    assert sorted(got[:5]) == ["a0", "a1", "a2", "b0", "b1"] and got[:2] == ["a0", "b0"]  # as they come
    assert sorted(closed) == ["a", "b", "c", "slow"]
