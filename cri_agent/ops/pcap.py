"""Classic pcap, read as a stream: whole records, headers decoded, flows counted.

Pure functions and small classes, no I/O: the capture feeds bytes from the
capture process and forwards only whole records (so a stopped capture is
still a valid file), and ``sample`` folds records into a flow table without
keeping any payload.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from cri_agent.operation import Flow, FlowKey

GLOBAL_HEADER_LEN = 24
RECORD_HEADER_LEN = 16
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
_PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6"}


class PcapError(ValueError):
    """The stream is not classic pcap."""


@dataclass(frozen=True, slots=True)
class Record:
    ts: float
    orig_len: int
    data: bytes  # the captured bytes (at most the snap length)
    raw: bytes  # record header + data, as written


class PcapStream:
    """Feed bytes; get the global header once, then whole records."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.header: bytes | None = None
        self.linktype = 0
        self._endian = "<"
        self._nanos = False

    def feed(self, data: bytes) -> Iterator[Record]:
        self._buffer += data
        if self.header is None:
            if len(self._buffer) < GLOBAL_HEADER_LEN:
                return
            self._parse_header(bytes(self._buffer[:GLOBAL_HEADER_LEN]))
            del self._buffer[:GLOBAL_HEADER_LEN]
        offset = 0
        while len(self._buffer) - offset >= RECORD_HEADER_LEN:
            sec, frac, incl, orig = struct.unpack_from(f"{self._endian}IIII", self._buffer, offset)
            end = offset + RECORD_HEADER_LEN + incl
            if len(self._buffer) < end:
                break
            raw = bytes(self._buffer[offset:end])
            yield Record(
                ts=sec + frac / (1e9 if self._nanos else 1e6), orig_len=orig, data=raw[RECORD_HEADER_LEN:], raw=raw
            )
            offset = end
        del self._buffer[:offset]

    def _parse_header(self, header: bytes) -> None:
        magic = header[:4]
        for endian in ("<", ">"):
            (value,) = struct.unpack(f"{endian}I", magic)
            if value in (0xA1B2C3D4, 0xA1B23C4D):
                self._endian, self._nanos = endian, value == 0xA1B23C4D
                break
        else:
            raise PcapError(f"not a classic pcap stream (magic {magic.hex()})")
        self.linktype = struct.unpack_from(f"{self._endian}I", header, 20)[0] & 0x0FFFFFFF
        self.header = header


def network_payload(linktype: int, frame: bytes) -> tuple[int, bytes] | None:
    """(ethertype, the IP packet) of a captured frame, for the link types capture tools write."""
    if linktype == LINKTYPE_ETHERNET and len(frame) >= 14:
        ethertype, offset = struct.unpack_from("!H", frame, 12)[0], 14
        while ethertype in (0x8100, 0x88A8) and len(frame) >= offset + 4:  # VLAN tags
            ethertype, offset = struct.unpack_from("!H", frame, offset + 2)[0], offset + 4
        return ethertype, frame[offset:]
    if linktype == LINKTYPE_LINUX_SLL and len(frame) >= 16:
        return struct.unpack_from("!H", frame, 14)[0], frame[16:]
    if linktype == LINKTYPE_LINUX_SLL2 and len(frame) >= 20:
        return struct.unpack_from("!H", frame, 0)[0], frame[20:]
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6) and frame:
        return (0x0800 if frame[0] >> 4 == 4 else 0x86DD), frame
    return None


def flow_key(linktype: int, frame: bytes) -> FlowKey | None:
    """The 5-tuple of an IPv4/IPv6 packet (ports 0 for non-TCP/UDP); None for anything else."""
    found = network_payload(linktype, frame)
    if found is None:
        return None
    ethertype, packet = found
    if ethertype == 0x0800 and len(packet) >= 20:
        header_len = (packet[0] & 0x0F) * 4
        proto = packet[9]
        src, dst = str(ipaddress.IPv4Address(packet[12:16])), str(ipaddress.IPv4Address(packet[16:20]))
        transport = packet[header_len:]
    elif ethertype == 0x86DD and len(packet) >= 40:
        proto = packet[6]
        src, dst = str(ipaddress.IPv6Address(packet[8:24])), str(ipaddress.IPv6Address(packet[24:40]))
        transport = packet[40:]
    else:
        return None
    name = _PROTOCOLS.get(proto, f"ip-{proto}")
    if proto in (6, 17) and len(transport) >= 4:
        sport, dport = struct.unpack_from("!HH", transport, 0)
        return name, src, sport, dst, dport
    return name, src, 0, dst, 0


MAX_FLOWS = 10_000  # ~4 MiB at ~400 B a flow; a packet ceiling of 1,000,000 distinct flows would be ~385 MiB
OTHER: FlowKey = ("other", "*", 0, "*", 0)  # the flows past the ceiling, counted together


class FlowTable:
    """Packets and bytes (on the wire) per 5-tuple; nothing of the payload is kept.

    At most ``max_flows`` 5-tuples are kept apart; the packets of any further
    one are counted in a single ``OTHER`` flow, so memory stays bounded
    whatever the pod sends (a scan is a new 5-tuple a packet).
    """

    def __init__(self, linktype: int, *, max_flows: int = MAX_FLOWS) -> None:
        self.linktype = linktype
        self.max_flows = max_flows
        self._flows: dict[FlowKey, Flow] = {}
        self.unparsed = 0

    def add(self, record: Record) -> None:
        key = flow_key(self.linktype, record.data)
        if key is None:
            self.unparsed += 1
            return
        flow = self._flows.get(key)
        if flow is None and len(self._flows) >= self.max_flows:
            flow = self._flows.get(OTHER)
            key = OTHER
        if flow is None:
            flow = self._flows[key] = Flow(key, first_seen=record.ts)
        flow.packets += 1
        flow.bytes += record.orig_len
        flow.last_seen = record.ts

    def top(self, limit: int = 100) -> list[Flow]:
        """The ``limit`` biggest flows by bytes, and the ``OTHER`` flow when there is one."""
        other = self._flows.get(OTHER)
        flows = sorted((f for f in self._flows.values() if f.key != OTHER), key=lambda f: (-f.bytes, f.key))
        return flows[:limit] + ([other] if other is not None else [])
