"""``<cache>.status``: the running agent's claim on its cache, and its live status.

One agent writes one cache. At start the agent takes an exclusive ``flock``
on this file, next to the cache, and holds it for its lifetime; a second
agent pointed at the same cache finds it locked and refuses with the first
one's pid. The kernel drops the lock when the process dies, however it
dies, so a SIGKILLed agent never blocks its successor.

The file also carries what ``coral agent status`` shows (pid, identity,
conditions), because the cache itself may be the thing that fails: the
status must stay readable when the cache refuses writes or the disk is
full. So the file is written once at its full size when created and then
only overwritten in place (JSON padded with spaces): an overwrite needs no
new block and works on a full disk. Readers retry a torn read.

What the kubelet's exec probes ask (``coral agent status --probe``) is
read from it too, with no SQLite and no config model loaded:

- **live**: an agent holds the lock and its discovery loop's heartbeat
  (``heartbeat_at``, written at least every ``heartbeat_every`` seconds,
  whatever the runtime, the cache or the colony do) is fresh. A loop that
  is wedged fails it; an outage of anything else does not.
- **ready**: live, the first discovery pass is done, and the pods it sees
  come from the runtime (the ``runtime`` condition holds) or, while the
  runtime is down, from the Kubernetes API fallback. The colony plays no
  part: an agent that cannot reach it keeps discovering and caching.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from cri_agent.errors import CacheError

SIZE = 32 * 1024  # what the file reserves; the status is ~1 KiB
_READ_TRIES = 5
MISSED_HEARTBEATS = 6  # live while the last heartbeat is younger than this many intervals
# A reader (a kubelet probe every few seconds) holds a shared lock for microseconds: an agent starting at that
# moment tries again rather than take it for another agent.
_ACQUIRE_TRIES, _ACQUIRE_PAUSE_S = 5, 0.05


class Probe(StrEnum):
    """What a kubelet probe asks of the agent (``coral agent status --probe``)."""

    LIVE = "live"  # the loop runs: restart the container when it does not
    READY = "ready"  # discovery works: count the pod available


class CacheInUse(CacheError):
    """Another live agent holds the cache."""


def status_path(cache: Path) -> Path:
    return cache.with_name(cache.name + ".status")


class LiveStatus(NamedTuple):  # not a dataclass: `coral agent status` would load dataclasses' imports for it
    """What a reader finds next to a cache."""

    running: bool  # an agent holds the lock now
    status: Mapping[str, Any]  # the last status that agent (or the last one) wrote

    @property
    def pid(self) -> int:
        return int(self.status.get("pid") or 0)

    def probe(self, probe: Probe, *, now: float) -> tuple[bool, str]:
        """The verdict for ``probe`` at wall time ``now``, and why (one line, for the kubelet's event)."""
        if not self.running:
            return False, "no agent holds the cache: the agent is not running"
        status = self.status
        beat, every = float(status.get("heartbeat_at") or 0.0), float(status.get("heartbeat_every") or 0.0)
        if not beat or not every:
            return False, "the discovery loop has not started yet"
        late = now - beat
        if late > MISSED_HEARTBEATS * every:
            return False, f"the discovery loop's last heartbeat is {late:.0f}s old (written every {every:g}s)"
        if probe is Probe.LIVE:
            return True, f"the discovery loop's heartbeat is {max(late, 0.0):.0f}s old"
        if not int(status.get("passes") or 0):
            return False, "the first discovery pass is not done yet"
        runtime = next((c for c in status.get("conditions") or () if c.get("name") == "runtime"), None)
        if runtime is not None and runtime.get("ok"):
            return True, f"discovering from the runtime ({runtime.get('reason', '')})"
        if status.get("fallback"):
            return True, "discovering from the Kubernetes API while the runtime is down"
        reason = runtime.get("reason", "") if runtime is not None else "never reached"
        return False, f"the container runtime is unreachable: {reason}"


class StatusFile:
    """The agent's side: lock, then overwrite in place."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.path = status_path(cache)
        self._fd: int | None = None
        self._identity: tuple[int, int] = (0, 0)
        self._last: dict[str, Any] = {}

    def acquire(self, status: Mapping[str, Any]) -> None:
        """Lock the file (creating it) and write ``status``; CacheInUse names the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if not _lock(fd):
            os.close(fd)
            holder = read_status(self.cache)
            pid = holder.pid if holder is not None else 0
            raise CacheInUse(
                f"cache {self.cache} is in use by another agent (pid {pid or 'unknown'}): "
                "one agent writes one cache; stop that agent or give this one another --cache"
            ) from None
        st = os.fstat(fd)
        if st.st_size < SIZE:
            os.pwrite(fd, b" " * (SIZE - st.st_size), st.st_size)  # reserve the blocks now, not on a full disk
        self._fd, self._identity = fd, (st.st_dev, st.st_ino)
        self.write(status)

    def write(self, status: Mapping[str, Any]) -> bool:
        """Overwrite the status in place; False when even that failed (it is retried by the next write)."""
        self._last = dict(status)
        if self._fd is None:
            return False
        data = json.dumps(self._last, separators=(",", ":")).encode()
        try:
            size = os.fstat(self._fd).st_size
            os.pwrite(self._fd, data.ljust(max(size, len(data)), b" "), 0)
        except OSError:
            return False
        return True

    def reclaim(self) -> None:
        """Recreate and relock the file if it was deleted or replaced; CacheInUse if another agent took it."""
        if self._fd is None:
            return
        try:
            st = self.path.stat()
            if (st.st_dev, st.st_ino) == self._identity:
                return
        except FileNotFoundError:
            pass
        self.release()
        self.acquire(self._last)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the last descriptor drops the lock
            self._fd = None


def _lock(fd: int) -> bool:
    """The exclusive lock, or False when another agent holds it (a reader's moment is waited out)."""
    for attempt in range(_ACQUIRE_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if attempt + 1 < _ACQUIRE_TRIES:
                time.sleep(_ACQUIRE_PAUSE_S)
        else:
            return True
    return False


def read_status(cache: Path) -> LiveStatus | None:
    """The status next to ``cache``, and whether its agent runs; None when there is no status file."""
    path = status_path(cache)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CacheError(f"agent status {path} cannot be read: {exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            running = True
        else:
            running = False
            fcntl.flock(fd, fcntl.LOCK_UN)
        return LiveStatus(running=running, status=_read_json(fd))
    finally:
        os.close(fd)


def _read_json(fd: int) -> dict[str, Any]:
    for _ in range(_READ_TRIES):  # a read that met an overwrite half-way does not parse: read again
        raw = os.pread(fd, max(SIZE, os.fstat(fd).st_size), 0).strip()
        if not raw:
            return {}
        with contextlib.suppress(ValueError):
            value = json.loads(raw)
            if isinstance(value, dict):
                return value
    return {}
