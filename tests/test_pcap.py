"""Classic pcap as a stream: whole records only, link types, 5-tuples, flow counts."""

from __future__ import annotations

import struct

import pytest

from coral_base.pcap import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, PcapError, PcapStream
from cri_agent.ops.pcap import OTHER, FlowTable, flow_key


def header(linktype: int, *, endian: str = "<") -> bytes:
    return struct.pack(f"{endian}IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype)


def record(data: bytes, *, ts: float = 1.5, orig: int | None = None, endian: str = "<") -> bytes:
    return struct.pack(f"{endian}IIII", int(ts), int(ts % 1 * 1e6), len(data), orig or len(data)) + data


def ipv4_tcp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"") -> bytes:
    ip = bytes([0x45, 0, 0, 40 + len(payload), 0, 0, 0, 0, 64, 6, 0, 0])
    ip += bytes(map(int, src.split("."))) + bytes(map(int, dst.split(".")))
    return ip + struct.pack("!HH", sport, dport) + bytes(16) + payload


def sll2(packet: bytes) -> bytes:
    return struct.pack("!HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, bytes(8)) + packet


def test_records_come_out_whole_however_the_bytes_are_split() -> None:
    data = header(LINKTYPE_LINUX_SLL2) + record(sll2(ipv4_tcp("10.0.0.1", "10.0.0.2", 40000, 80))) * 3
    stream = PcapStream()
    records = [r for i in range(0, len(data), 7) for r in stream.feed(data[i : i + 7])]
    assert stream.header == data[:24] and stream.linktype == LINKTYPE_LINUX_SLL2
    assert len(records) == 3 and b"".join(r.raw for r in records) == data[24:]
    assert records[0].ts == pytest.approx(1.5)


@pytest.mark.parametrize("endian", ["<", ">"])
def test_take_returns_the_whole_records_and_keeps_the_rest_for_later(endian: str) -> None:
    records = [record(b"a" * 60, endian=endian), record(b"", endian=endian), record(b"b" * 1514, endian=endian)]
    data = header(LINKTYPE_LINUX_SLL2, endian=endian) + b"".join(records)
    for piece in (1, 5, 16, 100, len(data)):
        stream = PcapStream()
        taken = [stream.take(data[i : i + piece]) for i in range(0, len(data), piece)]
        assert b"".join(chunk for chunk, _ in taken) == b"".join(records)
        assert sum(count for _, count in taken) == 3 and stream.big_endian == (endian == ">")


def test_big_endian_and_not_pcap() -> None:
    stream = PcapStream()
    list(stream.feed(header(LINKTYPE_ETHERNET, endian=">") + record(b"x" * 20, endian=">")))
    assert stream.linktype == LINKTYPE_ETHERNET
    with pytest.raises(PcapError, match="not a classic pcap"):
        list(PcapStream().feed(b"\x0a\x0d\x0d\x0a" + bytes(40)))  # pcapng


def test_five_tuples_from_ethernet_and_cooked_frames() -> None:
    packet = ipv4_tcp("10.0.0.1", "10.0.0.2", 40000, 8080)
    ethernet = bytes(12) + b"\x08\x00" + packet
    assert flow_key(LINKTYPE_ETHERNET, ethernet) == ("tcp", "10.0.0.1", 40000, "10.0.0.2", 8080)
    assert flow_key(LINKTYPE_LINUX_SLL2, sll2(packet)) == ("tcp", "10.0.0.1", 40000, "10.0.0.2", 8080)
    assert flow_key(LINKTYPE_ETHERNET, bytes(12) + b"\x08\x06" + bytes(28)) is None  # ARP


def test_flows_count_packets_and_wire_bytes_not_payload() -> None:
    table = FlowTable(LINKTYPE_LINUX_SLL2)
    stream = PcapStream()
    frames = [
        record(sll2(ipv4_tcp("10.0.0.1", "10.0.0.2", 40000, 80)), ts=1.0, orig=1000),
        record(sll2(ipv4_tcp("10.0.0.1", "10.0.0.2", 40000, 80)), ts=2.0, orig=500),
        record(sll2(ipv4_tcp("10.0.0.2", "10.0.0.1", 80, 40000)), ts=1.5, orig=60),
    ]
    for r in stream.feed(header(LINKTYPE_LINUX_SLL2) + b"".join(frames)):
        table.add(r)
    top = table.top()
    assert [(f.key, f.packets, f.bytes, f.first_seen, f.last_seen) for f in top] == [
        (("tcp", "10.0.0.1", 40000, "10.0.0.2", 80), 2, 1500, 1.0, 2.0),
        (("tcp", "10.0.0.2", 80, "10.0.0.1", 40000), 1, 60, 1.5, 1.5),
    ]


def test_a_scan_cannot_grow_the_flow_table_past_its_ceiling() -> None:
    """A new 5-tuple a packet (a port scan) lands in one OTHER flow once the ceiling is reached."""
    table = FlowTable(LINKTYPE_LINUX_SLL2, max_flows=100)
    stream = PcapStream()
    frames = b"".join(
        record(sll2(ipv4_tcp("10.0.0.1", "10.0.0.2", 40000, port)), ts=1.0 + port / 1000, orig=100)
        for port in range(1, 1001)
    )
    for r in stream.feed(header(LINKTYPE_LINUX_SLL2) + frames):
        table.add(r)
    top = table.top(limit=1000)
    assert len(top) == 101
    other = top[-1]
    assert (other.key, other.packets, other.bytes) == (OTHER, 900, 90_000)
    assert sum(f.packets for f in top) == 1000  # every packet counted once
    assert len(table.top(limit=5)) == 6  # the biggest five, and the rest that had no row
