"""The agent's named conditions (runtime, events, proc, cache, kubernetes, colony).

Each is ok or not, with a reason and the time it last flipped. They live in
memory: the status file shows them while the agent runs, and the cache
keeps a copy for auditors (written when it can be).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# Every condition the agent checks (what `coral agent status` and the metrics name).
CONDITION_NAMES = ("runtime", "events", "proc", "cache", "kubernetes", "colony")


@dataclass(frozen=True, slots=True)
class Condition:
    name: str
    ok: bool
    reason: str
    since: float  # when ``ok`` last changed
    updated: float  # when the reason last changed


class Conditions:
    def __init__(self) -> None:
        self._by_name: dict[str, Condition] = {}

    def set(self, name: str, *, ok: bool, reason: str, now: float) -> Condition | None:
        """Record a condition; the new one when it changed, else None."""
        old = self._by_name.get(name)
        if old is not None and (old.ok, old.reason) == (ok, reason):
            return None
        since = old.since if old is not None and old.ok == ok else now
        self._by_name[name] = condition = Condition(name, ok, reason, since, now)
        return condition

    def get(self, name: str) -> Condition | None:
        return self._by_name.get(name)

    def ok(self, name: str, *, default: bool) -> bool:
        condition = self._by_name.get(name)
        return default if condition is None else condition.ok

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Condition]:
        return iter(sorted(self._by_name.values(), key=lambda c: c.name))
