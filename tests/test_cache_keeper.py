"""The cache keeper: a failing or vanished cache file never stops discovery, and memory is written
back with one event saying what happened. A real SQLite file; failures injected at the writer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from coral_base.backoff import Backoff
from coral_base.clock import VirtualClock
from cri_agent import cache_keeper
from cri_agent.cache.reader import CacheReader
from cri_agent.cache.writer import Cache, CacheContents, CacheWriter
from cri_agent.cache_keeper import CacheKeeper
from cri_agent.conditions import Condition
from cri_agent.discovery.engine import KnownState
from cri_agent.errors import CacheError
from cri_agent.model import EventKind
from tests.test_cache import decision, operation, reconciliation, service

_T = TypeVar("_T")


class BreakableWriter(CacheWriter):
    """A real writer whose file can be made to refuse writes (as `chattr +i` or a full disk would)."""

    broken = False

    async def call(self, fn: Callable[[Cache], _T]) -> _T:
        if self.broken:
            raise CacheError(f"cache {self.path} write failed: database or disk is full")
        return await super().call(fn)

    async def reopen(self) -> None:
        if self.broken:
            raise CacheError(f"cache {self.path} write failed: database or disk is full")
        await super().reopen()


class Harness:
    def __init__(self, path: Path) -> None:
        self.writer = BreakableWriter(path)
        self.clock = VirtualClock(start=1000.0)
        self.states: list[tuple[bool, str]] = []
        self.memory = CacheContents(
            services={},
            pods={},
            health=[],
            conditions=[Condition("runtime", True, "containerd", 1.0, 1.0)],
            meta={"agent_id": "a"},
        )
        self.keeper = CacheKeeper(
            self.writer,
            node_name="node-a",
            contents=lambda: self.memory,
            on_state=self._state,
            clock=self.clock,
            backoff=Backoff(initial=1.0, maximum=1.0, jitter=0.0),
        )

    async def _state(self, ok: bool, reason: str) -> None:
        self.states.append((ok, reason))

    def read(self) -> CacheReader:
        return CacheReader(self.writer.path)


def run(scenario: Callable[[Harness], Any], tmp_path: Path) -> Any:
    async def main() -> Any:
        harness = Harness(tmp_path / "agent.db")
        await harness.keeper.open()
        try:
            return await scenario(harness)
        finally:
            await harness.writer.close()

    return asyncio.run(main())


def test_an_outage_is_reported_once_held_in_memory_and_written_back_with_one_event(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        first = reconciliation([service(8080)], events=1)
        h.writer.broken = True
        await h.keeper.apply(first, now=h.clock.time(), touch=False, retention=(1000, 30))
        h.clock.advance(0.5)
        await h.keeper.check()  # retry not due yet
        await h.keeper.state(lambda c: c.set_meta({"x": "1"}))  # skipped: memory has it
        h.memory = CacheContents({s.key: s for s in [service(8080)]}, {decision().uid: decision()}, [], [], {})
        h.clock.advance(1.0)
        await h.keeper.check()  # due, still broken
        assert [ok for ok, _ in h.states] == [True, False], "reported once"
        assert "database or disk is full" in h.states[-1][1]
        h.writer.broken = False
        h.clock.advance(1.0)
        await h.keeper.check()

        cache = h.read()
        events = cache.events()
        assert [e.kind for e in events] == ["added", "error"]
        assert events[0].at == 1000.0, "the held event keeps its own time"
        assert "refused writes" in events[1].reason and "1 events and 0 operations" in events[1].reason
        assert [s.key for s in cache.services()] == [service(8080).key]
        assert h.states[-1] == (True, "writable") and h.keeper.retry_at == float("inf")

    run(scenario, tmp_path)


def test_past_the_memory_bound_the_oldest_events_are_dropped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_keeper, "BACKLOG_EVENTS", 2)

    async def scenario(h: Harness) -> None:
        h.keeper._events = type(h.keeper._events)(maxlen=2)
        h.writer.broken = True
        for _ in range(5):
            await h.keeper.apply(
                reconciliation([service(8080)], events=1), now=h.clock.time(), touch=False, retention=(9, 9)
            )
        h.writer.broken = False
        h.clock.advance(5)
        await h.keeper.check()
        [*held, recovery] = h.read().events()
        assert len(held) == 2 and "3 older ones exceeded the memory bound" in recovery.reason

    run(scenario, tmp_path)


def test_a_deleted_file_is_recreated_from_memory_with_the_gap_recorded(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.keeper.apply(
            reconciliation([service(8080)], events=1), now=h.clock.time(), touch=False, retention=(9, 9)
        )
        h.memory = CacheContents({service(8080).key: service(8080)}, {}, [], [], {"agent_id": "a"})
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"agent.db{suffix}").unlink(missing_ok=True)
        await h.keeper.check()
        assert h.states[-1][0] is False and "was deleted while the agent ran" in h.states[-1][1]
        h.clock.advance(1.0)
        await h.keeper.check()
        cache = h.read()
        [gap] = cache.events()
        assert "was deleted while the agent ran" in gap.reason and "recreated from memory" in gap.reason
        assert [s.key for s in cache.services()] == [service(8080).key]
        assert cache.meta()["agent_id"] == "a"

    run(scenario, tmp_path)


def test_a_file_that_cannot_be_written_at_start_is_read_and_the_agent_starts(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], bool]:
        cache = Cache(tmp_path / "agent.db")
        cache.apply(
            reconciliation([service(8080)]), node_name="n", now=1.0, touch=False, retention_rows=9, retention_days=9
        )
        cache.close()
        h = Harness(tmp_path / "agent.db")
        h.writer.open = _refuse  # type: ignore[method-assign]
        known = await h.keeper.open()
        await h.writer.close()
        return list(known.services), h.states[-1][0]

    assert asyncio.run(scenario()) == ([service(8080).key], False)


async def _refuse(*, now: float) -> KnownState:
    raise CacheError("cache agent.db cannot be opened: attempt to write a readonly database")


@pytest.mark.parametrize("damage", ["not a database", "malformed"])
def test_a_corrupt_cache_is_moved_aside_and_the_agent_starts_afresh(tmp_path: Path, damage: str) -> None:
    """A corrupt file on a hostPath would fail every start the same way: it is kept aside, never reused."""
    path = tmp_path / "agent.db"
    if damage == "not a database":
        path.write_bytes(b"this was never SQLite " * 200)
    else:  # a real cache whose pages were overwritten in the middle
        cache = Cache(path)
        cache.apply(
            reconciliation([service(8080)]), node_name="n", now=1.0, touch=False, retention_rows=9, retention_days=9
        )
        cache.close()
        with path.open("r+b") as damaged:
            damaged.seek(100)
            damaged.write(b"\xff" * 8000)
    damaged_bytes = path.read_bytes()

    async def scenario() -> tuple[int, bool]:
        h = Harness(path)
        known = await h.keeper.open()
        await h.writer.close()
        return len(known.services), h.states[-1][0]

    assert asyncio.run(scenario()) == (0, True), "started with an empty, writable cache"
    moved = sorted(p for p in tmp_path.iterdir() if p.name.startswith("agent.db.corrupt-"))
    aside = moved[0]  # and its -shm / -wal, when the damaged file had them
    assert all(p.name in (aside.name, f"{aside.name}-shm", f"{aside.name}-wal") for p in moved)
    assert aside.read_bytes() == damaged_bytes, "the corrupt file is kept as it was, for a post-mortem"
    [event] = [e for e in CacheReader(path).events(kind=EventKind.ERROR) if "corrupt" in e.reason]
    assert f"moved aside to {aside}" in event.reason and event.fields == ("cache",)


def test_an_operation_is_recorded_and_the_table_aged_on_the_keepers_clock(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> list[str]:
        await h.keeper.record_operation(operation(h.clock.time(), "old"), retention=(100, 1))
        h.clock.advance(2 * 86400.0)
        await h.keeper.record_operation(operation(h.clock.time(), "new"), retention=(100, 1))
        with h.read() as reader:
            return [row.operator for row in reader.operations()]

    assert run(scenario, tmp_path) == ["new"]
