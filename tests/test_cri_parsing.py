"""What the CRI provider reads from runtime answers (golden data from containerd 1.6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cri_agent.model import DeclaredPort
from cri_agent.providers.cri import _netns_path, _verbose_info, parse_declared_ports

TESTDATA = Path(__file__).parent / "testdata" / "cri"


def verbose(name: str) -> dict[str, str]:
    return {"info": (TESTDATA / name).read_text()}


def test_sandbox_verbose_status_gives_the_pause_pid_and_netns_path() -> None:
    info = _verbose_info(verbose("sandbox_status_verbose.json"))
    assert (info["pid"], _netns_path(info).startswith("/var/run/netns/cni-")) == (5984, True)


def test_container_verbose_status_gives_the_main_pid() -> None:
    assert _verbose_info(verbose("container_status_verbose.json"))["pid"] == 6016


@pytest.mark.parametrize("info", [{}, {"info": ""}, {"info": "not json"}, {"info": "[1, 2]"}])
def test_unusable_verbose_info_reads_as_empty(info: dict[str, str]) -> None:
    assert (_verbose_info(info), _netns_path(_verbose_info(info))) == ({}, "")


@pytest.mark.parametrize(
    ("raw", "ports"),
    [
        ("", ()),
        ('[{"name":"http","containerPort":8080,"protocol":"TCP"}]', (DeclaredPort(8080, "TCP", "http"),)),
        (
            '[{"containerPort":53,"protocol":"UDP"},{"containerPort":53}]',
            (DeclaredPort(53, "UDP", ""), DeclaredPort(53, "TCP", "")),
        ),
        ('[{"containerPort":9000,"protocol":"SCTP"}]', ()),
    ],
)
def test_kubelet_port_annotation_is_parsed(raw: str, ports: tuple[DeclaredPort, ...]) -> None:
    assert parse_declared_ports(raw) == (ports, "")


@pytest.mark.parametrize(
    "raw",
    ["{", '{"containerPort": 80}', '[{"name": "x"}]', '[{"containerPort": 0}]', '[{"containerPort": "http"}]'],
)
def test_malformed_port_annotation_is_an_error_not_a_crash(raw: str) -> None:
    ports, error = parse_declared_ports(raw)
    assert (ports, error.startswith("malformed JSON")) == ((), True)


def test_golden_files_are_real_containerd_output() -> None:
    info = json.loads((TESTDATA / "sandbox_status_verbose.json").read_text())
    assert {"pid", "runtimeSpec", "cniResult"} <= set(info)
