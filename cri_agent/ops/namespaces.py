"""Where a pod lives on the host, pinned when an operation is admitted: its netns, its processes' cgroups.

The pod record comes from the last poll, up to a poll interval old; a pid in
it may have been given to another process since. So nothing here trusts a
pid: each is opened through ``processes.PodProcess``, which checks that the
process is still in the container's cgroup, and what the operation needs is
taken from that handle at once.

- **Network namespace** (tap, sample): a descriptor, opened at admission, of
  the runtime's netns bind mount (CRI verbose status: named by the sandbox,
  never by a pid) or else of ``ns/net`` of a verified container or sandbox
  process. The capture tool enters it through ``/proc/self/fd/<n>``: the
  namespace that was opened, whatever happened to the pids since.
- **Profile**: the containers' cgroups in the hierarchy ``perf -G`` reads (a
  container's cgroup is named by its id, which is never reused). Where no
  cgroup can be named, the verified processes with their start times; the
  profiler checks them again right before ``perf -p`` and drops any pid that
  now names another process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cri_agent.cgroups import CgroupMount, parse_mounts, path_under
from cri_agent.model import ContainerID, ContainerState, PodRecord
from cri_agent.ops.processes import PodProcess, ProcessIdentity, still_running


class PodUnreachable(Exception):
    """The pod's namespaces or processes cannot be found (it may have just gone)."""


class NetnsHandle:
    """An open network namespace: the capture tool enters it by descriptor (close it after use)."""

    def __init__(self, fd: int, *, source: str) -> None:
        self.fd = fd
        self.source = source  # what was opened, for messages: a path, or "pid 123 of container abc"

    @property
    def child_path(self) -> str:
        """The path a child process given this descriptor (``pass_fds``) opens to enter the namespace."""
        return f"/proc/self/fd/{self.fd}"

    @property
    def inode(self) -> int:
        return os.fstat(self.fd).st_ino

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> NetnsHandle:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class ProfileTarget:
    """What ``perf`` samples: cgroups by name, or (when none can be named) processes by identity."""

    cgroups: tuple[str, ...] = ()  # ``perf -G`` names, one per running container
    processes: tuple[ProcessIdentity, ...] = ()  # empty when ``cgroups`` is set
    pod: str = ""  # namespace/name, for messages


def open_netns(pod: PodRecord, *, proc_root: Path = Path("/proc")) -> NetnsHandle:
    """The pod's network namespace, opened now (PodUnreachable when it is gone)."""
    if pod.host_network:
        raise PodUnreachable(f"{pod.namespace}/{pod.name} uses the host network: capture on the node instead")
    if pod.netns_path:
        with contextlib.suppress(OSError):  # gone with its sandbox: try the processes, they say so too
            fd = os.open(pod.netns_path, os.O_RDONLY | os.O_CLOEXEC)
            if _is_netns(fd):
                return NetnsHandle(fd, source=pod.netns_path)
            os.close(fd)
    tried = 0
    for container_id, pid in _processes(pod):
        tried += 1
        process = PodProcess.open(pid, container_id, proc_root=proc_root)
        if process is None:
            continue
        with process, contextlib.suppress(OSError):  # it exited after the check: try the next
            fd = process.open_file("ns/net")
            return NetnsHandle(fd, source=f"pid {pid} of container {container_id[:12]}")
    raise PodUnreachable(
        f"no network namespace found for {pod.namespace}/{pod.name}: the runtime's netns path "
        f"{pod.netns_path or '(none)'} is gone and none of its {tried} known pids is still one of its processes"
    )


def profile_target(
    pod: PodRecord, *, proc_root: Path = Path("/proc"), mountinfo: Path = Path("/proc/self/mountinfo")
) -> ProfileTarget:
    """The running containers' cgroups for ``perf -G``, else their verified processes (PodUnreachable: none)."""
    hierarchy = perf_hierarchy(parse_mounts(mountinfo.read_text()))
    identities: list[ProcessIdentity] = []
    cgroups: dict[ContainerID, str] = {}
    for container in pod.containers:
        if container.state is not ContainerState.RUNNING:
            continue
        for pid in container.pids:
            process = PodProcess.open(pid, container.id, proc_root=proc_root)
            if process is None:
                continue
            with process:
                identities.append(process.identity)
            if hierarchy is not None and container.id not in cgroups and (name := _perf_name(process, hierarchy)):
                cgroups[container.id] = name
    where = f"{pod.namespace}/{pod.name}"
    if not identities:
        raise PodUnreachable(f"no running process in {where}")
    if {identity.container_id for identity in identities} <= cgroups.keys():
        return ProfileTarget(cgroups=tuple(sorted(set(cgroups.values()))), pod=where)
    return ProfileTarget(processes=tuple(identities), pod=where)


def live_pids(target: ProfileTarget, *, proc_root: Path = Path("/proc")) -> list[int]:
    """The target's pids that still name the processes identified at admission, checked now (right before
    ``perf -p``); PodUnreachable when none does."""
    pids = [p.pid for p in target.processes if still_running(p, proc_root=proc_root)]
    if not pids:
        listed = ", ".join(str(p.pid) for p in target.processes)
        raise PodUnreachable(
            f"the processes of {target.pod} (pids {listed}) exited, or their pids now name other processes, "
            "since the operation was admitted: nothing was profiled"
        )
    return pids


def perf_hierarchy(mounts: list[CgroupMount]) -> CgroupMount | None:
    """The hierarchy ``perf -G`` names cgroups in: a v1 mount with the perf_event controller, else cgroup2
    (perf's own rule, tools/lib/api/fs/cgroup.c). On a hybrid node without a perf_event mount, cgroup2."""
    for mount in mounts:
        if "perf_event" in mount.controllers:
            return mount
    return next((mount for mount in mounts if mount.unified), None)


def _perf_name(process: PodProcess, hierarchy: CgroupMount) -> str:
    """The process's cgroup as ``perf -G`` takes it ("" when there is none that perf could open)."""
    name = path_under(process.identity.cgroup, hierarchy)
    if not name or "," in name or ".." in name.split("/") or not (hierarchy.mount_point / name).is_dir():
        return ""  # the root (every process), a name -G would split, outside this cgroup namespace, not visible
    return name


def _processes(pod: PodRecord) -> Iterator[tuple[ContainerID, int]]:
    """The sandbox (pause) process, then every known pid of the running containers."""
    if pod.pid:
        yield ContainerID(pod.sandbox_id), pod.pid
    for container in pod.containers:
        if container.state is ContainerState.RUNNING:
            for pid in container.pids:
                yield container.id, pid


def _is_netns(fd: int) -> bool:
    """A descriptor of a network namespace (nsfs), not a plain file left where a bind mount was."""
    try:
        return str(Path(f"/proc/self/fd/{fd}").readlink()).startswith("net:[")
    except OSError:
        return False
