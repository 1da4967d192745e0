"""One clock for every loop: wall time for records, monotonic time for intervals, sleeps that a
stop or a change cuts short.

Every timer of both programs (retry backoff, the agent's resync, poll and re-check, health probe
intervals, colony heartbeats, the colony's expiry and audit pruning) reads and waits on a ``Clock``
handed to it, never on ``time`` or ``asyncio.sleep`` directly. Production passes ``SYSTEM_CLOCK``;
tests pass a ``VirtualClock``, whose time moves only when the program has nothing else to do, so a
test of a loop that waits 30 s between retries runs in milliseconds, and runs the same way every
time.

Threads (the colony's registry writer and status page) only read ``time()``: a plain float read,
safe from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import selectors
import time
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar

_T = TypeVar("_T")

# Real seconds of quiet before virtual time moves: lets kernel and gRPC work already under way
# (a loopback answer in flight) land first.
IDLE_GRACE_S = 0.002
# Real seconds of quiet before a VirtualClock.until() gives up: a condition that needs real I/O
# (an RPC to an in-process server) gets that long to arrive before its virtual deadline is reached.
GIVE_UP_GRACE_S = 1.0


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch: what records, logs and the wire carry."""
        ...

    def monotonic(self) -> float:
        """Seconds that never jump: what intervals and deadlines are measured in."""
        ...

    async def sleep(self, seconds: float, wake: asyncio.Event | None = None) -> bool:
        """Wait ``seconds`` (``inf``: until woken), or less once ``wake`` is set.

        True when ``wake`` ended the wait, so a loop can tell "something changed" from "time is
        up" (a heartbeat is due only when nothing else was sent). Cancelling the caller ends it.
        """
        ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float, wake: asyncio.Event | None = None) -> bool:
        forever = seconds == math.inf  # a deadline in the past (-inf: "never done yet") is no wait at all
        if wake is None:
            await (_forever() if forever else asyncio.sleep(max(0.0, seconds)))
            return False
        if forever:
            await wake.wait()
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await wake.wait()
        return wake.is_set()


SYSTEM_CLOCK: Clock = SystemClock()


async def _forever() -> None:
    await asyncio.get_running_loop().create_future()


class VirtualClock:
    """Time that moves only when told: ``advance()``, or by itself under ``run()``.

    Under ``run()`` the event loop tells the clock when it is idle (no callback ready, no thread
    job of the loop's executors in flight, nothing arriving on its sockets); the clock then jumps
    to the earliest sleeper's deadline and wakes it. A loop that sleeps 30 s between retries
    retries at once in real time, in the same order as it would in 30 s, with every thread hop
    (SQLite, /proc) finished before time moves on. Tests wait with ``until()`` (a condition checked
    each time everything has settled, with a deadline in virtual seconds), or sleep on the clock
    themselves.
    """

    def __init__(self, start: float = 1_700_000_000.0, *, give_up_grace_s: float = GIVE_UP_GRACE_S) -> None:
        self._epoch_wall = start
        self._give_up_grace_s = give_up_grace_s
        self._now = 0.0
        self._order = itertools.count()
        # (deadline, gives up, order, waiter): at one deadline, sleepers wake before an until() gives up
        self._sleepers: list[tuple[float, bool, int, asyncio.Future[None]]] = []
        self._watchers: list[asyncio.Future[None]] = []
        self._activity = 0  # bumps on every jump and every I/O event: "something may have changed"
        self._checked = -1  # the activity the watchers last saw
        self.jobs = 0  # executor jobs of the loop in flight: time stands still while threads work

    # -- the Clock protocol --------------------------------------------------------------------

    def time(self) -> float:
        return self._epoch_wall + self._now

    def monotonic(self) -> float:
        return self._now

    def step_wall(self, seconds: float) -> None:
        """The wall clock alone jumps (an NTP step, a restored VM); monotonic time does not move."""
        self._epoch_wall += seconds

    async def sleep(self, seconds: float, wake: asyncio.Event | None = None) -> bool:
        if wake is not None and wake.is_set():
            return True
        if seconds <= 0:
            await asyncio.sleep(0)
            return wake is not None and wake.is_set()
        timer = self._timer(seconds, give_up=False)
        if wake is None:
            try:
                await timer
            finally:
                timer.cancel()
            return False
        woken: asyncio.Future[Any] = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait([timer, woken], return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            woken.cancel()
        return wake.is_set()

    # -- driving it ----------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move time forward now, waking every sleeper whose deadline passes (for code driven step by step)."""
        self._now += seconds
        self._wake_due()

    def run(self, main: Coroutine[Any, Any, _T]) -> _T:
        """``asyncio.run(main)`` on an event loop whose idle moments move this clock."""
        with asyncio.Runner(loop_factory=lambda: _VirtualLoop(self)) as runner:
            return runner.run(main)

    async def until(self, predicate: Callable[[], object], *, within: float) -> None:
        """Return once ``predicate()`` holds, checked whenever the program has settled; TimeoutError
        once ``within`` virtual seconds pass without it."""
        loop = asyncio.get_running_loop()
        deadline = self._timer(within, give_up=True)
        try:
            while not predicate():
                if deadline.done():
                    raise TimeoutError(f"condition not reached within {within:g} s of virtual time")
                settled: asyncio.Future[None] = loop.create_future()
                self._watchers.append(settled)
                await asyncio.wait([settled, deadline], return_when=asyncio.FIRST_COMPLETED)
        finally:
            deadline.cancel()

    # -- what the loop tells it ----------------------------------------------------------------

    def _timer(self, seconds: float, *, give_up: bool) -> asyncio.Future[None]:
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if math.isfinite(seconds):
            heapq.heappush(self._sleepers, (self._now + seconds, give_up, next(self._order), timer))
        return timer

    def _wake_due(self, *, give_up: bool = True) -> None:
        """Wake the sleepers whose deadline has come; with ``give_up`` False, not the until() deadlines
        (they wait for the next idle moment: what the woken sleepers do may satisfy their condition)."""
        while self._sleepers and self._sleepers[0][0] <= self._now and (give_up or not self._sleepers[0][1]):
            timer = heapq.heappop(self._sleepers)[3]
            if not timer.done():
                timer.set_result(None)

    def _next(self) -> tuple[float, bool, int, asyncio.Future[None]] | None:
        while self._sleepers and self._sleepers[0][3].done():  # cancelled: the sleep ended otherwise
            heapq.heappop(self._sleepers)
        return self._sleepers[0] if self._sleepers else None

    def _saw_io(self) -> None:
        self._activity += 1

    @property
    def _watchers_due(self) -> bool:
        """Conditions wait, and something happened since they last looked."""
        return bool(self._watchers) and self._checked != self._activity

    def _quiet_needed(self) -> float:
        """Real seconds the loop must stay quiet before ``_idle`` moves anything."""
        if self._watchers_due:
            return 0.0
        nxt = self._next()
        return self._give_up_grace_s if nxt is not None and nxt[1] else IDLE_GRACE_S

    def _idle(self) -> bool:
        """The loop has nothing to do: let waiting conditions look first, else jump to the next
        deadline. False when nothing virtual waits (the loop then waits for the world)."""
        if self._watchers_due:
            self._checked = self._activity
            watchers, self._watchers = self._watchers, []
            for settled in watchers:
                if not settled.done():
                    settled.set_result(None)
            return True
        nxt = self._next()
        if nxt is None:
            return False
        self._now = max(self._now, nxt[0])
        self._activity += 1
        self._wake_due(give_up=nxt[1])
        return True


class _IdleSelector(selectors.BaseSelector):
    """The loop's selector: a wait the loop asks for while it has nothing ready is the clock's cue."""

    def __init__(self, clock: VirtualClock) -> None:
        self._inner = selectors.DefaultSelector()
        self._clock = clock

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._inner.get_map()

    def close(self) -> None:
        self._inner.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        clock = self._clock
        if timeout is not None and timeout <= 0:  # callbacks are ready: no idle moment
            return self._seen(self._inner.select(0))
        if ready := self._inner.select(0):
            return self._seen(ready)
        if clock.jobs:  # a thread works for this loop: its result arrives through the loop's self-pipe
            return self._seen(self._inner.select(timeout))
        quiet = clock._quiet_needed()
        if quiet and (ready := self._inner.select(quiet if timeout is None else min(quiet, timeout))):
            return self._seen(ready)
        if timeout is not None and timeout < quiet:
            return []  # a real timer of the loop is due first
        if clock._idle():
            return []
        return self._seen(self._inner.select(timeout))

    def _seen(self, ready: list[tuple[selectors.SelectorKey, int]]) -> list[tuple[selectors.SelectorKey, int]]:
        if ready:
            self._clock._saw_io()
        return ready


class _VirtualLoop(asyncio.SelectorEventLoop):
    """An ordinary selector loop that counts its executor jobs (``to_thread``, the SQLite writers)."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(selector=_IdleSelector(clock))
        self._clock = clock

    def run_in_executor(  # type: ignore[override]  # typeshed's TypeVarTuple signature, relaxed
        self, executor: Executor | None, func: Callable[..., _T], *args: Any
    ) -> asyncio.Future[_T]:
        future: asyncio.Future[_T] = super().run_in_executor(executor, func, *args)
        self._clock.jobs += 1
        future.add_done_callback(self._job_done)
        return future

    def _job_done(self, _: asyncio.Future[Any]) -> None:
        self._clock.jobs -= 1
