"""Captured packets decoded: link and network headers, 5-tuples, flows counted.

Pure functions and small classes, no I/O: ``sample`` folds the records of
the capture's pcap stream (``coral_base.pcap``) into a flow table without
keeping any payload.
"""

from __future__ import annotations

import ipaddress
import struct

from coral_base.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    Record,
)
from cri_agent.operation import Flow, FlowKey

_PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6"}


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
