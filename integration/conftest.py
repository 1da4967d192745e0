"""Fixtures for tests against real components (containerd, runc, CNI).

Every test here is marked ``integration``. They need root and the packages
``make setup`` installs; without them they fail with what is missing
rather than skip, so a green run always means they ran.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from integration.harness.agent import AgentProcess
from integration.harness.containerd import PrivateContainerd
from integration.harness.images import ImageSet, ensure_images
from integration.harness.kube import ControlPlane
from integration.harness.pods import PodFactory

REPO = Path(__file__).resolve().parent.parent
REQUIRED = (
    "containerd",
    "ctr",
    "runc",
    "ip",
    "/usr/lib/cni/bridge",
    "/usr/lib/cni/host-local",
    "/bin/busybox",
    "chromium",
    "etcd",
    "dumpcap",
    str(REPO / ".cache" / "kube" / "bin" / "kube-apiserver"),
    str(REPO / ".cache" / "kube" / "bin" / "kubectl"),
    str(REPO / ".cache" / "kube" / "bin" / "helm"),
    str(REPO / ".cache" / "kube" / "bin" / "kwok"),
    str(REPO / ".cache" / "kube" / "bin" / "kubelet"),
    str(REPO / ".cache" / "kube" / "bin" / "kube-scheduler"),
    str(REPO / ".cache" / "kube" / "bin" / "kube-controller-manager"),
    str(REPO / ".cache" / "kube" / "bin" / "kube-proxy"),
    str(REPO / ".cache" / "kube" / "bin" / "coredns"),
    "unshare",
    "nsenter",
    "tshark",
    "/usr/sbin/dockerd",
    "debootstrap",
    "prometheus",
    "promtool",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def harness_images() -> ImageSet:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (they start containerd and create network namespaces)")
    missing = [b for b in REQUIRED if not (Path(b).exists() if b.startswith("/") else shutil.which(b))]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run `make setup`")
    return ensure_images(REPO / ".cache" / "images")


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory, harness_images: ImageSet) -> Iterator[PrivateContainerd]:
    with PrivateContainerd(tmp_path_factory.mktemp("ctrd"), images=harness_images) as runtime:
        yield runtime


@pytest.fixture
def fresh_containerd(tmp_path: Path, harness_images: ImageSet) -> Iterator[PrivateContainerd]:
    """A containerd of the test's own, for tests that kill or restart it."""
    with PrivateContainerd(tmp_path / "ctrd", images=harness_images) as runtime:
        yield runtime


@pytest.fixture
def pods(containerd: PrivateContainerd) -> Iterator[PodFactory]:
    factory = PodFactory(containerd)
    yield factory
    factory.close()


AgentFactory = Callable[..., AgentProcess]


@pytest.fixture
def start_agent(tmp_path: Path, containerd: PrivateContainerd) -> Iterator[AgentFactory]:
    agents: list[AgentProcess] = []

    def _start(*args: str, cache: Path | None = None, socket: Path | None = None) -> AgentProcess:
        agent = AgentProcess(
            cri_socket=socket or containerd.socket_path,
            cache=cache or tmp_path / "agent.db",
            extra_args=args,
        )
        agents.append(agent)
        return agent.start()

    yield _start
    for agent in agents:
        if agent.alive():
            assert agent.stop() == 0, agent.log_tail()


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver (RBAC, static tokens) on loopback, for the whole session."""
    if os.geteuid() != 0:
        pytest.fail("integration tests need root")
    plane = ControlPlane(tmp_path_factory.mktemp("kube")).start()
    yield plane
    plane.stop()
