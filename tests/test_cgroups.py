"""cgroup mounts and paths: where a container's cgroup is in the hierarchy ``perf -G`` reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from cri_agent.cgroups import CgroupMount, parse_mounts, path_under
from cri_agent.ops.namespaces import perf_hierarchy
from cri_agent.ops.processes import parse_start_ticks

TESTDATA = Path(__file__).parent / "testdata" / "proc"
CONTAINER = (
    "kubepods/besteffort/pod2d1dfc23-bddd-4242-9a9b-6fc2df110fea/"
    "afb34474fbf0ed84aafd3d87fd9e4f0bd8562433e78c5824d93eb17d2466da3c"
)
PERF_EVENT_V1 = "50 31 0:40 / /sys/fs/cgroup/perf_event rw,relatime - cgroup cgroup rw,perf_event\n"


def test_the_hybrid_nodes_mounts_are_read_from_mountinfo() -> None:
    mounts = parse_mounts((TESTDATA / "mountinfo").read_text())
    assert [m.mount_point.name for m in mounts] == [
        "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd", "unified",
    ]  # fmt: skip
    assert mounts[-1] == CgroupMount(Path("/sys/fs/cgroup/unified"), "/", frozenset(), unified=True)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", Path("/sys/fs/cgroup/unified")),  # this VM: perf_event is not mounted as v1, perf uses cgroup2
        (PERF_EVENT_V1, Path("/sys/fs/cgroup/perf_event")),  # a v1 perf_event mount wins, as in perf itself
    ],
)
def test_perf_names_cgroups_in_its_v1_hierarchy_else_in_cgroup2(extra: str, expected: Path) -> None:
    hierarchy = perf_hierarchy(parse_mounts((TESTDATA / "mountinfo").read_text() + extra))
    assert hierarchy is not None and hierarchy.mount_point == expected


def test_no_cgroup_mount_means_no_hierarchy_for_perf() -> None:
    assert perf_hierarchy(parse_mounts("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n")) is None


def test_a_containers_cgroup_is_read_from_the_line_of_the_hierarchy() -> None:
    cgroup = (TESTDATA / "6016" / "cgroup").read_text()
    unified = CgroupMount(Path("/sys/fs/cgroup/unified"), "/", frozenset(), unified=True)
    perf_event = CgroupMount(Path("/sys/fs/cgroup/perf_event"), "/", frozenset({"perf_event"}), unified=False)
    assert path_under(cgroup, unified) == CONTAINER
    assert path_under(cgroup, perf_event) is None  # no perf_event line in this file


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ("/kubepods", CONTAINER.removeprefix("kubepods/")),  # a mount of a subtree: relative to it
        ("/system.slice", None),  # the cgroup lies outside the mounted part: perf could not open it
    ],
)
def test_a_cgroup_is_named_relative_to_the_mounts_root(root: str, expected: str | None) -> None:
    mount = CgroupMount(Path("/sys/fs/cgroup"), root, frozenset(), unified=True)
    assert path_under((TESTDATA / "6016" / "cgroup").read_text(), mount) == expected


def test_start_time_is_field_22_even_when_the_name_holds_spaces_and_parentheses() -> None:
    stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10"
    assert parse_start_ticks(stat) == 987654
