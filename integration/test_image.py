"""The agent image: built as a user builds it (``docker build .``), offline, run under testcontainers.

The private engine holds a locally bootstrapped Debian root under the
Dockerfile's default base name, so no build argument is passed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import LogMessageWaitStrategy

from coral_base import __version__
from integration.harness.docker import PrivateDocker

REPO = Path(__file__).resolve().parent.parent
IMAGE = f"coral-cri-agent:{__version__}"


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateDocker]:
    engine = PrivateDocker(tmp_path_factory.mktemp("docker")).start()
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def image(docker: PrivateDocker) -> str:
    docker.import_base()
    docker.docker("build", "--network", "none", "-t", IMAGE, str(REPO))
    return IMAGE


def test_coral_version_runs_in_the_image_under_testcontainers(
    docker: PrivateDocker, image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", docker.host)
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")  # no image for the reaper exists offline
    version = f"coral-cri-agent {__version__}"
    container = DockerContainer(image).with_command("--version").with_kwargs(network_mode="none")
    with container.waiting_for(LogMessageWaitStrategy(version).with_startup_timeout(60)) as started:
        out, _ = started.get_logs()
    assert out.decode().strip() == version


def test_the_image_carries_the_tools_operations_need(docker: PrivateDocker, image: str) -> None:
    for tool in (["dumpcap", "--version"], ["perf", "--version"], ["nsenter", "--version"], ["setpriv", "--version"]):
        done = docker.docker("run", "--rm", "--network", "none", "--entrypoint", tool[0], image, *tool[1:])
        assert done.returncode == 0 and done.stdout.strip(), tool
