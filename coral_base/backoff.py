"""Exponential backoff with full jitter for the agent's retry loops."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from coral_base.clock import SYSTEM_CLOCK, Clock


@dataclass(slots=True)
class Backoff:
    """``next()`` -> seconds to wait: doubles from ``initial`` up to ``maximum``.

    Jitter keeps many node agents from retrying in lockstep after a shared
    outage; ``reset()`` after a success.
    """

    initial: float = 0.5
    maximum: float = 30.0
    jitter: float = 0.2  # +/- fraction of the delay
    rng: random.Random = field(default_factory=random.Random)
    clock: Clock = SYSTEM_CLOCK  # what ``wait`` sleeps on: a test's virtual clock retries instantly
    _attempt: int = 0

    def next(self) -> float:
        delay = min(self.maximum, self.initial * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 64)  # 2**64 already dwarfs any maximum
        return float(max(0.0, delay * (1 + self.rng.uniform(-self.jitter, self.jitter))))

    async def wait(self, wake: asyncio.Event | None = None) -> bool:
        """Sleep the next delay; True when ``wake`` cut it short (a change worth retrying for now)."""
        return await self.clock.sleep(self.next(), wake)

    def reset(self) -> None:
        self._attempt = 0

    @property
    def failing(self) -> bool:
        return self._attempt > 0
