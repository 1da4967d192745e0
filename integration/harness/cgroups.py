"""The pod cgroup directories runc leaves behind, found through /proc/self/mountinfo.

cgroups here are hybrid (each v1 controller mounted alone, cgroup2 at
/sys/fs/cgroup/unified): never hard-code a path.
"""

from __future__ import annotations

import contextlib
from pathlib import Path


def cgroup_mounts() -> list[Path]:
    """Every cgroup (v1 and v2) mount point, from /proc/self/mountinfo."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype in ("cgroup", "cgroup2"):
            points.append(Path(fields[4]))
    return points


def remove_pod_cgroups(uid: str) -> None:
    """rmdir the ``kubepods/besteffort/pod<uid>`` dirs runc left (only ours, only empty)."""
    for mount in cgroup_mounts():
        directory = mount / "kubepods" / "besteffort" / f"pod{uid}"
        if directory.is_dir():
            for child in sorted(directory.iterdir(), reverse=True):
                if child.is_dir():
                    with contextlib.suppress(OSError):
                        child.rmdir()
            with contextlib.suppress(OSError):
                directory.rmdir()
