"""What ``coral tap`` writes: the nodes' pcap streams, one per pod, as one pcapng file (or classic pcap).

Each pod's agent captures in the pod's network namespace and sends classic
pcap (whole records). The CLI turns the parts into one pcapng section, as
Inspektor Gadget does: an interface per pod, named ``namespace/pod`` and
described with its node (and service), declared when its first bytes come;
each packet an Enhanced Packet Block on its pod's interface; and, when the
pod's result comes, an Interface Statistics Block with the packets written
and those the kernel dropped, and what stopped the capture. Classic pcap
(``--format pcap``) holds one pod and passes the node's bytes as they came.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO

from coral_base import pcapng
from coral_base.pcap import PcapStream
from coral_colony.model import ArtifactKind, OperationResult, OperationTarget, Outcome

APPLICATION = "coral tap"


class _Part:
    def __init__(self, target: OperationTarget, started: float) -> None:
        self.target = target
        self.stream = PcapStream()
        self.interface: int | None = None  # its interface id, once its header came
        self.started = started
        self.packets = 0

    @property
    def unit(self) -> int:
        """Ticks a second of its timestamps, as its pcap's."""
        return 1_000_000_000 if self.stream.nanos else 1_000_000


class PcapngWriter:
    """Writes the parts' pcap streams to ``out`` as one pcapng section, block by block as they come."""

    def __init__(self, out: IO[bytes], *, wall: Callable[[], float] = time.time) -> None:
        self.out = out
        self.wall = wall
        self._parts: dict[int, _Part] = {}
        self._interfaces = 0

    def target(self, part: int, target: OperationTarget) -> None:
        self._parts[part] = _Part(target, self.wall())

    def chunk(self, part: int, kind: ArtifactKind, data: bytes) -> int:
        """Write the part's whole records that ``data`` completes; the packets written."""
        if kind is not ArtifactKind.PCAP:
            return 0
        state = self._parts.get(part)
        if state is None:  # chunks of a pod the colony did not announce (an older colony): unnamed
            state = self._parts[part] = _Part(OperationTarget(), self.wall())
        stream = state.stream
        records, packets = stream.take(data)
        declared = self._declare(state) if state.interface is None and stream.header is not None else b""
        if records:
            assert state.interface is not None  # records come after the header
            blocks = pcapng.enhanced_packets(state.interface, records, big_endian=stream.big_endian, nanos=stream.nanos)
        else:
            blocks = b""
        state.packets += packets
        if declared or blocks:
            self.out.write(declared + blocks)
            self.out.flush()  # a pipe (| tshark -r -) sees each packet as it comes
        return packets

    def result(self, part: int, result: OperationResult) -> None:
        """Close the part's interface with its statistics (nothing when it captured nothing at all)."""
        state = self._parts.get(part)
        if state is None or state.interface is None:
            return
        if result.outcome is Outcome.OK:
            comment = f"stopped by {result.stopped_by.value if result.stopped_by else 'the end of the stream'}"
        else:
            comment = f"{result.outcome.value}: {result.error}"
        stats = pcapng.Statistics(
            start_ticks=round(state.started * state.unit),
            end_ticks=round(self.wall() * state.unit),
            delivered=state.packets,
            dropped=result.dropped,
            comment=comment,
        )
        self.out.write(pcapng.interface_statistics(state.interface, stats))

    def _declare(self, state: _Part) -> bytes:
        """The part's interface block; the section's header before the first (a refused tap writes nothing)."""
        section = pcapng.section_header(APPLICATION) if self._interfaces == 0 else b""
        state.interface, self._interfaces = self._interfaces, self._interfaces + 1
        t = state.target
        described = [f"node {t.node_name}"] if t.node_name else []
        described += [f"service {t.service_name}"] if t.service_name else []
        return section + pcapng.interface_description(
            pcapng.Interface(
                linktype=state.stream.linktype,
                snaplen=state.stream.snaplen,
                name=f"{t.namespace}/{t.pod_name}" if t.pod_name else f"part {state.interface}",
                description=", ".join(described),
                resolution=pcapng.NANOSECONDS if state.stream.nanos else pcapng.MICROSECONDS,
            )
        )


class PcapWriter:
    """Classic pcap: the one pod's stream as its node sent it (whole records), packets counted on the way."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self._stream = PcapStream()

    def target(self, part: int, target: OperationTarget) -> None:
        pass

    def chunk(self, part: int, kind: ArtifactKind, data: bytes) -> int:
        if kind is not ArtifactKind.PCAP:
            return 0
        self.out.write(data)
        self.out.flush()
        return self._stream.take(data)[1]

    def result(self, part: int, result: OperationResult) -> None:
        pass
