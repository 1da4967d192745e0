"""``profile``: sample the CPU stacks of every process of a pod's containers.

eBPF (bcc) needs kernel headers to compile its programs; where the kernel
has none (this class of VM: BTF but no headers) the agent says so and uses
perf events through ``perf record`` (Debian ``linux-perf``), which reads the
processes' ELF symbols through their mount namespaces. Never a fake
profile: no samples is an error, not an empty flame graph.

What is sampled was pinned when the operation was admitted
(``namespaces.profile_target``): the containers' cgroups, with ``perf record
-a -G`` (every CPU, only tasks in those cgroups, whichever pids they have by
then). Where no cgroup could be named, ``perf record -p`` gets the pids that
still name the processes identified at admission, checked right before perf
starts.

Every output is bounded. ``perf.data`` is written to ``directory`` (on disk,
beside the cache: not a memory-backed /tmp) and capped by ``perf record
--max-size`` with a small ring buffer, so perf checks the size often; perf
stops at the cap and the profile is what was recorded until then. ``perf
script`` is read as it runs, folded line by line, and killed past a byte cap
or a deadline. A profile cut by any of these says so (``truncated``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import platform
import shutil
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cri_agent.ops.child import bounded
from cri_agent.ops.guardrails import Permit
from cri_agent.ops.namespaces import ProfileTarget, live_pids
from cri_agent.ops.stacks import StackFolder

SCRIPT_TIMEOUT_S = 60.0
SCRIPT_BYTES_PER_DATA_BYTE = 8  # perf script's text runs 5-7 times the size of perf.data here
RING_PAGES = 16  # perf's buffer per CPU (64 KiB): the size cap is checked each time perf empties it
LINE_LIMIT = 1024 * 1024  # one line of perf script (a symbol) longer than this cuts the output there
_SIZE_LIMIT = b"perf size limit reached"


class ProfileFailed(Exception):
    """perf could not sample (no permission, processes gone, no samples)."""


@dataclass(frozen=True, slots=True)
class ProfileResult:
    folded: Counter[str]
    samples: int
    duration_s: float
    engine: str
    truncated: str = ""  # why the profile is cut short ("": it is whole)
    by_size: bool = False  # cut by a byte ceiling (perf.data or perf script's text)


def ebpf_unavailable() -> str:
    """Why bcc cannot profile here ('' when it could)."""
    if importlib.util.find_spec("bcc") is None:
        return "bcc (python3-bpfcc) is not installed"
    release = platform.release()
    headers = [Path(f"/lib/modules/{release}/build"), Path("/sys/kernel/kheaders.tar.xz")]
    if not any(p.exists() for p in headers):
        return f"no kernel headers for {release} (bcc compiles its programs against them)"
    return ""


def engine_description(target: ProfileTarget) -> str:
    how = "perf record -a -G <container cgroups>" if target.cgroups else "perf record -p <verified pids>"
    reason = ebpf_unavailable()
    return f"perf events ({how}), not eBPF: {reason}" if reason else f"perf events ({how})"


def record_command(
    perf: str, target: ProfileTarget, permit: Permit, *, data: Path, proc_root: Path = Path("/proc")
) -> list[str]:
    """``perf record`` of the target for the permit's duration, ``data`` capped at ``permit.profile_bytes``."""
    command = [perf, "record", "-F", str(permit.frequency_hz), "-g", "-m", str(RING_PAGES)]
    if target.cgroups:
        command += ["-a", "-e", ",".join(["cpu-clock"] * len(target.cgroups)), "-G", ",".join(target.cgroups)]
    else:
        command += ["-p", ",".join(map(str, live_pids(target, proc_root=proc_root)))]
    size = f"{max(permit.profile_bytes // 1024, 1)}K"
    return [*command, "--max-size", size, "-o", str(data), "--", "sleep", f"{permit.duration_s:g}"]


async def profile(
    target: ProfileTarget,
    permit: Permit,
    *,
    directory: Path,
    script_bytes: int | None = None,
    script_timeout_s: float = SCRIPT_TIMEOUT_S,
    proc_root: Path = Path("/proc"),
) -> ProfileResult:
    """Sample ``target`` for the permit's duration; ``perf script``'s text is read up to ``script_bytes``
    (default: ``SCRIPT_BYTES_PER_DATA_BYTE`` times the perf.data cap) and for ``script_timeout_s`` at most."""
    perf = shutil.which("perf")
    if perf is None:
        raise ProfileFailed("perf is not installed on the node (Debian linux-perf)")
    script_cap = script_bytes if script_bytes is not None else SCRIPT_BYTES_PER_DATA_BYTE * permit.profile_bytes
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)  # noqa: PTH103 (a mkdir, once per profile)
        scratch = tempfile.TemporaryDirectory(prefix="coral-profile-", dir=directory)
    except OSError as exc:
        raise ProfileFailed(
            f"cannot write perf.data under {directory}: {exc}; set ops.profileDir to a writable directory on disk"
        ) from exc
    with scratch as workdir:
        data = Path(workdir) / "perf.data"
        started = time.monotonic()
        errors = await _record(record_command(perf, target, permit, data=data, proc_root=proc_root), permit)
        duration = time.monotonic() - started
        if not data.exists():
            raise ProfileFailed(f"perf record wrote no data: {errors.decode(errors='replace').strip()[-500:]}")
        cuts = []
        if _SIZE_LIMIT in errors:
            cuts.append(f"perf.data reached its cap of {permit.profile_bytes} bytes (ops.profileMaxBytes)")
        script = await _script(perf, data, max_bytes=script_cap, timeout_s=script_timeout_s)
    folded = script.folded
    cuts += [script.cut] if script.cut else []
    samples = sum(folded.values())
    if samples == 0 and cuts:
        raise ProfileFailed(f"no samples read: {'; '.join(cuts)}")
    if samples == 0:
        raise ProfileFailed(
            "no samples: the pod's processes used no CPU during the profile, or perf events are restricted "
            f"(perf_event_paranoid); {script.errors.strip()[-300:]}"
        )
    return ProfileResult(
        folded=folded,
        samples=samples,
        duration_s=duration,
        engine=engine_description(target),
        truncated="; ".join(cuts),
        by_size=_SIZE_LIMIT in errors or script.by_size,
    )


async def _record(command: list[str], permit: Permit) -> bytes:
    """Run ``perf record``; its stderr, or ProfileFailed when it failed for another reason than its size cap."""
    process = await asyncio.create_subprocess_exec(
        *bounded(command, cpu_seconds=int(permit.duration_s) + 30, nice=permit.nice),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # perf forks `sleep`: cancel kills the whole group
    )
    try:
        _, errors = await process.communicate()
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    if process.returncode != 0 and _SIZE_LIMIT not in errors:  # at its cap perf kills `sleep` and says so
        raise ProfileFailed(f"perf record failed: {errors.decode(errors='replace').strip()[-500:]}")
    return errors


@dataclass(frozen=True, slots=True)
class _Script:
    folded: Counter[str]
    cut: str  # why the output was cut short ("": read to its end)
    by_size: bool  # cut by its byte cap (or a line over LINE_LIMIT), not by its deadline
    errors: str  # the tail of its stderr


async def _script(perf: str, data: Path, *, max_bytes: int, timeout_s: float) -> _Script:
    """``perf script`` folded as it is read, and killed past ``max_bytes`` or ``timeout_s``."""
    script = await asyncio.create_subprocess_exec(
        perf, "script", "-i", str(data), "-F", "comm,pid,tid,ip,sym,dso",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=LINE_LIMIT,
    )  # fmt: skip
    assert script.stdout is not None and script.stderr is not None
    errors = asyncio.create_task(_tail(script.stderr))
    folder = StackFolder()
    read, cut, by_size = 0, "", False
    try:
        async with asyncio.timeout(timeout_s):
            while line := await script.stdout.readline():
                read += len(line)
                if read > max_bytes:
                    cut, by_size = f"perf script's output passed its cap of {max_bytes} bytes", True
                    break
                folder.feed(line.decode(errors="replace"))
            else:
                await script.wait()  # read to its end: it is exiting, let the child watcher reap it
    except TimeoutError:
        cut = f"perf script ran past its deadline of {timeout_s:g} s"
    except ValueError:  # a line over LINE_LIMIT
        cut, by_size = f"perf script wrote a line over {LINE_LIMIT} bytes", True
    finally:
        # Killed only when cut short (or cancelled): Process.kill() polls the child first, which would
        # reap one that just exited before asyncio's watcher does (and make its exit status 255).
        if script.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                script.kill()
        await script.wait()
    return _Script(folder.finish(cut=bool(cut)), cut, by_size, (await errors).decode(errors="replace"))


async def _tail(stream: asyncio.StreamReader, keep: int = 4096) -> bytes:
    """Read a stream to its end, keeping its last ``keep`` bytes (a chatty child never blocks on its pipe)."""
    tail = b""
    while chunk := await stream.read(64 * 1024):
        tail = (tail + chunk)[-keep:]
    return tail
