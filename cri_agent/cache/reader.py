"""The cache read-only and typed, for ``coral agent services|events``, the tests and the harness: every
read returns dataclasses or named tuples. The connection is read-only, or a private copy in memory of an
older file (see ``opening``), so nothing here can write the file or run DDL on it; the import contract
keeps the writer out of reach."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from coral_base.hash_chain import Link, Verdict
from coral_base.sqlite_tables import Database
from cri_agent.cache import agent_state, chains, discovery_events, operations, pods, services
from cri_agent.cache.agent_state import StoredCondition
from cri_agent.cache.chains import CHAINED_TABLES
from cri_agent.cache.discovery_events import StoredEvent
from cri_agent.cache.opening import open_read_only
from cri_agent.cache.operations import StoredOperation
from cri_agent.cache.services import ServiceRow
from cri_agent.discovery.engine import KnownState
from cri_agent.model import EventKind, ServiceInfo


def known_state(db: Database) -> KnownState:
    """What a restarted agent starts from: the services and pod decisions the file holds."""
    return KnownState(services={s.key: s for s in services.current(db)}, pods=pods.decisions(db))


class CacheReader:
    def __init__(self, path: Path) -> None:
        self.db = open_read_only(path)

    def known(self) -> KnownState:
        return known_state(self.db)

    def services(self) -> list[ServiceInfo]:
        return services.current(self.db)

    def service_rows(self) -> list[ServiceRow]:
        """Services with their latest health (``unknown`` until probed)."""
        return services.with_health(self.db)

    def events(
        self, *, since_id: int = 0, kind: EventKind | None = None, limit: int | None = None
    ) -> list[StoredEvent]:
        return discovery_events.read(self.db, since_id=since_id, kind=kind, limit=limit)

    def operations(self) -> list[StoredOperation]:
        return operations.read(self.db)

    def chains(self) -> list[tuple[str, Verdict, Link]]:
        """Each hash-chained table, its chain checked, and the checkpoint it starts from."""
        return [(table, chains.check(self.db, table), chains.checkpoint(self.db, table)) for table in CHAINED_TABLES]

    def conditions(self) -> list[StoredCondition]:
        return agent_state.conditions(self.db)

    def meta(self) -> dict[str, str]:
        return agent_state.meta(self.db)

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
