"""How fast the `coral` command starts, and what it loads.

Measures, on this machine, the wall time of fresh processes (median and p90
of N runs):
  1. `python -c pass`: the interpreter's own start, for reference;
  2. `coral --help` and `coral services --help`, through the installed console script;
  3. `coral agent status` against a running agent (it reads the agent's
     status file) and against the cache of a stopped one (it reads SQLite).

Usage: python -m bench.startup --output BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from bench.report import percentile, publish, timed


def started(command: list[str], runs: int) -> list[float]:
    """Milliseconds from spawning ``command`` to its exit, ``runs`` times."""
    return timed(lambda: subprocess.run(command, capture_output=True, check=False), runs)


def coral_script() -> str:
    """The console script pip installed next to this interpreter (what a user runs as `coral`)."""
    found = Path(sysconfig.get_path("scripts")) / "coral"
    return str(found) if found.exists() else shutil.which("coral") or "coral"


def stopped_agent_cache(directory: Path) -> Path:
    """A cache as a stopped agent leaves it: tables, conditions and meta, written by the real cache code."""
    from cri_agent.cache.writer import Cache
    from cri_agent.conditions import Condition

    path = directory / "agent.db"
    cache = Cache(path)
    cache.set_condition(Condition("runtime", True, "containerd", 1.0, 1.0))
    cache.set_meta({"agent_id": "node-agent-bench", "node_name": "bench"})
    cache.close()
    return path


def run(runs: int) -> str:
    work = Path(tempfile.mkdtemp(prefix="coral-startup-"))
    coral = coral_script()
    try:
        from cri_agent.status_file import StatusFile

        running = StatusFile(work / "running.db")
        running.acquire({"pid": os.getpid(), "agent_id": "node-agent-bench", "node_name": "bench", "conditions": []})
        stopped = stopped_agent_cache(work)
        rows = [
            ("`python -c pass` (the interpreter alone)", started([sys.executable, "-c", "pass"], runs), ""),
            ("`coral --help`", started([coral, "--help"], runs), "< 150 ms"),
            (
                "`coral services --help` (an operator command's flags; gRPC not loaded)",
                started([coral, "services", "--help"], runs),
                "< 150 ms",
            ),
            (
                "`coral agent status`, agent running (status file)",
                started([coral, "agent", "status", "--cache", str(work / "running.db")], runs),
                "< 150 ms",
            ),
            (
                "`coral agent status`, agent stopped (reads the cache)",
                started([coral, "agent", "status", "--cache", str(stopped)], runs),
                "",
            ),
        ]
        running.release()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [
        f"Machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; {runs} fresh processes each, "
        "through the installed console script.",
        "",
        "| command | median | p90 | target |",
        "|---|---|---|---|",
    ]
    for label, samples, target in rows:
        lines.append(f"| {label} | {statistics.median(samples):.0f} ms | {percentile(samples, 90):.0f} ms | {target} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    publish(run(args.runs), key="startup", title="Command start-up (issues 9, 13)", output=args.output)


if __name__ == "__main__":
    main()
