"""The colony CA rotates with an overlap window: one timeline of real colonies, real TLS and real (short)
certificate lifetimes on the system clock, so it takes seconds of wall time (the file-level checks of
``coral colony ca rotate|finish`` are unit tests: tests/test_colony_ca_rotation.py)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from cryptography import x509

from coral_base.backoff import Backoff
from coral_cli import main
from cri_agent.model import ServiceKey
from cri_agent.sync import ColonySync
from tests.colony import enrolling_sync, free_port, serving
from tests.test_colony_ca_rotation import certificates
from tests.test_colony_tls import init, registered
from tests.test_sync import svc

LIFETIME_S = 6.0  # agents renew after 4 s


@dataclass(slots=True)
class Timeline:
    """What the agents saw and held along the rotation."""

    previous_ca: x509.Certificate
    new_ca: x509.Certificate | None = None
    renewed_into: x509.Certificate | None = None  # the running agent's certificate once it renewed in the window
    renewals: list[str] = field(default_factory=list)  # audited: renewed, not enrolled again
    kept_syncing_after_finish: bool = False
    away_reasons: list[str] = field(default_factory=list)  # an agent away the whole window, pinning the old CA
    away_reasons_new_ca: list[str] = field(default_factory=list)  # the same agent once its caFile is updated
    expired_back: bool = False  # an agent whose certificate expired while away: registered again
    expired_cert: x509.Certificate | None = None
    expired_key_kept: bool = False
    enrolled_again: list[str] = field(default_factory=list)
    old_ca_file_enrolls: bool = False  # the running agent, its caFile still the previous CA's, enrolling after finish


def certificate_of(sync: ColonySync) -> x509.Certificate:
    assert sync.identity is not None and sync.identity.current is not None
    return x509.load_pem_x509_certificate(sync.identity.current.certificate_pem.encode())


def audit_details(directory: Path, action: str) -> list[str]:
    with sqlite3.connect(f"file:{directory / 'colony.db'}?mode=ro", uri=True) as db:
        return [row[0] for row in db.execute("SELECT detail FROM audit WHERE action = ? ORDER BY id", (action,))]


async def until(done: Callable[[], bool], *, within: float = 15.0) -> None:
    """Poll ``done`` on the real clock: it reads the registry's file and the agents' records, no event."""
    async with asyncio.timeout(within):
        while not done():  # noqa: ASYNC110 - nothing to wait on but the state itself
            await asyncio.sleep(0.02)


def agent(directory: Path, port: int, node: str, *, ca: Path, identity: Path) -> ColonySync:
    return enrolling_sync(
        f"127.0.0.1:{port}",
        directory,
        node=node,
        identity_path=identity,
        ca=ca,
        heartbeat_interval_s=0.2,  # the loop checks whether renewal is due at least this often
        backoff=Backoff(initial=0.05, maximum=0.2),
    )


async def reasons_until_refused(sync: ColonySync, reasons: list[str]) -> None:
    """Run ``sync`` until it says why it is not connected."""

    async def said(connected: bool, reason: str) -> None:
        if not connected:
            reasons.append(reason)

    sync.on_state = said
    task = asyncio.create_task(sync.run())
    try:
        await until(lambda: bool(reasons))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def rotation_timeline(directory: Path, pinned: Path) -> Timeline:
    port = free_port()
    ids = directory.parent
    timeline = Timeline(previous_ca=certificates(directory / "ca.crt")[0])
    away = agent(directory, port, "node-b", ca=pinned, identity=ids / "b.json")
    assert away.identity is not None
    async with serving(directory, port=port):  # a day's certificate: node-b's stays valid all along
        await away.identity.ensure()
    running = agent(directory, port, "node-a", ca=pinned, identity=ids / "a.json")
    expiring = agent(directory, port, "node-c", ca=pinned, identity=ids / "c.json")
    assert expiring.identity is not None
    running.set_services({ServiceKey(svc(1).key): svc(1)}, {})
    task = asyncio.create_task(running.run())
    try:
        async with serving(directory, port=port, agent_cert_lifetime=LIFETIME_S):
            await until(lambda: svc(1).key in registered(directory))
            await expiring.identity.ensure()
        assert main(["colony", "ca", "rotate", "--dir", str(directory)]) == 0
        timeline.new_ca = certificates(directory / "ca.crt")[0]
        async with serving(directory, port=port, agent_cert_lifetime=LIFETIME_S):
            await until(lambda: certificate_of(running).issuer == timeline.new_ca.subject)  # type: ignore[union-attr]
            timeline.renewed_into = certificate_of(running)
            timeline.renewals = audit_details(directory, "agent.renewed")
        assert main(["colony", "ca", "finish", "--dir", str(directory), "--min-overlap", "0s"]) == 0
        async with serving(directory, port=port, agent_cert_lifetime=LIFETIME_S):
            running.set_services({ServiceKey(svc(2).key): svc(2)}, {})
            await until(lambda: svc(2).key in registered(directory))
            timeline.kept_syncing_after_finish = True
            await reasons_until_refused(away, timeline.away_reasons)
            updated = agent(directory, port, "node-b", ca=directory / "ca.crt", identity=ids / "b.json")
            await reasons_until_refused(updated, timeline.away_reasons_new_ca)
            assert expiring.identity.current is not None
            key = expiring.identity.current.key_pem
            await asyncio.sleep(max(0.0, expiring.identity.current.not_after - time.time()))
            back = agent(directory, port, "node-c", ca=directory / "ca.crt", identity=ids / "c.json")
            back.set_services({ServiceKey(svc(3).key): replace(svc(3), node_name="node-c")}, {})
            back_task = asyncio.create_task(back.run())
            await until(lambda: svc(3).key in registered(directory))
            back_task.cancel()
            await asyncio.gather(back_task, return_exceptions=True)
            timeline.expired_back = True
            timeline.expired_cert = certificate_of(back)
            timeline.expired_key_kept = (
                back.identity is not None
                and back.identity.current is not None
                and (back.identity.current.key_pem == key)
            )
            timeline.enrolled_again = audit_details(directory, "agent.enrolled")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            restarted = agent(directory, port, "node-a", ca=pinned, identity=ids / "a.json")
            assert restarted.identity is not None
            current = await restarted.identity.ensure()
            restarted.identity.current = replace(current, not_after=time.time())  # as if it had expired
            timeline.old_ca_file_enrolls = (await restarted.identity.ensure()).not_after > time.time()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return timeline


@pytest.fixture(scope="module")
def timeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Timeline]:
    directory = tmp_path_factory.mktemp("rotation") / "colony"
    init(directory)
    pinned = directory.parent / "agents-ca.crt"  # the agents' CA Secret, left as it was before the rotation
    shutil.copy(directory / "ca.crt", pinned)
    yield asyncio.run(rotation_timeline(directory, pinned))


def test_an_agent_running_through_the_window_renews_into_the_new_ca(timeline: Timeline) -> None:
    assert timeline.new_ca is not None and timeline.renewed_into is not None
    timeline.renewed_into.verify_directly_issued_by(timeline.new_ca)
    assert len(timeline.renewals) >= 1


def test_after_finish_an_agent_pinning_only_the_previous_ca_still_syncs(timeline: Timeline) -> None:
    assert timeline.kept_syncing_after_finish


def test_after_finish_an_agent_pinning_only_the_previous_ca_still_enrolls(timeline: Timeline) -> None:
    assert timeline.old_ca_file_enrolls  # the public endpoint trusts the CAs the colony sent, as the agent one


def test_an_agent_away_the_whole_window_is_refused_and_told_why(timeline: Timeline) -> None:
    assert "is colony.caFile the colony's current ca.crt (after a CA rotation, the new one" in timeline.away_reasons[0]
    assert "it does not take this agent's certificate" in timeline.away_reasons_new_ca[0]
    assert "coral agents revoke node-b" in timeline.away_reasons_new_ca[0]


def test_an_agent_whose_certificate_expired_while_away_enrolls_again_with_the_same_key(timeline: Timeline) -> None:
    assert timeline.new_ca is not None and timeline.expired_cert is not None
    timeline.expired_cert.verify_directly_issued_by(timeline.new_ca)
    assert (timeline.expired_back, timeline.expired_key_kept) == (True, True)
    assert sum("enrolled again (same key)" in detail for detail in timeline.enrolled_again) == 1  # node-c's only
