"""A pod's process by handle, not by number: what survives pid reuse.

A pid the /proc provider read during its last poll may name another process
by the time an operation runs: the pod's process exited and the kernel gave
its number to a new one. An open ``/proc/<pid>`` directory is bound to the
process it was opened for, not to the number: once that process has exited,
every file opened through the descriptor fails (ESRCH), even after the number
has been reused. So the agent opens the directory once, checks through it
that the process sits in the container's cgroup, and opens what it needs
(``ns/net``) through the same descriptor: all of it is about one process, or
nothing is.

A process is also named for later by its identity: the pid with its start
time (``/proc/<pid>/stat`` field 22, clock ticks since boot), which no other
process of this boot shares.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cri_agent.cgroups import parse_cgroup
from cri_agent.model import ContainerID


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """One process of a container: its pid and start time name it for this boot."""

    pid: int
    container_id: ContainerID
    start_ticks: int  # /proc/<pid>/stat field 22
    cgroup: str  # /proc/<pid>/cgroup as read through the handle


class PodProcess:
    """An open ``/proc/<pid>`` of a process verified to be in a container's cgroup (close it after use)."""

    def __init__(self, directory: int, identity: ProcessIdentity) -> None:
        self._directory = directory
        self.identity = identity

    @classmethod
    def open(cls, pid: int, container_id: ContainerID, *, proc_root: Path) -> PodProcess | None:
        """The process ``pid`` if it is (still) in ``container_id``'s cgroup; None if it is gone or another's."""
        try:
            directory = os.open(proc_root / str(pid), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            cgroup = _read(directory, "cgroup")
            start_ticks = parse_start_ticks(_read(directory, "stat"))
        except (OSError, ValueError):
            os.close(directory)
            return None
        ref = parse_cgroup(cgroup)
        if ref is None or ref.container_id != container_id:
            os.close(directory)
            return None
        return cls(directory, ProcessIdentity(pid, container_id, start_ticks, cgroup))

    def open_file(self, relative: str) -> int:
        """A descriptor of ``/proc/<pid>/<relative>`` of this very process; OSError once it has exited."""
        return os.open(relative, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._directory)

    def close(self) -> None:
        if self._directory >= 0:
            os.close(self._directory)
            self._directory = -1

    def __enter__(self) -> PodProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def still_running(identity: ProcessIdentity, *, proc_root: Path) -> bool:
    """Whether ``identity.pid`` is still the process that was identified (same container, same start time)."""
    process = PodProcess.open(identity.pid, identity.container_id, proc_root=proc_root)
    if process is None:
        return False
    with process:
        return process.identity.start_ticks == identity.start_ticks


def parse_start_ticks(stat: str) -> int:
    """``/proc/<pid>/stat`` -> field 22, starttime (fields counted after the comm, which may hold spaces)."""
    return int(stat[stat.rfind(")") + 2 :].split()[19])


def _read(directory: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=directory)
    with contextlib.closing(os.fdopen(fd, "rb", buffering=0)) as file:
        return file.read(64 * 1024).decode(errors="replace")
