"""TCP listeners through NETLINK_SOCK_DIAG, as the agent reads them for every pod netns."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri_agent.providers.sockdiag import ListeningTCP, NetlinkUnavailable


@pytest.fixture
def listener() -> Iterator[tuple[int, int]]:
    """A child process listening on 127.0.0.1 and [::1]: (pid, port)."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket,time\n"
            "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); port=s.getsockname()[1]\n"
            "t=socket.socket(socket.AF_INET6); t.bind(('::1',port)); t.listen()\n"
            "print(port, flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    port = int(child.stdout.readline())
    yield child.pid, port
    child.kill()
    child.wait()


def test_listeners_of_a_netns_come_back_with_address_and_inode(listener: tuple[int, int]) -> None:
    pid, port = listener
    found = [s for s in ListeningTCP().listening(f"/proc/{pid}/ns/net") if s.port == port]
    links = [str(fd.readlink()) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    inodes = {int(link[8:-1]) for link in links if link.startswith("socket:[")}
    assert ([s.address for s in found], all(s.inode in inodes for s in found)) == (["127.0.0.1", "::1"], True)


def test_the_calling_thread_returns_to_its_own_netns(listener: tuple[int, int]) -> None:
    before = Path("/proc/thread-self/ns/net").stat().st_ino
    ListeningTCP().listening(f"/proc/{listener[0]}/ns/net")
    assert Path("/proc/thread-self/ns/net").stat().st_ino == before


def test_sockets_of_namespaces_not_asked_about_are_closed(listener: tuple[int, int]) -> None:
    diag = ListeningTCP()
    diag.listening(f"/proc/{listener[0]}/ns/net")
    diag.end_pass()
    diag.end_pass()
    assert diag._sockets == {}


def test_a_vanished_namespace_says_to_fall_back(tmp_path: Path) -> None:
    with pytest.raises(NetlinkUnavailable):
        ListeningTCP().listening(str(tmp_path / "gone"))
