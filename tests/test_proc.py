"""/proc: cgroup -> pod and container, listening sockets, attribution to containers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from cri_agent.cgroups import CgroupRef, parse_cgroup, parse_cgroup_path
from cri_agent.model import ContainerID, ContainerRecord, ContainerState, DeclaredPort, PodRecord, PodUID
from cri_agent.providers.proc import ProcError, ProcFS, parse_net_table
from tests.builders import container, pod

TESTDATA = Path(__file__).parent / "testdata" / "proc"
PAUSE_PID, HTTPD_PID = 5984, 6016
POD_UID = "2d1dfc23-bddd-4242-9a9b-6fc2df110fea"
HTTPD_ID = "afb34474fbf0ed84aafd3d87fd9e4f0bd8562433e78c5824d93eb17d2466da3c"
PAUSE_ID = "ba2f22efa29280330af832a1664f2935bec68175b954f0da02f68bebbbab832b"
CID = "a" * 64
UID = "0d5fbe8c-1d8c-4c2a-9d3e-6a2b8f6b7c11"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"/kubepods/besteffort/pod{UID}/{CID}", (UID, CID)),
        (f"/kubepods/burstable/pod{UID}/{CID}", (UID, CID)),
        (f"/kubepods/pod{UID}/{CID}", (UID, CID)),
        (
            "/kubepods.slice/kubepods-besteffort.slice/"
            f"kubepods-besteffort-pod{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope",
            (UID, CID),
        ),
        (f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{CID}.scope", (UID, CID)),
        (
            f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/docker-{CID}.scope",
            (UID, CID),
        ),
        (f"/k8s.io/{CID}", (None, CID)),
        (f"/process_api/x/kubepods/besteffort/pod{UID}/{CID}", (UID, CID)),
        (
            f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-conmon-{CID}.scope",
            None,
        ),
        ("/user.slice/user-0.slice/session-1.scope", None),
        ("/", None),
    ],
)
def test_cgroup_paths_of_every_layout(path: str, expected: tuple[str | None, str] | None) -> None:
    ref = parse_cgroup_path(path)
    assert (None if ref is None else (ref.pod_uid, ref.container_id)) == expected


def test_real_kubelet_layout_from_the_harness() -> None:
    text = (TESTDATA / str(HTTPD_PID) / "cgroup").read_text()
    assert parse_cgroup(text) == CgroupRef(PodUID(POD_UID), ContainerID(HTTPD_ID))


def test_host_process_has_no_container() -> None:
    assert parse_cgroup((TESTDATA / "1" / "cgroup").read_text()) is None


def test_hybrid_hierarchy_prefers_a_line_with_the_pod_uid() -> None:
    text = f"12:memory:/k8s.io/{CID}\n0::/kubepods/besteffort/pod{UID}/{CID}\n"
    assert parse_cgroup(text) == CgroupRef(PodUID(UID), ContainerID(CID))


def test_pod_netns_tables_from_a_real_pod() -> None:
    sockets = [
        s
        for table, proto, v6 in (
            ("tcp", "TCP", False),
            ("tcp6", "TCP", True),
            ("udp", "UDP", False),
        )
        for s in parse_net_table((TESTDATA / str(HTTPD_PID) / "net" / table).read_text(), protocol=proto, ipv6=v6)  # type: ignore[arg-type]
    ]
    assert [(s.port, s.protocol, s.address, s.loopback_only) for s in sockets] == [
        (6060, "TCP", "127.0.0.1", True),
        (8080, "TCP", "::", False),
        (9443, "TCP", "::", False),
        (5353, "UDP", "0.0.0.0", False),
    ]


def test_connected_udp_and_established_tcp_are_not_listening() -> None:
    udp = (TESTDATA / str(HTTPD_PID) / "net" / "udp").read_text()
    assert [s.port for s in parse_net_table(udp, protocol="UDP", ipv6=False)] == [5353]


@pytest.fixture
def fixture_proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    shutil.copytree(TESTDATA, root)
    (root / str(HTTPD_PID) / "fd").mkdir()
    (root / str(HTTPD_PID) / "fd" / "3").symlink_to("socket:[10115]")
    (root / str(HTTPD_PID) / "fd" / "0").symlink_to("/dev/null")
    return root


def real_pod(*extra: ContainerRecord, host_network: bool = False, declared: bool = True) -> PodRecord:
    """The harness pod the fixture files were taken from: pause + httpd on :8080."""
    web = replace(
        container("web", ports=[DeclaredPort(8080, "TCP", "http")] if declared else []),
        id=ContainerID(HTTPD_ID),
        pid=HTTPD_PID,
    )
    base = pod("demo1", uid=POD_UID, containers=[web, *extra])
    return replace(base, pid=PAUSE_PID, host_network=host_network)


def test_scan_maps_pids_to_containers_and_names(fixture_proc: Path) -> None:
    scan = ProcFS(fixture_proc).scan()
    assert (scan.pids_by_container, scan.pod_uid_by_container, scan.comm[HTTPD_PID]) == (
        {HTTPD_ID: (HTTPD_PID,), PAUSE_ID: (PAUSE_PID,)},
        {HTTPD_ID: POD_UID, PAUSE_ID: POD_UID},
        "httpd",
    )


def test_declared_port_goes_to_its_container_and_the_rest_by_the_single_container(
    fixture_proc: Path,
) -> None:
    [enriched] = ProcFS(fixture_proc).enrich([real_pod()])
    [web] = enriched.containers
    assert (
        [(s.port, s.protocol) for s in web.listening],
        web.process_names,
        enriched.unattributed_listening,
    ) == (
        [(6060, "TCP"), (8080, "TCP"), (9443, "TCP"), (5353, "UDP")],
        ("httpd",),
        (),
    )


def test_with_several_containers_sockets_go_to_the_owner_of_their_inode(fixture_proc: Path) -> None:
    sidecar = replace(container("sidecar"), id=ContainerID("b" * 64), pid=0)
    [enriched] = ProcFS(fixture_proc).enrich([real_pod(sidecar, declared=False)])
    web, side = enriched.containers
    assert (
        [s.port for s in web.listening],
        side.listening,
        sorted(s.port for s in enriched.unattributed_listening),
    ) == ([8080], (), [5353, 6060, 9443])


def test_host_network_pod_keeps_only_sockets_its_processes_own(fixture_proc: Path) -> None:
    sidecar = replace(container("sidecar"), id=ContainerID("b" * 64), pid=0)
    [enriched] = ProcFS(fixture_proc).enrich([real_pod(sidecar, host_network=True, declared=False)])
    assert (
        [s.port for s in enriched.containers[0].listening],
        enriched.unattributed_listening,
    ) == ([8080], ())


def test_vanished_pids_are_skipped_and_a_container_whose_first_process_vanished_has_exited(
    fixture_proc: Path,
) -> None:
    gone = replace(real_pod(), pid=99999)
    gone = replace(gone, containers=tuple(replace(c, pid=99998) for c in gone.containers))
    shutil.rmtree(fixture_proc / str(PAUSE_PID))
    shutil.rmtree(fixture_proc / str(HTTPD_PID))
    [enriched] = ProcFS(fixture_proc).enrich([gone])
    [web] = enriched.containers
    assert (web.listening, web.pids, web.state, web.exit_code) == ((), (), ContainerState.EXITED, None)


def test_a_container_whose_first_process_is_a_zombie_has_exited(fixture_proc: Path) -> None:
    stat = fixture_proc / str(HTTPD_PID) / "stat"
    stat.write_text(stat.read_text().replace("(httpd) S", "(httpd) Z"))
    [enriched] = ProcFS(fixture_proc).enrich([real_pod()])
    assert enriched.containers[0].state == ContainerState.EXITED


def test_unreadable_proc_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ProcError, match="hostPID"):
        ProcFS(tmp_path / "absent").scan()


def test_live_proc_sees_a_real_listener_and_its_socket_inode() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen();"
            "print(s.getsockname()[1], flush=True); sys.stdin.read()",  # listens until killed
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        proc = ProcFS()
        [sock] = [s for s in proc.listening(child.pid) if s.port == port]
        assert (sock.address, sock.inode in proc.socket_inodes(child.pid)) == ("127.0.0.1", True)
    finally:
        child.kill()
        child.communicate()  # reaps it and closes its pipes
