"""``coral tap``'s file: the nodes' pcap streams as one pcapng, an interface per pod, drops in its statistics.

The file is read back twice: by a small reader here (block by block, every
field) and by tshark, which is what an operator opens it with.
"""

from __future__ import annotations

import io
import struct
import subprocess
from pathlib import Path

from coral_base import pcapng
from coral_base.vocabulary import StopReason
from coral_colony.cli.captures import PcapngWriter
from coral_colony.model import ArtifactKind, OperationResult, OperationTarget, Outcome

LINUX_SLL2 = 276
ETHERNET = 1


def pcap(linktype: int, packets: list[tuple[int, int, bytes]], *, nanos: bool = False) -> bytes:
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)
    for seconds, fraction, data in packets:
        out += struct.pack("<IIII", seconds, fraction, len(data), len(data) + 10) + data
    return out


def blocks(data: bytes) -> list[tuple[int, bytes]]:
    """(type, body) of each block, checking both length fields."""
    found, offset = [], 0
    while offset < len(data):
        kind, length = struct.unpack_from("<II", data, offset)
        assert length % 4 == 0 and struct.unpack_from("<I", data, offset + length - 4)[0] == length
        found.append((kind, data[offset + 8 : offset + length - 4]))
        offset += length
    assert offset == len(data), "the file ends on a block boundary"
    return found


def options(body: bytes) -> dict[int, bytes]:
    found, offset = {}, 0
    while offset < len(body):
        code, length = struct.unpack_from("<HH", body, offset)
        if code == 0:
            break
        found[code] = body[offset + 4 : offset + 4 + length]
        offset += 4 + length + (-length % 4)
    return found


def frame(n: int) -> bytes:
    return bytes([n]) * (20 + n)  # lengths 21, 22...: padding exercised


def written() -> tuple[bytes, list[OperationTarget]]:
    web = OperationTarget(namespace="shop", pod_name="web-5d8f-abcde", node_name="n1", service_name="web")
    api = OperationTarget(namespace="shop", pod_name="web-5d8f-fghij", node_name="n2")
    first = pcap(LINUX_SLL2, [(1_700_000_000, 250_000, frame(1)), (1_700_000_001, 5, frame(2))])
    second = pcap(ETHERNET, [(1_700_000_000, 123_456_789, frame(3))], nanos=True)
    now = iter([100.0, 100.0, 103.0, 104.0])
    out = io.BytesIO()
    writer = PcapngWriter(out, wall=lambda: next(now))
    writer.target(0, web)
    writer.target(1, api)
    for piece in range(0, max(len(first), len(second)), 7):  # interleaved, in pieces that split records
        assert writer.chunk(0, ArtifactKind.PCAP, first[piece : piece + 7]) in (0, 1)
        writer.chunk(1, ArtifactKind.PCAP, second[piece : piece + 7])
    writer.result(0, OperationResult(Outcome.OK, packets=2, dropped=7, stopped_by=StopReason.DURATION))
    writer.result(1, OperationResult(Outcome.FAILED, error="the agent went away", dropped=0))
    return out.getvalue(), [web, api]


def test_each_pod_is_an_interface_its_packets_keep_their_time_and_its_drops_are_in_its_statistics() -> None:
    data, _ = written()
    found = blocks(data)
    kinds = [kind for kind, _ in found]
    assert kinds[0] == pcapng.SECTION_HEADER and kinds.count(pcapng.INTERFACE_DESCRIPTION) == 2
    assert kinds.count(pcapng.ENHANCED_PACKET) == 3 and kinds[-2:] == [pcapng.INTERFACE_STATISTICS] * 2
    section = found[0][1]
    assert struct.unpack_from("<IHHq", section) == (pcapng.BYTE_ORDER_MAGIC, 1, 0, -1)

    interfaces = [body for kind, body in found if kind == pcapng.INTERFACE_DESCRIPTION]
    described = [(struct.unpack_from("<HHI", b), options(b[8:])) for b in interfaces]
    assert [(linktype, snaplen) for (linktype, _, snaplen), _ in described] == [
        (LINUX_SLL2, 262144),
        (ETHERNET, 262144),
    ]
    assert [o[pcapng.IF_NAME] for _, o in described] == [b"shop/web-5d8f-abcde", b"shop/web-5d8f-fghij"]
    assert described[0][1][pcapng.IF_DESCRIPTION] == b"node n1, service web"
    assert pcapng.IF_TSRESOL not in described[0][1] and described[1][1][pcapng.IF_TSRESOL] == bytes([9])

    packets = []
    for kind, body in found:
        if kind == pcapng.ENHANCED_PACKET:
            interface, high, low, captured, original = struct.unpack_from("<IIIII", body)
            packets.append((interface, (high << 32) | low, body[20 : 20 + captured], original))
    assert sorted(packets) == [
        (0, 1_700_000_000_250_000, frame(1), 31),
        (0, 1_700_000_001_000_005, frame(2), 32),
        (1, 1_700_000_000_123_456_789, frame(3), 33),
    ]

    statistics = {}
    for kind, body in found:
        if kind == pcapng.INTERFACE_STATISTICS:
            (interface,) = struct.unpack_from("<I", body)
            statistics[interface] = options(body[12:])
    counts = {
        i: tuple(
            struct.unpack("<Q", o[code])[0] for code in (pcapng.ISB_IFRECV, pcapng.ISB_IFDROP, pcapng.ISB_USRDELIV)
        )
        for i, o in statistics.items()
    }
    assert counts == {0: (9, 7, 2), 1: (1, 0, 1)}
    assert statistics[0][pcapng.OPT_COMMENT] == b"stopped by duration"
    assert statistics[1][pcapng.OPT_COMMENT] == b"failed: the agent went away"
    start, end = (struct.unpack("<II", statistics[0][code]) for code in (pcapng.ISB_STARTTIME, pcapng.ISB_ENDTIME))
    assert ((start[0] << 32) | start[1], (end[0] << 32) | end[1]) == (100_000_000, 103_000_000)


def test_tshark_reads_the_file_with_each_packet_on_its_pods_interface(tmp_path: Path) -> None:
    data, _ = written()
    path = tmp_path / "web.pcapng"
    path.write_bytes(data)
    shown = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.interface_name", "-e", "frame.time_epoch"],
        capture_output=True,
        check=True,
        timeout=60,
        text=True,
    )
    rows = sorted(tuple(line.split("\t")) for line in shown.stdout.splitlines())
    assert rows == [
        ("shop/web-5d8f-abcde", "1700000000.250000000"),
        ("shop/web-5d8f-abcde", "1700000001.000005000"),
        ("shop/web-5d8f-fghij", "1700000000.123456789"),
    ]


def test_a_pod_that_sent_nothing_has_no_interface_and_a_pod_with_no_packets_has_its_statistics() -> None:
    out = io.BytesIO()
    writer = PcapngWriter(out, wall=lambda: 5.0)
    writer.target(0, OperationTarget(namespace="a", pod_name="refused"))
    writer.target(1, OperationTarget(namespace="a", pod_name="quiet"))
    writer.chunk(1, ArtifactKind.PCAP, pcap(ETHERNET, []))
    writer.result(0, OperationResult(Outcome.REFUSED, error="rate limit"))
    writer.result(1, OperationResult(Outcome.OK, stopped_by=StopReason.DURATION))
    kinds = [kind for kind, _ in blocks(out.getvalue())]
    assert kinds == [pcapng.SECTION_HEADER, pcapng.INTERFACE_DESCRIPTION, pcapng.INTERFACE_STATISTICS]
