"""The registry's one writer: the rules every change follows, and the thread that applies them.

Rules the writer enforces, whoever calls it:

- an agent changes only its own rows (keyed by agent and key): nothing it
  sends replaces or blocks another agent's, and a node agent's service
  naming another node is refused;
- ``register`` replaces the agent's whole set and starts a new session
  (sequence 0); a registration in parts (``partial``: the set did not fit
  in one message) keeps the services its first part does not name, marked
  unconfirmed, and the delta that completes it deletes those no part named:
  a large node re-registers without churn;
- ``apply`` takes deltas in sequence order: an already-applied sequence is
  acknowledged and ignored (replays are idempotent), a gap asks the agent
  to register in full again;
- an agent past its heartbeat timeout becomes ``unreachable`` and its
  services are kept, marked stale, until it comes back or a TTL expires;
- an agent that deregisters (``leave``) is ``left``, its services stale,
  for a grace window: when it registers again within it (a restart, a
  rolling update) nothing was removed, so nothing is audited but the
  registration; past it the agent and its services are removed;
- every change is audited in the transaction that makes it.

``RegistryWriter`` is synchronous (tests call it directly); ``WriterThread``
runs it on the one thread that uses its connection, for the event loop.
``serve()`` creates both and closes them; the mesh service writes through it.

A change the file system has no room for (SQLite's "database or disk is
full", ENOSPC) is rolled back and raised as ``RegistryFull``: the callers
refuse the write with a clear status and the next change tries again, so the
colony recovers by itself when space returns. In-memory state that follows
a change (``then``) is updated only once the change is committed.
"""

from __future__ import annotations

import asyncio
import errno
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from coral_base.documents import rfc3339
from coral_base.errors import CoralError
from coral_colony.model import (
    AgentHealth,
    AgentRecord,
    AgentState,
    Applied,
    AuditEntry,
    AuditKind,
    Enrollment,
    ServiceRecord,
)
from coral_colony.stores import agents, audit, enrollments, services
from coral_colony.stores.schema import open_for_writing

_T = TypeVar("_T")

DISK_FULL = "registry cannot be written: disk full"


class RegistryFull(CoralError):
    """The registry's file system has no room for a change (it was rolled back)."""

    transient = True

    def __init__(self) -> None:
        super().__init__(DISK_FULL)


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


def _nothing(enrollment: Enrollment) -> None:
    pass


class RegistryWriter:
    """Every change to the registry file, each in one transaction (the file is created or migrated here)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = open_for_writing(path)

    # -- agent calls --------------------------------------------------------------

    def register(
        self,
        agent: AgentRecord,
        records: Sequence[ServiceRecord],
        *,
        session: str,
        now: float,
        partial: bool = False,  # the first part of the set: the rest follows in deltas
    ) -> tuple[str, ...]:
        """Replace the agent's services with ``records`` (keep the others unconfirmed when ``partial``); returns
        the refused keys."""
        with self.conn:
            agents.register(self.conn, agent, session=session, now=now)
            refused = self._upsert(agent.agent_id, records, now=now)
            keep = {s.key for s in records} - set(refused)
            others = [k for k in services.keys_of(self.conn, agent.agent_id) if k not in keep]
            if partial:
                services.set_unconfirmed(self.conn, agent.agent_id, others)
            else:
                self._delete(agent.agent_id, others, now=now, why="not in its full set")
            services.set_stale(self.conn, agent.agent_id, False)
            audit.append(
                self.conn,
                [
                    AuditEntry(
                        time=now,
                        kind=AuditKind.REGISTRATION,
                        action=audit.AGENT_REGISTERED,
                        actor=agent.agent_id,
                        agent_id=agent.agent_id,
                        node_name=agent.node_name,
                        detail=f"{agent.kind} {agent.version}: {len(keep)} service(s)"
                        + (f", {len(refused)} refused" if refused else "")
                        + (", more in the deltas that follow" if partial else ""),
                    )
                ],
            )
        return refused

    def session_of(self, agent_id: str) -> tuple[str, int] | None:
        return agents.session_of(self.conn, agent_id)

    def apply(
        self,
        agent_id: str,
        *,
        sequence: int,
        upserts: Sequence[ServiceRecord],
        removed: Sequence[str],
        now: float,
        events: Sequence[AuditEntry] = (),
        completes_registration: bool = False,  # the last part of a registration in parts
    ) -> Applied:
        with self.conn:
            current = agents.session_of(self.conn, agent_id)
            if current is None or agents.has_left(self.conn, agent_id):  # a left agent's session ended: register
                return Applied(applied_sequence=0, resync_required=True)
            last = current[1]
            if sequence <= last:
                return Applied(applied_sequence=last)  # a replay: already applied
            if sequence != last + 1:
                return Applied(applied_sequence=last, resync_required=True)
            refused = self._upsert(agent_id, upserts, now=now)
            self._delete(agent_id, removed, now=now, why="removed by its agent")
            if completes_registration:
                unnamed = services.unconfirmed_keys(self.conn, agent_id)
                self._delete(agent_id, unnamed, now=now, why="not in its full set")
            node = agents.node_of(self.conn, agent_id)
            audit.append(self.conn, (_reported(e, agent_id=agent_id, node_name=node, now=now) for e in events))
            agents.applied(self.conn, agent_id, sequence=sequence, now=now)
            self._reachable(agent_id, now=now)
        return Applied(applied_sequence=sequence, refused_keys=refused)

    def heartbeat(self, agent_id: str, *, health: AgentHealth | None, now: float) -> bool:
        """False when the colony does not know the agent (it must register again)."""
        with self.conn:
            known = agents.heartbeat(self.conn, agent_id, health=health, now=now)
            if known:
                self._reachable(agent_id, now=now)
        return known

    def leave(self, agent_id: str, *, now: float) -> None:
        """The agent deregistered: ``left`` and its services stale until ``expire`` removes them (past the grace
        window) or it registers again (then nothing changed). Its session ends here: a heartbeat or delta
        still in flight is answered "register again", never taken as a sign of life."""
        with self.conn:
            agents.leave(self.conn, agent_id, now=now)
            services.set_stale(self.conn, agent_id, True)

    def deregister(self, agent_id: str, *, now: float, why: str, actor: str = "colony") -> None:
        """The agent and its services removed, audited as ``why`` done by ``actor``."""
        with self.conn:
            node = agents.node_of(self.conn, agent_id)
            owned = self._remove_agent(agent_id, now=now, why=why)
            audit.append(
                self.conn,
                [
                    AuditEntry(
                        time=now,
                        kind=AuditKind.DEREGISTRATION,
                        action="agent.deregistered",
                        actor=actor,
                        agent_id=agent_id,
                        node_name=node,
                        detail=f"{why}: {len(owned)} service(s)",
                    )
                ],
            )

    def _remove_agent(self, agent_id: str, *, now: float, why: str) -> list[str]:
        """The agent and its services deleted (each service's removal audited as ``why``); their keys."""
        owned = services.keys_of(self.conn, agent_id)
        self._delete(agent_id, owned, now=now, why=why)
        agents.delete(self.conn, agent_id)
        return owned

    # -- enrollment -----------------------------------------------------------------

    def enroll(
        self, enrollment: Enrollment, *, now: float, then: Callable[[Enrollment], None] = _nothing
    ) -> Enrollment | None:
        """Bind the node to the enrollment's key (audited); the enrollment in force that refuses it, if any.

        A node in force is bound to one key: a request for another key is
        refused (and audited) until an operator revokes it. The same key
        enrolling again (an agent that crashed before keeping its
        certificate) is signed again.
        """
        node = enrollment.node_name
        with self.conn:
            current = enrollments.get(self.conn, node)
            if current is not None and not current.revoked_at and current.key_sha256 != enrollment.key_sha256:
                detail = (
                    f"node {node} is enrolled to another key (since {rfc3339(current.enrolled_at)}, "
                    f"by {current.method}); refused a {enrollment.method} enrollment"
                )
                audit.append(self.conn, [_enrollment_entry("agent.enrollment_refused", enrollment, now, detail)])
                return current
            enrollments.put(self.conn, enrollment)
            how = enrollment.method.value + (f" {enrollment.credential}" if enrollment.credential else "")
            again = " again (same key)" if current is not None and not current.revoked_at else ""
            detail = f"enrolled{again} by {how}; key sha256 {enrollment.key_sha256[:16]}"
            audit.append(self.conn, [_enrollment_entry("agent.enrolled", enrollment, now, detail)])
        then(enrollment)
        return None

    def renew(self, enrollment: Enrollment, *, now: float, then: Callable[[Enrollment], None] = _nothing) -> bool:
        """The node's new certificate (and key) replaces the current one, which stays accepted until it expires.

        False when the enrollment changed since the renewal was asked (revoked, or renewed meanwhile).
        """
        with self.conn:
            current = enrollments.get(self.conn, enrollment.node_name)
            if (
                current is None
                or current.revoked_at
                or (current.certificate_sha256 != enrollment.previous_certificate_sha256)
            ):
                return False
            enrollments.put(self.conn, enrollment)
            detail = f"certificate renewed; key sha256 {enrollment.key_sha256[:16]}"
            audit.append(self.conn, [_enrollment_entry("agent.renewed", enrollment, now, detail)])
        then(enrollment)
        return True

    def revoke(
        self, node_name: str, *, by: str, now: float, then: Callable[[Enrollment], None] = _nothing
    ) -> tuple[Enrollment, int] | None:
        """Revoke the node's enrollment and remove its agent and services (audited); None when not enrolled."""
        with self.conn:
            current = enrollments.get(self.conn, node_name)
            if current is None or current.revoked_at:
                return None
            revoked = replace(current, revoked_at=now, revoked_by=by)
            enrollments.put(self.conn, revoked)
            owned = self._remove_agent(current.agent_id, now=now, why=f"its node's enrollment was revoked by {by}")
            detail = f"enrollment revoked by {by}: {len(owned)} service(s) removed; the node may enroll again"
            entry = replace(_enrollment_entry("agent.revoked", current, now, detail), actor=by)
            audit.append(self.conn, [entry])
        then(revoked)
        return revoked, len(owned)

    def enrollments(self) -> list[Enrollment]:
        return enrollments.every(self.conn)

    def record(self, entries: Sequence[AuditEntry]) -> None:
        """Audit what happened outside a registry change (refused callers, operations...)."""
        with self.conn:
            audit.append(self.conn, entries)

    # -- time ----------------------------------------------------------------------

    def prune_audit(self, *, now: float, retention_s: float) -> int:
        """Audit entries older than ``retention_s`` deleted (and the pruning audited); how many."""
        with self.conn:
            return audit.prune(self.conn, now=now, retention_s=retention_s)

    def expire(
        self, *, now: float, heartbeat_timeout: float, ttl: float, grace: float = 0.0
    ) -> tuple[list[str], list[str]]:
        """Mark silent agents unreachable (services stale); drop those silent past ``ttl`` and those that left
        (deregistered) more than ``grace`` ago; returns (silent, dropped)."""
        with self.conn:
            silent = agents.silent(self.conn, since=now - heartbeat_timeout)
            for agent_id, _ in silent:
                agents.set_state(self.conn, agent_id, AgentState.UNREACHABLE)
                services.set_stale(self.conn, agent_id, True)
            audit.append(
                self.conn,
                (
                    AuditEntry(
                        time=now,
                        kind=AuditKind.AGENT,
                        action="agent.unreachable",
                        actor="colony",
                        agent_id=agent_id,
                        node_name=node,
                        detail=f"no heartbeat for {heartbeat_timeout:g}s: its services are stale",
                    )
                    for agent_id, node in silent
                ),
            )
            left = agents.left(self.conn, since=now - grace)
            gone = agents.gone(self.conn, since=now - ttl)
        for agent_id, at in left:
            why = f"it deregistered {now - at:.0f}s ago and did not register again within the {grace:g}s grace window"
            self.deregister(agent_id, now=now, why=why, actor=agent_id)
        departed = [agent_id for agent_id, _ in left]
        for agent_id in gone:
            if agent_id not in departed:
                self.deregister(agent_id, now=now, why=f"silent past the {ttl:g}s TTL")
        return [agent_id for agent_id, _ in silent], departed + [a for a in gone if a not in departed]

    def clock_jumped(self, *, by: float, now: float) -> int:
        """The wall clock jumped ``by`` seconds: heartbeat times move with it, so that a jump makes no agent
        look silent (forward) or alive for longer (backward); audited. How many agents it moved."""
        with self.conn:
            moved = agents.shift_heartbeats(self.conn, by)
            detail = f"the wall clock jumped {by:+.0f} s; the last heartbeats of {moved} agent(s) moved with it"
            audit.append(
                self.conn,
                [
                    AuditEntry(
                        time=now, kind=AuditKind.AGENT, action="colony.clock_jumped", actor="colony", detail=detail
                    )
                ],
            )
        return moved

    def check_writable(self) -> None:
        """Take the write lock and let it go, writing nothing (the readiness probe): sqlite3.Error when it cannot."""
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()

    # -- internals -----------------------------------------------------------------

    def _upsert(self, agent_id: str, records: Sequence[ServiceRecord], *, now: float) -> tuple[str, ...]:
        """Write the agent's ``records``; audit new ones and refusals; returns the refused keys.

        A node agent reports the pods of its own node only: a service naming
        another node is refused (and audited). A service naming no node is
        the agent's node's; one without node labels has those its agent
        registered with (agents send them once, not with every service).
        """
        if not records:
            return ()
        node = agents.node_of(self.conn, agent_id)
        node_labels = agents.node_labels_of(self.conn, agent_id)
        records = [replace(s, node_name=s.node_name or node, node_labels=s.node_labels or node_labels) for s in records]
        refused = tuple(s.key for s in records if node and s.node_name != node)
        known = services.first_seen(self.conn, agent_id, [s.key for s in records])
        services.upsert(
            self.conn,
            [
                services.row(s, agent_id=agent_id, first_seen=known.get(s.key, now), now=now)
                for s in records
                if s.key not in refused
            ],
        )
        entries = [
            _service_entry(s, AuditKind.REGISTRATION, "service.registered", agent_id=agent_id, now=now)
            for s in records
            if s.key not in known and s.key not in refused
        ]
        entries += [
            _service_entry(
                s,
                AuditKind.AUTH,
                "service.refused",
                agent_id=agent_id,
                now=now,
                detail=f"names node {s.node_name}, not its agent's node {node}",
            )
            for s in records
            if s.key in refused
        ]
        audit.append(self.conn, entries)
        return refused

    def _delete(self, agent_id: str, keys: Sequence[str], *, now: float, why: str) -> None:
        """Delete the agent's own ``keys`` (audited); a key it does not have is ignored."""
        if not keys:
            return
        taken = services.take(self.conn, agent_id, keys)
        audit.append(
            self.conn,
            (
                _service_entry(
                    s.service, AuditKind.DEREGISTRATION, "service.deregistered", agent_id=agent_id, now=now, detail=why
                )
                for s in taken
            ),
        )

    def _reachable(self, agent_id: str, *, now: float) -> None:
        """An unreachable agent that speaks again is healthy; its services are fresh."""
        if agents.set_state(self.conn, agent_id, AgentState.HEALTHY):
            services.set_stale(self.conn, agent_id, False)
            audit.append(
                self.conn,
                [
                    AuditEntry(
                        time=now,
                        kind=AuditKind.AGENT,
                        action="agent.reachable",
                        actor=agent_id,
                        agent_id=agent_id,
                        node_name=agents.node_of(self.conn, agent_id),
                    )
                ],
            )


def _enrollment_entry(action: str, enrollment: Enrollment, now: float, detail: str) -> AuditEntry:
    return AuditEntry(
        time=now,
        kind=AuditKind.AUTH,
        action=action,
        actor=enrollment.agent_id,
        agent_id=enrollment.agent_id,
        node_name=enrollment.node_name,
        detail=detail,
    )


def _reported(event: AuditEntry, *, agent_id: str, node_name: str, now: float) -> AuditEntry:
    """An event an agent reported, as the log keeps it: by the agent, on its node, at the colony's time.

    The agent's own time is kept beside (``agent_time``) and decides nothing: an agent that says 1970
    neither moves its entries ahead of others nor makes them due for pruning.
    """
    return replace(event, agent_id=agent_id, actor=agent_id, node_name=node_name, time=now)


def _service_entry(
    service: ServiceRecord, kind: AuditKind, action: str, *, agent_id: str, now: float, detail: str = ""
) -> AuditEntry:
    return AuditEntry(
        time=now,
        kind=kind,
        action=action,
        actor=agent_id,
        agent_id=agent_id,
        node_name=service.node_name,
        namespace=service.namespace,
        pod_name=service.pod_name,
        service_name=service.component_name,
        service_key=service.key,
        provenance=service.provenance.value,
        detail=detail,
    )


class WriterThread:
    """The one thread that uses the writer's connection: the event loop hands it each change.

    Changes run one after the other, in the order they were handed over;
    ``close`` waits for those already handed over, then closes the file.
    """

    def __init__(self, writer: RegistryWriter) -> None:
        self.writer = writer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry-writer")

    async def run(self, change: Callable[[RegistryWriter], _T]) -> _T:
        """``change`` applied on the writer's thread; RegistryFull when the disk has no room for it."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, change, self.writer)
        except (sqlite3.Error, OSError) as exc:
            if is_disk_full(exc):
                raise RegistryFull() from exc
            raise

    async def record(self, entries: Sequence[AuditEntry]) -> None:
        """Append audit entries (what the operator API records goes through here too)."""
        await self.run(lambda w: w.record(entries))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.writer.close()
