"""`coral tap`'s file: how fast the CLI turns the nodes' pcap streams into one pcapng.

    python -m bench.captures --output BENCHMARKS.md

The agent captures at up to ~250,000 packets/s (bench.ops); the CLI must write
the file faster than that, or a tap would be slowed by its own operator's
machine. Synthetic classic pcap streams (Linux cooked v2, as dumpcap
writes on `-i any`) of 64-byte and 1,500-byte frames are fed to the
CLI's writer (`coral_colony.cli.captures.PcapngWriter`) in the 1 MiB
chunks the agent sends, for one pod and for eight pods interleaved (a
`deploy/NAME` tap). Reported: packets and MiB written per second (best of
``--rounds``), into memory (the disk is not what is measured).
"""

from __future__ import annotations

import argparse
import io
import platform
import struct
import time
from pathlib import Path

from bench.report import publish
from coral_base.message_limits import CHUNK_BYTES
from coral_colony.cli.captures import PcapngWriter
from coral_colony.model import ArtifactKind, OperationTarget

LINKTYPE_LINUX_SLL2 = 276
TARGET_PPS = 250_000  # the agent's capture rate at 250,000 offered (bench.ops)


def stream(frame_bytes: int, packets: int) -> bytes:
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_LINUX_SLL2)
    records = b"".join(
        struct.pack("<IIII", 1_700_000_000 + i // 1000, i % 1_000_000, frame_bytes, frame_bytes) + bytes(frame_bytes)
        for i in range(min(packets, 1000))
    )
    return header + records * (packets // 1000)


def rate(frame_bytes: int, pods: int, packets: int, rounds: int) -> tuple[float, float]:
    """Best (packets/s, MiB/s of pcapng written) of ``rounds``."""
    data = stream(frame_bytes, packets // pods)
    chunks = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
    best = (0.0, 0.0)
    for _ in range(rounds):
        out = io.BytesIO()
        writer = PcapngWriter(out)
        for part in range(pods):
            writer.target(part, OperationTarget(namespace="shop", pod_name=f"web-{part}", node_name="n1"))
        started = time.perf_counter()
        written = 0
        for chunk in chunks:
            for part in range(pods):
                written += writer.chunk(part, ArtifactKind.PCAP, chunk)
        elapsed = time.perf_counter() - started
        best = max(best, (written / elapsed, out.tell() / elapsed / 2**20))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=1_000_000, help="packets per measure (all pods together)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    rows = []
    for frame in (64, 1500):
        for pods in (1, 8):
            pps, mib = rate(frame, pods, args.packets, args.rounds)
            target = f">= {TARGET_PPS:,} packets/s" if frame == 64 else ""
            rows.append(
                f"| {frame}-byte frames, {pods} pod{'s' if pods > 1 else ''}"
                f" ({args.packets:,} packets) | {pps:,.0f} packets/s, {mib:,.0f} MiB/s | {target} |"
            )
    body = "\n".join(
        [
            f"Machine: {platform.machine()}, Python {platform.python_version()}; best of {args.rounds} rounds,"
            " into memory.",
            "",
            "| pcap -> pcapng (the CLI's writer) | written | target |",
            "|---|---|---|",
            *rows,
        ]
    )
    publish(body, key="captures", title="coral tap's pcapng file (issue 13)", output=args.output)


if __name__ == "__main__":
    main()
