"""Packet capture inside a pod's network namespace (``tap``, and ``sample``'s input).

The agent's own tcpdump runs in the pod's netns through ``nsenter --net``
(nothing is executed inside the workload's container), niced, with a CPU
rlimit, writing classic pcap to a pipe. The agent parses that stream and
forwards only whole records, so the output is a valid pcap whichever limit
stopped it: the duration, the byte ceiling (counted on the pcap written,
header included) or the packet ceiling. tcpdump writes buffered (libpcap
hands packets over at least once a second), which is what keeps drops at
zero at 250k packets/s; on stop it gets SIGINT, flushes, and its "dropped by
kernel" count is reported. A cancelled capture kills tcpdump
before returning: no capture process outlives its operation.
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
from pathlib import Path

from cri_agent.ops.child import bounded
from cri_agent.ops.guardrails import Permit
from cri_agent.ops.pcap import PcapStream, Record

READ_SIZE = 64 * 1024
BUFFER_KIB = 8192  # the kernel capture buffer: absorbs bursts while the agent is busy
STOP_GRACE_S = 2.0
_DROPPED = re.compile(r"(\d+) packets? dropped by kernel")

Emit = Callable[[bytes], Awaitable[None]]


class CaptureFailed(Exception):
    """tcpdump could not start (bad filter, missing binary, no such netns)."""


@dataclass(slots=True)
class CaptureStats:
    packets: int = 0
    bytes: int = 0
    dropped: int = 0
    duration_s: float = 0.0
    stopped_by: str = ""
    linktype: int = 0


def tcpdump_command(netns: Path, *, bpf_filter: str, snaplen: int, nice: int, cpu_seconds: int) -> list[str]:
    tcpdump = shutil.which("tcpdump") or "/usr/bin/tcpdump"
    command = ["nsenter", f"--net={netns}", "--", tcpdump]
    # Buffered, not packet-by-packet (-U, --immediate-mode): at 100k packets/s per-packet writes and
    # wake-ups lose most packets (BENCHMARKS.md); records still arrive within libpcap's 1 s timeout.
    command += ["-i", "any", "-w", "-", "-s", str(snaplen), "-B", str(BUFFER_KIB), "-Z", "root", "-n"]
    return bounded(command + ([bpf_filter] if bpf_filter.strip() else []), cpu_seconds=cpu_seconds, nice=nice)


async def capture(
    netns: Path,
    permit: Permit,
    *,
    bpf_filter: str = "",
    snaplen: int = 262144,
    emit: Emit | None = None,
    on_record: Callable[[Record, int], None] | None = None,
) -> CaptureStats:
    """Capture until a limit; ``emit`` gets pcap bytes (header first), ``on_record`` each record."""
    process = await asyncio.create_subprocess_exec(
        *tcpdump_command(
            netns, bpf_filter=bpf_filter, snaplen=snaplen, nice=permit.nice, cpu_seconds=int(permit.duration_s) + 10
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    stderr_task = asyncio.create_task(process.stderr.read())
    stats = CaptureStats()
    stream = PcapStream()
    started = time.monotonic()
    deadline = started + permit.duration_s
    try:
        while not stats.stopped_by:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                stats.stopped_by = "duration"
                break
            try:
                data = await asyncio.wait_for(process.stdout.read(READ_SIZE), remaining)
            except TimeoutError:
                stats.stopped_by = "duration"
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
                    stats.stopped_by = "max-bytes"
                    break
                out += record.raw
                stats.packets += 1
                if on_record is not None:
                    on_record(record, stream.linktype)
                if stats.packets >= permit.max_packets:
                    stats.stopped_by = "max-packets"
                    break
            stats.bytes += len(out)
            if out and emit is not None:
                await emit(bytes(out))
        stats.duration_s = time.monotonic() - started
        errors = await _stop(process, stderr_task)
        if stats.bytes == 0 and process.returncode not in (0, -signal.SIGINT):
            raise CaptureFailed(_last_line(errors) or f"tcpdump exited with {process.returncode}")
        if match := _DROPPED.search(errors):
            stats.dropped = int(match.group(1))
        return stats
    finally:
        if process.returncode is None:  # cancelled, or an error above: never leave tcpdump behind
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
                while await process.stdout.read(READ_SIZE):  # drain: tcpdump flushes on SIGINT
                    pass
                await process.wait()
    with contextlib.suppress(TimeoutError):
        return (await asyncio.wait_for(stderr_task, STOP_GRACE_S)).decode(errors="replace")
    return ""


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line and not line.startswith("tcpdump: listening")]
    return lines[-1] if lines else ""
