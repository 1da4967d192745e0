"""Runs a real colony (``coral colony start``) as a child process.

Tests create the colony directory with ``coral colony init``, start the
process on fixed loopback ports (so it can be killed and restarted at the
same address), and read its registry through a read-only SQLite
connection, as an auditor would.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from coral_base.vocabulary import Scope
from coral_colony.identity import init_colony
from coral_colony.tokens import OPERATOR_SCOPES, OperatorTokens

_T = TypeVar("_T")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ColonyProcess:
    def __init__(self, directory: Path, *, colony_id: str = "test-colony", heartbeat_timeout: float = 45.0) -> None:
        self.directory = directory
        self.colony_id = colony_id
        self.heartbeat_timeout = heartbeat_timeout
        self.port = free_port()  # fixed across restarts: agents dial the same address
        self.log_path = directory.parent / f"{directory.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.extra_args: list[str] = []  # more `coral colony start` flags, from the next start on
        if not (directory / "colony.yaml").exists():
            init_colony(directory, colony_id=colony_id, hosts=["localhost", "127.0.0.1"])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def web_url(self) -> str:
        """The status page, on the port the colony picked (it logs it at start)."""
        started = [json.loads(line) for line in self.log().splitlines() if '"colony.started"' in line]
        return f"http://{started[-1]['web']}"

    @property
    def database(self) -> Path:
        return self.directory / "colony.db"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def secret_file(self) -> Path:
        return self.directory / "colony-secret"

    def agent_settings(self, **changes: object) -> dict[str, object]:
        """The ``colony:`` section of an agent config that registers here, heartbeats and retries at test pace."""
        return {
            "address": self.address,
            "colonyId": self.colony_id,
            "secretFile": str(self.secret_file),
            "caFile": str(self.ca),
            "heartbeatInterval": "1s",
            "maxBackoff": "1s",
            **changes,
        }

    def token(self, name: str, *, scopes: Iterable[Scope] = OPERATOR_SCOPES, namespaces: Iterable[str] = ()) -> str:
        return OperatorTokens(self.directory).create(name, scopes=scopes, namespaces=namespaces)

    def start(self) -> ColonyProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "coral_cli",
                "colony",
                "start",
                "--dir",
                str(self.directory),
                "--listen",
                self.address,
                "--web-listen",
                "127.0.0.1:0",
                "--probe-listen",
                "127.0.0.1:0",
                "--heartbeat-timeout",
                f"{self.heartbeat_timeout}s",
                "--log-format",
                "json",
                *self.extra_args,
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        self.wait_for(self._listening, timeout=20, what="colony start")
        self.wait_for(lambda: '"colony.started"' in self.log(), timeout=10, what="the colony's start line")
        return self

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"colony exited with {self.process.returncode}:\n{self.log()}")
        with socket.socket() as client:
            return client.connect_ex(("127.0.0.1", self.port)) == 0

    def kill(self) -> None:
        """SIGKILL: the colony vanishes without a goodbye, as on a node failure."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return 0 if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        if not self.database.exists():
            return []
        db = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5)
        try:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute(sql, params)]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            db.close()

    def services(self) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM services ORDER BY key")

    def agents(self) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM agents ORDER BY agent_id")

    def enrollments(self) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM enrollments ORDER BY node_name")

    def audit(self, kind: str = "") -> list[dict[str, Any]]:
        if kind:
            return self._query("SELECT * FROM audit WHERE kind = ? ORDER BY id", (kind,))
        return self._query("SELECT * FROM audit ORDER BY id")

    def wait_for(self, predicate: Callable[[], _T], *, timeout: float, what: str, interval: float = 0.05) -> _T:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                tail = self.log()[-3000:]
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\ncolony log:\n{tail}")
            time.sleep(interval)
