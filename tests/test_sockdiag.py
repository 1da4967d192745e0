"""Listening sockets through NETLINK_SOCK_DIAG, as the agent reads them for every pod netns."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri_agent.model import ListeningSocket
from cri_agent.providers.proc import ProcFS
from cri_agent.providers.sockdiag import NetlinkUnavailable, NetnsListeners


@pytest.fixture
def listener() -> Iterator[tuple[int, int]]:
    """A child listening on 127.0.0.1 and [::1] (TCP), bound on UDP, and a connected UDP socket: (pid, port)."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket,sys\n"
            "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); port=s.getsockname()[1]\n"
            "t=socket.socket(socket.AF_INET6); t.bind(('::1',port)); t.listen()\n"
            "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.bind(('127.0.0.1',port))\n"
            "c=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM); c.connect(('::1',port))\n"
            "print(port, flush=True); sys.stdin.read()",  # listens until killed
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    port = int(child.stdout.readline())
    yield child.pid, port
    child.kill()
    child.communicate()  # reaps it and closes its pipes


def test_listeners_of_a_netns_come_back_with_address_and_inode(listener: tuple[int, int]) -> None:
    pid, port = listener
    found = [s for s in NetnsListeners().listening(f"/proc/{pid}/ns/net") if s.port == port]
    links = [str(fd.readlink()) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    inodes = {int(link[8:-1]) for link in links if link.startswith("socket:[")}
    assert [(s.protocol, s.address) for s in found] == [("TCP", "127.0.0.1"), ("TCP", "::1"), ("UDP", "127.0.0.1")]
    assert all(s.inode in inodes for s in found)


def test_netlink_and_the_proc_tables_agree(listener: tuple[int, int]) -> None:
    pid, port = listener  # the host's netns: other processes' sockets come and go, the child's stay

    def child(found: tuple[ListeningSocket, ...]) -> set[tuple[str, str, int]]:
        return {(s.protocol, s.address, s.inode) for s in found if s.port == port}

    netlink, tables = child(ProcFS().listening(pid)), child(ProcFS(netlink=False).listening(pid))
    assert netlink == tables and len(netlink) == 3


def test_the_calling_thread_returns_to_its_own_netns(listener: tuple[int, int]) -> None:
    before = Path("/proc/thread-self/ns/net").stat().st_ino
    NetnsListeners().listening(f"/proc/{listener[0]}/ns/net")
    assert Path("/proc/thread-self/ns/net").stat().st_ino == before


def test_sockets_of_namespaces_not_asked_about_are_closed(listener: tuple[int, int]) -> None:
    diag = NetnsListeners()
    diag.listening(f"/proc/{listener[0]}/ns/net")
    diag.end_pass()
    diag.end_pass()
    assert diag._sockets == {}


def test_a_vanished_namespace_says_to_fall_back(tmp_path: Path) -> None:
    with pytest.raises(NetlinkUnavailable):
        NetnsListeners().listening(str(tmp_path / "gone"))
