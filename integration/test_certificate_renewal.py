"""An agent renews its certificate before it expires: real colonies, real TLS and a real (6 s) certificate
lifetime on the system clock, so it takes seconds of wall time (the other enrollment tests are unit tests:
tests/test_colony_enrollment.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cri_agent.identity import load
from tests.test_colony_enrollment import agent, colony_dir, run, running, synced, until
from tests.test_sync import svc


def test_the_certificate_is_renewed_before_it_expires_and_the_old_one_kept_until_then(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, str, int, int]:
        async with (
            running(colony_dir(tmp_path), agent_cert_lifetime=6.0) as colony,
            synced(agent(colony, "node-a", svc(1), heartbeat_interval_s=0.2)) as sync,
        ):
            assert sync.identity is not None and sync.identity.current is not None
            first = sync.identity.current.certificate_pem
            path = colony.directory.parent / "node-a.json"

            def kept() -> str:
                record = load(path)
                return record.certificate_pem if record else ""

            await until(lambda: kept() != first, within=30)  # renewed at 4 s, and kept on disk
            sync.set_services({svc(2).key: replace(svc(2), node_name="node-a")}, {})
            await until(lambda: sync.connected and sync.in_sync)  # and speaking with the new certificate
            return first, kept(), len(colony.audit("agent.renewed")), len(colony.audit("agent.enrolled"))

    first, renewed, renewals, enrollments = run(scenario())
    assert first != renewed and renewals >= 1 and enrollments == 1
