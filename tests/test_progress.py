"""The live line of a long operation: packets counted from the pcap stream in any pieces, only on a terminal."""

from __future__ import annotations

import io
import struct

import pytest

from coral_colony.cli.captures import PcapngWriter, PcapWriter
from coral_colony.cli.progress import Progress
from coral_colony.model import ArtifactKind, OperationTarget


def pcap(*payloads: bytes, big_endian: bool = False) -> bytes:
    order = ">" if big_endian else "<"
    out = struct.pack(order + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 113)
    for i, payload in enumerate(payloads):
        out += struct.pack(order + "IIII", 1_700_000_000 + i, 0, len(payload), len(payload)) + payload
    return out


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("piece", [1, 7, 16, 1000])
def test_packets_are_counted_from_the_stream_whatever_its_pieces(big_endian: bool, piece: int) -> None:
    data = pcap(b"a" * 60, b"", b"b" * 1514, b"c" * 3, big_endian=big_endian)
    for writer in (PcapWriter(io.BytesIO()), PcapngWriter(io.BytesIO())):
        counted = sum(writer.chunk(0, ArtifactKind.PCAP, data[i : i + piece]) for i in range(0, len(data), piece))
        assert counted == 4


def test_the_line_names_target_node_time_packets_and_bytes_and_is_erased_at_the_end() -> None:
    now = [100.0]
    out = Terminal()
    progress = Progress("tap", out=out, clock=lambda: now[0])
    progress.resolved(OperationTarget(namespace="shop", pod_name="payments-0", node_name="node-a"))
    now[0] = 102.5
    progress.chunk(4096, packets=2)
    assert progress.line() == "tap shop/payments-0 on node-a: 2.5s, 2 packets, 4.0 KiB"
    progress.done()
    assert out.getvalue().endswith("\r" + " " * len(progress.line()) + "\r")


def test_nothing_is_written_when_stderr_is_not_a_terminal() -> None:
    out = io.StringIO()
    progress = Progress("tap", out=out)
    progress.resolved(OperationTarget(namespace="shop", pod_name="p"))
    progress.chunk(100, packets=1)
    progress.done()
    assert out.getvalue() == ""


def test_a_fan_out_counts_its_pods_and_nodes() -> None:
    progress = Progress("tap", out=Terminal(), clock=lambda: 10.0)
    for pod, node in (("web-a", "n1"), ("web-b", "n2"), ("web-c", "n2")):
        progress.resolved(OperationTarget(namespace="shop", pod_name=pod, node_name=node))
    progress.chunk(2048, packets=3)
    assert progress.line() == "tap 3 pods on 2 nodes: 0.0s, 3 packets, 2.0 KiB"
