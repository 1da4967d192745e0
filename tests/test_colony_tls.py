"""`coral colony init`, and agents over TLS with a pinned CA against what `coral colony start` runs,
in this process. The agent runs on a virtual clock (its retries take no real time); the colony on the
real one, so that no timer of its own moves virtual time while a handshake is in flight."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coral_base.backoff import Backoff
from coral_base.clock import VirtualClock
from coral_base.vocabulary import EnrollMethod
from coral_cli import main
from cri_agent.enrollment import Credential
from cri_agent.model import ServiceKey
from cri_agent.sync import ColonySync
from tests.colony import enrolling_sync, free_port, logged, serving
from tests.test_sync import svc


def init(directory: Path) -> None:
    assert main(["colony", "init", str(directory), "--colony-id", "prod", "--host", "127.0.0.1"]) == 0


def test_init_writes_the_identity_with_private_files_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init(tmp_path / "colony")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "colony").iterdir()}
    again = main(["colony", "init", str(tmp_path / "colony")])
    assert (again, "already holds a colony" in capsys.readouterr().err) == (2, True)
    assert {name: modes[name] for name in ("ca.key", "server.key", "colony-secret")} == {
        "ca.key": 0o600,
        "server.key": 0o600,
        "colony-secret": 0o600,
    }
    assert {"ca.crt", "server.crt", "colony.yaml"} <= set(modes)


@pytest.fixture
def colony(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[tuple[Path, int]]:
    caplog.set_level(logging.DEBUG)  # everything the colony and the agent log: the secret in none of it
    directory = tmp_path / "colony"
    init(directory)
    yield directory, free_port()
    assert (directory / "colony-secret").read_text().strip() not in logged(caplog)


@dataclass(slots=True)
class CountingBackoff(Backoff):
    waits: int = 0

    def next(self) -> float:
        self.waits += 1
        return Backoff.next(self)


def sync_with(directory: Path, port: int, *, ca: Path, clock: VirtualClock, secret: str | None = None) -> ColonySync:
    return enrolling_sync(
        f"127.0.0.1:{port}",
        directory,
        node="node-a",
        identity_path=directory.parent / f"identity-{uuid.uuid4().hex}.json",
        ca=ca,
        clock=clock,
        heartbeat_interval_s=0.2,
        backoff=CountingBackoff(initial=0.05, maximum=0.2, clock=clock),
        credential=Credential(EnrollMethod.SECRET, secret) if secret else None,
    )


def run_until(directory: Path, port: int, sync: ColonySync, clock: VirtualClock, done: Callable[[], bool]) -> float:
    """The colony serving and the sync running until ``done()``; the virtual seconds that took.

    A condition, not a duration: each attempt is a real TLS handshake, which virtual time must not
    outrun."""

    async def scenario() -> float:
        async with serving(directory, port=port):
            sync.set_services({ServiceKey(svc(1).key): svc(1)}, {})
            task = asyncio.create_task(sync.run())
            await clock.until(done, within=30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return clock.monotonic()

    return clock.run(scenario())


def registered(directory: Path) -> list[str]:
    if not (directory / "colony.db").exists():
        return []
    with sqlite3.connect(f"file:{directory / 'colony.db'}?mode=ro", uri=True) as db:
        return [row[0] for row in db.execute("SELECT key FROM services")]


def test_an_agent_pinning_the_colony_ca_registers_over_tls(colony: tuple[Path, int]) -> None:
    directory, port = colony
    clock = VirtualClock()
    sync = sync_with(directory, port, ca=directory / "ca.crt", clock=clock)
    run_until(directory, port, sync, clock, lambda: sync.in_sync)
    assert (sync.in_sync, registered(directory)) == (True, [svc(1).key])


def test_a_colony_signed_by_another_ca_is_refused_with_a_clear_reason(
    colony: tuple[Path, int], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory, port = colony
    init(tmp_path / "impostor")
    clock = VirtualClock()
    sync = sync_with(directory, port, ca=tmp_path / "impostor" / "ca.crt", clock=clock)
    assert isinstance(sync.backoff, CountingBackoff)
    waits = sync.backoff
    run_until(directory, port, sync, clock, lambda: waits.waits >= 3)
    assert (sync.connected, registered(directory)) == (False, [])
    assert "TLS handshake with the colony" in logged(caplog) and "colony.caFile" in logged(caplog)


def test_a_wrong_secret_is_refused_and_says_what_to_check(
    colony: tuple[Path, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    directory, port = colony
    clock = VirtualClock()
    sync = sync_with(directory, port, ca=directory / "ca.crt", secret="not-the-secret", clock=clock)
    assert isinstance(sync.backoff, CountingBackoff)
    waits = sync.backoff
    took = run_until(directory, port, sync, clock, lambda: waits.waits >= 8)
    # waits of 0.05, 0.1, 0.2, 0.2... (+/- 20 %): seven of them take a second, retries are no hot loop
    assert (sync.connected, registered(directory), took >= 0.8 * 1.15) == (False, [], True)
    assert "UNAUTHENTICATED" in logged(caplog) and "check the agent's colony Secret" in logged(caplog)
