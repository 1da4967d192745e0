"""Stages as data: started together, stopped in reverse, each within its bound; a failure ends the run."""

from __future__ import annotations

import asyncio

import pytest

from coral_base.clock import VirtualClock
from coral_base.lifecycle import Stage, StopPolicy, run_stages


def test_stop_cancels_in_reverse_order_and_lets_the_finishing_stage_finish_its_step() -> None:
    order: list[str] = []

    async def scenario() -> list[str]:
        told = asyncio.Event()

        async def forever(name: str) -> None:
            try:
                await asyncio.Event().wait()
            finally:
                order.append(f"{name} cancelled")

        async def finishing() -> None:
            await told.wait()
            await asyncio.sleep(0)  # the step under way
            order.append("pass finished")

        stop = asyncio.Event()
        stages = [
            Stage("discovery", finishing, StopPolicy.FINISH),
            Stage("health", lambda: forever("health")),
            Stage("sync", lambda: forever("sync")),
        ]
        runner = asyncio.create_task(run_stages(stages, stop, on_stopping=told.set, grace_s=1.0))
        await asyncio.sleep(0)
        stop.set()
        await runner
        return order

    happened = asyncio.run(scenario())
    assert [e for e in happened if "cancelled" in e] == ["sync cancelled", "health cancelled"]
    assert "pass finished" in happened, "told to stop, the finishing stage completed its step instead of a cancel"


def test_a_failing_stage_ends_the_run_with_its_error_and_the_others_are_stopped() -> None:
    cancelled: list[str] = []

    async def scenario() -> None:
        async def fails() -> None:
            raise RuntimeError("cache taken over")

        async def forever() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                cancelled.append("health")

        stages = [Stage("discovery", fails, StopPolicy.FINISH), Stage("health", forever)]
        await run_stages(stages, asyncio.Event(), on_stopping=lambda: None, grace_s=1.0)

    with pytest.raises(RuntimeError, match="cache taken over"):
        asyncio.run(scenario())
    assert cancelled == ["health"]


def test_a_stage_that_overruns_its_bound_is_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> float:
        async def stubborn() -> None:
            await asyncio.Event().wait()  # never looks at the stop flag

        stop = asyncio.Event()
        stop.set()
        stages = [Stage("discovery", stubborn, StopPolicy.FINISH)]
        await run_stages(stages, stop, on_stopping=lambda: None, grace_s=10.0, clock=clock)
        return clock.monotonic()

    clock = VirtualClock()
    assert clock.run(scenario()) == 10.0, "given its whole bound, no more"
    assert "stage.overran" in caplog.text


def test_a_stage_that_fails_while_stopping_is_reported_and_the_others_still_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stopped: list[str] = []

    async def scenario() -> None:
        told = asyncio.Event()

        async def fails_on_stop() -> None:
            await told.wait()
            raise RuntimeError("the last write failed")

        async def forever() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                stopped.append("health")

        stop = asyncio.Event()
        stop.set()
        stages = [Stage("discovery", fails_on_stop, StopPolicy.FINISH), Stage("health", forever)]
        await run_stages(stages, stop, on_stopping=told.set, grace_s=1.0)

    asyncio.run(scenario())
    [failed] = [r for r in caplog.records if r.getMessage() == "stage.failed"]
    assert stopped == ["health"] and "the last write failed" in failed.__dict__["coral_fields"]["error"]
