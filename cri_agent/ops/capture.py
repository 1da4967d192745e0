"""Packet capture inside a pod's network namespace (``tap``, and ``sample``'s input).

The agent's own capture tool, Wireshark's dumpcap, runs in the pod's netns
through ``nsenter --net`` (nothing is executed inside the workload's
container), entered by the descriptor opened when the operation was
admitted (``namespaces.open_netns``), never by a pid that may have been
reused since; niced, with a CPU rlimit and a parent-death signal, writing
classic pcap to a pipe. The agent parses that stream and forwards only
whole records, so the output is a valid pcap whichever limit stopped it:
the duration, the byte ceiling (counted on the pcap written, header
included) or the packet ceiling. On stop dumpcap gets SIGINT, flushes, and
its count of packets dropped by the kernel is reported. A cancelled capture
kills it before returning: no capture process outlives its operation.

Why dumpcap and not tcpdump: tcpdump either writes packet by packet
(``--immediate-mode``: 9 % dropped at 120k packets/s here) or waits for the
kernel to hand over a full block (up to its 1 s timeout), so a capture
stopped by its duration loses its last second. dumpcap buffers like the
latter but delivers the tail (BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from coral_base.pcap import PcapStream, Record
from coral_base.vocabulary import StopReason
from cri_agent.ops.child import bounded
from cri_agent.ops.guardrails import Permit
from cri_agent.ops.namespaces import NetnsHandle

READ_SIZE = 64 * 1024
BUFFER_MIB = 8  # the kernel capture buffer: absorbs bursts while the agent is busy
STOP_GRACE_S = 2.0
_DROPPED = re.compile(r"Packets received/dropped on interface .*: (\d+)/(\d+)")

Emit = Callable[[bytes], Awaitable[None]]


class CaptureFailed(Exception):
    """The capture could not start (bad filter, missing binary, no such netns)."""


@dataclass(slots=True)
class CaptureStats:
    packets: int = 0
    bytes: int = 0
    dropped: int = 0
    duration_s: float = 0.0
    stopped_by: StopReason | None = None  # None while it runs
    linktype: int = 0


def capture_command(netns: NetnsHandle, *, bpf_filter: str, snaplen: int, nice: int, cpu_seconds: int) -> list[str]:
    """The capture's command line; the child must be given ``netns.fd`` (``pass_fds``)."""
    dumpcap = shutil.which("dumpcap") or "/usr/bin/dumpcap"
    command = ["nsenter", f"--net={netns.child_path}", "--", dumpcap, "-i", "any", "-P", "-w", "-"]
    command += ["-s", str(snaplen), "-B", str(BUFFER_MIB)]
    return bounded(command + (["-f", bpf_filter] if bpf_filter.strip() else []), cpu_seconds=cpu_seconds, nice=nice)


async def capture(
    netns: NetnsHandle,
    permit: Permit,
    *,
    bpf_filter: str = "",
    snaplen: int = 262144,
    emit: Emit | None = None,
    on_record: Callable[[Record, int], None] | None = None,
) -> CaptureStats:
    """Capture until a limit; ``emit`` gets pcap bytes (header first), ``on_record`` each record."""
    process = await asyncio.create_subprocess_exec(
        *capture_command(
            netns, bpf_filter=bpf_filter, snaplen=snaplen, nice=permit.nice, cpu_seconds=int(permit.duration_s) + 10
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        pass_fds=(netns.fd,),
    )
    assert process.stdout is not None and process.stderr is not None
    stderr_task = asyncio.create_task(process.stderr.read())
    stats = CaptureStats()
    stream = PcapStream()
    started = time.monotonic()
    deadline = started + permit.duration_s
    try:
        while stats.stopped_by is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                stats.stopped_by = StopReason.DURATION
                break
            try:
                data = await asyncio.wait_for(process.stdout.read(READ_SIZE), remaining)
            except TimeoutError:
                stats.stopped_by = StopReason.DURATION
                break
            if not data:
                break
            out = bytearray()
            if stream.header is None:
                records = list(stream.feed(data))
                if stream.header is not None:
                    out += stream.header
                    stats.linktype = stream.linktype
            else:
                records = list(stream.feed(data))
            for record in records:
                if stats.bytes + len(out) + len(record.raw) > permit.max_bytes:
                    stats.stopped_by = StopReason.MAX_BYTES
                    break
                out += record.raw
                stats.packets += 1
                if on_record is not None:
                    on_record(record, stream.linktype)
                if stats.packets >= permit.max_packets:
                    stats.stopped_by = StopReason.MAX_PACKETS
                    break
            stats.bytes += len(out)
            if out and emit is not None:
                await emit(bytes(out))
        stats.duration_s = time.monotonic() - started
        errors = await _stop(process, stderr_task)
        if stats.bytes == 0 and process.returncode not in (0, -signal.SIGINT):
            raise CaptureFailed(_failure(errors) or f"dumpcap exited with {process.returncode}")
        if match := _DROPPED.search(errors):
            stats.dropped = int(match.group(2))
        return stats
    finally:
        if process.returncode is None:  # cancelled, or an error above: never leave dumpcap behind
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        stderr_task.cancel()


async def _stop(process: asyncio.subprocess.Process, stderr_task: asyncio.Task[bytes]) -> str:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        assert process.stdout is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_GRACE_S):
                while await process.stdout.read(READ_SIZE):  # drain: dumpcap flushes on SIGINT
                    pass
                await process.wait()
    with contextlib.suppress(TimeoutError):
        return (await asyncio.wait_for(stderr_task, STOP_GRACE_S)).decode(errors="replace")
    return ""


def _failure(text: str) -> str:
    """dumpcap's error, e.g. 'Invalid capture filter "tcp prot 80" for interface 'any'.'"""
    for line in text.splitlines():
        if line.startswith("dumpcap: "):
            return line.removeprefix("dumpcap: ")
    return text.strip().splitlines()[-1] if text.strip() else ""
