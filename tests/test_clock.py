"""The clock every loop waits on: the real one, and the virtual one loop tests run on."""

from __future__ import annotations

import asyncio
import threading

import pytest

from coral_base.backoff import Backoff
from coral_base.clock import SYSTEM_CLOCK, Clock, VirtualClock


def test_the_system_clock_sleep_ends_early_when_woken_and_says_so() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        wake = asyncio.Event()
        asyncio.get_running_loop().call_soon(wake.set)
        woken = await SYSTEM_CLOCK.sleep(60, wake)  # would fail the suite's time budget if it slept
        timed_out = await SYSTEM_CLOCK.sleep(0, asyncio.Event())
        forever_but_woken = await SYSTEM_CLOCK.sleep(float("inf"), wake)
        return woken, timed_out, forever_but_woken

    assert asyncio.run(scenario()) == (True, False, True)


@pytest.mark.parametrize("clock", [SYSTEM_CLOCK, VirtualClock()], ids=["system", "virtual"])
def test_a_deadline_in_the_past_is_no_wait_even_minus_infinity(clock: Clock) -> None:
    """A loop's first deadline is ``-inf + interval``: it must run at once, woken or not (--no-events)."""

    async def scenario() -> tuple[bool, bool]:
        never = asyncio.Event()
        return await clock.sleep(float("-inf"), never), await clock.sleep(float("-inf"))

    runs = clock.run if isinstance(clock, VirtualClock) else asyncio.run
    assert runs(asyncio.wait_for(scenario(), 5)) == (False, False)


def test_virtual_sleepers_wake_in_deadline_order_and_a_wake_event_cuts_a_sleep_short() -> None:
    clock = VirtualClock()

    async def scenario() -> list[tuple[str, float, bool]]:
        woke: list[tuple[str, float, bool]] = []
        wake = asyncio.Event()

        async def sleeper(name: str, seconds: float, event: asyncio.Event | None = None) -> None:
            woken = await clock.sleep(seconds, event)
            woke.append((name, clock.monotonic(), woken))

        tasks = [
            asyncio.create_task(sleeper("hour", 3600)),
            asyncio.create_task(sleeper("minute", 60)),
            asyncio.create_task(sleeper("woken", 600, wake)),
        ]
        await clock.sleep(120)
        wake.set()
        await asyncio.gather(*tasks)
        return woke

    assert clock.run(scenario()) == [("minute", 60.0, False), ("woken", 120.0, True), ("hour", 3600.0, False)]
    assert clock.time() == 1_700_000_000.0 + 3600


def test_time_stands_still_while_a_thread_works_for_the_loop() -> None:
    clock = VirtualClock()
    release = threading.Event()

    async def scenario() -> tuple[float, float]:
        timer = asyncio.create_task(clock.sleep(5))
        answer = threading.Timer(0.05, release.set)  # the loop is idle meanwhile, a sleeper due at 5 s
        answer.start()
        await asyncio.to_thread(release.wait)
        during = clock.monotonic()
        await timer
        return during, clock.monotonic()

    assert clock.run(scenario()) == (0.0, 5.0)


def test_until_gives_up_after_its_virtual_deadline_and_sleepers_at_that_moment_run_first() -> None:
    clock = VirtualClock(give_up_grace_s=0.01)

    async def scenario() -> tuple[bool, float]:
        done = asyncio.Event()

        async def finishes_at_ten() -> None:
            await clock.sleep(10)
            done.set()

        task = asyncio.create_task(finishes_at_ten())
        await clock.until(done.is_set, within=10)  # the same instant: the sleeper's work counts
        with pytest.raises(TimeoutError, match="within 5 s of virtual time"):
            await clock.until(lambda: False, within=5)
        await task
        return done.is_set(), clock.monotonic()

    assert clock.run(scenario()) == (True, 15.0)


def test_a_backoff_waits_on_its_clock() -> None:
    clock = VirtualClock()

    async def scenario() -> list[float]:
        backoff = Backoff(initial=1.0, maximum=4.0, jitter=0.0, clock=clock)
        marks = []
        for _ in range(4):
            await backoff.wait()
            marks.append(clock.monotonic())
        return marks

    assert clock.run(scenario()) == [1.0, 3.0, 7.0, 11.0]


def test_advance_moves_time_for_code_driven_step_by_step() -> None:
    clock = VirtualClock(start=1000.0)

    async def scenario() -> tuple[bool, float]:
        timer = asyncio.ensure_future(clock.sleep(2))
        await asyncio.sleep(0)
        clock.advance(1.5)
        await asyncio.sleep(0)
        early = timer.done()
        clock.advance(0.5)
        await timer
        return early, clock.time()

    assert asyncio.run(scenario()) == (False, 1002.0)
