"""``coral tap|profile|sample``: run a control operation on the pod behind a service.

The colony routes the request to the node agent that owns the target and
streams the output back. Ctrl-C cancels the operation on the node (the
capture or profiler process is killed there). Exit codes: 0 done, 1 the
operation or the colony failed, 2 refused (the message names the limit),
130 cancelled.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import IO, Any

from coral_base import documents
from coral_base.durations import flag, parse_duration
from coral_base.listing import Column, JsonObject, Listing, output_flags
from coral_base.private_files import PendingFile
from coral_base.sizes import parse_size
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
    tap = commands.add_parser("tap", help="capture packets in a pod's network namespace (pcap)")
    _target(tap, default_duration="30s")
    tap.add_argument("--filter", default="", help="BPF filter, e.g. 'tcp port 80'")
    tap.add_argument(
        "--max-bytes",
        type=flag(parse_size),
        default=0,
        metavar="SIZE",
        help="stop at this many pcap bytes, e.g. 100Mi, 1G (default: the node's ceiling)",
    )
    tap.add_argument("--max-packets", type=int, default=0, help="stop after this many packets")
    tap.add_argument("-w", dest="write", required=True, help="pcap file to write, or - for stdout (| tshark -r -)")
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


def _target(parser: argparse.ArgumentParser, *, default_duration: str) -> None:
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


def _finish(action: Action, target: OperationTarget, result: OperationResult | None, summary: str) -> int:
    where = f"{target.namespace}/{target.pod_name}" + (f" ({target.service_name})" if target.service_name else "")
    if result is None:
        print(f"error: {action} on {where}: the colony ended the stream without a result", file=sys.stderr)
        return 1
    if result.outcome is Outcome.OK:
        print(f"{action} {where} on {result.node_name}: {summary}", file=sys.stderr)
        return 0
    print(f"error: {action} {where}: {result.outcome}: {result.error}", file=sys.stderr)
    return 2 if result.outcome is Outcome.REFUSED else 1


def _written(
    args: argparse.Namespace, request: OperationRequest, paths: dict[ArtifactKind, Path]
) -> tuple[OperationTarget, OperationResult | None]:
    """Run it, writing each kind of artifact to its file; the files appear (0600) only when it succeeded."""
    pending = {kind: PendingFile(path) for kind, path in paths.items()}
    result: OperationResult | None = None
    try:
        target, result = _run(args, request, {kind: p.file for kind, p in pending.items()})
    finally:
        for file in pending.values():
            if result is not None and result.outcome is Outcome.OK:
                file.keep()
            else:
                file.discard()
    return target, result


def _run(
    args: argparse.Namespace, request: OperationRequest, sinks: dict[ArtifactKind, IO[bytes]]
) -> tuple[OperationTarget, OperationResult | None]:
    target = OperationTarget()
    result: OperationResult | None = None
    progress = Progress(request.action.value)  # on a terminal only: stderr, erased before the summary
    with open_client(args) as client:
        stream = client.run_operation(request)
        try:
            for output in stream:
                if isinstance(output, OperationTarget):
                    target = output
                    progress.resolved(target)
                elif isinstance(output, Chunk):
                    progress.chunk(output.kind, output.data)
                    if output.kind in sinks:
                        sinks[output.kind].write(output.data)
                        sinks[output.kind].flush()
                elif isinstance(output, OperationResult):
                    result = output
        finally:
            progress.done()
            stream.close()  # on Ctrl-C: cancels the call, and the colony cancels the operation
    return target, result


def tap_command(args: argparse.Namespace) -> int:
    request = OperationRequest(
        action=Action.TAP,
        target=args.target,
        node=args.node,
        duration_s=args.duration,
        filter=args.filter,
        max_bytes=args.max_bytes,
        max_packets=args.max_packets,
    )
    if args.write == "-":
        target, result = _run(args, request, {ArtifactKind.PCAP: sys.stdout.buffer})
    else:
        target, result = _written(args, request, {ArtifactKind.PCAP: Path(args.write)})
    summary = ""
    if result is not None:
        summary = (
            f"{result.packets} packets, {result.bytes} bytes in {result.duration_s:.1f}s "
            f"(stopped by {result.stopped_by or 'the end of the stream'}; {result.dropped} dropped by the kernel)"
            + (f" -> {args.write}" if args.write != "-" else "")
        )
    return _finish(Action.TAP, target, result, summary)


def profile_command(args: argparse.Namespace) -> int:
    request = OperationRequest(
        action=Action.PROFILE, target=args.target, node=args.node, duration_s=args.duration, frequency_hz=args.frequency
    )
    paths = {ArtifactKind.PPROF: args.write, ArtifactKind.FOLDED: args.folded, ArtifactKind.SVG: args.svg}
    target, result = _written(args, request, {kind: path for kind, path in paths.items() if path})
    summary = ""
    if result is not None:
        written = ", ".join(str(p) for p in (args.write, args.folded, args.svg) if p)
        summary = f"{result.samples} samples in {result.duration_s:.1f}s with {result.engine} -> {written}"
    return _finish(Action.PROFILE, target, result, summary)


def sample_command(args: argparse.Namespace) -> int:
    request = OperationRequest(
        action=Action.SAMPLE, target=args.target, node=args.node, duration_s=args.duration, filter=args.filter
    )
    target, result = _run(args, request, {})
    if result is not None and result.outcome is Outcome.OK:
        listing = Listing(FLOW_COLUMNS, flow_document, output=args.output, no_headers=args.no_headers)
        listing.print(list(result.flows)[: args.top])
    summary = ""
    if result is not None:
        summary = f"{len(result.flows)} flow(s), {result.packets} packets in {result.duration_s:.1f}s"
    return _finish(Action.SAMPLE, target, result, summary)


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
