"""The colony's housekeeping (what `coral colony start` runs besides the gRPC services), on a virtual clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

from coral_base.clock import VirtualClock
from coral_colony.identity import init_colony
from coral_colony.registry import Registry
from cri_agent.sync import ColonyEndpoint, ColonySync
from tests.colony import free_port, serving
from tests.test_sync import svc


def test_a_silent_agent_is_marked_unreachable_then_dropped_on_the_colonys_clock(tmp_path: Path) -> None:
    directory = tmp_path / "colony"
    identity = init_colony(directory, colony_id="c1", hosts=["127.0.0.1"])
    clock = VirtualClock()
    port = free_port()

    async def scenario() -> tuple[float, float, list[str]]:
        async with serving(directory, port=port, clock=clock, heartbeat_timeout=45, ttl=600):
            sync = ColonySync(
                ColonyEndpoint(
                    address=f"127.0.0.1:{port}",
                    colony_id="c1",
                    secret=identity.secret(),
                    agent_id="node-agent-a",
                    node_name="node-a",
                    version="0.1.0",
                    node_labels={},
                    ca_pem=identity.ca_cert.read_bytes(),
                ),
                clock=clock,
            )
            sync.set_services({svc(1).key: svc(1)}, {})
            task = asyncio.create_task(sync.run())
            await sync.session()
            task.cancel()  # the agent falls silent: no heartbeat, no goodbye
            registry = Registry(directory / "colony.db", read_only=True)
            # Measured from the colony's own record: virtual time may move while a real RPC is in flight.
            silent_at = float(registry.agents()[0]["last_heartbeat"]) - clock.time() + clock.monotonic()
            try:
                await clock.until(lambda: registry.agents()[0]["state"] == "unreachable", within=60)
                unreachable = clock.monotonic() - silent_at
                await clock.until(lambda: not registry.agents(), within=600)
                dropped = clock.monotonic() - silent_at
                actions = [str(r["action"]) for r in registry.audit.query(kind="agent")]
            finally:
                registry.close()
        return unreachable, dropped, actions

    unreachable, dropped, actions = clock.run(scenario())
    assert 45 < unreachable <= 50, "expiry runs every 5 s: within one round of the heartbeat timeout"
    assert 600 < dropped <= 605
    assert "agent.unreachable" in actions
