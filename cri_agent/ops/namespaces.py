"""Where a pod lives on the host: its network namespace and its processes.

The netns path comes from the runtime (CRI verbose status) when it is
there, else from the sandbox's ``/proc/<pid>/ns/net``. Processes are every
pid of every running container (found through cgroups by the /proc
provider), never the pause process.
"""

from __future__ import annotations

from pathlib import Path

from cri_agent.model import PodRecord


class PodUnreachable(Exception):
    """The pod's namespaces or processes cannot be found (it may have just gone)."""


def netns_path(pod: PodRecord, *, proc_root: Path = Path("/proc")) -> Path:
    if pod.host_network:
        raise PodUnreachable(f"{pod.namespace}/{pod.name} uses the host network: capture on the node instead")
    candidates = [Path(pod.netns_path)] if pod.netns_path else []
    if pod.pid:
        candidates.append(proc_root / str(pod.pid) / "ns" / "net")
    candidates += [proc_root / str(pid) / "ns" / "net" for c in pod.containers for pid in c.pids]
    for path in candidates:
        if path.exists():
            return path
    raise PodUnreachable(f"no network namespace found for {pod.namespace}/{pod.name} (tried {len(candidates)} paths)")


def container_pids(pod: PodRecord, *, proc_root: Path = Path("/proc")) -> list[int]:
    pids = sorted({pid for c in pod.containers for pid in c.pids if (proc_root / str(pid)).exists()})
    if not pids:
        raise PodUnreachable(f"no running process in {pod.namespace}/{pod.name}")
    return pids
