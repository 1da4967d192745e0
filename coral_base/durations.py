"""Go-style durations (``500ms``, ``30s``, ``5m``, ``1h``; ``90d`` for retentions) in config and annotations."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.ASCII)  # ASCII: no fullwidth digits
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class NotADuration(ValueError):
    """The text does not read as a duration."""


class NotPositive(ValueError):
    """A duration, but zero or negative."""


def parse_duration(value: str | float | int) -> float:
    """``"30s"``, ``"5m"``, ``"500ms"``, ``"1h"`` or a number of seconds -> seconds (> 0)."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if match is None:
            raise NotADuration(f"{value!r} is not a duration (e.g. 500ms, 30s, 5m, 1h)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise NotPositive(f"duration must be positive, got {value!r}")
    return seconds


def parse_span(value: str) -> float:
    """A duration that must say its unit (``90d``, ``2160h``): for spans where a bare number misleads.

    ``--audit-retention 400`` read as 400 seconds would delete all but the
    last seven minutes of the audit log; with a unit required it is an error.
    """
    match = _DURATION.match(value)
    if match is not None and match.group(2) is None:
        raise NotADuration(f"{value!r} needs a unit (e.g. 90d, 2160h): a bare number is ambiguous here")
    return parse_duration(value)


def flag(parse: Callable[[str], float]) -> Callable[[str], float]:
    """``parse`` as an argparse type: a bad value prints its own message, not "invalid parse_duration value"."""

    def typed(text: str) -> float:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    typed.__name__ = parse.__name__
    return typed
