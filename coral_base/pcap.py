"""Classic pcap, read as a stream: the global header once, then whole records.

Pure code, no I/O. The node agent forwards only whole records from its
capture process (so a stopped capture is still a valid file); the CLI reads
the same stream to write pcapng and to count packets as they come.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

GLOBAL_HEADER_LEN = 24
RECORD_HEADER_LEN = 16
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276


class PcapError(ValueError):
    """The stream is not classic pcap."""


@dataclass(frozen=True, slots=True)
class Record:
    ts: float  # seconds since the epoch
    orig_len: int
    data: bytes  # the captured bytes (at most the snap length)
    raw: bytes  # record header + data, as written


class PcapStream:
    """Feed bytes; get the global header once, then whole records."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.header: bytes | None = None
        self.linktype = 0
        self.snaplen = 0
        self.nanos = False  # timestamps in nanoseconds rather than microseconds
        self._endian = "<"

    @property
    def big_endian(self) -> bool:
        return self._endian == ">"

    def take(self, data: bytes) -> tuple[bytes, int]:
        """The whole records ``data`` completes, as they were written, and how many (no per-record objects:
        the CLI's pcapng writer reads them at the node's capture rate)."""
        if not self._fill(data):
            return b"", 0
        buffer, offset, count = self._buffer, 0, 0
        size = len(buffer)
        length_at = struct.Struct(f"{self._endian}I").unpack_from
        while size - offset >= RECORD_HEADER_LEN:
            end = offset + RECORD_HEADER_LEN + length_at(buffer, offset + 8)[0]
            if end > size:
                break
            offset, count = end, count + 1
        whole = bytes(buffer[:offset])
        del buffer[:offset]
        return whole, count

    def _fill(self, data: bytes) -> bool:
        """Buffer ``data``; True once the global header has been read off it."""
        self._buffer += data
        if self.header is None:
            if len(self._buffer) < GLOBAL_HEADER_LEN:
                return False
            self._parse_header(bytes(self._buffer[:GLOBAL_HEADER_LEN]))
            del self._buffer[:GLOBAL_HEADER_LEN]
        return True

    def feed(self, data: bytes) -> Iterator[Record]:
        if not self._fill(data):
            return
        offset = 0
        while len(self._buffer) - offset >= RECORD_HEADER_LEN:
            sec, frac, incl, orig = struct.unpack_from(f"{self._endian}IIII", self._buffer, offset)
            end = offset + RECORD_HEADER_LEN + incl
            if len(self._buffer) < end:
                break
            raw = bytes(self._buffer[offset:end])
            yield Record(
                ts=sec + frac / (1e9 if self.nanos else 1e6), orig_len=orig, data=raw[RECORD_HEADER_LEN:], raw=raw
            )
            offset = end
        del self._buffer[:offset]

    def _parse_header(self, header: bytes) -> None:
        magic = header[:4]
        for endian in ("<", ">"):
            (value,) = struct.unpack(f"{endian}I", magic)
            if value in (0xA1B2C3D4, 0xA1B23C4D):
                self._endian, self.nanos = endian, value == 0xA1B23C4D
                break
        else:
            raise PcapError(f"not a classic pcap stream (magic {magic.hex()})")
        self.snaplen, linktype = struct.unpack_from(f"{self._endian}II", header, 16)
        self.linktype = linktype & 0x0FFFFFFF
        self.header = header
