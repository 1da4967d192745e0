"""One value's checks: each returns the typed value or raises Invalid saying what the value should be.

What is accepted is what the documented keys always took: ``30s`` or ``30``
for a duration, ``"3"`` or ``3.0`` for an integer, ``on``/``off`` for a flag
set in the environment.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from coral_base.durations import parse_duration
from coral_base.errors import ConfigError
from coral_base.listen import split_listen
from coral_base.sizes import parse_size
from cri_agent.model import Transport

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)


class Invalid(ValueError):
    """One value's problem; the reader prefixes it with the key."""


_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})
_INTEGER = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*(?:\.0+)?", re.ASCII)


def text(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid("Input should be a valid string")
    return str(value)


def boolean(value: object) -> bool:
    """true/false, 1/0, or (as written in the environment) on/off, yes/no, t/f, y/n in any case."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value.lower() not in _TRUE | _FALSE:
            raise Invalid("Input should be a valid boolean, unable to interpret input")
        return value.lower() in _TRUE
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, int):
        raise Invalid("Input should be a valid boolean, unable to interpret input")
    raise Invalid("Input should be a valid boolean")


def integer(*, ge: int | None = None, le: int | None = None) -> Callable[[object], int]:
    """A whole number (``3``, ``3.0``, ``"3"``), within [ge, le]."""

    def check(value: object) -> int:
        if isinstance(value, int):  # bool too: true is 1
            number = int(value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise Invalid("Input should be a finite number")
            if not value.is_integer():
                raise Invalid("Input should be a valid integer, got a number with a fractional part")
            number = int(value)
        elif isinstance(value, str):
            if not _INTEGER.fullmatch(value.strip()):
                raise Invalid("Input should be a valid integer, unable to parse string as an integer")
            number = int(value.strip().partition(".")[0])
        else:
            raise Invalid("Input should be a valid integer")
        return _within(number, ge=ge, le=le)

    return check


def number(value: object) -> float:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            if value.isascii():
                return float(value)
        except ValueError:
            pass
        raise Invalid("Input should be a valid number, unable to parse string as a number")
    raise Invalid("Input should be a valid number")


def positive(check: Callable[[object], float]) -> Callable[[object], float]:
    def checked(value: object) -> float:
        result = check(value)
        if not result > 0:  # NaN too
            raise Invalid("Input should be greater than 0")
        return result

    return checked


def duration(value: object) -> float:
    """``500ms``, ``30s``, ``5m``, ``1h`` or seconds (coral_base.durations).

    A number (not a string) is taken as is, unchecked for > 0: ``positive`` adds that where the model needs it.
    """
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise Invalid(f"Value error, {exc}") from None
    return number(value)


def size(value: object) -> int:
    """A byte count: ``100Mi``, ``1G`` or a number of bytes (coral_base.sizes), > 0."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Invalid("Input should be a size such as 100Mi or a number of bytes")
    try:
        return parse_size(value)
    except ValueError as exc:
        raise Invalid(f"Value error, {exc}") from None


def path(value: object) -> Path:
    if isinstance(value, Path):
        return value
    if isinstance(value, str):
        return Path(value)
    raise Invalid("Input should be a path (a string)")


def choice(kind: type[E]) -> Callable[[object], E]:
    """One of an enum's values, exactly as written in the docs (``off``, not ``OFF``)."""

    def check(value: object) -> E:
        for member in kind:
            if isinstance(value, str) and value == member.value:
                return member
        raise Invalid(f"Input should be {_one_of([repr(m.value) for m in kind])}")

    return check


def listen_address(value: object) -> str:
    """``host:port`` to listen on, or "" for no listener."""
    address = text(value)
    if address:
        try:
            split_listen(address, key="address")
        except ConfigError as exc:
            raise Invalid(str(exc).removeprefix("address ")) from None
    return address


def transport(value: object) -> Transport:
    if value == "TCP":
        return "TCP"
    if value == "UDP":
        return "UDP"
    raise Invalid("Input should be 'TCP' or 'UDP'")


def optional(check: Callable[[object], T]) -> Callable[[object], T | None]:
    def checked(value: object) -> T | None:
        return None if value is None else check(value)

    return checked


def label_pair(pair: str) -> tuple[str, str]:
    """``"app=payments-api"`` -> ``("app", "payments-api")``."""
    name, sep, value = pair.partition("=")
    if not sep or not name.strip():
        raise Invalid(f"{pair!r} is not key=value (e.g. app=payments-api)")
    return name.strip(), value.strip()


def parse_label_pairs(pairs: Sequence[str], *, key: str) -> list[tuple[str, str]]:
    """``["app=payments-api"]`` -> ``[("app", "payments-api")]``, or ConfigError naming ``key`` (a flag)."""
    try:
        return [label_pair(pair) for pair in pairs]
    except Invalid as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _within(number: int, *, ge: int | None, le: int | None) -> int:
    if ge is not None and number < ge:
        raise Invalid(f"Input should be greater than or equal to {ge}")
    if le is not None and number > le:
        raise Invalid(f"Input should be less than or equal to {le}")
    return number


def _one_of(options: Sequence[str]) -> str:
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"
