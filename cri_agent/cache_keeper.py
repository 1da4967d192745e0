"""Keeps the SQLite cache true to the agent's memory, whatever happens to the file.

The cache is a condition, not a precondition: discovery, health probing and
colony sync run from memory, and the cache mirrors them when it can.

- **A write fails** (read-only or immutable file, full disk, I/O error): the
  failure is logged once with its cause and reported through ``on_state``
  (the ``cache`` condition); the events and operations of the outage wait in
  memory (bounded: past ``BACKLOG_EVENTS`` the oldest are dropped and
  counted); state writes (services, pods, health, conditions, meta) are not
  queued, since memory holds their latest value. Writing is retried with
  backoff (``retry_at``); the first write that works rewrites the file from
  memory, appends what waited, and adds one ``error`` event that says what
  happened.
- **The file is deleted or replaced** (``check``, once per pass: link count
  and inode of the file as opened): it is recreated (or adopted) from memory
  the same way, with one event recording the gap.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from coral_base.backoff import Backoff
from coral_base.clock import SYSTEM_CLOCK, Clock
from coral_base.logs import emit
from cri_agent.cache.discovery_events import TimedEvent
from cri_agent.cache.writer import Cache, CacheContents, CacheWriter
from cri_agent.discovery.engine import KnownState, Reconciliation
from cri_agent.errors import CacheError
from cri_agent.model import DiscoveryEvent, EventKind

log = logging.getLogger("cri_agent.cache")

BACKLOG_EVENTS = 20_000  # ~4 MiB at most: past it the oldest wait no longer (counted in the recovery event)
BACKLOG_OPERATIONS = 2_000


class CacheKeeper:
    def __init__(
        self,
        writer: CacheWriter,
        *,
        node_name: str,
        contents: Callable[[], CacheContents],
        on_state: Callable[[bool, str], Awaitable[None]],
        clock: Clock = SYSTEM_CLOCK,
        backoff: Backoff | None = None,
        on_write: Callable[[float], None] | None = None,  # seconds a write took (the agent's metrics)
    ) -> None:
        self.writer = writer
        self.on_write = on_write
        self.node_name = node_name
        self.contents = contents
        self.on_state = on_state
        self.clock = clock
        self.backoff = backoff or Backoff(initial=1.0, maximum=30.0)
        self.failure = ""  # why the file does not mirror memory now ("" when it does)
        self.retry_at = float("inf")  # monotonic, like the agent loop that waits for it
        self._since = 0.0
        self._cause = ""  # the failure that started the outage
        self._events: deque[TimedEvent] = deque(maxlen=BACKLOG_EVENTS)
        self._operations: deque[Mapping[str, Any]] = deque(maxlen=BACKLOG_OPERATIONS)
        self._dropped = 0
        self._lost = ""  # "deleted" / "replaced" when the failure is the file itself

    @property
    def path(self) -> str:
        return str(self.writer.path)

    async def open(self) -> KnownState:
        """What the file remembers. A file that cannot be opened for writing is read if it can be
        (no churn on restart), and the agent starts all the same, its writes retried."""
        try:
            known = await self.writer.open(now=self.clock.time())
        except CacheError as exc:
            await self._fail(str(exc))
            return await self.writer.read_known()
        if (moved := self.writer.moved_aside) is not None:
            aside, why = moved
            emit(log, "cache.corrupt", level=logging.ERROR, cache=self.path, moved_to=str(aside), reason=why)
            reason = (
                f"cache {self.path} was corrupt ({why}): moved aside to {aside} and started afresh; "
                "the services are rediscovered from the runtime, the history the old file held stays in it"
            )
            await self.record_events(
                [DiscoveryEvent(kind=EventKind.ERROR, namespace="", pod_name="", reason=reason, fields=("cache",))]
            )
        await self.on_state(True, "writable")
        return known

    # -- writes ----------------------------------------------------------------------------------

    async def apply(self, result: Reconciliation, *, now: float, touch: bool, retention: tuple[int, float]) -> None:
        rows, days = retention
        await self._write(
            lambda c: c.apply(
                result,
                node_name=self.node_name,
                now=now,
                touch=touch,
                retention_rows=rows,
                retention_days=days,
            ),
            events=[TimedEvent(now, e) for e in result.events],
        )

    async def record_events(self, events: Sequence[DiscoveryEvent]) -> None:
        timed = [TimedEvent(self.clock.time(), e) for e in events]
        await self._write(lambda c: c.record_events(timed, node_name=self.node_name), events=timed)

    async def record_operation(self, row: Mapping[str, Any], *, retention: tuple[int, float]) -> None:
        """One operations row; the table keeps at most ``retention`` (rows, days)."""
        rows, days = retention
        now = self.clock.time()
        await self._write(
            lambda c: c.record_operation(row, now=now, retention_rows=rows, retention_days=days), operations=[row]
        )

    async def state(self, write: Callable[[Cache], None]) -> None:
        """A write of current state (health, a condition, meta): skipped during an outage, restored after."""
        await self._write(write)

    async def check(self) -> None:
        """Once per pass: notice a deleted or replaced file, and retry writing when it is due."""
        if not self.failure:
            try:
                lost = await self.writer.call(lambda c: c.lost())
            except CacheError as exc:
                await self._fail(str(exc))
                return
            if lost:
                self._lost = lost
                await self._fail(f"cache {self.path} was {lost} while the agent ran")
        await self._recover_if_due()

    async def _write(
        self,
        write: Callable[[Cache], None],
        *,
        events: Sequence[TimedEvent] = (),
        operations: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        await self._recover_if_due()
        if not self.failure:
            try:
                started = self.clock.monotonic()
                await self.writer.call(write)
                if self.on_write is not None:
                    self.on_write(self.clock.monotonic() - started)
                return
            except CacheError as exc:
                await self._fail(str(exc))
        self._hold(events, operations)

    def _hold(self, events: Sequence[TimedEvent], operations: Sequence[Mapping[str, Any]]) -> None:
        self._dropped += max(0, len(self._events) + len(events) - BACKLOG_EVENTS)
        self._dropped += max(0, len(self._operations) + len(operations) - BACKLOG_OPERATIONS)
        self._events.extend(events)
        self._operations.extend(operations)

    # -- failure and recovery --------------------------------------------------------------------

    async def _fail(self, reason: str) -> None:
        now = self.clock.time()
        first = not self.failure
        self.failure = reason
        self.retry_at = self.clock.monotonic() + self.backoff.next()
        if first:
            self._since, self._cause = now, reason
            emit(log, "cache.unwritable", level=logging.ERROR, cache=self.path, reason=reason)
            await self.on_state(False, f"{reason}; discovery goes on from memory and writes are retried")

    async def _recover_if_due(self) -> None:
        if self.failure and self.clock.monotonic() >= self.retry_at:
            await self._recover()

    async def _recover(self) -> None:
        now = self.clock.time()
        contents = self.contents()
        events = [*self._events, TimedEvent(now, self._recovery_event(now))]
        operations = list(self._operations)
        try:
            await self.writer.reopen()
            await self.writer.call(
                lambda c: c.restore(contents, events=events, operations=operations, node_name=self.node_name, now=now)
            )
        except CacheError as exc:
            self.failure = str(exc)
            self.retry_at = self.clock.monotonic() + self.backoff.next()
            return
        emit(
            log,
            "cache.recovered",
            level=logging.WARNING,
            cache=self.path,
            outage_s=round(now - self._since, 1),
            events=len(self._events),
            operations=len(operations),
            dropped=self._dropped,
        )
        self._events.clear()
        self._operations.clear()
        self._dropped, self._lost, self.failure = 0, "", ""
        self.retry_at = float("inf")
        self.backoff.reset()
        await self.on_state(True, "writable")

    def _recovery_event(self, now: float) -> DiscoveryEvent:
        held = f"{len(self._events)} events and {len(self._operations)} operations"
        if self._lost:
            reason = (
                f"cache {self.path} was {self._lost} while the agent ran "
                f"(noticed {_clock(self._since)}): recreated from memory; {held} since then are written now, "
                f"the history the old file held is not"
            )
        else:
            reason = (
                f"cache {self.path} refused writes from {_clock(self._since)} for {now - self._since:.0f} s "
                f"({self._cause}); {held} held in memory are written now"
            )
        if self._dropped:
            reason += f"; {self._dropped} older ones exceeded the memory bound and are lost"
        return DiscoveryEvent(kind=EventKind.ERROR, namespace="", pod_name="", reason=reason, fields=("cache",))


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
