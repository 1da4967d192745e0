"""The cache's one writer: ``Cache`` holds the only writing connection, and ``CacheWriter`` runs it on a
dedicated thread for ``CacheKeeper``. Every write of the agent goes through here, each a transaction
that the table families' functions fill.

On restart the agent loads ``services`` and ``pods`` back into a ``KnownState`` so the first reconcile
emits only real changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cri_agent.cache import agent_state, discovery_events, pods, services
from cri_agent.cache import operations as operations_table
from cri_agent.cache.discovery_events import TimedEvent
from cri_agent.cache.files import FILES, HeldFiles, write_hazard
from cri_agent.cache.opening import open_for_writing
from cri_agent.cache.reader import CacheReader, known_state
from cri_agent.conditions import Condition
from cri_agent.discovery.engine import KnownState, PodDecision, Reconciliation
from cri_agent.errors import CacheError
from cri_agent.model import Health, PodUID, ServiceInfo, ServiceKey

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class CacheContents:
    """Everything the agent holds in memory that the cache mirrors: what a rebuilt cache is given."""

    services: Mapping[ServiceKey, ServiceInfo]
    pods: Mapping[PodUID, PodDecision]
    health: Sequence[Health]
    conditions: Sequence[Condition]
    meta: Mapping[str, str]


CORRUPT = ("SQLITE_CORRUPT", "SQLITE_NOTADB")  # what SQLite says of a file that is not (or no longer) a database


def move_aside(path: Path, *, now: float) -> Path:
    """Rename a corrupt cache (and its -wal and -shm) to ``<name>.corrupt-<UTC time>``, for a post-mortem.

    Opening it again would fail the same way for ever; the agent starts a new
    file instead and rebuilds it from the runtime, and the old one is kept,
    not deleted: what it held may matter to whoever reads it.
    """
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}")
    for suffix in ("-wal", "-shm", ""):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").rename(f"{aside}{suffix}")
    return aside


class Cache:
    """Synchronous, writable access to the cache file. Not thread-safe: see CacheWriter."""

    def __init__(self, path: Path, *, now: float | None = None) -> None:
        """``now`` names a corrupt file moved aside (the agent's clock; the wall clock when not given)."""
        self.path = path
        self._files = HeldFiles(path)
        self.moved_aside: tuple[Path, str] | None = None  # where a corrupt file went, and what SQLite said
        try:
            try:
                self.db = open_for_writing(path)
            except sqlite3.DatabaseError as exc:
                if getattr(exc, "sqlite_errorname", "") not in CORRUPT:
                    raise
                self.moved_aside = (move_aside(path, now=time.time() if now is None else now), str(exc))
                self.db = open_for_writing(path)
            # The file as opened: a later unlink or rename over the path shows in its link count or inode.
            self._files.hold()
        except (sqlite3.Error, OSError) as exc:
            raise CacheError(
                f"cache {path} cannot be opened: {exc}; check that its directory is "
                "writable (mount /var/lib/coral) or pass --cache"
            ) from exc

    def load_known(self) -> KnownState:
        return known_state(self.db)

    def apply(
        self,
        reconciliation: Reconciliation,
        *,
        node_name: str,
        now: float,
        touch: bool,
        retention_rows: int,
        retention_days: float,
    ) -> None:
        """Persist one reconcile in a single transaction.

        ``touch`` refreshes ``last_seen`` of every current service and pod
        (done on full resyncs only, to keep event-driven passes cheap).
        """
        db = self.db
        with db.conn:
            services.delete(db, reconciliation.removed)
            services.upsert(db, reconciliation.upserted, now=now)
            if touch and reconciliation.services:
                services.touch(db, now=now)
            pods.apply(db, reconciliation.pods, now=now, touch=touch)
            discovery_events.insert(
                db, [TimedEvent(now, event) for event in reconciliation.events], node_name=node_name
            )
            discovery_events.trim(db, now=now, rows=retention_rows, days=retention_days)
            agent_state.upsert_meta(db, {"last_pass_at": repr(now)})

    def record_events(self, timed: Sequence[TimedEvent], *, node_name: str) -> None:
        """Events that come from outside a reconcile (e.g. the runtime is down)."""
        with self.db.conn:
            discovery_events.insert(self.db, timed, node_name=node_name)

    def restore(
        self,
        contents: CacheContents,
        *,
        events: Sequence[TimedEvent],
        operations: Sequence[Mapping[str, Any]],
        node_name: str,
        now: float,
    ) -> None:
        """Make the file say what memory says, and append what waited, in one transaction.

        After an outage or on a recreated file: services and pods become the current set (a
        service's ``first_seen`` is kept where the file has it), health, conditions and meta are
        replaced, and the events and operations held in memory are appended with their own times.
        """
        db = self.db
        with db.conn:
            services.delete(db, [key for key in services.stored_keys(db) if key not in contents.services])
            services.upsert(db, list(contents.services.values()), now=now)
            pods.apply(db, contents.pods, now=now, touch=True)
            services.clear_health(db)
            services.upsert_health(db, contents.health)
            for condition in contents.conditions:
                agent_state.upsert_condition(db, condition)
            agent_state.upsert_meta(db, contents.meta)
            discovery_events.insert(db, events, node_name=node_name)
            operations_table.insert(db, operations)

    def hazard(self) -> str:
        """Why touching this connection could crash the process (see CacheWriter), "" when it cannot."""
        return self._files.hazard()

    def lost(self) -> str:
        """Why the path no longer names the file this cache opened ("deleted", "replaced"), else ""."""
        return self._files.lost()

    def record_operation(
        self, row: Mapping[str, Any], *, now: float, retention_rows: int, retention_days: float
    ) -> None:
        """One control operation, refused or not (append-only), and the table trimmed to its retention."""
        with self.db.conn:
            operations_table.insert(self.db, [row])
            operations_table.trim(self.db, now=now, rows=retention_rows, days=retention_days)

    def trim_operations(self, *, now: float, retention_rows: int, retention_days: float) -> None:
        """The retention applied without a new row (a node that runs no operation still ages its old ones out)."""
        with self.db.conn:
            operations_table.trim(self.db, now=now, rows=retention_rows, days=retention_days)

    def record_health(self, results: Sequence[Health]) -> None:
        """Latest probe results; rows of services no longer registered are dropped."""
        with self.db.conn:
            services.upsert_health(self.db, results)
            services.prune_health(self.db)

    def set_condition(self, condition: Condition) -> None:
        with self.db.conn:
            agent_state.upsert_condition(self.db, condition)

    def set_meta(self, values: Mapping[str, str]) -> None:
        with self.db.conn:
            agent_state.upsert_meta(self.db, values)

    def close(self) -> None:
        self.db.conn.close()
        self._files.release()


class CacheWriter:
    """Owns the writing connection on one dedicated thread; async façade.

    A failed write closes the connection (whatever state SQLite left it in); ``reopen`` opens the
    file again, creating it if it was deleted.

    Before touching SQLite at all, each call checks the files for what would make SQLite crash the
    process rather than fail: SQLite maps ``-shm`` into memory and writes to it on every transaction,
    even a read, and a write to a mapping of an immutable file (``chattr +i``) or of a file on a file
    system remounted read-only is a SIGBUS. Such a cache is reported as failing and left alone, its
    connection neither used nor closed, until the files can be written again.
    """

    def __init__(self, path: Path) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-writer")
        self.path = path
        self._cache: Cache | None = None

    async def open(self, *, now: float) -> KnownState:
        def _open() -> KnownState:
            self._cache = Cache(self.path, now=now)
            return self._cache.load_known()

        return await self._run(_open)

    @property
    def moved_aside(self) -> tuple[Path, str] | None:
        """Where the file opened last was moved because it was corrupt, and why (None: it was not)."""
        return self._cache.moved_aside if self._cache is not None else None

    async def read_known(self) -> KnownState:
        """The state a file that cannot be written still holds (empty when it cannot be read either)."""

        def _read() -> KnownState:
            with contextlib.suppress(CacheError, sqlite3.Error, OSError), CacheReader(self.path) as reader:
                return reader.known()
            return KnownState(services={}, pods={})

        return await self._run(_read)

    async def reopen(self) -> None:
        """Close whatever is open and open the path again; CacheError if that fails."""

        def _reopen() -> None:
            if self._cache is not None:
                self._refuse(self._cache.hazard())
            self._discard()
            self._refuse(write_hazard(self.path))  # no connection is open now: the files may be opened
            if not self.path.exists():  # a -wal or -shm left behind belongs to the deleted file
                for suffix in FILES[1:]:
                    with contextlib.suppress(FileNotFoundError):
                        self.path.with_name(self.path.name + suffix).unlink()
            self._cache = Cache(self.path)

        await self._run(_reopen)

    async def call(self, fn: Callable[[Cache], _T]) -> _T:
        def _call() -> _T:
            if self._cache is None:
                raise CacheError(f"cache {self.path} is not open")
            self._refuse(self._cache.hazard())
            try:
                return fn(self._cache)
            except (sqlite3.Error, OSError) as exc:
                self._discard()
                raise CacheError(f"cache {self.path} write failed: {exc}") from exc

        return await self._run(_call)

    def _refuse(self, hazard: str) -> None:
        if hazard:
            raise CacheError(f"cache {self.path} refuses writes: {hazard}")

    def _discard(self) -> None:
        if self._cache is not None and not self._cache.hazard():
            with contextlib.suppress(sqlite3.Error, OSError):
                self._cache.close()
            self._cache = None

    async def _run(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def close(self) -> None:
        await self._run(self._discard)
        self._executor.shutdown(wait=True)
