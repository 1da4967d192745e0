"""Long-running stages declared as data, started and stopped one way.

A program lists its stages (name, coroutine, stop policy); ``run_stages``
starts them all, returns when the stop event is set or any stage ends (a
stage that fails re-raises here), and stops them in reverse order, each
within a bound: a ``CANCEL`` stage is cancelled at once, a ``FINISH`` stage
is told to stop (``on_stopping``) and given the bound to finish what it is
doing (the discovery pass that is writing the cache, say). A stage that
overruns its bound is cancelled and reported, never waited for forever.
The bound is measured on the program's clock, so a test of a stubborn
stage takes no real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from coral_base.clock import SYSTEM_CLOCK, Clock
from coral_base.logs import emit

log = logging.getLogger("coral.lifecycle")


class StopPolicy(StrEnum):
    CANCEL = "cancel"  # nothing to finish: cancelled at once
    FINISH = "finish"  # finishes its current step once told to stop


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    run: Callable[[], Coroutine[Any, Any, None]]
    stop: StopPolicy = StopPolicy.CANCEL


async def run_stages(
    stages: Sequence[Stage],
    stop: asyncio.Event,
    *,
    on_stopping: Callable[[], None],
    grace_s: float,
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    tasks = [asyncio.create_task(stage.run(), name=stage.name) for stage in stages]
    stopped = asyncio.create_task(stop.wait(), name="stop")
    ended: set[asyncio.Task[None]] = set()
    try:
        done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
        ended = {task for task in tasks if task in done}
        for task in ended:
            if not task.cancelled() and (failure := task.exception()) is not None:
                raise failure
    finally:
        stopped.cancel()
        on_stopping()
        for stage, task in reversed(list(zip(stages, tasks, strict=True))):
            if task in ended:
                continue  # it ended the run (its failure is the one raised)
            if stage.stop == StopPolicy.CANCEL:
                task.cancel()
            if not await clock.sleep(grace_s, _ended(task)):
                emit(log, "stage.overran", level=logging.WARNING, stage=stage.name, grace_s=grace_s)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await task
                except Exception as exc:  # already stopping: report it, and stop the others
                    emit(log, "stage.failed", level=logging.ERROR, stage=stage.name, error=repr(exc))


def _ended(task: asyncio.Task[None]) -> asyncio.Event:
    """An event set when ``task`` ends: what cuts the clock's sleep through its bound short."""
    ended = asyncio.Event()
    task.add_done_callback(lambda _: ended.set())
    return ended
