"""The status file: one agent per cache (flock), a live status readable when the cache is not."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cri_agent.status_file import SIZE, CacheInUse, LiveStatus, Probe, StatusFile, read_status, status_path


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    first = StatusFile(tmp_path / "agent.db")
    first.acquire({"pid": os.getpid()})
    try:
        with pytest.raises(CacheInUse, match=rf"in use by another agent \(pid {os.getpid()}\)"):
            StatusFile(tmp_path / "agent.db").acquire({"pid": 1})
    finally:
        first.release()
    StatusFile(tmp_path / "agent.db").acquire({"pid": 2})  # released: free again


def test_another_process_sees_whether_the_agent_runs(tmp_path: Path) -> None:
    holder = StatusFile(tmp_path / "agent.db")
    holder.acquire({"pid": 42, "conditions": [{"name": "cache", "ok": False}]})
    probe = "import sys; from pathlib import Path; from cri_agent.status_file import read_status; "
    probe += "s = read_status(Path(sys.argv[1])); print(s.running, s.pid)"
    command = [sys.executable, "-c", probe, str(tmp_path / "agent.db")]
    held = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
    holder.release()
    released = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
    assert (held, released) == (["True", "42"], ["False", "42"])


def test_a_dead_agent_leaves_no_lock_behind(tmp_path: Path) -> None:
    script = (
        "import os, sys; from pathlib import Path; from cri_agent.status_file import StatusFile; "
        "StatusFile(Path(sys.argv[1])).acquire({'pid': os.getpid()}); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "agent.db")], check=True)
    live = read_status(tmp_path / "agent.db")
    assert live is not None and not live.running
    StatusFile(tmp_path / "agent.db").acquire({"pid": os.getpid()})


def test_the_file_reserves_its_size_and_is_overwritten_in_place(tmp_path: Path) -> None:
    status = StatusFile(tmp_path / "agent.db")
    status.acquire({"reason": "x" * 2000})
    path = status_path(tmp_path / "agent.db")
    inode = path.stat().st_ino
    assert status.write({"reason": "short"})
    live = read_status(tmp_path / "agent.db")
    assert live is not None and live.status == {"reason": "short"}
    st = path.stat()
    assert (st.st_size, st.st_ino, st.st_mode & 0o777) == (SIZE, inode, 0o600)


def test_a_deleted_status_file_is_reclaimed(tmp_path: Path) -> None:
    status = StatusFile(tmp_path / "agent.db")
    status.acquire({"pid": 7})
    status_path(tmp_path / "agent.db").unlink()
    status.reclaim()
    live = read_status(tmp_path / "agent.db")
    assert live is not None and (live.running, live.pid) == (True, 7)


RUNTIME_OK = {"name": "runtime", "ok": True, "reason": "containerd 1.6.20"}
RUNTIME_DOWN = {"name": "runtime", "ok": False, "reason": "CRI socket /x.sock not found"}
COLONY_DOWN = {"name": "colony", "ok": False, "reason": "the colony at c:9000 is unreachable"}
WORKING = {"heartbeat_at": 1000.0, "heartbeat_every": 10.0, "passes": 3, "conditions": [RUNTIME_OK, COLONY_DOWN]}


@pytest.mark.parametrize(
    ("running", "changes", "now", "live", "ready", "why"),
    [
        (True, {}, 1005.0, True, True, "discovering from the runtime"),
        (False, {}, 1005.0, False, False, "not running"),
        (True, {"heartbeat_at": 0.0}, 1005.0, False, False, "has not started yet"),
        (True, {}, 1061.0, False, False, "heartbeat is 61s old"),
        (True, {"passes": 0}, 1005.0, True, False, "first discovery pass is not done"),
        (True, {"conditions": [RUNTIME_DOWN]}, 1005.0, True, False, "runtime is unreachable: CRI socket"),
        (True, {"conditions": [RUNTIME_DOWN], "fallback": True}, 1005.0, True, True, "from the Kubernetes API"),
    ],
    ids=["working", "stopped", "loop-not-started", "loop-wedged", "first-pass", "runtime-down", "api-fallback"],
)
def test_probe_verdicts(
    running: bool, changes: dict[str, object], now: float, live: bool, ready: bool, why: str
) -> None:
    status = LiveStatus(running=running, status={**WORKING, **changes})
    verdicts = status.probe(Probe.LIVE, now=now), status.probe(Probe.READY, now=now)
    assert (verdicts[0][0], verdicts[1][0]) == (live, ready)
    assert why in verdicts[1][1]


def test_an_agent_starting_while_a_probe_reads_the_file_is_not_refused(tmp_path: Path) -> None:
    """A reader's shared lock (``coral agent status --probe``) is held for a moment: the agent waits it out."""
    path = status_path(tmp_path / "agent.db")
    path.write_text("{}")
    reader = os.open(path, os.O_RDONLY)
    fcntl.flock(reader, fcntl.LOCK_SH)
    threading.Timer(0.08, lambda: os.close(reader)).start()
    status = StatusFile(tmp_path / "agent.db")
    status.acquire({"pid": 7})
    status.release()
