"""The registry's one writer: the rules every change follows, and the thread that applies them.

Rules the writer enforces, whoever calls it:

- an agent changes only its own services: a key another agent owns is
  refused, never overwritten;
- ``register`` replaces the agent's whole set and starts a new session
  (sequence 0);
- ``apply`` takes deltas in sequence order: an already-applied sequence is
  acknowledged and ignored (replays are idempotent), a gap asks the agent
  to register in full again;
- an agent past its heartbeat timeout becomes ``unreachable`` and its
  services are kept, marked stale, until it comes back or a TTL expires;
- every change is audited in the transaction that makes it.

``RegistryWriter`` is synchronous (tests call it directly); ``WriterThread``
runs it on the one thread that uses its connection, for the event loop.
``serve()`` creates both and closes them; the mesh service writes through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from coral_colony.model import AgentHealth, AgentRecord, AgentState, Applied, AuditEntry, AuditKind, ServiceRecord
from coral_colony.stores import agents, audit, services
from coral_colony.stores.schema import open_for_writing

_T = TypeVar("_T")


class RegistryWriter:
    """Every change to the registry file, each in one transaction (the file is created or migrated here)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = open_for_writing(path)

    # -- agent calls --------------------------------------------------------------

    def register(
        self, agent: AgentRecord, records: Sequence[ServiceRecord], *, session: str, now: float
    ) -> tuple[str, ...]:
        """Replace the agent's services with ``records``; returns the refused keys."""
        with self.conn:
            agents.register(self.conn, agent, session=session, now=now)
            refused = self._upsert(agent.agent_id, records, now=now)
            keep = {s.key for s in records} - set(refused)
            owned = services.keys_of(self.conn, agent.agent_id)
            self._delete(agent.agent_id, [k for k in owned if k not in keep], now=now, why="not in its full set")
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
                        + (f", {len(refused)} refused" if refused else ""),
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
    ) -> Applied:
        with self.conn:
            current = agents.session_of(self.conn, agent_id)
            if current is None:
                return Applied(applied_sequence=0, resync_required=True)
            last = current[1]
            if sequence <= last:
                return Applied(applied_sequence=last)  # a replay: already applied
            if sequence != last + 1:
                return Applied(applied_sequence=last, resync_required=True)
            refused = self._upsert(agent_id, upserts, now=now)
            refused += self._delete(agent_id, removed, now=now, why="removed by its agent")
            node = agents.node_of(self.conn, agent_id)
            audit.append(self.conn, (replace(e, agent_id=agent_id, actor=agent_id, node_name=node) for e in events))
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

    def deregister(self, agent_id: str, *, now: float, why: str = "deregistered by its agent") -> None:
        with self.conn:
            node = agents.node_of(self.conn, agent_id)
            owned = services.keys_of(self.conn, agent_id)
            self._delete(agent_id, owned, now=now, why=why)
            agents.delete(self.conn, agent_id)
            audit.append(
                self.conn,
                [
                    AuditEntry(
                        time=now,
                        kind=AuditKind.DEREGISTRATION,
                        action="agent.deregistered",
                        actor=agent_id if why.endswith("its agent") else "colony",
                        agent_id=agent_id,
                        node_name=node,
                        detail=f"{why}: {len(owned)} service(s)",
                    )
                ],
            )

    def record(self, entries: Sequence[AuditEntry]) -> None:
        """Audit what happened outside a registry change (refused callers, operations...)."""
        with self.conn:
            audit.append(self.conn, entries)

    # -- time ----------------------------------------------------------------------

    def prune_audit(self, *, now: float, retention_s: float) -> int:
        """Audit entries older than ``retention_s`` deleted (and the pruning audited); how many."""
        with self.conn:
            return audit.prune(self.conn, now=now, retention_s=retention_s)

    def expire(self, *, now: float, heartbeat_timeout: float, ttl: float) -> tuple[list[str], list[str]]:
        """Mark silent agents unreachable (services stale); drop those silent past ``ttl``."""
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
            gone = agents.gone(self.conn, since=now - ttl)
        for agent_id in gone:
            self.deregister(agent_id, now=now, why=f"silent past the {ttl:g}s TTL")
        return [agent_id for agent_id, _ in silent], gone

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

    def close(self) -> None:
        self.conn.close()

    # -- internals -----------------------------------------------------------------

    def _upsert(self, agent_id: str, records: Sequence[ServiceRecord], *, now: float) -> tuple[str, ...]:
        """Write ``records`` the agent may own; audit new ones and refusals; returns the refused keys."""
        if not records:
            return ()
        owners = services.owners(self.conn, [s.key for s in records])
        refused = tuple(s.key for s in records if s.key in owners and owners[s.key][0] != agent_id)
        services.upsert(
            self.conn,
            [
                services.row(s, agent_id=agent_id, first_seen=owners.get(s.key, ("", now))[1], now=now)
                for s in records
                if s.key not in refused
            ],
        )
        entries = [
            _service_entry(s, AuditKind.REGISTRATION, "service.registered", agent_id=agent_id, now=now)
            for s in records
            if s.key not in owners
        ]
        entries += [
            _service_entry(
                s,
                AuditKind.AUTH,
                "service.refused",
                agent_id=agent_id,
                now=now,
                detail=f"owned by agent {owners[s.key][0]}",
            )
            for s in records
            if s.key in refused
        ]
        audit.append(self.conn, entries)
        return refused

    def _delete(self, agent_id: str, keys: Sequence[str], *, now: float, why: str) -> tuple[str, ...]:
        """Delete the agent's own ``keys`` (audited); returns those another agent owns."""
        if not keys:
            return ()
        owners = services.owners(self.conn, keys)
        mine = [k for k in keys if k in owners and owners[k][0] == agent_id]
        theirs = tuple(k for k in keys if k in owners and owners[k][0] != agent_id)
        taken = services.take(self.conn, mine)
        audit.append(
            self.conn,
            (
                _service_entry(
                    s.service, AuditKind.DEREGISTRATION, "service.deregistered", agent_id=agent_id, now=now, detail=why
                )
                for s in taken
            ),
        )
        audit.append(
            self.conn,
            (
                AuditEntry(
                    time=now,
                    kind=AuditKind.AUTH,
                    action="service.refused",
                    actor=agent_id,
                    agent_id=agent_id,
                    service_key=key,
                    detail=f"removal refused: owned by agent {owners[key][0]}",
                )
                for key in theirs
            ),
        )
        return theirs

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
        return await asyncio.get_running_loop().run_in_executor(self._executor, change, self.writer)

    async def record(self, entries: Sequence[AuditEntry]) -> None:
        """Append audit entries (what the operator API records goes through here too)."""
        await self.run(lambda w: w.record(entries))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.writer.close()
