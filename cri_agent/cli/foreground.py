"""The agent process: run the node agent until SIGTERM or SIGINT, then shut it down within a bound."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

from coral_base.logs import configure
from cri_agent.agent import SHUTDOWN_GRACE_S, NodeAgent
from cri_agent.config import Settings

EXIT_TIMER_S = SHUTDOWN_GRACE_S + 5.0


def run_in_foreground(settings: Settings) -> None:
    configure(fmt=settings.log.format, level=settings.log.level)
    asyncio.run(_serve(NodeAgent(settings)))


async def _serve(agent: NodeAgent) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def _on_signal() -> None:
        if stop.is_set():
            os._exit(1)  # second signal: the operator insists
        stop.set()
        # Last resort: a wedged shutdown must not keep the pod Terminating.
        timer = threading.Timer(EXIT_TIMER_S, lambda: os._exit(1))
        timer.daemon = True
        timer.start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal)
    await agent.run(stop)
