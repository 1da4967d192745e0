"""The SQLite cache: a reconcile round-trips, restarts reload, retention holds."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from coral_base.sqlite_tables import Database
from cri_agent.cache.migrations import migrate
from cri_agent.cache.reader import CacheReader
from cri_agent.cache.writer import Cache
from cri_agent.conditions import Condition, Conditions
from cri_agent.discovery.engine import KnownState, PodDecision, Reconciliation
from cri_agent.errors import CacheError
from cri_agent.model import (
    DiscoveryEvent,
    EventKind,
    PodUID,
    Provenance,
    ServiceInfo,
    ServiceKey,
)

UID = PodUID("0d5f-uid")


def service(port: int | None = 8080, **changes: object) -> ServiceInfo:
    fields: dict[str, object] = dict(
        key=ServiceKey(f"shop/{UID}/web/{port if port else '-'}"),
        name="web",
        namespace="shop",
        pod_name="web-0",
        pod_uid=UID,
        container="web",
        port=port,
        protocol="TCP" if port else None,
        service_type="http",
        provenance=Provenance.OVERRIDDEN,
        health_endpoint="/healthz",
        health_interval_s=5.0,
        pod_ip="10.250.1.2",
        node_name="node-a",
        labels={"app": "web", "tier": "front"},
        overridden_fields=("health_endpoint", "name"),
    )
    fields.update(changes)
    return ServiceInfo(**fields)  # type: ignore[arg-type]


def decision(**changes: object) -> PodDecision:
    fields: dict[str, object] = dict(
        uid=UID,
        namespace="shop",
        name="web-0",
        included=True,
        reason="included",
        errors=('shop/web-0: coral.io/port: "x" is not a port',),
    )
    fields.update(changes)
    return PodDecision(**fields)  # type: ignore[arg-type]


def reconciliation(
    services: list[ServiceInfo], *, removed: tuple[ServiceKey, ...] = (), events: int = 0
) -> Reconciliation:
    return Reconciliation(
        services={s.key: s for s in services},
        pods={UID: decision()},
        events=tuple(
            DiscoveryEvent(
                kind=EventKind.ADDED,
                namespace="shop",
                pod_name="web-0",
                pod_uid=UID,
                key=services[0].key if services else None,
                reason=f"#{i}",
            )
            for i in range(events)
        ),
        upserted=tuple(services),
        removed=removed,
    )


def apply(cache: Cache, rec: Reconciliation, *, now: float = 1000.0, rows: int = 100_000) -> None:
    cache.apply(rec, node_name="node-a", now=now, touch=False, retention_rows=rows, retention_days=30)


def read(cache: Cache) -> CacheReader:
    return CacheReader(cache.path)


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "agent.db")


def test_a_reopened_cache_gives_back_exactly_what_was_stored(cache: Cache, tmp_path: Path) -> None:
    stored = [
        service(8080),
        service(None, key=ServiceKey(f"shop/{UID}/web/-"), provenance=Provenance.DISCOVERED),
    ]
    apply(cache, reconciliation(stored))
    cache.close()

    known = Cache(tmp_path / "agent.db").load_known()

    assert known == KnownState(services={s.key: s for s in stored}, pods={UID: decision()})


def test_a_cache_an_older_agent_wrote_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as db:  # the tables of the release before hash chains
        migrate(Database(db), path, to=3)
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE services DROP COLUMN workload")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")  # what agents before it recorded
        db.execute(
            "INSERT INTO services (key, name, namespace, pod_name, pod_uid, container, port, protocol, service_type,"
            " provenance, overridden_fields, health_endpoint, health_interval_s, pod_ip, node_name, labels, first_seen,"
            " last_seen) VALUES ('shop/u/web/80', 'web', 'shop', 'web-0', 'u', 'web', 80, 'TCP', 'http', 'discovered',"
            " '[]', '', 10.0, '10.0.0.1', 'node-a', '{}', 1.0, 1.0)"
        )
    reopened = Cache(path)
    [old] = reopened.load_known().services.values()
    assert (old.name, old.workload) == ("web", "")
    apply(reopened, reconciliation([service(8080, workload="Deployment/web")]))
    assert {s.workload for s in reopened.load_known().services.values()} >= {"Deployment/web"}


def test_first_seen_survives_updates(cache: Cache) -> None:
    apply(cache, reconciliation([service()]), now=1000.0)
    apply(cache, reconciliation([service(pod_ip="10.250.1.9")]), now=2000.0)
    [row] = read(cache).service_rows()
    assert (row.first_seen, row.last_seen, row.service.pod_ip) == (1000.0, 2000.0, "10.250.1.9")


def test_removed_services_leave_the_table(cache: Cache) -> None:
    apply(cache, reconciliation([service()]))
    apply(
        cache,
        Reconciliation(services={}, pods={}, events=(), upserted=(), removed=(service().key,)),
    )
    assert (read(cache).services(), cache.load_known().pods) == ([], {})


def test_event_retention_keeps_the_newest_rows(cache: Cache) -> None:
    apply(cache, reconciliation([service()], events=150), rows=100)
    events = read(cache).events()
    assert (len(events), events[-1].reason) == (100, "#149")


def test_events_older_than_the_retention_days_are_dropped(cache: Cache) -> None:
    apply(cache, reconciliation([service()], events=3), now=1000.0)
    apply(cache, reconciliation([service()], events=1), now=1000.0 + 31 * 86400)
    assert [e.at for e in read(cache).events()] == [1000.0 + 31 * 86400]


def operation(started_at: float, operator: str = "alice") -> dict[str, object]:
    return {
        "started_at": started_at,
        "finished_at": started_at + 1.0,
        "operator": operator,
        "action": "tap",
        "node_name": "node-a",
        "namespace": "shop",
        "pod_name": "web-0",
        "service": "web",
        "parameters": "{}",
        "duration_s": 1.0,
        "bytes": 0,
        "packets": 0,
        "outcome": "ok",
        "error": "",
    }


def test_operation_retention_keeps_the_newest_rows(cache: Cache) -> None:
    for n in range(150):
        cache.record_operation(operation(1000.0 + n, f"op-{n}"), now=2000.0, retention_rows=100, retention_days=30)
    rows = read(cache).operations()
    assert (len(rows), rows[0].operator, rows[-1].operator) == (100, "op-50", "op-149")


def test_operations_older_than_the_retention_days_are_dropped_even_when_none_runs(cache: Cache) -> None:
    day = 86400.0
    cache.record_operation(operation(1000.0, "old"), now=1000.0, retention_rows=100, retention_days=30)
    cache.record_operation(
        operation(1000.0 + 20 * day, "recent"), now=1000.0 + 20 * day, retention_rows=100, retention_days=30
    )
    cache.trim_operations(now=1000.0 + 31 * day, retention_rows=100, retention_days=30)
    assert [r.operator for r in read(cache).operations()] == ["recent"]


def test_the_file_is_in_wal_mode_for_concurrent_readers(cache: Cache, tmp_path: Path) -> None:
    mode = sqlite3.connect(tmp_path / "agent.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_conditions_keep_since_while_unchanged(cache: Cache) -> None:
    conditions = Conditions()
    changes = [
        conditions.set("runtime", ok=False, reason="down", now=10.0),
        conditions.set("runtime", ok=False, reason="down", now=15.0),
        conditions.set("runtime", ok=False, reason="still down", now=20.0),
    ]
    assert [c.since if c else None for c in changes] == [10.0, None, 10.0]
    for condition in filter(None, changes):
        cache.set_condition(condition)
    cache.set_condition(conditions.set("runtime", ok=True, reason="up", now=30.0) or Condition("", True, "", 0, 0))
    [row] = read(cache).conditions()
    assert (row.ok, row.since, row.updated) == (1, 30.0, 30.0)


def test_read_only_open_of_a_missing_cache_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="start `coral agent node` first"):
        CacheReader(tmp_path / "absent.db")


def test_unwritable_cache_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CacheError, match="cannot be opened"):
        Cache(blocker / "agent.db")
