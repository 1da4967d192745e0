"""Backoff: doubling, jitter bounds, cap, and no overflow however long an outage lasts."""

from __future__ import annotations

import random

from coral_base.backoff import Backoff


def test_delays_double_up_to_the_maximum_within_the_jitter() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0, jitter=0.2, rng=random.Random(7))
    delays = [backoff.next() for _ in range(6)]
    bases = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(base * 0.8 <= d <= base * 1.2 for d, base in zip(delays, bases, strict=True))


def test_a_very_long_outage_never_overflows() -> None:
    backoff = Backoff(initial=0.05, maximum=30.0, jitter=0.0)
    assert [backoff.next() for _ in range(5000)][-1] == 30.0


def test_reset_starts_again_from_the_initial_delay() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0, jitter=0.0)
    for _ in range(10):
        backoff.next()
    backoff.reset()
    assert (backoff.next(), backoff.failing) == (0.5, True)
