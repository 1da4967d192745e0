"""The cache's three files (the database, its ``-wal`` and ``-shm``): what would make a write crash the
process, and whether the path still names the file the writer opened.

SQLite maps ``-shm`` into memory and writes to it on every transaction, even a read; a write to a mapping
of an immutable file (``chattr +i``) or of a file on a file system remounted read-only is a SIGBUS, not an
error. So the writer checks these files before it touches SQLite at all (16 µs), and treats such a cache as
refusing writes.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
from collections.abc import Mapping
from pathlib import Path

FILES = ("", "-wal", "-shm")  # the database and what SQLite keeps beside it in WAL mode
_FS_IOC_GETFLAGS = 0x80086601  # _IOR('f', 1, long)
_FS_IMMUTABLE_FL = 0x10
_FS_APPEND_FL = 0x20


class HeldFiles:
    """Descriptors of the file and its -wal and -shm, held open while the connection is: closing any
    descriptor of a file drops every POSIX lock this process holds on it, SQLite's included, so the
    agent never opens and closes these files itself while SQLite has them open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fds: dict[str, int] = {}

    def hold(self) -> None:
        for suffix in FILES:
            if suffix not in self._fds:
                with contextlib.suppress(FileNotFoundError):  # SQLite creates -wal and -shm on first use
                    self._fds[suffix] = os.open(
                        self.path.with_name(self.path.name + suffix), os.O_RDONLY | os.O_CLOEXEC
                    )

    def hazard(self) -> str:
        """Why touching the connection could crash the process (see CacheWriter), "" when it cannot."""
        self.hold()
        return _hazard(self.path, self._fds)

    def lost(self) -> str:
        """Why the path no longer names the file this cache opened ("deleted", "replaced"), else ""."""
        if "" not in self._fds:
            return ""
        opened = os.fstat(self._fds[""])
        try:
            now = self.path.stat()
        except FileNotFoundError:
            return "deleted"
        if (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
            return "replaced"
        return "deleted" if opened.st_nlink == 0 else ""

    def release(self) -> None:
        """Only once the connection is closed (see the class docstring)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def write_hazard(path: Path) -> str:
    """``HeldFiles.hazard`` for a cache that no connection of this process has open (so its files may be
    opened and closed here)."""
    fds: dict[str, int] = {}
    try:
        for suffix in FILES:
            with contextlib.suppress(OSError):  # absent (SQLite creates it) or unreadable (SQLite says so)
                fds[suffix] = os.open(path.with_name(path.name + suffix), os.O_RDONLY | os.O_CLOEXEC)
        return _hazard(path, fds)
    finally:
        for fd in fds.values():
            os.close(fd)


def _hazard(path: Path, fds: Mapping[str, int]) -> str:
    """A read-only file system, or a file of the cache (descriptors by suffix) immutable or append-only."""
    with contextlib.suppress(OSError):
        if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            return f"the file system of {path.parent} is read-only"
    for suffix, fd in fds.items():
        if _immutable(fd):
            return f"{path.name}{suffix} is immutable or append-only (chattr +i/+a)"
    return ""


def _immutable(fd: int) -> bool:
    flags = array.array("l", [0])
    try:
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
    except OSError:
        return False  # a file system without these flags
    return bool(flags[0] & (_FS_IMMUTABLE_FL | _FS_APPEND_FL))
