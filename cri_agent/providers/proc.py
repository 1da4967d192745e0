"""The node's processes, read from ``/proc`` (the agent runs with hostPID).

- pid -> (pod UID, container ID) from ``/proc/<pid>/cgroup`` (parsed by
  ``cri_agent.cgroups``, which knows every layout seen in the field);
- listening sockets of a pod's network namespace from
  ``/proc/<pid>/net/{tcp,tcp6,udp,udp6}`` (TCP LISTEN, unconnected UDP), so
  ports a pod never declared are found too;
- process names (``comm``) that hint at the service type.

Processes come and go during a scan: a vanished pid is skipped silently.
The /proc root is configurable so tests read fixture trees.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from coral_base.errors import CoralError
from cri_agent.cgroups import parse_cgroup
from cri_agent.model import (
    ContainerID,
    ContainerRecord,
    ContainerState,
    ListeningSocket,
    PodRecord,
    PodUID,
)
from cri_agent.providers.sockdiag import NetlinkUnavailable, NetnsListeners

_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"
_TABLES: tuple[tuple[str, Literal["TCP", "UDP"], bool], ...] = (
    ("tcp", "TCP", False),
    ("tcp6", "TCP", True),
    ("udp", "UDP", False),
    ("udp6", "UDP", True),
)
_VANISHED = (FileNotFoundError, ProcessLookupError, NotADirectoryError)
_DEAD = ("Z", "X")  # zombie, dead


class ProcError(CoralError):
    """``/proc`` itself cannot be read."""


@dataclass(frozen=True, slots=True)
class ProcScan:
    """One pass over every pid: which container each process belongs to."""

    pids_by_container: dict[ContainerID, tuple[int, ...]]
    pod_uid_by_container: dict[ContainerID, PodUID]
    comm: dict[int, str]
    zombies: frozenset[int] = frozenset()  # exited, not yet reaped


def parse_stat(text: str) -> tuple[str, str]:
    """``/proc/<pid>/stat`` -> (comm, state letter); comm is between the first "(" and the last ")"."""
    end = text.rfind(")")
    return text[text.find("(") + 1 : end], text[end + 2 : end + 3]


def _ipv4(hex_addr: str) -> str:
    return socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(hex_addr, 16)))


def _ipv6(hex_addr: str) -> str:
    words = [int(hex_addr[i : i + 8], 16) for i in range(0, 32, 8)]
    return socket.inet_ntop(socket.AF_INET6, struct.pack("<4I", *words))


def parse_net_table(text: str, *, protocol: Literal["TCP", "UDP"], ipv6: bool) -> list[ListeningSocket]:
    """One of ``/proc/<pid>/net/{tcp,tcp6,udp,udp6}`` -> its listening sockets."""
    decode = _ipv6 if ipv6 else _ipv4
    found: dict[tuple[int, str], ListeningSocket] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if protocol == "TCP" and state != _TCP_LISTEN:
            continue
        if protocol == "UDP" and (state != _UDP_UNCONNECTED or int(remote.rpartition(":")[2], 16)):
            continue
        address, _, port = local.rpartition(":")
        sock = ListeningSocket(port=int(port, 16), protocol=protocol, address=decode(address), inode=int(inode))
        found.setdefault((sock.port, sock.address), sock)
    return sorted(found.values(), key=lambda s: (s.port, s.address))


class ProcFS:
    """Reads the host's processes through a /proc root (default ``/proc``).

    Listening sockets come from sock_diag (see sockdiag.py) when the root is
    the live ``/proc``, from the ``net/{tcp,udp}*`` tables otherwise or as a
    fallback.
    """

    def __init__(self, root: Path = Path("/proc"), *, netlink: bool | None = None) -> None:
        self.root = root
        self._prefix = os.fsencode(root)
        use_netlink = netlink if netlink is not None else root == Path("/proc")
        self._netlink: NetnsListeners | None = NetnsListeners() if use_netlink else None

    def _read(self, pid: int, name: str) -> str:
        # os.open/os.read on bytes paths: a third of open()'s cost, and the scan reads ~2 files per process
        fd = os.open(b"%s/%d/%s" % (self._prefix, pid, name.encode()), os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks).decode("utf-8", "replace")

    def pids(self) -> list[int]:
        try:
            return [int(name) for name in os.listdir(self.root) if name.isdigit()]
        except OSError as exc:
            raise ProcError(
                f"/proc at {self.root} is not readable ({exc}): run the agent with hostPID and mount the host's /proc"
            ) from exc

    def scan(self) -> ProcScan:
        by_container: dict[ContainerID, list[int]] = {}
        uid_by_container: dict[ContainerID, PodUID] = {}
        comm: dict[int, str] = {}
        zombies: set[int] = set()
        for pid in self.pids():
            try:
                ref = parse_cgroup(self._read(pid, "cgroup"))
                if ref is None or ref.container_id is None:
                    continue
                name, state = parse_stat(self._read(pid, "stat"))  # comm and state in one read
                comm[pid] = name
                if state in _DEAD:
                    zombies.add(pid)
            except _VANISHED:
                continue
            except PermissionError:
                continue  # e.g. a process in the middle of exec; the next scan sees it
            by_container.setdefault(ref.container_id, []).append(pid)
            if ref.pod_uid is not None:
                uid_by_container[ref.container_id] = ref.pod_uid
        return ProcScan(
            pids_by_container={cid: tuple(sorted(p)) for cid, p in by_container.items()},
            pod_uid_by_container=uid_by_container,
            comm=comm,
            zombies=frozenset(zombies),
        )

    def listening(self, pid: int) -> tuple[ListeningSocket, ...]:
        """Listening sockets of ``pid``'s network namespace; () if it vanished."""
        if self._netlink is not None:
            with contextlib.suppress(NetlinkUnavailable):
                return tuple(self._netlink.listening(str(self.root / str(pid) / "ns" / "net")))
        sockets: list[ListeningSocket] = []
        for table, protocol, ipv6 in _TABLES:
            try:
                sockets += parse_net_table(self._read(pid, f"net/{table}"), protocol=protocol, ipv6=ipv6)
            except _VANISHED:
                continue
            except PermissionError:
                return ()
        return tuple(sockets)

    def socket_inodes(self, pid: int) -> frozenset[int]:
        inodes = set()
        fd_dir = self.root / str(pid) / "fd"
        try:
            names = os.listdir(fd_dir)
        except (*_VANISHED, PermissionError):
            return frozenset()
        for name in names:
            try:
                target = os.readlink(fd_dir / name)
            except (*_VANISHED, PermissionError):
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
        return frozenset(inodes)

    def enrich(self, pods: Sequence[PodRecord]) -> tuple[PodRecord, ...]:
        """Pods with container pids, process names and attributed listening sockets."""
        scan = self.scan()
        try:
            return tuple(self._enrich_pod(pod, scan) for pod in pods)
        finally:
            if self._netlink is not None:
                self._netlink.end_pass()

    def _enrich_pod(self, pod: PodRecord, scan: ProcScan) -> PodRecord:
        containers = [
            replace(
                c,
                pids=scan.pids_by_container.get(c.id) or ((c.pid,) if c.pid else ()),
                process_names=tuple(
                    sorted({scan.comm[p] for p in scan.pids_by_container.get(c.id, ()) if p in scan.comm})
                ),
            )
            if not self._died(c, scan)
            else replace(c, state=ContainerState.EXITED, pid=0)  # its exit code is not known yet
            for c in pod.containers
        ]
        sockets = self._pod_sockets(pod, containers)
        owned = self._attribute(pod, containers, sockets)
        return replace(
            pod,
            containers=tuple(replace(c, listening=tuple(owned.get(c.id, ()))) for c in containers),
            unattributed_listening=tuple(owned.get(None, ())),
        )

    def _pod_sockets(self, pod: PodRecord, containers: Sequence[ContainerRecord]) -> tuple[ListeningSocket, ...]:
        for pid in _netns_pids(pod, containers):
            sockets = self.listening(pid)
            if sockets or self._alive(pid):
                return sockets
        return ()

    def _alive(self, pid: int) -> bool:
        return (self.root / str(pid)).exists()

    def _died(self, container: ContainerRecord, scan: ProcScan) -> bool:
        """The runtime says running, but the container's first process is gone or a zombie: it has exited,
        and the runtime has not handled that yet (a pod being stopped, a crash)."""
        if container.state != ContainerState.RUNNING or not container.pid:
            return False
        if container.pid in scan.comm:  # the scan read its state already
            return container.pid in scan.zombies
        try:  # not in a container cgroup the scan knows (gone, or an unknown layout): look at it
            return parse_stat(self._read(container.pid, "stat"))[1] in _DEAD
        except _VANISHED:
            return True
        except PermissionError:
            return False

    def _attribute(
        self,
        pod: PodRecord,
        containers: Sequence[ContainerRecord],
        sockets: Iterable[ListeningSocket],
    ) -> dict[ContainerID | None, list[ListeningSocket]]:
        """Socket -> container: declared port, the only live container, or fd ownership."""
        live = [c for c in containers if c.state != ContainerState.EXITED]
        owned: dict[ContainerID | None, list[ListeningSocket]] = {}
        inodes: dict[ContainerID, frozenset[int]] | None = None
        for sock in sockets:
            owner: ContainerID | None = None
            declared = [
                c
                for c in containers
                if any((d.port, d.protocol) == (sock.port, sock.protocol) for d in c.declared_ports)
            ]
            if pod.host_network or not (declared or len(live) == 1):
                if inodes is None:
                    inodes = {c.id: frozenset().union(*(self.socket_inodes(p) for p in c.pids)) for c in containers}
                owner = next((cid for cid, found in inodes.items() if sock.inode in found), None)
                if owner is None and pod.host_network:
                    continue  # the host's own socket, not the pod's
            else:
                owner = (declared or live)[0].id
            owned.setdefault(owner, []).append(sock)
        return owned


def _netns_pids(pod: PodRecord, containers: Sequence[ContainerRecord]) -> list[int]:
    """Pids whose /proc/<pid>/net shows the pod's network namespace."""
    pids = [pod.pid] if pod.pid else []
    for container in containers:
        pids += [p for p in container.pids if p not in pids]
    return pids
