"""Files written by an older release open with today's code: an agent cache and a colony registry that the
code of main at a8a58de wrote (tests/fixtures/*-a8a58de.db), copied, opened for writing, and read back.

Two more agent caches come from the releases before it, each written by that release's own code (its tree
from `git archive`, one reconcile of two pods, a condition, meta, and a probe result where it had health):
221585a, the first schema as shipped, and af028cd, which added the health table; both recorded version 1."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path

import pytest

from coral_base.vocabulary import AgentHealth
from coral_colony.stores.reader import RegistryReader
from coral_colony.stores.schema import SCHEMA_VERSION as REGISTRY_SCHEMA_VERSION
from coral_colony.stores.schema import version_of
from coral_colony.stores.writer import RegistryWriter
from cri_agent.cache.migrations import SCHEMA_VERSION
from cri_agent.cache.reader import CacheReader
from cri_agent.cache.writer import Cache, CacheContents, CacheWriter
from cri_agent.cache_keeper import CacheKeeper
from cri_agent.discovery.engine import reconcile
from cri_agent.discovery.rules import DiscoveryRules
from cri_agent.model import (
    ContainerID,
    ContainerRecord,
    ContainerState,
    DeclaredPort,
    HealthState,
    NodeSnapshot,
    PodRecord,
    PodUID,
    Provenance,
    SandboxID,
)
from cri_agent.status_file import read_status

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_pod(name: str, annotations: dict[str, str] | None = None) -> PodRecord:
    """A pod as the fixtures' writer described it."""
    web = ContainerRecord(
        id=ContainerID(f"{name:0<64}"[:64]),
        name="web",
        state=ContainerState.RUNNING,
        declared_ports=(DeclaredPort(8080, "TCP", "http"),),
        process_names=("httpd",),
    )
    return PodRecord(
        uid=PodUID(f"uid-{name}"),
        name=name,
        namespace="shop",
        sandbox_id=SandboxID(f"sb-{name}"),
        labels={"app": name},
        annotations=annotations or {},
        ip="10.250.0.7",
        owner=f"Deployment/{name}",
        containers=(web,),
    )


def copy(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copyfile(FIXTURES / name, target)
    return target


def test_an_agent_cache_written_by_the_previous_release_restores_its_state_without_churn(tmp_path: Path) -> None:
    path = copy("agent-a8a58de.db", tmp_path)
    cache = Cache(path)
    known = cache.load_known()
    assert sorted((s.name, s.port, s.provenance, s.workload) for s in known.services.values()) == [
        ("checkout", 8080, Provenance.DISCOVERED, "Deployment/checkout"),
        ("payments-api", 8080, Provenance.OVERRIDDEN, "Deployment/payments"),
    ]
    with CacheReader(path) as reader:
        assert [e.kind for e in reader.events()] == ["error", "added", "added", "added", "removed"]
        assert [o.operator for o in reader.operations()] == ["alice"]
        assert {c.name: c.ok for c in reader.conditions()} == {"runtime": 1}
        assert reader.meta()["schema_version"] == str(SCHEMA_VERSION), "the file is migrated"
    # The same pods again (as the old code saw them): nothing to say, as after any restart.
    pods = (fixture_pod("checkout"), fixture_pod("payments", {"coral.io/name": "payments-api"}))
    result = reconcile(known, NodeSnapshot("node-a", pods, taken_at=2000.0), DiscoveryRules(node_name="node-a"))
    assert result.events == ()
    cache.close()


@pytest.mark.parametrize(
    ("fixture", "checkout_health"),
    [("agent-221585a.db", HealthState.UNKNOWN), ("agent-af028cd.db", HealthState.HEALTHY)],
    ids=["the first schema", "with health, no workload"],
)
def test_an_agent_cache_of_an_earlier_schema_is_migrated_and_restores_its_state_without_churn(
    tmp_path: Path, fixture: str, checkout_health: HealthState
) -> None:
    path = copy(fixture, tmp_path)
    with CacheReader(path) as before:  # through a migrated copy in memory, the file as it was
        assert (before.meta()["schema_version"], len(before.services())) == ("1", 2)
    cache = Cache(path)
    known = cache.load_known()
    cache.close()
    assert sorted((s.name, s.port, s.provenance, s.workload) for s in known.services.values()) == [
        ("checkout", 8080, Provenance.DISCOVERED, ""),
        ("payments-api", 8080, Provenance.OVERRIDDEN, ""),
    ]
    with CacheReader(path) as reader:
        assert reader.meta()["schema_version"] == str(SCHEMA_VERSION)
        assert {r.service.name: r.health for r in reader.service_rows()}["checkout"] == checkout_health
        assert [e.kind for e in reader.events()] == ["added", "added"]
        assert {c.name: c.ok for c in reader.conditions()} == {"runtime": True}
    # The same pods again, without owners (those releases knew none): nothing to say.
    pods = tuple(
        dataclasses.replace(p, owner="")
        for p in (fixture_pod("checkout"), fixture_pod("payments", {"coral.io/name": "payments-api"}))
    )
    result = reconcile(known, NodeSnapshot("node-a", pods, taken_at=2000.0), DiscoveryRules(node_name="node-a"))
    assert result.events == ()


def test_an_agent_started_on_an_old_cache_takes_it_over(tmp_path: Path) -> None:
    path = copy("agent-a8a58de.db", tmp_path)

    async def scenario() -> int:
        states: list[bool] = []

        async def state(ok: bool, reason: str) -> None:
            states.append(ok)

        keeper = CacheKeeper(
            CacheWriter(path),
            node_name="node-a",
            contents=lambda: CacheContents({}, {}, [], [], {}),
            on_state=state,
        )
        known = await keeper.open()
        await keeper.writer.close()
        assert states == [True]
        return len(known.services)

    assert asyncio.run(scenario()) == 2
    assert read_status(path) is None  # the old release kept no status file


def test_a_colony_registry_written_by_the_previous_release_opens_and_lists_its_agent(tmp_path: Path) -> None:
    path = copy("colony-a8a58de.db", tmp_path)
    writer = RegistryWriter(path)  # migrates it: the old release kept no schema version
    assert version_of(writer.conn) == REGISTRY_SCHEMA_VERSION
    registry = RegistryReader(path)
    [status] = registry.agents()
    assert (status.agent.agent_id, status.state, status.health) == ("node-agent-node-a", "healthy", "healthy")
    services = registry.services()
    assert sorted(s.service.component_name for s in services) == ["checkout", "payments-api"]
    assert {s.service.workload for s in services} == {"Deployment/checkout", "Deployment/payments"}
    assert [e.entry.action for e in registry.audit()][-1] == "agent.registered"
    assert writer.heartbeat(
        "node-agent-node-a", health=AgentHealth.DEGRADED, now=3000.0
    )  # and the writer goes on with it
    assert registry.agents()[0].health == "degraded"
    registry.close()
    writer.close()
