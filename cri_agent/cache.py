"""The SQLite cache: last-known services, pod decisions, discovery events.

One file (default ``/var/lib/coral/agent.db``), WAL mode, one writer: the
agent's ``CacheWriter`` owns the only writing connection on a dedicated
thread; the CLI and auditors open it read-only (``sqlite-utils``, ``sqlite3``).
The schema is the auditors' contract and is documented in docs/audit.md.

On restart the agent loads ``services`` and ``pods`` back into a
``KnownState`` so the first reconcile emits only real changes.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from coral_base.sql_params import in_chunks
from coral_base.sqlite_tables import Database
from cri_agent import cache_reader
from cri_agent.conditions import Condition
from cri_agent.discovery.engine import KnownState, PodDecision, Reconciliation
from cri_agent.errors import CacheError
from cri_agent.model import (
    DiscoveryEvent,
    Health,
    PodUID,
    Provenance,
    ServiceInfo,
    ServiceKey,
    Transport,
)

SCHEMA_VERSION = 1

SERVICE_COLUMNS: dict[str, type] = {
    "key": str,
    "name": str,
    "namespace": str,
    "pod_name": str,
    "pod_uid": str,
    "container": str,
    "port": int,
    "protocol": str,
    "service_type": str,
    "provenance": str,
    "overridden_fields": str,  # JSON list
    "health_endpoint": str,
    "health_interval_s": float,
    "pod_ip": str,
    "node_name": str,
    "labels": str,  # JSON object
    "workload": str,  # "Deployment/x" from the Kubernetes API, or ""
    "first_seen": float,
    "last_seen": float,
}

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int
    at: float
    kind: str
    namespace: str
    pod_name: str
    pod_uid: str
    key: str
    service: str
    reason: str
    fields: tuple[str, ...]
    node_name: str


@dataclass(frozen=True, slots=True)
class CacheContents:
    """Everything the agent holds in memory that the cache mirrors: what a rebuilt cache is given."""

    services: Mapping[ServiceKey, ServiceInfo]
    pods: Mapping[PodUID, PodDecision]
    health: Sequence[Health]
    conditions: Sequence[Condition]
    meta: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class TimedEvent:
    """A discovery event and when it happened (events wait in memory while the cache refuses writes)."""

    at: float
    event: DiscoveryEvent


class Cache:
    """Synchronous access to the cache file. Not thread-safe: see CacheWriter."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        # Descriptors of the file and its -wal and -shm, held open while the connection is: closing any
        # descriptor of a file drops every POSIX lock this process holds on it, SQLite's included, so the
        # agent never opens and closes these files itself while SQLite has them open.
        self._fds: dict[str, int] = {}
        try:
            if read_only:
                conn = cache_reader.open_read_only(path)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(str(path), timeout=5.0)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            self.db = Database(conn)
            if not read_only:
                with conn:  # one transaction, committed
                    self._create_schema()
                # The file as opened: a later unlink or rename over the path shows in its link count or inode.
                self._hold_descriptors()
        except (sqlite3.Error, OSError) as exc:
            raise CacheError(
                f"cache {path} cannot be opened: {exc}; check that its directory is "
                "writable (mount /var/lib/coral) or pass --cache"
            ) from exc

    def _create_schema(self) -> None:
        db = self.db
        db.table("meta").create({"key": str, "value": str}, pk="key")
        db.table("meta").upsert_all([{"key": "schema_version", "value": str(SCHEMA_VERSION)}], pk="key")
        db.table("services").create(SERVICE_COLUMNS, pk="key")
        db.table("pods").create(
            {
                "uid": str,
                "namespace": str,
                "name": str,
                "included": int,
                "reason": str,
                "errors": str,  # JSON list of stable error strings
                "first_seen": float,
                "last_seen": float,
            },
            pk="uid",
        )
        db.table("discovery_events").create(
            {
                "id": int,
                "at": float,
                "kind": str,
                "namespace": str,
                "pod_name": str,
                "pod_uid": str,
                "key": str,
                "service": str,
                "reason": str,
                "fields": str,  # JSON list
                "node_name": str,
            },
            pk="id",
        )
        db.table("discovery_events").create_index(["at"])
        db.table("discovery_events").create_index(["kind"])
        db.table("operations").create(
            {
                "id": int,
                "started_at": float,
                "finished_at": float,
                "operator": str,
                "action": str,
                "node_name": str,
                "namespace": str,
                "pod_name": str,
                "service": str,
                "parameters": str,  # JSON
                "duration_s": float,
                "bytes": int,
                "packets": int,
                "outcome": str,
                "error": str,
            },
            pk="id",
        )
        db.table("health").create(
            {
                "key": str,
                "state": str,  # healthy / unhealthy / unknown
                "since": float,
                "checked_at": float,
                "latency_ms": float,
                "last_error": str,
            },
            pk="key",
        )
        db.table("conditions").create(
            {"name": str, "ok": int, "reason": str, "since": float, "updated": float},
            pk="name",
        )

    # -- agent side ---------------------------------------------------------

    def load_known(self) -> KnownState:
        services = {ServiceKey(row["key"]): _service_from_row(row) for row in self.db.table("services").rows_where()}
        pods = {
            PodUID(row["uid"]): PodDecision(
                uid=PodUID(row["uid"]),
                namespace=row["namespace"],
                name=row["name"],
                included=bool(row["included"]),
                reason=row["reason"],
                errors=tuple(json.loads(row["errors"] or "[]")),
            )
            for row in self.db.table("pods").rows_where()
        }
        return KnownState(services=services, pods=pods)

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
            for key in reconciliation.removed:
                db.execute("DELETE FROM services WHERE key = ?", [key])
            self._upsert_services(reconciliation.upserted, now=now)
            if touch and reconciliation.services:
                db.execute("UPDATE services SET last_seen = ?", [now])
            self._apply_pods(reconciliation.pods, now=now, touch=touch)
            self._insert_events(reconciliation.events, node_name=node_name, now=now)
            self._trim_events(now=now, rows=retention_rows, days=retention_days)
            db.table("meta").upsert_all([{"key": "last_pass_at", "value": repr(now)}], pk="key")

    def _upsert_services(self, services: Sequence[ServiceInfo], *, now: float) -> None:
        """Insert or update ``services`` as seen ``now``, each keeping the ``first_seen`` the file has."""
        if not services:
            return
        first_seen = _first_seen(self.db, "services", "key", [s.key for s in services])
        rows = (_service_row(s, first_seen=first_seen.get(s.key, now), last_seen=now) for s in services)
        self.db.table("services").upsert_all(rows, pk="key")

    def _apply_pods(self, pods: Mapping[PodUID, PodDecision], *, now: float, touch: bool) -> None:
        db = self.db
        stored = {row["uid"]: row for row in db.query("SELECT uid, included, reason, errors, first_seen FROM pods")}
        gone = [uid for uid in stored if uid not in pods]
        for uid in gone:
            db.execute("DELETE FROM pods WHERE uid = ?", [uid])
        changed = []
        for uid, decision in pods.items():
            errors = json.dumps(list(decision.errors))
            old = stored.get(uid)
            if (
                old is not None
                and not touch
                and old["included"] == int(decision.included)
                and old["reason"] == decision.reason
                and old["errors"] == errors
            ):
                continue
            changed.append(
                {
                    "uid": uid,
                    "namespace": decision.namespace,
                    "name": decision.name,
                    "included": int(decision.included),
                    "reason": decision.reason,
                    "errors": errors,
                    "first_seen": old["first_seen"] if old else now,
                    "last_seen": now,
                }
            )
        if changed:
            db.table("pods").upsert_all(changed, pk="uid")

    def _insert_events(self, events: Sequence[DiscoveryEvent], *, node_name: str, now: float) -> None:
        self._insert_timed([TimedEvent(now, event) for event in events], node_name=node_name)

    def _insert_timed(self, events: Sequence[TimedEvent], *, node_name: str) -> None:
        if events:
            self.db.table("discovery_events").insert_all(
                _event_row(timed.event, node_name=node_name, at=timed.at) for timed in events
            )

    def record_events(self, events: Sequence[TimedEvent], *, node_name: str) -> None:
        """Events that come from outside a reconcile (e.g. the runtime is down)."""
        with self.db.conn:
            self._insert_timed(events, node_name=node_name)

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
            stored = [row[0] for row in db.execute("SELECT key FROM services")]
            gone = [key for key in stored if key not in contents.services]
            for marks, chunk in in_chunks(gone):
                db.execute(f"DELETE FROM services WHERE key IN ({marks})", chunk)
            self._upsert_services(list(contents.services.values()), now=now)
            self._apply_pods(contents.pods, now=now, touch=True)
            db.execute("DELETE FROM health")
            self._upsert_health(contents.health)
            for condition in contents.conditions:
                self._upsert_condition(condition)
            self._upsert_meta(contents.meta)
            self._insert_timed(events, node_name=node_name)
            if operations:
                db.table("operations").insert_all(operations)

    def _hold_descriptors(self) -> None:
        for suffix in _FILES:
            if suffix not in self._fds:
                with contextlib.suppress(FileNotFoundError):  # SQLite creates -wal and -shm on first use
                    self._fds[suffix] = os.open(
                        self.path.with_name(self.path.name + suffix), os.O_RDONLY | os.O_CLOEXEC
                    )

    def hazard(self) -> str:
        """Why touching this connection could crash the process (see CacheWriter), "" when it cannot."""
        self._hold_descriptors()
        return _hazard(self.path, self._fds)

    def lost(self) -> str:
        """Why the path no longer names the file this cache opened ("deleted", "replaced"), else ""."""
        if "" not in self._fds:
            return ""
        opened = os.fstat(self._fds[""])
        try:
            now = self.path.stat()
        except FileNotFoundError:
            return "deleted"
        if (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
            return "replaced"
        return "deleted" if opened.st_nlink == 0 else ""

    def _trim_events(self, *, now: float, rows: int, days: float) -> None:
        self.db.execute("DELETE FROM discovery_events WHERE at < ?", [now - days * 86400])
        last = self.db.execute("SELECT max(id) FROM discovery_events").fetchone()[0]
        if last is not None and last > rows:
            self.db.execute("DELETE FROM discovery_events WHERE id <= ?", [last - rows])

    def record_operation(self, row: Mapping[str, Any]) -> None:
        """One control operation, refused or not (append-only)."""
        with self.db.conn:
            self.db.table("operations").insert_all([row])

    def operations(self) -> list[dict[str, Any]]:
        return list(self.db.table("operations").rows_where(order_by="id"))

    def record_health(self, results: Sequence[Health]) -> None:
        """Latest probe results; rows of services no longer registered are dropped."""
        with self.db.conn:
            self._upsert_health(results)
            self.db.execute("DELETE FROM health WHERE key NOT IN (SELECT key FROM services)")

    def _upsert_health(self, results: Sequence[Health]) -> None:
        # plain SQL: a round of 250 results every 10 s, upsert_all costs 6x as much
        self.db.conn.executemany(
            "INSERT INTO health (key, state, since, checked_at, latency_ms, last_error) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET state = excluded.state, since = excluded.since,"
            " checked_at = excluded.checked_at, latency_ms = excluded.latency_ms, last_error = excluded.last_error",
            [(h.key, h.state.value, h.since, h.checked_at, h.latency_ms, h.last_error) for h in results],
        )

    def set_condition(self, condition: Condition) -> None:
        with self.db.conn:
            self._upsert_condition(condition)

    def _upsert_condition(self, condition: Condition) -> None:
        row = {
            "name": condition.name,
            "ok": int(condition.ok),
            "reason": condition.reason,
            "since": condition.since,
            "updated": condition.updated,
        }
        self.db.table("conditions").upsert_all([row], pk="name")

    def set_meta(self, values: Mapping[str, str]) -> None:
        with self.db.conn:
            self._upsert_meta(values)

    def _upsert_meta(self, values: Mapping[str, str]) -> None:
        self.db.table("meta").upsert_all([{"key": key, "value": value} for key, value in values.items()], pk="key")

    def meta(self) -> dict[str, str]:
        return cache_reader.meta(self.db.conn)

    def close(self) -> None:
        self.db.conn.close()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    # -- readers (CLI, tests, auditors) --------------------------------------

    def services(self) -> list[ServiceInfo]:
        return [
            _service_from_row(row) for row in self.db.table("services").rows_where(order_by="namespace, pod_name, name")
        ]

    def service_rows(self) -> list[dict[str, Any]]:
        """Services with their latest health (state ``unknown`` until probed)."""
        return list(
            self.db.query(
                "SELECT s.*, coalesce(h.state, 'unknown') AS health, h.since AS health_since, "
                "h.latency_ms AS health_latency_ms, h.last_error AS health_error "
                "FROM services s LEFT JOIN health h ON h.key = s.key ORDER BY s.namespace, s.pod_name, s.name"
            )
        )

    def events(self, *, since_id: int = 0, kind: str | None = None, limit: int | None = None) -> list[StoredEvent]:
        where, params = "id > ?", [str(since_id)]
        if kind:
            where += " AND kind = ?"
            params.append(kind)
        rows = self.db.table("discovery_events").rows_where(where, params, order_by="id", limit=limit)
        return [_stored_event(row) for row in rows]

    def conditions(self) -> list[dict[str, Any]]:
        return cache_reader.conditions(self.db.conn)


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

    async def open(self) -> KnownState:
        def _open() -> KnownState:
            self._cache = Cache(self.path)
            return self._cache.load_known()

        return await self._run(_open)

    async def read_known(self) -> KnownState:
        """The state a file that cannot be written still holds (empty when it cannot be read either)."""

        def _read() -> KnownState:
            with contextlib.suppress(CacheError, sqlite3.Error, OSError):
                cache = Cache(self.path, read_only=True)
                try:
                    return cache.load_known()
                finally:
                    cache.close()
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
                for suffix in _FILES[1:]:
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


_FILES = ("", "-wal", "-shm")  # the database and what SQLite keeps beside it in WAL mode
_FS_IOC_GETFLAGS = 0x80086601  # _IOR('f', 1, long)
_FS_IMMUTABLE_FL = 0x10
_FS_APPEND_FL = 0x20


def write_hazard(path: Path) -> str:
    """``Cache.hazard`` for a cache that no connection of this process has open (so its files may be
    opened and closed here)."""
    fds: dict[str, int] = {}
    try:
        for suffix in _FILES:
            with contextlib.suppress(OSError):  # absent (SQLite creates it) or unreadable (SQLite says so)
                fds[suffix] = os.open(path.with_name(path.name + suffix), os.O_RDONLY | os.O_CLOEXEC)
        return _hazard(path, fds)
    finally:
        for fd in fds.values():
            os.close(fd)


def _hazard(path: Path, fds: Mapping[str, int]) -> str:
    """A read-only file system, or a file of the cache (descriptors by suffix) immutable or append-only."""
    with contextlib.suppress(OSError):
        if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            return f"the file system of {path.parent} is read-only"
    for suffix, fd in fds.items():
        if _immutable(fd):
            return f"{path.name}{suffix} is immutable or append-only (chattr +i/+a)"
    return ""


def _immutable(fd: int) -> bool:
    flags = array.array("l", [0])
    try:
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
    except OSError:
        return False  # a file system without these flags
    return bool(flags[0] & (_FS_IMMUTABLE_FL | _FS_APPEND_FL))


def _first_seen(db: Database, table: str, pk: str, keys: Iterable[str]) -> dict[str, float]:
    found: dict[str, float] = {}
    for marks, chunk in in_chunks(list(keys)):
        found.update(db.execute(f"SELECT {pk}, first_seen FROM {table} WHERE {pk} IN ({marks})", chunk).fetchall())
    return found


def _service_row(service: ServiceInfo, *, first_seen: float, last_seen: float) -> dict[str, Any]:
    return {
        "key": service.key,
        "name": service.name,
        "namespace": service.namespace,
        "pod_name": service.pod_name,
        "pod_uid": service.pod_uid,
        "container": service.container,
        "port": service.port,
        "protocol": service.protocol,
        "service_type": service.service_type,
        "provenance": service.provenance.value,
        "overridden_fields": json.dumps(list(service.overridden_fields)),
        "health_endpoint": service.health_endpoint,
        "health_interval_s": service.health_interval_s,
        "pod_ip": service.pod_ip,
        "node_name": service.node_name,
        "labels": json.dumps(dict(sorted(service.labels.items()))),
        "workload": service.workload,
        "first_seen": first_seen,
        "last_seen": last_seen,
    }


def _service_from_row(row: Mapping[str, Any]) -> ServiceInfo:
    protocol: Transport | None = row["protocol"] if row["protocol"] in ("TCP", "UDP") else None
    return ServiceInfo(
        key=ServiceKey(row["key"]),
        name=row["name"],
        namespace=row["namespace"],
        pod_name=row["pod_name"],
        pod_uid=PodUID(row["pod_uid"]),
        container=row["container"],
        port=row["port"],
        protocol=protocol,
        service_type=row["service_type"],
        provenance=Provenance(row["provenance"]),
        health_endpoint=row["health_endpoint"] or "",
        health_interval_s=row["health_interval_s"],
        pod_ip=row["pod_ip"] or "",
        node_name=row["node_name"] or "",
        labels=json.loads(row["labels"] or "{}"),
        overridden_fields=tuple(json.loads(row["overridden_fields"] or "[]")),
        workload=row.get("workload") or "",
    )


def _event_row(event: DiscoveryEvent, *, node_name: str, at: float) -> dict[str, Any]:
    return {
        "at": at,
        "kind": event.kind.value,
        "namespace": event.namespace,
        "pod_name": event.pod_name,
        "pod_uid": event.pod_uid or "",
        "key": event.key or "",
        "service": event.service,
        "reason": event.reason,
        "fields": json.dumps(list(event.fields)),
        "node_name": node_name,
    }


def _stored_event(row: Mapping[str, Any]) -> StoredEvent:
    return StoredEvent(
        id=row["id"],
        at=row["at"],
        kind=row["kind"],
        namespace=row["namespace"],
        pod_name=row["pod_name"],
        pod_uid=row["pod_uid"],
        key=row["key"],
        service=row["service"],
        reason=row["reason"],
        fields=tuple(json.loads(row["fields"] or "[]")),
        node_name=row["node_name"],
    )
