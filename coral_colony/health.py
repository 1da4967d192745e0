"""The colony's own health: what ``/healthz``, ``/readyz`` and ``grpc.health.v1`` answer.

One task on the colony's event loop checks, every ``CHECK_EVERY_S``:

- **ready**: the gRPC server has started (and is not stopping), the registry
  answers a read on a reader's connection, and the writer can take the
  registry's write lock (``BEGIN IMMEDIATE``, rolled back: nothing is
  written). A colony that cannot write cannot take registrations: the
  kubelet takes it out of its Service until it can.
- **live**: that task ran lately. The probe listener answers from its own
  threads, so a wedged event loop (the one that serves every gRPC call)
  shows up as a stale check rather than as an "ok" from a healthy thread.

The verdicts are kept and read by the probe listener's threads; a change of
readiness is also handed to ``on_ready`` (the gRPC health service). This
module knows no wire: the server maps readiness to SERVING / NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from coral_base.clock import SYSTEM_CLOCK, Clock
from coral_base.logs import emit
from coral_colony.stores.reader import RegistryReader
from coral_colony.stores.writer import RegistryWriter, WriterThread

log = logging.getLogger("coral_colony.health")

CHECK_EVERY_S = 5.0
STALE_AFTER_S = 60.0  # live while the last check is younger than this: twelve rounds missed


class Verdict(NamedTuple):
    ok: bool
    reason: str


class ColonyHealth:
    def __init__(
        self,
        writer: WriterThread,
        database: Path,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_ready: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self.writer = writer
        self.database = database
        self.clock = clock
        self.on_ready = on_ready
        self.serving = False  # the gRPC server: set once it has started, cleared when it stops
        self._ready = Verdict(False, "starting: the registry has not been checked yet")
        self._checked_at: float | None = None  # monotonic

    # -- read by the probe listener's threads ----------------------------------------------------

    def live(self) -> Verdict:
        if self._checked_at is None:
            return Verdict(True, "starting")
        late = self.clock.monotonic() - self._checked_at
        if late > STALE_AFTER_S:
            return Verdict(False, f"the colony's event loop last checked its health {late:.0f}s ago")
        return Verdict(True, "ok")

    def ready(self) -> Verdict:
        live = self.live()
        return self._ready if live.ok else live

    # -- the check, on the event loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Check every CHECK_EVERY_S until cancelled.

        The reader lives on one thread of its own: opened, used and closed there, in that order, so a
        check still running when the colony stops finishes before its connection closes (closing it
        under a running query crashed the process).
        """
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="health-reader")
        loop = asyncio.get_running_loop()
        reader = await loop.run_in_executor(thread, RegistryReader, self.database)
        try:
            while True:
                await self.check(reader, thread)
                await self.clock.sleep(CHECK_EVERY_S)
        finally:
            thread.submit(reader.close)  # after any check in flight, on the same thread
            thread.shutdown(wait=False)

    async def check(self, reader: RegistryReader, thread: ThreadPoolExecutor | None = None) -> Verdict:
        verdict = await self._verdict(reader, thread)
        self._checked_at = self.clock.monotonic()
        changed, self._ready = verdict.ok != self._ready.ok, verdict
        if changed:
            emit(
                log,
                "colony.ready" if verdict.ok else "colony.not_ready",
                level=logging.INFO if verdict.ok else logging.WARNING,
                reason=verdict.reason,
            )
            if self.on_ready is not None:
                await self.on_ready(verdict.ok)
        return verdict

    async def _verdict(self, reader: RegistryReader, thread: ThreadPoolExecutor | None) -> Verdict:
        if not self.serving:
            return Verdict(False, "the gRPC server is not serving")
        try:
            await asyncio.get_running_loop().run_in_executor(thread, reader.check)
        except sqlite3.Error as exc:
            return Verdict(False, f"the registry {self.database} cannot be read: {exc}")
        try:
            await self.writer.run(RegistryWriter.check_writable)
        except sqlite3.Error as exc:
            return Verdict(False, f"the registry {self.database} cannot be written: {exc}")
        return Verdict(True, "ok")
