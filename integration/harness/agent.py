"""Runs the real ``coral agent node`` as a child process and reads its cache.

Tests drive the agent exactly as an operator would (a process with flags,
signals, a cache file) and observe it only through the SQLite cache it
writes, which is the auditors' interface too.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from cri_agent.cache.discovery_events import StoredEvent
from cri_agent.cache.reader import CacheReader
from cri_agent.errors import CacheError
from cri_agent.model import EventKind, ServiceInfo

_T = TypeVar("_T")


class AgentProcess:
    def __init__(
        self,
        *,
        cri_socket: Path,
        cache: Path,
        node_name: str = "test-node",
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
    ) -> None:
        self.cri_socket = cri_socket
        self.cache_path = cache
        self.node_name = node_name
        self.extra_args = list(extra_args)
        self.log_path = log_path or cache.with_suffix(".log")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "coral_cli",
            "agent",
            "node",
            "--cri-socket",
            str(self.cri_socket),
            "--cache",
            str(self.cache_path),
            "--node-name",
            self.node_name,
            "--log-format",
            "json",
            *self.extra_args,
        ]

    def start(self) -> AgentProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command, stdout=log, stderr=log, start_new_session=True)
        log.close()
        self.wait_for(lambda: self._cache_meta_pid() == self.pid, timeout=20, what="agent start")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown path runs, as when the node OOM-kills the agent."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"agent did not stop within {timeout}s:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no agent log)"

    # -- observing the cache ----------------------------------------------------

    def read(self, fn: Callable[[CacheReader], _T]) -> _T:
        with CacheReader(self.cache_path) as cache:
            return fn(cache)

    def services(self) -> list[ServiceInfo]:
        return self.read(lambda c: c.services())

    def events(self, *, since_id: int = 0, kind: str | None = None) -> list[StoredEvent]:
        return self.read(lambda c: c.events(since_id=since_id, kind=EventKind(kind) if kind else None))

    def last_event_id(self) -> int:
        events = self.events()
        return events[-1].id if events else 0

    def conditions(self) -> dict[str, tuple[bool, str, float]]:
        return self.read(lambda c: {r.name: (r.ok, r.reason, r.updated) for r in c.conditions()})

    def _cache_meta_pid(self) -> int:
        if not self.cache_path.exists():
            return 0
        try:
            return int(self.read(lambda c: c.meta()).get("agent_pid", 0))
        except (sqlite3.Error, ValueError, CacheError):  # CacheError: a file its agent is creating
            return 0

    def wait_for(self, predicate: Callable[[], _T | None], *, timeout: float, what: str, poll: float = 0.02) -> _T:
        """Poll ``predicate`` until truthy; fail with the agent's log tail."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = predicate()
            except (sqlite3.Error, FileNotFoundError, CacheError):
                value = None  # the agent is mid-write or has not created (or recreated) the file yet
            if value:
                return value
            if self.process is not None and self.process.poll() is not None:
                code = self.process.returncode
                raise AssertionError(f"agent exited ({code}) waiting for {what}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n{self.log_tail()}")
            time.sleep(poll)

    def health(self, key: str) -> str:
        """The service's latest health state in the cache (``unknown`` until probed)."""
        rows = self.read(lambda c: c.service_rows())
        return next((str(r.health) for r in rows if r.service.key == key), "absent")

    def service_by_pod(self, pod_uid: str) -> list[ServiceInfo]:
        return [s for s in self.services() if s.pod_uid == pod_uid]

    def wait_pass_after(self, moment: float, timeout: float = 10.0) -> None:
        """Wait until the agent completed a reconcile that started after ``moment``."""
        self.wait_for(
            lambda: float(self.read(lambda c: c.meta()).get("last_pass_at", 0)) >= moment,
            timeout=timeout,
            what="a reconcile pass",
        )
