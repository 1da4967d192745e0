"""``sample``: a short capture reduced, on the node, to a flow table.

Only headers are captured (a 128-byte snap length) and only counts leave
the node: 5-tuple, packets, bytes on the wire, first and last seen. No
payload is kept, which is why observe-only mode allows it.
"""

from __future__ import annotations

from coral_base.pcap import Record
from cri_agent.operation import Flow
from cri_agent.ops.capture import CaptureStats, capture
from cri_agent.ops.guardrails import Permit
from cri_agent.ops.namespaces import NetnsHandle
from cri_agent.ops.pcap import FlowTable

HEADER_SNAPLEN = 128


async def sample(netns: NetnsHandle, permit: Permit, *, bpf_filter: str = "") -> tuple[CaptureStats, list[Flow]]:
    table: FlowTable | None = None

    def count(record: Record, linktype: int) -> None:
        nonlocal table
        if table is None:
            table = FlowTable(linktype)
        table.add(record)

    stats = await capture(netns, permit, bpf_filter=bpf_filter, snaplen=HEADER_SNAPLEN, on_record=count)
    return stats, table.top() if table is not None else []
