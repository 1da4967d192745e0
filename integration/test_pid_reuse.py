"""A pid reused since the last poll never points an operation at another process; profiles are bounded.

Real processes, a real network namespace, real cgroups in the hierarchy
``perf -G`` reads (cgroup2 on this hybrid VM), the real dumpcap and perf. A
"pod" here is a ``PodRecord`` as the /proc provider would have left it at its
last poll, its container a cgroup ``kubepods/besteffort/pod<uid>/<id>`` made
as runc makes it. The pid reuse is forced: the pod's process exits and the
next process is given the same number through ``/proc/sys/kernel/ns_last_pid``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from coral_base.pcap import PcapStream
from coral_base.vocabulary import Action
from cri_agent.cgroups import parse_mounts
from cri_agent.model import ContainerID, ContainerRecord, ContainerState, PodRecord, PodUID, SandboxID
from cri_agent.ops.capture import capture
from cri_agent.ops.guardrails import Permit
from cri_agent.ops.namespaces import PodUnreachable, open_netns, perf_hierarchy, profile_target
from cri_agent.ops.profile import ProfileFailed, profile

BUSY = "while :; do :; done"
# Sends one UDP datagram saying WORD to 127.0.0.1:9999 every 20 ms, in whatever netns it runs in.
SENDER = (
    "import socket, sys, time\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "while True:\n"
    "    s.sendto(sys.argv[1].encode(), ('127.0.0.1', 9999)); time.sleep(0.02)\n"
)


@dataclass
class Container:
    """A container's cgroup, as runc makes it, in the hierarchy perf -G reads."""

    pod_uid: PodUID
    id: ContainerID
    directory: Path

    def enter(self, process: subprocess.Popen[bytes]) -> None:
        (self.directory / "cgroup.procs").write_text(str(process.pid))

    def pod(self, *pids: int) -> PodRecord:
        """The pod as the last poll saw it: this container running ``pids``; no runtime netns path."""
        record = ContainerRecord(id=self.id, name="app", state=ContainerState.RUNNING, pid=pids[0], pids=pids)
        return PodRecord(
            uid=self.pod_uid, name="web-0", namespace="shop", sandbox_id=SandboxID("0" * 64), containers=(record,)
        )


@pytest.fixture
def container() -> Iterator[Container]:
    if os.geteuid() != 0:
        pytest.fail("these tests need root (cgroups, network namespaces, ns_last_pid, perf -a)")
    hierarchy = perf_hierarchy(parse_mounts(Path("/proc/self/mountinfo").read_text()))
    assert hierarchy is not None, "no cgroup hierarchy for perf -G on this machine"
    uid = PodUID(str(uuid.uuid4()))
    pod_directory = hierarchy.mount_point / "kubepods" / "besteffort" / f"pod{uid}"
    cid = ContainerID(uuid.uuid4().hex + uuid.uuid4().hex)
    (pod_directory / cid).mkdir(parents=True)
    yield Container(uid, cid, pod_directory / cid)
    for pid in (pod_directory / cid / "cgroup.procs").read_text().split():  # what the test left running
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), 9)
    for _ in range(50):
        with contextlib.suppress(OSError):
            (pod_directory / cid).rmdir()
            pod_directory.rmdir()
            return
        subprocess.run(["sleep", "0.05"], check=True)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def start(
    started: list[subprocess.Popen[bytes]], argv: Sequence[str], *, pid: int = 0, pass_fds: Sequence[int] = ()
) -> subprocess.Popen[bytes]:
    """Start ``argv``; with ``pid``, as that pid (which must be free): the reuse an operation must survive."""
    for _ in range(200):
        if pid:
            Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        process = subprocess.Popen(argv, pass_fds=pass_fds)
        started.append(process)
        if not pid or process.pid == pid:
            return process
        process.kill()  # another process on the machine took the number first: try again
        process.wait()
    pytest.fail(f"pid {pid} could not be reused: other processes kept taking it")


def in_own_netns(started: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """A process in a network namespace of its own, returned once it is there (unshare runs after exec)."""
    process = start(started, ["unshare", "--net", "sleep", "300"])
    host = Path("/proc/self/ns/net").stat().st_ino
    for _ in range(100):
        if Path(f"/proc/{process.pid}/ns/net").stat().st_ino != host:
            return process
        subprocess.run(["sleep", "0.02"], check=True)
    pytest.fail("unshare --net did not make its network namespace within 2 s")


def exit_now(process: subprocess.Popen[bytes]) -> int:
    process.kill()
    process.wait()
    return process.pid


def named_copy(tmp_path: Path, name: str) -> str:
    """A shell under its own name: its samples say whose they are (comm)."""
    copy = tmp_path / name
    shutil.copy("/bin/dash", copy)
    return str(copy)


def permit(action: Action, *, duration_s: float, frequency_hz: int = 49, profile_bytes: int = 64 << 20) -> Permit:
    return Permit(
        action=action, pod_uid="uid", duration_s=duration_s, max_bytes=1 << 30, max_packets=1 << 20,
        frequency_hz=frequency_hz, nice=10, profile_bytes=profile_bytes,
    )  # fmt: skip


# -- the network namespace -----------------------------------------------------------------------


def test_a_pid_reused_by_a_host_process_is_refused_not_entered(
    container: Container, processes: list[subprocess.Popen[bytes]]
) -> None:
    pods_process = in_own_netns(processes)
    container.enter(pods_process)
    pod = container.pod(pods_process.pid)  # the last poll
    intruder = start(processes, ["sleep", "300"], pid=exit_now(pods_process))  # host netns, host cgroup
    assert Path(f"/proc/{intruder.pid}/ns/net").stat().st_ino == Path("/proc/self/ns/net").stat().st_ino
    with pytest.raises(PodUnreachable, match="none of its 1 known pids is still one of its processes"):
        open_netns(pod)


def test_a_tap_captures_the_netns_opened_at_admission_after_its_pid_went_to_a_host_process(
    container: Container, processes: list[subprocess.Popen[bytes]]
) -> None:
    pods_process = in_own_netns(processes)
    container.enter(pods_process)
    pods_netns = Path(f"/proc/{pods_process.pid}/ns/net").stat().st_ino
    with open_netns(container.pod(pods_process.pid)) as netns:  # admitted
        assert netns.inode == pods_netns
        start(processes, ["sleep", "300"], pid=exit_now(pods_process))  # the pid now names a host process
        enter = ["nsenter", f"--net={netns.child_path}", "--"]
        subprocess.run([*enter, "ip", "link", "set", "lo", "up"], check=True, pass_fds=(netns.fd,))
        start(processes, [*enter, sys.executable, "-c", SENDER, "pod"], pass_fds=(netns.fd,))
        start(processes, [sys.executable, "-c", SENDER, "host"])  # the host's loopback: must not be captured
        pcap = bytearray()

        async def emit(data: bytes) -> None:
            pcap.extend(data)

        stats = asyncio.run(capture(netns, permit(Action.TAP, duration_s=1.5), bpf_filter="udp port 9999", emit=emit))
    records = list(PcapStream().feed(bytes(pcap)))
    assert stats.packets >= 10 and all(r.data.endswith(b"pod") for r in records), stats
    assert not any(r.data.endswith(b"host") for r in records), "the capture ran in the host's network namespace"


# -- profiling -----------------------------------------------------------------------------------


def test_a_profile_samples_the_containers_cgroup_not_the_process_that_took_its_old_pid(
    container: Container, processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    podbusy, intruder = named_copy(tmp_path, "podbusy"), named_copy(tmp_path, "intruder")
    first = start(processes, [podbusy, "-c", BUSY])
    container.enter(first)
    target = profile_target(container.pod(first.pid))  # admitted while the poll's pid was right
    assert target.cgroups == (str(container.directory.relative_to(container.directory.parents[3])),)
    start(processes, [intruder, "-c", BUSY], pid=exit_now(first))  # the old pid, busy, outside the pod
    container.enter(start(processes, [podbusy, "-c", BUSY]))  # the pod's process now: a pid no poll saw
    result = asyncio.run(profile(target, permit(Action.PROFILE, duration_s=2), directory=tmp_path / "scratch"))
    comms = {stack.split(";", 1)[0] for stack in result.folded}
    assert comms == {"podbusy"} and result.samples >= 10, result.folded
    assert "-G <container cgroups>" in result.engine and not result.truncated
    assert list((tmp_path / "scratch").iterdir()) == [], "perf.data is removed with its profile"


def test_where_no_cgroup_can_be_named_a_reused_pid_is_refused_right_before_perf(
    container: Container, processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    no_cgroups = tmp_path / "mountinfo"  # a node whose cgroups this agent cannot see
    no_cgroups.write_text("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n")
    first = start(processes, [named_copy(tmp_path, "podbusy"), "-c", BUSY])
    container.enter(first)
    target = profile_target(container.pod(first.pid), mountinfo=no_cgroups)
    assert (target.cgroups, [p.pid for p in target.processes]) == ((), [first.pid])
    start(processes, [named_copy(tmp_path, "intruder"), "-c", BUSY], pid=exit_now(first))
    with pytest.raises(PodUnreachable, match=r"exited, or their pids now name other processes.*nothing was profiled"):
        asyncio.run(profile(target, permit(Action.PROFILE, duration_s=1), directory=tmp_path / "scratch"))


def test_where_no_cgroup_can_be_named_the_verified_pids_are_profiled(
    container: Container, processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    no_cgroups = tmp_path / "mountinfo"
    no_cgroups.write_text("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n")
    first = start(processes, [named_copy(tmp_path, "podbusy"), "-c", BUSY])
    container.enter(first)
    target = profile_target(container.pod(first.pid), mountinfo=no_cgroups)
    result = asyncio.run(profile(target, permit(Action.PROFILE, duration_s=1), directory=tmp_path / "scratch"))
    assert {stack.split(";", 1)[0] for stack in result.folded} == {"podbusy"}
    assert "-p <verified pids>" in result.engine


# -- ceilings ------------------------------------------------------------------------------------


def test_perf_data_stops_at_its_cap_and_the_profile_says_it_is_truncated(
    container: Container, processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    container.enter(busy := start(processes, [named_copy(tmp_path, "podbusy"), "-c", BUSY]))
    target = profile_target(container.pod(busy.pid))
    capped = permit(Action.PROFILE, duration_s=10, frequency_hz=499, profile_bytes=128 * 1024)  # ~1 s of samples
    result = asyncio.run(profile(target, capped, directory=tmp_path / "scratch"))
    assert result.by_size and "perf.data reached its cap of 131072 bytes" in result.truncated
    assert result.samples > 0 and result.duration_s < 8, (result.samples, result.duration_s)


def test_perf_scripts_output_is_cut_at_its_cap_and_its_child_killed(
    container: Container, processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    container.enter(busy := start(processes, [named_copy(tmp_path, "podbusy"), "-c", BUSY]))
    target = profile_target(container.pod(busy.pid))
    result = asyncio.run(
        profile(target, permit(Action.PROFILE, duration_s=1), directory=tmp_path / "scratch", script_bytes=2048)
    )
    assert result.by_size and "perf script's output passed its cap of 2048 bytes" in result.truncated
    assert 0 < result.samples < 49
    assert not _perf_script_running(tmp_path / "scratch")


def test_perf_script_past_its_deadline_is_killed_and_the_profile_fails_clearly(
    container: Container, processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    container.enter(busy := start(processes, [named_copy(tmp_path, "podbusy"), "-c", BUSY]))
    target = profile_target(container.pod(busy.pid))
    with pytest.raises(ProfileFailed, match="no samples read: perf script ran past its deadline of 0 s"):
        asyncio.run(
            profile(target, permit(Action.PROFILE, duration_s=1), directory=tmp_path / "scratch", script_timeout_s=0)
        )
    assert not _perf_script_running(tmp_path / "scratch")


def _perf_script_running(scratch: Path) -> bool:
    found = subprocess.run(["pgrep", "-f", f"perf script -i {scratch}"], capture_output=True, check=False)
    return bool(found.stdout.strip())
