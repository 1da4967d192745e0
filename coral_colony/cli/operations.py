"""``coral tap|profile|sample``: run a control operation on the pod behind a service.

The colony routes the request to the node agent that owns the target and
streams the output back. ``tap`` also takes every pod of a workload
(``deploy/NAME``, ``sts/NAME``...) or of a service name (``--all-pods``):
the colony runs one capture per pod on its node's agent and relays them
together, and the CLI writes them as one pcapng file, an interface per pod
(``captures``). Ctrl-C cancels the operation on the node(s) (the capture or
profiler process is killed there). Exit codes: 0 done (on every pod), 1 the
operation or the colony failed (on some pod), 2 refused (the message names
the limit), 130 cancelled.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Protocol

from coral_base import documents
from coral_base.durations import flag, parse_duration
from coral_base.listing import Column, JsonObject, Listing, output_flags
from coral_base.private_files import PendingFile
from coral_base.sizes import parse_size
from coral_base.vocabulary import workload_of
from coral_colony.cli.captures import PcapngWriter, PcapWriter
from coral_colony.cli.connection import connection_flags, open_client
from coral_colony.cli.progress import Progress
from coral_colony.model import (
    Action,
    ArtifactKind,
    Chunk,
    Flow,
    OperationRequest,
    OperationResult,
    OperationTarget,
    Outcome,
)


def register(commands: Any) -> None:
    tap = commands.add_parser(
        "tap", help="capture packets in a pod's network namespace, or in every pod of a workload (pcapng)"
    )
    _target(tap, default_duration="30s", workloads=True)
    tap.add_argument("--filter", default="", help="BPF filter, e.g. 'tcp port 80'")
    tap.add_argument(
        "--max-bytes",
        type=flag(parse_size),
        default=0,
        metavar="SIZE",
        help="stop at this many pcap bytes, e.g. 100Mi, 1G (default: the node's ceiling)",
    )
    tap.add_argument("--max-packets", type=int, default=0, help="stop after this many packets")
    tap.add_argument("-w", dest="write", required=True, help="capture file to write, or - for stdout (| tshark -r -)")
    tap.add_argument(
        "--format",
        choices=[f.value for f in CaptureFormat],
        default=CaptureFormat.PCAPNG.value,
        help="pcapng (default): an interface per pod, named namespace/pod, with its drop count;"
        " pcap: classic, one pod only",
    )
    tap.set_defaults(handler=tap_command)

    profile = commands.add_parser("profile", help="sample CPU stacks of a pod's processes")
    _target(profile, default_duration="10s")
    profile.add_argument("--frequency", type=int, default=49, help="samples per second (19-99 Hz; default 49)")
    profile.add_argument("-w", dest="write", type=Path, required=True, help="pprof file to write (profile.pb.gz)")
    profile.add_argument("--folded", type=Path, help="also write folded stacks here")
    profile.add_argument("--svg", type=Path, help="also write a flame graph here")
    profile.set_defaults(handler=profile_command)

    sample = commands.add_parser("sample", help="a short capture reduced to a flow table on the node (no payload)")
    _target(sample, default_duration="10s")
    sample.add_argument("--filter", default="", help="BPF filter")
    sample.add_argument("--top", type=int, default=20, help="talkers to print (default 20)")
    output_flags(sample)
    sample.set_defaults(handler=sample_command)


def _target(parser: argparse.ArgumentParser, *, default_duration: str, workloads: bool = False) -> None:
    if workloads:
        parser.add_argument(
            "target",
            help="a service name (coral services), a service key, namespace/pod, or every pod of a workload:"
            " deploy/NAME, sts/NAME, ds/NAME, job/NAME, cj/NAME",
        )
        parser.add_argument(
            "--all-pods",
            action="store_true",
            help="every pod the target matches (a service name several pods serve), each on its own node",
        )
        parser.add_argument(
            "-n", "--namespace", default="", help="the workload's namespace (needed when its name is in several)"
        )
    else:
        parser.add_argument("target", help="a service name (coral services), a service key, or namespace/pod")
    parser.add_argument(
        "--duration",
        type=flag(parse_duration),
        default=parse_duration(default_duration),
        metavar="DURATION",
        help=f"how long, e.g. 30s, 1m30s (default {default_duration}; the node caps it)",
    )
    parser.add_argument(
        "--node",
        default="",
        help="the node the pod runs on: picks among pods of one name on several nodes, or routes a namespace/pod "
        "the colony does not list",
    )
    connection_flags(parser)


class CaptureFormat(StrEnum):
    PCAPNG = "pcapng"
    PCAP = "pcap"


class Sink(Protocol):
    """Where an operation's parts go as they come (``captures`` for tap)."""

    def target(self, part: int, target: OperationTarget) -> None: ...
    def chunk(self, part: int, kind: ArtifactKind, data: bytes) -> int: ...  # the packets it held
    def result(self, part: int, result: OperationResult) -> None: ...


class _Files:
    """A profile's artifacts, each kind to its own file (a kind with no file is not kept)."""

    def __init__(self, files: dict[ArtifactKind, IO[bytes]]) -> None:
        self.files = files

    def target(self, part: int, target: OperationTarget) -> None:
        pass

    def chunk(self, part: int, kind: ArtifactKind, data: bytes) -> int:
        if kind in self.files:
            self.files[kind].write(data)
        return 0

    def result(self, part: int, result: OperationResult) -> None:
        pass


@dataclass
class Outputs:
    """What an operation's stream said: the pods it ran on and their results, by part."""

    targets: dict[int, OperationTarget] = field(default_factory=dict)
    results: dict[int, OperationResult] = field(default_factory=dict)

    def succeeded(self) -> bool:
        """At least one pod's operation went through (its output is worth keeping)."""
        return any(r.outcome is Outcome.OK for r in self.results.values())


def _finish(action: Action, outputs: Outputs, summary: Callable[[OperationResult], str]) -> int:
    """One line per pod on stderr; the exit code of the worst: 1 failed (or silent), 2 refused, else 0."""
    codes: list[int] = []
    for part, target in sorted(outputs.targets.items()) or [(0, OperationTarget())]:
        where = f"{target.namespace}/{target.pod_name}" + (f" ({target.service_name})" if target.service_name else "")
        result = outputs.results.get(part)
        if result is None:
            print(f"error: {action} on {where}: the colony ended the stream without a result", file=sys.stderr)
            codes.append(1)
        elif result.outcome is Outcome.OK:
            print(f"{action} {where} on {result.node_name}: {summary(result)}", file=sys.stderr)
            codes.append(0)
        else:
            print(f"error: {action} {where}: {result.outcome}: {result.error}", file=sys.stderr)
            codes.append(2 if result.outcome is Outcome.REFUSED else 1)
    return 1 if 1 in codes else max(codes)


def _written(
    args: argparse.Namespace,
    request: OperationRequest,
    paths: dict[ArtifactKind, Path],
    sink: Callable[[dict[ArtifactKind, IO[bytes]]], Sink] = _Files,
) -> Outputs:
    """Run it, writing each kind of artifact to its file; the files appear (0600) only when it succeeded
    (on at least one pod)."""
    pending = {kind: PendingFile(path) for kind, path in paths.items()}
    outputs = Outputs()
    try:
        outputs = _run(args, request, sink({kind: p.file for kind, p in pending.items()}))
    finally:
        for file in pending.values():
            if outputs.succeeded():
                file.keep()
            else:
                file.discard()
    return outputs


def _run(args: argparse.Namespace, request: OperationRequest, sink: Sink) -> Outputs:
    outputs = Outputs()
    progress = Progress(request.action.value)  # on a terminal only: stderr, erased before the summary
    with open_client(args) as client:
        stream = client.run_operation(request)
        try:
            for part, output in stream:
                if isinstance(output, OperationTarget):
                    outputs.targets[part] = output
                    sink.target(part, output)
                    progress.resolved(output)
                elif isinstance(output, Chunk):
                    progress.chunk(len(output.data), sink.chunk(part, output.kind, output.data))
                elif isinstance(output, OperationResult):
                    outputs.results[part] = output
                    sink.result(part, output)
        finally:
            progress.done()
            stream.close()  # on Ctrl-C: cancels the call, and the colony cancels the operation
    return outputs


def tap_command(args: argparse.Namespace) -> int:
    fan_out = args.all_pods or workload_of(args.target) is not None
    if args.format == CaptureFormat.PCAP and fan_out:
        print("error: classic pcap holds one pod: use --format pcapng for several", file=sys.stderr)
        return 2
    request = OperationRequest(
        action=Action.TAP,
        target=args.target,
        node=args.node,
        duration_s=args.duration,
        filter=args.filter,
        max_bytes=args.max_bytes,
        max_packets=args.max_packets,
        all_pods=args.all_pods,
        namespace=args.namespace,
    )
    writer = PcapWriter if args.format == CaptureFormat.PCAP else PcapngWriter
    if args.write == "-":
        outputs = _run(args, request, writer(sys.stdout.buffer))
        sys.stdout.buffer.flush()
    else:
        outputs = _written(args, request, {ArtifactKind.PCAP: Path(args.write)}, lambda f: writer(f[ArtifactKind.PCAP]))
    destination = f" -> {args.write}" if args.write != "-" else ""

    def summary(result: OperationResult) -> str:
        return (
            f"{result.packets} packets, {result.bytes} bytes in {result.duration_s:.1f}s "
            f"(stopped by {result.stopped_by or 'the end of the stream'}; {result.dropped} dropped by the kernel)"
            + destination
        )

    return _finish(Action.TAP, outputs, summary)


def profile_command(args: argparse.Namespace) -> int:
    request = OperationRequest(
        action=Action.PROFILE, target=args.target, node=args.node, duration_s=args.duration, frequency_hz=args.frequency
    )
    paths = {ArtifactKind.PPROF: args.write, ArtifactKind.FOLDED: args.folded, ArtifactKind.SVG: args.svg}
    outputs = _written(args, request, {kind: path for kind, path in paths.items() if path})
    written = ", ".join(str(p) for p in (args.write, args.folded, args.svg) if p)
    return _finish(
        Action.PROFILE,
        outputs,
        lambda r: f"{r.samples} samples in {r.duration_s:.1f}s with {r.engine} -> {written}",
    )


def sample_command(args: argparse.Namespace) -> int:
    request = OperationRequest(
        action=Action.SAMPLE, target=args.target, node=args.node, duration_s=args.duration, filter=args.filter
    )
    outputs = _run(args, request, _Files({}))
    for result in outputs.results.values():
        if result.outcome is Outcome.OK:
            listing = Listing(FLOW_COLUMNS, flow_document, output=args.output, no_headers=args.no_headers)
            listing.print(list(result.flows)[: args.top])
    return _finish(
        Action.SAMPLE,
        outputs,
        lambda r: f"{len(r.flows)} flow(s), {r.packets} packets in {r.duration_s:.1f}s",
    )


FLOW_COLUMNS: tuple[Column[Flow], ...] = (
    Column("PROTO", lambda f: f.protocol),
    Column("SOURCE", lambda f: _endpoint(f.src, f.src_port)),
    Column("DESTINATION", lambda f: _endpoint(f.dst, f.dst_port)),
    Column("PACKETS", lambda f: str(f.packets)),
    Column("BYTES", lambda f: str(f.bytes)),
    Column("FIRST", lambda f: _clock(f.first_seen_unix_ms)),
    Column("LAST", lambda f: _clock(f.last_seen_unix_ms)),
)


def flow_document(f: Flow) -> JsonObject:
    return documents.flow(
        protocol=f.protocol,
        src=f.src,
        src_port=f.src_port,
        dst=f.dst,
        dst_port=f.dst_port,
        packets=f.packets,
        bytes=f.bytes,
        first_seen=f.first_seen_unix_ms / 1000,
        last_seen=f.last_seen_unix_ms / 1000,
    )


def _clock(unix_ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(unix_ms / 1000)) + f".{unix_ms % 1000:03d}"


def _endpoint(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}" if port else host
