"""Colony sync: the agent's services reach the colony, and nothing is lost.

The agent keeps two views: *desired* (what discovery and health say now)
and *acknowledged* (what the colony confirmed). It registers the full set,
then sends deltas ``desired - acknowledged`` numbered 1, 2, 3… A delta whose
answer never came is resent exactly as it was (same sequence, same
content): the colony applies each sequence once, so a replay is harmless
and a recomputed delta under an old number could never be lost. While the
colony is unreachable the agent keeps discovering and retries with backoff
and jitter; on reconnect it sends exactly the net change. When the colony
answers ``resync_required`` (a gap, or it lost its registry) the agent
registers in full again. The secret is sent, never logged.

Sizes (``coral_base.message_limits``): no request grows past a chunk. A
full set larger than one registers as a ``partial`` Register of its first
chunk plus deltas for the rest, the last marked ``completes_registration``
(the colony keeps the services not yet named until then: no churn); a large
change goes as several sequenced deltas. Node labels travel once, in the
registration, never inside each service. A delta the colony refuses for a
reason a resend cannot fix (too large, invalid) is dropped, its events
counted as dropped, and the agent registers in full again with smaller
chunks (an older colony's limit may be lower than ours). Heartbeats run on
their own task: a slow or failing delta never holds them back.

An enrolled agent (``cri_agent.enrollment``) speaks to the colony's agent
endpoint over mutual TLS, as the agent its certificate names, and renews
the certificate there before it expires; without an identity (a lab colony
without TLS, or a colony older than enrollment) it registers with the
shared secret on the colony's address.

Discovery events ride inside the sequenced deltas (so a replay never
duplicates them in the colony's audit log); while the colony is away they
wait in a bounded queue, and a delta the colony refused puts them back.
The agent's own health aggregate goes in heartbeats, and a change of it
is sent at once rather than at the next heartbeat. When the agent stops it
deregisters (``deregister``, once the loop has stopped): the colony keeps
its services for a grace window, in case it is only restarting.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

import grpc
import grpc.aio

from coral_base.backoff import Backoff
from coral_base.clock import SYSTEM_CLOCK, Clock
from coral_base.logs import emit
from coral_base.message_limits import CHUNK_BYTES
from coral_base.vocabulary import AgentHealth
from coral_base.wire.coral.mesh.v1 import mesh_pb2_grpc
from cri_agent import colony_codec
from cri_agent.enrollment import COLONY_CHANNEL_OPTIONS, AgentIdentity, describe
from cri_agent.identity import IdentityError
from cri_agent.model import DiscoveryEvent, Health, ServiceInfo, ServiceKey

log = logging.getLogger("cri_agent.sync")
_K = TypeVar("_K")

Wire = dict[ServiceKey, bytes]  # key -> serialized ServiceInfo, compared to find changes
OnState = Callable[[bool, str], Awaitable[None]]  # (connected, reason): the agent's `colony` condition
MAX_QUEUED_EVENTS = 10_000
DEREGISTER_TIMEOUT_S = 2.0  # at shutdown: an unreachable colony must not hold the pod Terminating
MIN_CHUNK_BYTES = 64 * 1024  # refusals as too large halve the chunk down to this
REFUSED = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT})  # a resend cannot help
_FIELD_OVERHEAD = 8  # tag and length prefix of one repeated entry, generously


@dataclass(frozen=True, slots=True)
class ColonyEndpoint:
    address: str  # host:port
    colony_id: str
    secret: str
    agent_id: str
    node_name: str
    version: str
    node_labels: Mapping[str, str]
    heartbeat_interval_s: float = 15.0
    timeout_s: float = 5.0
    ca_pem: bytes | None = None  # the colony CA to pin; None only for an explicitly insecure lab setup

    def __repr__(self) -> str:  # never show the secret, even in a traceback
        return f"ColonyEndpoint(address={self.address!r}, colony_id={self.colony_id!r}, agent_id={self.agent_id!r})"


@dataclass(frozen=True, slots=True)
class _Delta:
    sequence: int
    upserts: tuple[bytes, ...]
    removed: tuple[ServiceKey, ...]
    snapshot: Wire  # desired state this delta brings the colony to
    events: tuple[bytes, ...] = ()
    completes_registration: bool = False  # the last part of a registration in parts


@dataclass(frozen=True, slots=True)
class Backlog:
    """What the colony has not acknowledged yet (the agent's metrics read it)."""

    changes: int  # services to upsert or remove
    events: int  # discovery events queued or in the delta under way


def colony_channel(endpoint: ColonyEndpoint) -> grpc.aio.Channel:
    """A channel to the colony: TLS pinned to its CA (insecure only when configured so)."""
    if endpoint.ca_pem is None:
        return grpc.aio.insecure_channel(endpoint.address, options=COLONY_CHANNEL_OPTIONS)
    credentials = grpc.ssl_channel_credentials(root_certificates=endpoint.ca_pem)
    return grpc.aio.secure_channel(endpoint.address, credentials, options=COLONY_CHANNEL_OPTIONS)


def _take(items: Iterable[tuple[_K, bytes]], budget: int) -> tuple[list[tuple[_K, bytes]], int]:
    """The leading ``items`` whose bytes fit in ``budget`` (the first one always), and the budget left."""
    taken: list[tuple[_K, bytes]] = []
    for key, data in items:
        size = len(data) + _FIELD_OVERHEAD
        if taken and size > budget:
            break
        taken.append((key, data))
        budget -= size
    return taken, budget


class ColonySync:
    def __init__(
        self,
        endpoint: ColonyEndpoint,
        *,
        backoff: Backoff | None = None,
        on_state: OnState | None = None,
        clock: Clock | None = None,  # heartbeats; by default the backoff's, so one clock paces both
        identity: AgentIdentity | None = None,  # None: the shared secret on ``endpoint.address``
    ) -> None:
        self.endpoint = endpoint
        self.identity = identity
        self.backoff = backoff or Backoff(initial=0.5, maximum=30.0, clock=clock or SYSTEM_CLOCK)
        self.clock = clock or self.backoff.clock
        self.on_state = on_state
        self._events: deque[bytes] = deque()
        self._registered = asyncio.Event()
        self.events_dropped = 0
        self._health_sent: AgentHealth | None = None
        self._desired: Wire = {}
        self._acked: Wire | None = None  # None: not registered in this session
        self._session = ""
        self._sequence = 0
        self._pending: _Delta | None = None
        self._completing = False  # a registration in parts awaits its last part
        self.chunk_bytes = CHUNK_BYTES  # halved by each refusal as too large, down to MIN_CHUNK_BYTES
        self._changed = asyncio.Event()
        self._health_changed = asyncio.Event()
        self._session_lock = asyncio.Lock()  # a heartbeat never races the Register that replaces its session
        self.health = AgentHealth.UNKNOWN
        self.connected = False

    # -- input from the agent --------------------------------------------------------

    def set_services(self, services: Mapping[ServiceKey, ServiceInfo], health: Mapping[ServiceKey, Health]) -> None:
        self._desired = {
            key: colony_codec.service(service, health.get(key)).SerializeToString(deterministic=True)
            for key, service in services.items()
        }
        self._changed.set()

    def set_node_labels(self, labels: Mapping[str, str]) -> None:
        """New node labels (from the API) travel in the registration: register in full again."""
        if dict(labels) != dict(self.endpoint.node_labels):
            self.endpoint = replace(self.endpoint, node_labels=dict(labels))
            self._acked = None
            self._changed.set()

    def add_events(self, events: Iterable[DiscoveryEvent], *, at: float) -> None:
        """Queue discovery events for the colony's audit log (oldest dropped past the bound)."""
        for event in events:
            if len(self._events) >= MAX_QUEUED_EVENTS:
                self._events.popleft()
                self.events_dropped += 1
                if self.events_dropped == 1:
                    emit(log, "colony.events_dropped", level=logging.WARNING, bound=MAX_QUEUED_EVENTS)
            self._events.append(colony_codec.event(event, at=at).SerializeToString(deterministic=True))
        self._changed.set()

    def set_health(self, health: AgentHealth) -> None:
        """The agent's aggregate; a change is sent in a heartbeat at once."""
        if health != self.health:
            self.health = health
            self._health_changed.set()

    @property
    def in_sync(self) -> bool:
        return self._acked == self._desired and self._pending is None and not self._events and not self._completing

    def backlog(self) -> Backlog:
        """Safe from another thread: the views are replaced, never changed in place."""
        desired, acked, pending = self._desired, self._acked or {}, self._pending
        changes = sum(acked.get(key) != data for key, data in desired.items()) + sum(k not in desired for k in acked)
        return Backlog(changes=changes, events=len(self._events) + (len(pending.events) if pending else 0))

    # -- the loop ----------------------------------------------------------------------

    @property
    def agent_id(self) -> str:
        """Who the agent is to the colony: its certificate's agent once enrolled, else the configured id."""
        return self.identity.agent_id if self.identity is not None else self.endpoint.agent_id

    async def run(self) -> None:
        """Keep the colony in sync until cancelled."""
        last_error = ""
        while True:
            reason = ""
            try:
                async with await self._connect() as channel:
                    if await self._serve(channel):
                        continue  # renewed: dial again with the new certificate, at once
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED and self.identity is not None and not self.connected:
                    emit(log, "colony.no_enrollment", level=logging.WARNING, reason="an older colony: shared secret")
                    self.identity = None  # the colony predates enrollment: register as agents did before
                    continue
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    self._acked = None  # the session is gone: register again
                    self._registered.clear()  # the control stream waits for the next registration
                    if self.identity is not None:
                        self.identity.refused(exc)
                reason = self._reason(exc)
            except IdentityError as exc:
                reason = str(exc)
            if self.connected or reason != last_error:
                emit(log, "colony.unreachable", level=logging.WARNING, reason=reason)
                await self._state(False, reason)
            self.connected, last_error = False, reason
            # Always wait the backoff: new changes must not turn retries into a hot loop.
            await self.backoff.wait()

    async def deregister(self) -> bool:
        """Tell the colony this agent leaves (call it once ``run`` has stopped); False when it could not be told."""
        if not self._registered.is_set():
            return False
        endpoint = self.endpoint
        request = colony_codec.deregister_request(agent_id=self.agent_id, session=self._session)
        async with self.channel() as channel:
            try:
                await mesh_pb2_grpc.MeshStub(channel).Deregister(
                    request, timeout=min(endpoint.timeout_s, DEREGISTER_TIMEOUT_S)
                )
            except grpc.aio.AioRpcError as exc:
                emit(log, "colony.deregister_failed", level=logging.WARNING, reason=self._reason(exc))
                return False
        emit(log, "colony.deregistered", colony_id=endpoint.colony_id)
        return True

    async def _connect(self) -> grpc.aio.Channel:
        """A channel to the colony, enrolling first when the agent has no certificate yet."""
        if self.identity is not None:
            await self.identity.ensure()
        return self.channel()

    def channel(self) -> grpc.aio.Channel:
        """The agent endpoint with the agent's certificate; the colony's address without an identity."""
        if self.identity is not None:
            return self.identity.channel()
        return colony_channel(self.endpoint)

    async def session(self) -> str:
        """The current registration's session token, once there is one."""
        await self._registered.wait()
        return self._session

    def _reason(self, exc: grpc.aio.AioRpcError) -> str:
        details = exc.details() or ""
        if self.identity is not None and self.identity.revoked:
            return self.identity.revoked
        if exc.code() in (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.UNAUTHENTICATED):
            return describe(exc)
        if self.identity is not None and (refused := self.identity.certificate_refused(details)):
            return refused
        if self.endpoint.ca_pem is not None and any(
            word in details.lower() for word in ("handshake", "certificate", "ssl", "tls")
        ):
            address = self.identity.dialing if self.identity is not None else self.endpoint.address
            return (
                f"TLS handshake with the colony at {address} failed: is colony.caFile the colony's current "
                "ca.crt (after a CA rotation, the new one; the agent also trusts those the colony sent with its "
                f"certificate) and the address one its certificate names? ({details})"
            )
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            return f"the colony at {self.endpoint.address} is unreachable; retrying ({details})"
        return f"{exc.code().name}: {details}"

    async def _serve(self, channel: grpc.aio.Channel) -> bool:
        """Sync and heartbeat over ``channel`` until a call fails (raised) or the certificate was renewed (True).

        Two tasks: heartbeats keep their own pace however long deltas take.
        """
        stub = mesh_pb2_grpc.MeshStub(channel)
        tasks = {asyncio.create_task(self._sync(channel, stub)), asyncio.create_task(self._heartbeats(stub))}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return bool(next(iter(done)).result())  # the failure, raised; or the renewal

    async def _sync(self, channel: grpc.aio.Channel, stub: mesh_pb2_grpc.MeshAsyncStub) -> bool:
        """Registrations and deltas, until a call fails (raised) or the certificate was renewed (True)."""
        while True:
            if self.identity is not None and self.identity.due():
                await self.identity.renew(channel)
                return True
            if self._acked is None:
                await self._register(stub)
            elif self._pending is not None or self._acked != self._desired or self._events or self._completing:
                await self._send_delta(stub)
            else:
                self._changed.clear()
                await self.clock.sleep(self.endpoint.heartbeat_interval_s, self._changed)

    async def _heartbeats(self, stub: mesh_pb2_grpc.MeshAsyncStub) -> None:
        """A heartbeat every interval once registered, and at once when the agent's health changes."""
        while True:
            await self._registered.wait()
            if self.health == self._health_sent:
                self._health_changed.clear()
                if await self.clock.sleep(self.endpoint.heartbeat_interval_s, self._health_changed):
                    continue  # woken: the health changed (or a new session wants it)
            await self._heartbeat(stub)

    async def _state(self, connected: bool, reason: str) -> None:
        if self.on_state is not None:
            await self.on_state(connected, reason)

    def _requeue(self, delta: _Delta | None) -> None:
        """Events of a delta the colony did not apply go back to the front of the queue."""
        if delta is not None and delta.events:
            self._events.extendleft(reversed(delta.events))

    async def _register(self, stub: mesh_pb2_grpc.MeshAsyncStub) -> None:
        """The full set, or its first chunk (``partial``) when it does not fit in one: deltas send the rest."""
        snapshot = dict(self._desired)
        endpoint = self.endpoint
        part, _ = _take(sorted(snapshot.items()), self.chunk_bytes)
        partial = len(part) < len(snapshot)
        request = colony_codec.register_request(
            agent_id=self.agent_id,
            colony_id=endpoint.colony_id,
            secret="" if self.identity is not None else endpoint.secret,  # an enrolled agent is its certificate
            version=endpoint.version,
            node_name=endpoint.node_name,
            node_labels=endpoint.node_labels,
            services=[data for _, data in part],
            partial=partial,
        )
        async with self._session_lock:
            try:
                response = await stub.Register(request, timeout=endpoint.timeout_s)
            except grpc.aio.AioRpcError as exc:
                self._smaller_chunks(exc)
                raise
            self._session = response.session_token
        self._requeue(self._pending)
        self._sequence, self._pending, self._completing = 0, None, partial
        self._registered.set()
        self._acked = dict(part)
        self._health_sent = None  # the new session starts at "unknown": send ours
        self._health_changed.set()
        self.connected = True
        self.backoff.reset()
        refused = len(response.refused_keys)
        emit(log, "colony.registered", services=len(snapshot), refused=refused, parts="several" if partial else "one")
        await self._state(
            True,
            f"registered with colony {self.endpoint.colony_id} at {self.endpoint.address}"
            + (f"; {refused} service(s) refused: another agent owns them" if refused else ""),
        )

    def _next_delta(self) -> _Delta:
        """``desired - acknowledged`` as far as one chunk holds: removals, upserts, then queued events."""
        assert self._acked is not None
        desired, acked = dict(self._desired), self._acked
        gone = [(key, key.encode()) for key in acked if key not in desired]
        removed, budget = _take(gone, self.chunk_bytes) if gone else ([], self.chunk_bytes)
        changed = [(key, data) for key, data in desired.items() if acked.get(key) != data]
        upserts, budget = _take(changed, budget) if changed and budget > 0 else ([], budget)
        events, _ = _take(((None, e) for e in self._events), budget) if self._events and budget > 0 else ([], 0)
        for _ in events:
            self._events.popleft()
        snapshot = dict(acked)
        for key, _ in removed:
            del snapshot[key]
        snapshot.update(upserts)
        return _Delta(
            sequence=self._sequence + 1,
            upserts=tuple(data for _, data in upserts),
            removed=tuple(key for key, _ in removed),
            snapshot=snapshot,
            events=tuple(data for _, data in events),
            completes_registration=self._completing and len(upserts) == len(changed) and len(removed) == len(gone),
        )

    async def _send_delta(self, stub: mesh_pb2_grpc.MeshAsyncStub) -> None:
        if self._pending is None:
            self._pending = self._next_delta()
        delta = self._pending
        try:
            response = await stub.UpdateServices(
                colony_codec.update_request(
                    agent_id=self.agent_id,
                    session=self._session,
                    sequence=delta.sequence,
                    upserts=delta.upserts,
                    removed=delta.removed,
                    events=delta.events,
                    completes_registration=delta.completes_registration,
                ),
                timeout=self.endpoint.timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in REFUSED:
                raise  # transient: resent as it is once the colony answers
            self._drop(delta, exc)
            return
        if response.resync_required:
            self._acked = None  # register the full set again; the events wait for the new session
            self._requeue(delta)
            self._pending = None
            return
        self._sequence, self._acked, self._pending = delta.sequence, delta.snapshot, None
        self._completing = self._completing and not delta.completes_registration
        await self._answered()

    def _drop(self, delta: _Delta, exc: grpc.aio.AioRpcError) -> None:
        """A delta the colony will never take: dropped with its events (counted); register in full again."""
        self._smaller_chunks(exc)
        self.events_dropped += len(delta.events)
        self._pending, self._acked = None, None
        emit(
            log,
            "colony.delta_refused",
            level=logging.WARNING,
            sequence=delta.sequence,
            code=exc.code().name,
            reason=exc.details() or "",
            events_dropped=len(delta.events),
            action="registering in full again",
        )

    def _smaller_chunks(self, exc: grpc.aio.AioRpcError) -> None:
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            self.chunk_bytes = max(MIN_CHUNK_BYTES, self.chunk_bytes // 2)

    async def _heartbeat(self, stub: mesh_pb2_grpc.MeshAsyncStub) -> None:
        health = self.health
        async with self._session_lock:
            response = await stub.Heartbeat(
                colony_codec.heartbeat_request(
                    agent_id=self.agent_id, session=self._session, health=health, sequence=self._sequence
                ),
                timeout=self.endpoint.timeout_s,
            )
        self._health_sent = health
        if response.resync_required:
            emit(log, "colony.resync", reason="the colony does not know this agent: registering in full")
            self._acked = None
            self._changed.set()
            return
        await self._answered()

    async def _answered(self) -> None:
        """The colony answered a delta or a heartbeat of the current session: connected, and says so when it
        was not (a colony restarted with its registry resumes the session without a new registration)."""
        self.backoff.reset()
        if not self.connected:
            self.connected = True
            emit(log, "colony.reconnected", colony_id=self.endpoint.colony_id)
            await self._state(True, f"connected to colony {self.endpoint.colony_id} at {self.endpoint.address}")
