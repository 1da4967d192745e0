"""Small builders for PodRecords in unit tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cri_agent.model import (
    ContainerID,
    ContainerRecord,
    ContainerState,
    DeclaredPort,
    ListeningSocket,
    PodProblem,
    PodRecord,
    PodUID,
    SandboxID,
)


def container(
    name: str = "app",
    *,
    ports: Sequence[DeclaredPort] = (),
    listening: Sequence[ListeningSocket] = (),
    processes: Sequence[str] = (),
    state: ContainerState = ContainerState.RUNNING,
) -> ContainerRecord:
    return ContainerRecord(
        id=ContainerID(f"{name:0<64}"[:64]),
        name=name,
        state=state,
        declared_ports=tuple(ports),
        listening=tuple(listening),
        process_names=tuple(processes),
    )


def pod(
    name: str = "web-0",
    *,
    namespace: str = "shop",
    uid: str | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    containers: Sequence[ContainerRecord] | None = None,
    ip: str = "10.250.1.2",
    owner: str = "",
    provider_problems: Sequence[PodProblem] = (),
) -> PodRecord:
    return PodRecord(
        uid=PodUID(uid or f"uid-{namespace}-{name}"),
        name=name,
        namespace=namespace,
        sandbox_id=SandboxID(f"sb-{name}"),
        labels=dict(labels or {}),
        annotations=dict(annotations or {}),
        ip=ip,
        containers=tuple(containers if containers is not None else [container(ports=[DeclaredPort(8080)])]),
        owner=owner,
        provider_problems=tuple(provider_problems),
    )


def listening(port: int, protocol: str = "TCP", address: str = "0.0.0.0") -> ListeningSocket:
    return ListeningSocket(port=port, protocol=protocol, address=address)  # type: ignore[arg-type]
