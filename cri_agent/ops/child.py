"""How capture and profiler processes are started: bounded, and never orphaned.

The agent is multi-threaded, so nothing runs in the child between fork and
exec (``preexec_fn`` is unsafe there). util-linux does it instead:
``setpriv --pdeathsig KILL`` kills the child if the agent dies, even by
SIGKILL; ``prlimit --cpu`` caps its CPU time; ``nice`` lowers its priority.
Each of them execs the next, so the pid the agent holds is the tool's.
"""

from __future__ import annotations

from collections.abc import Sequence


def bounded(command: Sequence[str], *, cpu_seconds: int, nice: int) -> list[str]:
    return [
        "setpriv", "--pdeathsig", "KILL", "--",
        "prlimit", f"--cpu={cpu_seconds}:{cpu_seconds}", "--",
        "nice", "-n", str(nice), *command,
    ]  # fmt: skip
