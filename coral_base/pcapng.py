"""pcapng, written as a stream: one section, one interface per captured pod, statistics at the end.

Pure code, no I/O: each method returns the bytes of whole blocks (the
caller writes them as they come, so an interrupted capture still ends on a
block boundary). Little-endian, as Wireshark writes it, after the pcapng
specification (IETF draft-ietf-opsawg-pcapng): a Section Header Block, an
Interface Description Block before an interface's first packet (blocks
of several interfaces may interleave), an Enhanced Packet Block per
packet, and an Interface Statistics Block per interface at its end, with
the packets received and those the kernel dropped.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

SECTION_HEADER = 0x0A0D0D0A
INTERFACE_DESCRIPTION = 0x00000001
INTERFACE_STATISTICS = 0x00000005
ENHANCED_PACKET = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D

OPT_END = 0
OPT_COMMENT = 1
SHB_USERAPPL = 4
IF_NAME = 2
IF_DESCRIPTION = 3
IF_TSRESOL = 9
ISB_STARTTIME = 2
ISB_ENDTIME = 3
ISB_IFRECV = 4
ISB_IFDROP = 5
ISB_USRDELIV = 8

MICROSECONDS = 6  # if_tsresol: 10^-6 s, the default
NANOSECONDS = 9


@dataclass(frozen=True, slots=True)
class Interface:
    """One captured pod, as an interface of the file."""

    linktype: int
    snaplen: int
    name: str  # if_name, e.g. shop/web-0
    description: str = ""  # if_description, e.g. node n1, service web
    resolution: int = MICROSECONDS  # timestamps in 10^-resolution s


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _options(options: Iterable[tuple[int, bytes]]) -> bytes:
    body = b"".join(struct.pack("<HH", code, len(value)) + _pad(value) for code, value in options)
    return body + struct.pack("<HH", OPT_END, 0) if body else b""


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


def _timestamp(ticks: int) -> bytes:
    return struct.pack("<II", ticks >> 32, ticks & 0xFFFFFFFF)


def section_header(application: str) -> bytes:
    """The file's first block: byte order, version 1.0, section length unknown (-1)."""
    body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)
    return _block(SECTION_HEADER, body + _options([(SHB_USERAPPL, application.encode())]))


def interface_description(interface: Interface) -> bytes:
    options = [(IF_NAME, interface.name.encode())]
    if interface.description:
        options.append((IF_DESCRIPTION, interface.description.encode()))
    if interface.resolution != MICROSECONDS:
        options.append((IF_TSRESOL, bytes([interface.resolution])))
    body = struct.pack("<HHI", interface.linktype, 0, interface.snaplen)
    return _block(INTERFACE_DESCRIPTION, body + _options(options))


_EPB_HEAD = struct.Struct("<IIIIIII")  # type, length, interface, timestamp high and low, captured, original
_LENGTH = struct.Struct("<I")
_ZEROS = bytes(3)


def enhanced_packets(interface_id: int, records: bytes, *, big_endian: bool, nanos: bool) -> bytes:
    """Whole classic pcap records (``PcapStream.take``) as Enhanced Packet Blocks of ``interface_id``,
    timestamps in the interface's resolution (micro- or nanoseconds, as the pcap's)."""
    unit = 1_000_000_000 if nanos else 1_000_000
    header = struct.Struct(">IIII" if big_endian else "<IIII").unpack_from
    view = memoryview(records)
    out = bytearray()
    offset, size = 0, len(records)
    while offset < size:
        seconds, fraction, captured, original = header(records, offset)
        ticks = seconds * unit + fraction
        start = offset + 16
        offset = start + captured
        pad = -captured % 4
        length = 32 + captured + pad
        out += _EPB_HEAD.pack(
            ENHANCED_PACKET, length, interface_id, ticks >> 32, ticks & 0xFFFFFFFF, captured, original
        )
        out += view[start:offset]
        out += _ZEROS[:pad]
        out += _LENGTH.pack(length)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Statistics:
    """An interface's counters at its end (times in the interface's resolution)."""

    start_ticks: int
    end_ticks: int
    delivered: int  # packets written to the file
    dropped: int  # packets the kernel dropped
    comment: str = ""  # e.g. stopped by duration


def interface_statistics(interface_id: int, stats: Statistics) -> bytes:
    options = [
        (ISB_STARTTIME, _timestamp(stats.start_ticks)),
        (ISB_ENDTIME, _timestamp(stats.end_ticks)),
        (ISB_IFRECV, struct.pack("<Q", stats.delivered + stats.dropped)),
        (ISB_IFDROP, struct.pack("<Q", stats.dropped)),
        (ISB_USRDELIV, struct.pack("<Q", stats.delivered)),
    ]
    if stats.comment:
        options.append((OPT_COMMENT, stats.comment.encode()))
    body = struct.pack("<I", interface_id) + _timestamp(stats.end_ticks)
    return _block(INTERFACE_STATISTICS, body + _options(options))
