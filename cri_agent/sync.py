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

import grpc
import grpc.aio

from coral_base.backoff import Backoff
from coral_base.clock import SYSTEM_CLOCK, Clock
from coral_base.grpc_options import channel_options
from coral_base.logs import emit
from coral_base.vocabulary import AgentHealth
from coral_base.wire.coral.mesh.v1 import mesh_pb2_grpc
from cri_agent import colony_codec
from cri_agent.enrollment import AgentIdentity, describe
from cri_agent.identity import IdentityError
from cri_agent.model import DiscoveryEvent, Health, ServiceInfo, ServiceKey

log = logging.getLogger("cri_agent.sync")

Wire = dict[ServiceKey, bytes]  # key -> serialized ServiceInfo, compared to find changes
OnState = Callable[[bool, str], Awaitable[None]]  # (connected, reason): the agent's `colony` condition
MAX_QUEUED_EVENTS = 10_000
DEREGISTER_TIMEOUT_S = 2.0  # at shutdown: an unreachable colony must not hold the pod Terminating


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


@dataclass(frozen=True, slots=True)
class Backlog:
    """What the colony has not acknowledged yet (the agent's metrics read it)."""

    changes: int  # services to upsert or remove
    events: int  # discovery events queued or in the delta under way


def colony_channel(endpoint: ColonyEndpoint) -> grpc.aio.Channel:
    """A channel to the colony: TLS pinned to its CA (insecure only when configured so)."""
    if endpoint.ca_pem is None:
        return grpc.aio.insecure_channel(endpoint.address, options=channel_options())
    credentials = grpc.ssl_channel_credentials(root_certificates=endpoint.ca_pem)
    return grpc.aio.secure_channel(endpoint.address, credentials, options=channel_options())


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
        self._changed = asyncio.Event()
        self.health = AgentHealth.UNKNOWN
        self.connected = False

    # -- input from the agent --------------------------------------------------------

    def set_services(self, services: Mapping[ServiceKey, ServiceInfo], health: Mapping[ServiceKey, Health]) -> None:
        labels = self.endpoint.node_labels
        self._desired = {
            key: colony_codec.service(service, health.get(key), labels).SerializeToString(deterministic=True)
            for key, service in services.items()
        }
        self._changed.set()

    def set_node_labels(self, labels: Mapping[str, str]) -> None:
        """New node labels (from the API) travel with every service: register in full again."""
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
            self._changed.set()

    @property
    def in_sync(self) -> bool:
        return self._acked == self._desired and self._pending is None and not self._events

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
        """Sync over ``channel`` until a call fails (raised) or the certificate was renewed (True)."""
        stub = mesh_pb2_grpc.MeshStub(channel)
        while True:
            if self.identity is not None and self.identity.due():
                await self.identity.renew(channel)
                return True
            if self._acked is None:
                await self._register(stub)
            elif self._pending is not None or self._acked != self._desired or self._events:
                await self._send_delta(stub)
            elif self.health != self._health_sent:
                await self._heartbeat(stub)
            else:
                self._changed.clear()
                if not await self.clock.sleep(self.endpoint.heartbeat_interval_s, self._changed):
                    await self._heartbeat(stub)

    async def _state(self, connected: bool, reason: str) -> None:
        if self.on_state is not None:
            await self.on_state(connected, reason)

    def _requeue(self, delta: _Delta | None) -> None:
        """Events of a delta the colony did not apply go back to the front of the queue."""
        if delta is not None and delta.events:
            self._events.extendleft(reversed(delta.events))

    async def _register(self, stub: mesh_pb2_grpc.MeshAsyncStub) -> None:
        snapshot = dict(self._desired)
        endpoint = self.endpoint
        request = colony_codec.register_request(
            agent_id=self.agent_id,
            colony_id=endpoint.colony_id,
            secret="" if self.identity is not None else endpoint.secret,  # an enrolled agent is its certificate
            version=endpoint.version,
            node_name=endpoint.node_name,
            node_labels=endpoint.node_labels,
            services=snapshot.values(),
        )
        response = await stub.Register(request, timeout=endpoint.timeout_s)
        self._requeue(self._pending)
        self._session, self._sequence, self._pending = response.session_token, 0, None
        self._registered.set()
        self._acked = snapshot
        self._health_sent = None  # the new session starts at "unknown": send ours
        self.connected = True
        self.backoff.reset()
        refused = len(response.refused_keys)
        emit(log, "colony.registered", services=len(snapshot), refused=refused)
        await self._state(
            True,
            f"registered with colony {self.endpoint.colony_id} at {self.endpoint.address}"
            + (f"; {refused} service(s) refused: another agent owns them" if refused else ""),
        )

    async def _send_delta(self, stub: mesh_pb2_grpc.MeshAsyncStub) -> None:
        if self._pending is None:
            assert self._acked is not None
            desired = dict(self._desired)
            self._pending = _Delta(
                sequence=self._sequence + 1,
                upserts=tuple(data for key, data in desired.items() if self._acked.get(key) != data),
                removed=tuple(key for key in self._acked if key not in desired),
                snapshot=desired,
                events=tuple(self._events),
            )
            self._events.clear()
        delta = self._pending
        response = await stub.UpdateServices(
            colony_codec.update_request(
                agent_id=self.agent_id,
                session=self._session,
                sequence=delta.sequence,
                upserts=delta.upserts,
                removed=delta.removed,
                events=delta.events,
            ),
            timeout=self.endpoint.timeout_s,
        )
        if response.resync_required:
            self._acked = None  # register the full set again; the events wait for the new session
            self._requeue(delta)
            self._pending = None
            return
        self._sequence, self._acked, self._pending = delta.sequence, delta.snapshot, None
        self.connected = True
        self.backoff.reset()

    async def _heartbeat(self, stub: mesh_pb2_grpc.MeshAsyncStub) -> None:
        health = self.health
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
