"""Go-style durations (``500ms``, ``30s``, ``5m``, ``1h``; ``90d`` for retentions) in config and annotations."""

from __future__ import annotations

import re

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
