"""Runs one control request on this node: guardrails, the operation, the record.

Input is an ``OperationRequest`` (decoded from ``agent.v1`` by the codec),
output is the artifacts and the final result to send back. Every request,
refused or not, becomes a row of the cache's ``operations`` table (the
colony audits it too). Once admitted, an operation pins its target at once
(``namespaces``: the pod's netns by descriptor, or its containers'
cgroups), so a pid reused since the last poll cannot point it at another
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coral_base.vocabulary import Action, ArtifactKind, Outcome, StopReason
from cri_agent.model import PodRecord, PodUID
from cri_agent.operation import Artifact, OperationRequest, OperationResult
from cri_agent.ops import namespaces
from cri_agent.ops.guardrails import Guardrails, Permit, Refused, Request
from cri_agent.paths import DEFAULT_CACHE

if TYPE_CHECKING:
    from cri_agent.ops.capture import CaptureStats

log = logging.getLogger("cri_agent.ops")

CHUNK_SIZE = 1024 * 1024  # well under gRPC's 4 MiB message limit
CAPTURE_BACKLOG = 16  # capture reads (64 KiB each) waiting for the stream: a stalled operator slows the capture
ENGINE_CAPTURE = "dumpcap in the pod's network namespace (nsenter --net)"


@dataclass(frozen=True, slots=True)
class PodView:
    """What the runner needs to know about a pod of this node."""

    record: PodRecord
    included: bool


Lookup = Callable[[PodUID, str, str], PodView | None]  # uid, namespace, name -> the pod
RecordOperation = Callable[[Mapping[str, Any]], Awaitable[None]]  # writes an operations row


class OperationRunner:
    def __init__(
        self,
        guardrails: Guardrails,
        *,
        node_name: str,
        lookup: Lookup,
        record: RecordOperation,
        proc_root: Path = Path("/proc"),
        profile_dir: Path = DEFAULT_CACHE.parent,
    ) -> None:
        """``proc_root``: the host's /proc; ``profile_dir``: where perf.data is written (ops.profileDir)."""
        self.guardrails = guardrails
        self.node_name = node_name
        self.lookup = lookup
        self.record = record
        self.proc_root = proc_root
        self.profile_dir = profile_dir

    async def run(self, request: OperationRequest) -> AsyncGenerator[Artifact | OperationResult, None]:
        """Yield artifacts, then exactly one result (also when cancelled)."""
        # Lazy: tap, profile and sample (pcap, perf and pprof code) load with the first request, not with
        # every agent (most never run one); each method below imports its own the same way.
        from cri_agent.ops.capture import CaptureFailed
        from cri_agent.ops.profile import ProfileFailed

        started = time.time()
        target = request.target
        result = OperationResult(request_id=request.request_id, node_name=self.node_name)
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
                    filter=request.filter,
                ),
                pod_known=pod is not None,
                namespace_included=pod is not None and pod.included,
            )
            assert pod is not None
            async for artifact in self._execute(request, pod.record, permit, result):
                yield artifact
            result.outcome = Outcome.OK
        except Refused as exc:
            result.outcome, result.error = Outcome.REFUSED, str(exc)
        except (CaptureFailed, ProfileFailed, namespaces.PodUnreachable) as exc:
            result.outcome, result.error = Outcome.FAILED, str(exc)
        except Exception as exc:  # a bug must still end in a result and a truthful operations row
            log.exception("operation %s failed unexpectedly", request.request_id)
            result.outcome, result.error = Outcome.FAILED, f"internal error: {type(exc).__name__}: {exc}"
        finally:
            if permit is not None:
                self.guardrails.release(permit)
            if result.outcome is None:  # closed or cancelled while running
                result.outcome, result.error = Outcome.CANCELLED, "the operator cancelled"
            if not result.duration_s:
                result.duration_s = time.time() - started
            await self._remember(request, result, started)
        yield result

    def _execute(
        self, request: OperationRequest, pod: PodRecord, permit: Permit, result: OperationResult
    ) -> AsyncIterator[Artifact]:
        if permit.action is Action.TAP:
            return self._tap(request, pod, permit, result)
        if permit.action is Action.SAMPLE:
            return self._sample(request, pod, permit, result)
        return self._profile(request, pod, permit, result)

    async def _tap(
        self, request: OperationRequest, pod: PodRecord, permit: Permit, result: OperationResult
    ) -> AsyncIterator[Artifact]:
        from cri_agent.ops.capture import capture  # lazy: see run()

        result.engine = ENGINE_CAPTURE
        with namespaces.open_netns(pod, proc_root=self.proc_root) as netns:
            queue: asyncio.Queue[bytes | None] = asyncio.Queue(CAPTURE_BACKLOG)
            task = asyncio.create_task(capture(netns, permit, bpf_filter=request.filter, emit=queue.put))
            task.add_done_callback(lambda _: _end(queue))
            try:
                while (data := await queue.get()) is not None:
                    yield Artifact(request.request_id, ArtifactKind.PCAP, data)
                _fill(result, task.result())
            finally:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _sample(
        self, request: OperationRequest, pod: PodRecord, permit: Permit, result: OperationResult
    ) -> AsyncIterator[Artifact]:
        from cri_agent.ops.sample import sample  # lazy: see run()

        result.engine = ENGINE_CAPTURE
        with namespaces.open_netns(pod, proc_root=self.proc_root) as netns:
            stats, result.flows = await sample(netns, permit, bpf_filter=request.filter)
        _fill(result, stats)
        return
        yield  # an async generator that yields no chunk: the flows travel in the result

    async def _profile(
        self, request: OperationRequest, pod: PodRecord, permit: Permit, result: OperationResult
    ) -> AsyncIterator[Artifact]:
        from cri_agent.ops import stacks  # lazy: see run()
        from cri_agent.ops.profile import profile

        target = namespaces.profile_target(pod, proc_root=self.proc_root)
        profiled = await profile(target, permit, directory=self.profile_dir, proc_root=self.proc_root)
        result.samples, result.duration_s, result.engine = profiled.samples, profiled.duration_s, profiled.engine
        result.stopped_by = StopReason.MAX_BYTES if profiled.by_size else StopReason.DURATION
        title = f"{pod.namespace}/{pod.name}: {profiled.samples} samples at {permit.frequency_hz} Hz"
        if profiled.truncated:  # the operator sees the engine line: say there that the profile is cut short
            result.engine += f"; truncated: {profiled.truncated}"
            title += " (truncated)"
        outputs = {
            ArtifactKind.PPROF: stacks.pprof(
                profiled.folded,
                frequency_hz=permit.frequency_hz,
                duration_s=profiled.duration_s,
                time_ns=time.time_ns(),
            ),
            ArtifactKind.FOLDED: stacks.folded_text(profiled.folded).encode(),
            ArtifactKind.SVG: stacks.flame_graph_svg(profiled.folded, title=title).encode(),
        }
        for kind, data in outputs.items():
            for start in range(0, len(data), CHUNK_SIZE):
                yield Artifact(request.request_id, kind, data[start : start + CHUNK_SIZE])

    async def _remember(self, request: OperationRequest, result: OperationResult, started: float) -> None:
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
                "outcome": result.outcome.value if result.outcome else "",
                "error": result.error,
            }
        )


def _end(queue: asyncio.Queue[bytes | None]) -> None:
    """Tell the reader the capture ended; the capture is done, so a full queue can only drain."""
    if queue.full():
        asyncio.get_running_loop().call_soon(_end, queue)
    else:
        queue.put_nowait(None)


def _fill(result: OperationResult, stats: CaptureStats) -> None:
    result.bytes, result.packets, result.dropped = stats.bytes, stats.packets, stats.dropped
    result.duration_s, result.stopped_by = stats.duration_s, stats.stopped_by
