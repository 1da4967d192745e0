"""Runs one control request on this node: guardrails, the operation, the record.

Input is an ``agent.v1`` OperationRequest, output is the Chunks and the
final Result to send back. Every request, refused or not, becomes a row of
the cache's ``operations`` table (the colony audits it too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from coral_base.wire.coral.agent.v1 import agent_pb2
from cri_agent.model import PodRecord, PodUID
from cri_agent.ops import namespaces
from cri_agent.ops.guardrails import Guardrails, Permit, Refused, Request

log = logging.getLogger("cri_agent.ops")

CHUNK_SIZE = 1024 * 1024  # well under gRPC's 4 MiB message limit
ENGINE_CAPTURE = "dumpcap in the pod's network namespace (nsenter --net)"


@dataclass(frozen=True, slots=True)
class PodView:
    """What the runner needs to know about a pod of this node."""

    record: PodRecord
    included: bool


Lookup = Callable[[PodUID, str, str], PodView | None]  # uid, namespace, name -> the pod
RecordOperation = Callable[[Mapping[str, Any]], Awaitable[None]]  # writes an operations row


class OperationRunner:
    def __init__(self, guardrails: Guardrails, *, node_name: str, lookup: Lookup, record: RecordOperation) -> None:
        self.guardrails = guardrails
        self.node_name = node_name
        self.lookup = lookup
        self.record = record

    async def run(self, request: Any) -> AsyncGenerator[Any, None]:
        """Yield ``agent.v1`` AgentMessages: chunks, then exactly one result (also when cancelled)."""
        # Lazy: tap, profile and sample (pcap, perf and pprof code) load with the first request, not with
        # every agent (most never run one); each method below imports its own the same way.
        from cri_agent.ops.capture import CaptureFailed
        from cri_agent.ops.profile import ProfileFailed

        started = time.time()
        target = request.target
        result = agent_pb2.Result(request_id=request.request_id, node_name=self.node_name)
        permit: Permit | None = None
        try:
            pod = self.lookup(PodUID(target.pod_uid), target.namespace, target.pod_name)
            permit = self.guardrails.admit(
                Request(
                    action=request.action,
                    operator=request.operator,
                    pod_uid=pod.record.uid if pod else target.pod_uid,
                    namespace=target.namespace,
                    duration_s=request.duration_s,
                    max_bytes=request.max_bytes,
                    max_packets=request.max_packets,
                    frequency_hz=request.frequency_hz,
                ),
                pod_known=pod is not None,
                namespace_included=pod is not None and pod.included,
            )
            assert pod is not None
            async for chunk in self._execute(request, pod.record, permit, result):
                yield agent_pb2.AgentMessage(chunk=chunk)
            result.outcome = "ok"
        except Refused as exc:
            result.outcome, result.error = "refused", str(exc)
        except (CaptureFailed, ProfileFailed, namespaces.PodUnreachable) as exc:
            result.outcome, result.error = "failed", str(exc)
        finally:
            if permit is not None:
                self.guardrails.release(permit)
            if not result.outcome:  # closed or cancelled while running
                result.outcome, result.error = "cancelled", "the operator cancelled"
            if not result.duration_s:
                result.duration_s = time.time() - started
            await self._remember(request, result, started)
        yield agent_pb2.AgentMessage(result=result)

    def _execute(self, request: Any, pod: PodRecord, permit: Permit, result: Any) -> AsyncIterator[Any]:
        if request.action == "tap":
            return self._tap(request, pod, permit, result)
        if request.action == "sample":
            return self._sample(request, pod, permit, result)
        return self._profile(request, pod, permit, result)

    async def _tap(self, request: Any, pod: PodRecord, permit: Permit, result: Any) -> AsyncIterator[Any]:
        from cri_agent.ops.capture import capture  # lazy: see run()

        netns = namespaces.netns_path(pod)
        result.engine = ENGINE_CAPTURE
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        task = asyncio.create_task(capture(netns, permit, bpf_filter=request.filter, emit=queue.put))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (data := await queue.get()) is not None:
                yield agent_pb2.Chunk(request_id=request.request_id, kind="pcap", data=data)
            _fill(result, task.result())
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _sample(self, request: Any, pod: PodRecord, permit: Permit, result: Any) -> AsyncIterator[Any]:
        from cri_agent.ops.sample import sample  # lazy: see run()

        result.engine = ENGINE_CAPTURE
        stats, flows = await sample(namespaces.netns_path(pod), permit, bpf_filter=request.filter)
        _fill(result, stats)
        for flow in flows:
            protocol, src, sport, dst, dport = flow.key
            result.flows.add(
                protocol=protocol,
                src=src,
                src_port=sport,
                dst=dst,
                dst_port=dport,
                packets=flow.packets,
                bytes=flow.bytes,
                first_seen_unix_ms=int(flow.first_seen * 1000),
                last_seen_unix_ms=int(flow.last_seen * 1000),
            )
        return
        yield  # an async generator that yields no chunk: the flows travel in the result

    async def _profile(self, request: Any, pod: PodRecord, permit: Permit, result: Any) -> AsyncIterator[Any]:
        from cri_agent.ops import stacks  # lazy: see run()
        from cri_agent.ops.profile import profile

        profiled = await profile(namespaces.container_pids(pod), permit)
        result.samples, result.duration_s, result.engine = profiled.samples, profiled.duration_s, profiled.engine
        result.stopped_by = "duration"
        title = f"{pod.namespace}/{pod.name}: {profiled.samples} samples at {permit.frequency_hz} Hz"
        outputs = {
            "pprof": stacks.pprof(
                profiled.folded,
                frequency_hz=permit.frequency_hz,
                duration_s=profiled.duration_s,
                time_ns=time.time_ns(),
            ),
            "folded": stacks.folded_text(profiled.folded).encode(),
            "svg": stacks.flame_graph_svg(profiled.folded, title=title).encode(),
        }
        for kind, data in outputs.items():
            for start in range(0, len(data), CHUNK_SIZE):
                yield agent_pb2.Chunk(request_id=request.request_id, kind=kind, data=data[start : start + CHUNK_SIZE])

    async def _remember(self, request: Any, result: Any, started: float) -> None:
        target = request.target
        parameters = {
            "duration_s": request.duration_s,
            "filter": request.filter,
            "max_bytes": request.max_bytes,
            "max_packets": request.max_packets,
            "frequency_hz": request.frequency_hz,
        }
        await self.record(
            {
                "started_at": started,
                "finished_at": time.time(),
                "operator": request.operator,
                "action": request.action,
                "node_name": self.node_name,
                "namespace": target.namespace,
                "pod_name": target.pod_name,
                "service": target.service_name,
                "parameters": json.dumps({k: v for k, v in parameters.items() if v}, sort_keys=True),
                "duration_s": round(result.duration_s, 3),
                "bytes": result.bytes,
                "packets": result.packets,
                "outcome": result.outcome,
                "error": result.error,
            }
        )


def _fill(result: Any, stats: Any) -> None:
    result.bytes, result.packets, result.dropped = stats.bytes, stats.packets, stats.dropped
    result.duration_s, result.stopped_by = stats.duration_s, stats.stopped_by
