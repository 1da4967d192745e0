"""What every benchmark shares: percentiles, a process's memory, and its section of BENCHMARKS.md."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

HEADER = "# Benchmarks\n\nEvery figure here comes from a command under `bench/`, run on a CI-size machine.\n"


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    """Milliseconds of each of ``repeat`` calls."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def publish(body: str, *, key: str, title: str, output: Path | None, module: str = "") -> None:
    """Print ``body``; with ``output``, replace (or append) its section, headed by the command that ran
    (``python -m bench.<module>``, the module named after the key unless given)."""
    print(body)
    if output is None:
        return
    begin, end = f"<!-- bench:{key}:begin -->", f"<!-- bench:{key}:end -->"
    command = " ".join([f"python -m bench.{module or key}", *sys.argv[1:]])
    section = f"{begin}\n## {title}\n\nCommand: `{command}`\n\n{body}\n{end}"
    text = output.read_text() if output.exists() else HEADER
    if begin in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    output.write_text(text)
