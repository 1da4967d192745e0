"""What ``/proc/<pid>/cgroup`` and ``/proc/self/mountinfo`` say about cgroups: plain text in, plain data out.

- which pod and container a process belongs to, for every layout seen in the
  field: kubelet's cgroupfs and systemd drivers, containerd
  (``cri-containerd-<id>.scope``), CRI-O (``crio-<id>.scope``), Docker,
  containerd without a cgroup parent (``/k8s.io/<id>``), v1, v2 and hybrid
  hierarchies, nested under other roots (the /proc provider maps pids with it;
  an operation checks with it that a pid is still the container's);
- where each hierarchy is mounted, and a process's cgroup as a path under that
  mount (how ``perf -G`` names a cgroup).

Nothing here reads a file: the callers do, the tests give fixture text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cri_agent.model import ContainerID, PodUID

_CONTAINER_ID = r"[0-9a-f]{64}"
# The last path component names the container in every layout.
_LEAF = re.compile(rf"^(?:(?:cri-containerd|crio|docker|containerd)-)?(?P<id>{_CONTAINER_ID})(?:\.scope)?$")
_POD_CGROUPFS = re.compile(r"^pod(?P<uid>[0-9a-fA-F-]{36})$")
_POD_SYSTEMD = re.compile(r"^kubepods(?:-[a-z]+)?-pod(?P<uid>[0-9a-fA-F_]{36})\.slice$")


@dataclass(frozen=True, slots=True)
class CgroupRef:
    pod_uid: PodUID | None
    container_id: ContainerID | None


@dataclass(frozen=True, slots=True)
class CgroupMount:
    """One mounted cgroup hierarchy: v1 with its controllers, or the unified (v2) one."""

    mount_point: Path
    root: str  # the hierarchy's directory mounted there ("/" for the whole hierarchy)
    controllers: frozenset[str]  # empty for cgroup2
    unified: bool


def parse_cgroup_path(path: str) -> CgroupRef | None:
    parts = [p for p in path.split("/") if p]
    if not parts:
        return None
    leaf = _LEAF.match(parts[-1])
    if leaf is None:
        return None
    uid: PodUID | None = None
    for part in parts[:-1]:
        if match := _POD_CGROUPFS.match(part):
            uid = PodUID(match.group("uid").lower())
        elif match := _POD_SYSTEMD.match(part):
            uid = PodUID(match.group("uid").replace("_", "-").lower())
    return CgroupRef(pod_uid=uid, container_id=ContainerID(leaf.group("id")))


def parse_cgroup(text: str) -> CgroupRef | None:
    """``/proc/<pid>/cgroup`` (v1 lines, the v2 ``0::`` line, or both) -> pod and container."""
    best: CgroupRef | None = None
    for line in text.splitlines():
        _, _, path = line.partition(":")
        _, _, path = path.partition(":")
        ref = parse_cgroup_path(path.strip())
        if ref is None:
            continue
        if ref.pod_uid is not None:
            return ref
        best = best or ref
    return best


def parse_mounts(mountinfo: str) -> list[CgroupMount]:
    """``/proc/self/mountinfo`` -> every cgroup mount, in mount order."""
    mounts = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        if len(fields) < separator + 4 or fields[separator + 1] not in ("cgroup", "cgroup2"):
            continue
        unified = fields[separator + 1] == "cgroup2"
        options = frozenset() if unified else frozenset(fields[separator + 3].split(","))
        mounts.append(CgroupMount(Path(_unescape(fields[4])), _unescape(fields[3]), options, unified))
    return mounts


def path_under(cgroup: str, mount: CgroupMount) -> str | None:
    """A process's cgroup in ``mount``'s hierarchy, relative to the mount point ("" for its root); None when
    ``/proc/<pid>/cgroup`` has no line for that hierarchy or the cgroup lies outside the mounted part."""
    for line in cgroup.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if mount.unified:
            if number != "0" or controllers:
                continue
        elif not mount.controllers & set(controllers.split(",")):
            continue
        root = mount.root.rstrip("/")
        if path != root and not path.startswith(root + "/"):
            return None
        return path[len(root) :].strip("/")
    return None


def _unescape(field: str) -> str:
    """mountinfo writes a space, tab, newline and backslash in a path as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
