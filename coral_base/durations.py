"""Go-style durations (``500ms``, ``30s``, ``1h30m``; ``90d`` for retentions) in flags, config and annotations.

The words are Go's ``time.ParseDuration`` grammar, read by ``durationpy``
(the Kubernetes client's own parser, so ``1h30m`` means here what it means
in a manifest), plus ``d`` for days. A bare number is seconds, where the
caller allows it (``parse_span`` does not).
"""

from __future__ import annotations

import argparse
import datetime
import math
import re
import time
from collections.abc import Callable

_BARE_NUMBER = re.compile(r"^\d+(?:\.\d+)?$", re.ASCII)  # ASCII: no fullwidth digits
_ASCII_WORD = re.compile(r"^[0-9a-zA-Z.µμ]+$")  # what a Go duration is made of (durationpy takes any digit)
_EXAMPLES = "e.g. 500ms, 30s, 5m, 1h30m"


class NotADuration(ValueError):
    """The text does not read as a duration."""


class NotPositive(ValueError):
    """A duration, but zero or negative."""


def _seconds(text: str) -> float:
    word = text.strip()
    if _BARE_NUMBER.match(word):
        return float(word)
    if not _ASCII_WORD.match(word) or any(c.isdigit() and not c.isascii() for c in word):
        raise NotADuration(f"{text!r} is not a duration ({_EXAMPLES})")
    import durationpy  # a unit word to read: flags with defaults parse none

    try:
        return float(durationpy.from_str(word).total_seconds())
    except (durationpy.DurationError, OverflowError):
        raise NotADuration(f"{text!r} is not a duration ({_EXAMPLES})") from None


def parse_duration(value: str | float | int) -> float:
    """``"30s"``, ``"1h30m"``, ``"500ms"``, ``"2d"`` or a number of seconds -> seconds (> 0)."""
    seconds = float(value) if isinstance(value, int | float) else _seconds(value)
    if not math.isfinite(seconds):
        raise NotADuration(f"{value!r} is not a duration ({_EXAMPLES})")
    if seconds <= 0:
        raise NotPositive(f"duration must be positive, got {value!r}")
    return seconds


def parse_span(value: str) -> float:
    """A duration that must say its unit (``90d``, ``2160h``): for spans where a bare number misleads.

    ``--audit-retention 400`` read as 400 seconds would delete all but the
    last seven minutes of the audit log; with a unit required it is an error.
    """
    if _BARE_NUMBER.match(value.strip()):
        raise NotADuration(f"{value!r} needs a unit (e.g. 90d, 2160h): a bare number is ambiguous here")
    return parse_duration(value)


def parse_timeout(value: str) -> float:
    """``--request-timeout``: a duration, or ``0`` for none (as kubectl's)."""
    if value.strip() in ("0", "0s"):
        return 0.0
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


def parse_since(value: str, *, now: float) -> float:
    """``--since``: ``10m`` (back from ``now``) or an ISO 8601 / RFC 3339 time (local unless it names a zone)."""
    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise NotADuration(
            f"{value!r}: give a duration back (10m, 1h30m) or a time (2026-11-25T10:00:00, 2026-11-25T09:00:00Z)"
        ) from None
    return moment.timestamp()


def since_flag(parser: argparse.ArgumentParser) -> None:
    """``--since DURATION|TIME``: unix seconds in ``args.since`` (0.0 when not given)."""
    parser.add_argument(
        "--since",
        type=flag(lambda text: parse_since(text, now=time.time())),
        default=0.0,
        metavar="DURATION|TIME",
        help="only entries since then: a duration back (10m, 1h30m) or a time (2026-11-25T10:00:00Z)",
    )
