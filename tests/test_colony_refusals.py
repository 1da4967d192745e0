"""Refused callers are audited without letting a stranger fill the disk."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from coral_colony.model import AuditEntry, AuditKind
from coral_colony.refusals import FIELD_CHARS, MAX_CALLERS, Refusals, caller_of


class Log:
    def __init__(self) -> None:
        self.rows: list[AuditEntry] = []

    async def __call__(self, entries: Sequence[AuditEntry]) -> None:
        self.rows.extend(entries)


def refusal(at: float, agent_id: str = "node-agent-x") -> AuditEntry:
    return AuditEntry(time=at, kind=AuditKind.AUTH, action="agent.refused", actor=agent_id, agent_id=agent_id)


def test_a_flood_of_huge_refused_calls_is_one_short_row_and_one_count_a_minute() -> None:
    log = Log()
    refusals = Refusals(log)

    async def flood() -> None:
        for i in range(200):  # a different, 1 MB agent id each time: the caller's choice, not a key
            entry = refusal(1000.0 + i * 0.1, agent_id=f"{i}-" + "x" * 1_000_000)
            await refusals.refused(entry, peer=f"ipv4:10.0.0.9:{40000 + i}", reason="wrong secret")
        await refusals.flush(1061.0)

    asyncio.run(flood())
    assert len(log.rows) == 2
    first, summary = log.rows
    assert max(len(getattr(first, f)) for f in ("actor", "agent_id", "detail")) <= FIELD_CHARS
    assert first.detail.endswith("(from ipv4:10.0.0.9)")
    assert summary.detail.startswith("… and 199 more like it")
    assert sum(len(str(r)) for r in log.rows) < 4_000, "bytes, not megabytes"


def test_callers_and_reasons_are_counted_apart_and_the_next_minute_starts_again() -> None:
    log = Log()
    refusals = Refusals(log)

    async def calls() -> None:
        await refusals.refused(refusal(0.0), peer="ipv4:10.0.0.1:5000", reason="no token")
        await refusals.refused(refusal(1.0), peer="ipv4:10.0.0.1:5001", reason="no token")
        await refusals.refused(refusal(2.0), peer="ipv4:10.0.0.2:5000", reason="no token")
        await refusals.refused(refusal(3.0), peer="ipv4:10.0.0.1:5002", reason="unknown token")
        await refusals.refused(refusal(70.0), peer="ipv4:10.0.0.1:5003", reason="no token")

    asyncio.run(calls())
    details = [r.detail for r in log.rows]
    assert [d.split(" (from")[0] for d in details if not d.startswith("…")] == ["", "", "", ""]
    assert len(log.rows) == 5  # three firsts, the summary of 10.0.0.1's "no token" minute, and its next first
    assert sum(d.startswith("… and 1 more like it") for d in details) == 1


def test_memory_stays_bounded_whatever_the_number_of_callers() -> None:
    log = Log()
    refusals = Refusals(log)

    async def many() -> None:
        for i in range(MAX_CALLERS + 500):
            await refusals.refused(refusal(5.0), peer=f"ipv6:[fd00::{i:x}]:443", reason="no token")

    asyncio.run(many())
    assert len(refusals._windows) == MAX_CALLERS + 1  # the last 500 share one window
    assert len(log.rows) == MAX_CALLERS + 1


def test_a_caller_is_its_address_without_the_port() -> None:
    assert caller_of("ipv4:127.0.0.1:53122") == "ipv4:127.0.0.1"
    assert caller_of("ipv6:[::1]:443") == "ipv6:[::1]"
    assert caller_of("unix:/run/x.sock") == "unix:/run/x.sock"
    assert caller_of("") == "unknown peer"
