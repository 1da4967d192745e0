"""``profile``: sample the CPU stacks of every process of a pod's containers.

eBPF (bcc) needs kernel headers to compile its programs; where the kernel
has none (this class of VM: BTF but no headers) the agent says so and uses
perf events through ``perf record`` (Debian ``linux-perf``), which reads the
processes' ELF symbols through their mount namespaces. Never a fake
profile: no samples is an error, not an empty flame graph.
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
from cri_agent.ops.stacks import fold_perf_script

SCRIPT_TIMEOUT_S = 60.0


class ProfileFailed(Exception):
    """perf could not sample (no permission, processes gone, no samples)."""


@dataclass(frozen=True, slots=True)
class ProfileResult:
    folded: Counter[str]
    samples: int
    duration_s: float
    engine: str


def ebpf_unavailable() -> str:
    """Why bcc cannot profile here ('' when it could)."""
    if importlib.util.find_spec("bcc") is None:
        return "bcc (python3-bpfcc) is not installed"
    release = platform.release()
    headers = [Path(f"/lib/modules/{release}/build"), Path("/sys/kernel/kheaders.tar.xz")]
    if not any(p.exists() for p in headers):
        return f"no kernel headers for {release} (bcc compiles its programs against them)"
    return ""


def engine_description() -> str:
    reason = ebpf_unavailable()
    return f"perf events (perf record), not eBPF: {reason}" if reason else "perf events (perf record)"


async def profile(pids: list[int], permit: Permit) -> ProfileResult:
    perf = shutil.which("perf")
    if perf is None:
        raise ProfileFailed("perf is not installed on the node (Debian linux-perf)")
    with tempfile.TemporaryDirectory(prefix="coral-profile-") as workdir:
        data = Path(workdir) / "perf.data"
        record = bounded(
            [
                perf, "record", "-q", "-F", str(permit.frequency_hz), "-g",
                "-p", ",".join(map(str, pids)), "-o", str(data), "--", "sleep", f"{permit.duration_s:g}",
            ],
            cpu_seconds=int(permit.duration_s) + 30,
            nice=permit.nice,
        )  # fmt: skip
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *record,
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
        duration = time.monotonic() - started
        if process.returncode != 0 or not data.exists():
            raise ProfileFailed(f"perf record failed: {errors.decode(errors='replace').strip()[-500:]}")
        script = await asyncio.create_subprocess_exec(
            perf, "script", "-i", str(data), "-F", "comm,pid,tid,ip,sym,dso",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            output, errors = await asyncio.wait_for(script.communicate(), SCRIPT_TIMEOUT_S)
        finally:
            if script.returncode is None:
                script.kill()
                await script.wait()
    folded = fold_perf_script(output.decode(errors="replace"))
    samples = sum(folded.values())
    if samples == 0:
        raise ProfileFailed(
            "no samples: the pod's processes used no CPU during the profile, or perf events are restricted "
            f"(perf_event_paranoid); {errors.decode(errors='replace').strip()[-300:]}"
        )
    return ProfileResult(folded=folded, samples=samples, duration_s=duration, engine=engine_description())
