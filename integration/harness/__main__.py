"""The harness by hand, for the README's walkthrough and for experiments.

python -m integration.harness up  --dir D         # private containerd, foreground; Ctrl-C cleans up
python -m integration.harness pod --dir D NAME [--namespace NS] [--label K=V]... [--annotation K=V]...
                                  [--port [NAME:]PORT]... [--command "httpd -f -p 8080 -h /www"]
python -m integration.harness rm  --dir D NAME [--namespace NS]
"""

from __future__ import annotations

import argparse
import shlex
import signal
import threading
from pathlib import Path

from coral_base.wire.cri.runtime.v1 import api_pb2
from integration.harness.containerd import PrivateContainerd
from integration.harness.images import ensure_images
from integration.harness.pods import ContainerSpec, PodFactory, PortSpec

REPO = Path(__file__).resolve().parent.parent.parent


def _runtime(directory: Path) -> PrivateContainerd:
    return PrivateContainerd(directory / "containerd", images=ensure_images(REPO / ".cache" / "images"))


def _pairs(values: list[str] | None) -> dict[str, str]:
    return dict(v.split("=", 1) for v in values or [])


def up(args: argparse.Namespace) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with _runtime(args.dir) as runtime:
        print(f"containerd ready: socket {runtime.socket_path} (pod subnet {runtime.subnet}); Ctrl-C stops it")
        stop.wait()
        print("stopping: removing pods, unmounting, deleting the bridge")


def pod(args: argparse.Namespace) -> None:
    ports = []
    for spec in args.port or []:
        name, _, number = spec.rpartition(":")
        ports.append(PortSpec(int(number), name=name))
    command = (
        shlex.split(args.command)
        if args.command
        else (["httpd", "-f", "-p", str(ports[0].container_port), "-h", "/www"] if ports else ["sleep", "3600"])
    )
    factory = PodFactory(_runtime(args.dir))
    created = factory.create_pod(
        args.name,
        namespace=args.namespace,
        labels=_pairs(args.label),
        annotations=_pairs(args.annotation),
        containers=(ContainerSpec("app", command, ports=ports),),
    )
    factory.close(delete=False)
    print(f"pod {created.namespace}/{created.name} uid {created.uid} ip {created.ip}")


def rm(args: argparse.Namespace) -> None:
    factory = PodFactory(_runtime(args.dir))
    sandboxes = factory.stub.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    for sandbox in sandboxes:
        if (sandbox.metadata.name, sandbox.metadata.namespace) == (args.name, args.namespace):
            factory.stub.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox.id))
            factory.stub.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox.id))
            print(f"removed {args.namespace}/{args.name}")
    factory.close(delete=False)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m integration.harness", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler in (("up", up), ("pod", pod), ("rm", rm)):
        command = commands.add_parser(name)
        command.add_argument("--dir", type=Path, required=True)
        command.set_defaults(handler=handler)
        if name in ("pod", "rm"):
            command.add_argument("name")
            command.add_argument("--namespace", default="default")
        if name == "pod":
            command.add_argument("--label", action="append", metavar="K=V")
            command.add_argument("--annotation", action="append", metavar="K=V")
            command.add_argument("--port", action="append", metavar="[NAME:]PORT")
            command.add_argument("--command", help="container command (default: httpd on the first port, else sleep)")
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
