"""The colony's side of the wire: the only colony module that reads or writes protobuf fields.

Every message the colony receives or sends (mesh.v1 from agents, colony.v1
to and from operators, agent.v1 on the control streams) becomes a domain
record of ``model.py`` here, and every domain record the colony answers
with becomes its message here. The services, the router, the client and the
commands import the generated classes only as servicer bases, stubs and
types. A new field (or enum value) is mapped here, once, in both
directions: ``_service_record``/``_service_info`` for a service field,
``_PROVENANCE`` for a provenance. Field numbers are RFD 012's (mesh.v1).
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterable, Sequence
from enum import StrEnum

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from coral_base.vocabulary import read_word
from coral_base.wire.coral.agent.v1 import agent_pb2
from coral_base.wire.coral.colony.v1 import colony_pb2
from coral_base.wire.coral.identity.v1 import identity_pb2
from coral_base.wire.coral.mesh.v1 import mesh_pb2
from coral_base.wire_enums import WireEnum
from coral_colony.model import (
    Action,
    AgentHealth,
    AgentKind,
    AgentRecord,
    AgentState,
    AgentStatus,
    Applied,
    ArtifactKind,
    AuditEntry,
    AuditKind,
    AuditQuery,
    Chunk,
    Delta,
    EnrollCall,
    Enrollment,
    EnrollMethod,
    EventKind,
    Flow,
    ForwardedOperation,
    HealthState,
    IssuedCertificate,
    LoggedEntry,
    OperationOutput,
    OperationRequest,
    OperationResult,
    OperationTarget,
    Outcome,
    Principal,
    Provenance,
    Registration,
    Scope,
    ServiceFilter,
    ServiceGroup,
    ServiceRecord,
    SessionCall,
    StopReason,
    StoredService,
)

JsonObject = dict[str, object]

# Each closed set and its protobuf twin, mapped once (coral_base.wire_enums). A message carries the
# enum and, for older peers, the word: these read the enum first and the word when it is unset.
PROVENANCE = WireEnum(Provenance, mesh_pb2.ServiceProvenance, "SERVICE_PROVENANCE_")
EVENT_KIND = WireEnum(EventKind, mesh_pb2.DiscoveryEventKind, "DISCOVERY_EVENT_KIND_")
HEALTH_STATE = WireEnum(HealthState, mesh_pb2.HealthState, "HEALTH_STATE_")
AGENT_HEALTH = WireEnum(AgentHealth, mesh_pb2.AgentHealth, "AGENT_HEALTH_")
AGENT_KIND = WireEnum(AgentKind, colony_pb2.AgentKind, "AGENT_KIND_")
AGENT_STATE = WireEnum(AgentState, colony_pb2.AgentState, "AGENT_STATE_")
AUDIT_KIND = WireEnum(AuditKind, colony_pb2.AuditKind, "AUDIT_KIND_")
ACTION = WireEnum(Action, agent_pb2.OperationAction, "OPERATION_ACTION_")
OUTCOME = WireEnum(Outcome, agent_pb2.OperationOutcome, "OPERATION_OUTCOME_")
STOP_REASON = WireEnum(StopReason, agent_pb2.StopReason, "STOP_REASON_")
ARTIFACT_KIND = WireEnum(ArtifactKind, agent_pb2.ArtifactKind, "ARTIFACT_KIND_")
SCOPE = WireEnum(Scope, colony_pb2.Scope, "SCOPE_")
_FLOW_FIELDS = tuple(f.name for f in dataclasses.fields(Flow))  # the same names as agent.v1 Flow's (a test checks)


class UnknownWord(ValueError):
    """A word of a closed set this colony does not know (an action, an audit kind); the message lists those it does."""

    def __init__(self, what: str, word: str, known: type[StrEnum]) -> None:
        super().__init__(f"unknown {what} {word!r}: {', '.join(k.value for k in known)}")


class BadPageToken(ValueError):
    """A page token this colony did not write (or for another listing)."""

    def __init__(self, token: str) -> None:
        super().__init__(f"page token {token[:40]!r} is not one this colony wrote: start the listing again")


def page_token(listing: str, position: Sequence[str | int]) -> str:
    """Where a page ended, opaque to clients: the listing's name and the position of its last item."""
    return base64.urlsafe_b64encode(json.dumps([listing, *position]).encode()).decode()


def page_position(listing: str, token: str, *, kinds: Sequence[type]) -> tuple[str | int, ...] | None:
    """The position ``token`` holds (None: no token, the first page); ``BadPageToken`` when it is not one
    of ``listing``'s, with values of ``kinds``."""
    if not token:
        return None
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, UnicodeDecodeError):
        raise BadPageToken(token) from None
    if (
        not isinstance(decoded, list)
        or decoded[:1] != [listing]
        or len(decoded) != len(kinds) + 1
        or not all(type(value) is kind for value, kind in zip(decoded[1:], kinds, strict=True))
    ):
        raise BadPageToken(token)
    return tuple(decoded[1:])


def _provenance(number: int, word: str = "") -> Provenance:
    return PROVENANCE.decode(number, word) or Provenance.UNKNOWN


def _seconds(unix_ms: int) -> float:
    return unix_ms / 1000


def _unix_ms(seconds: float) -> int:
    return int(seconds * 1000)


# -- services (mesh.v1 ServiceInfo, also inside colony.v1 Service) ---------------------------


def _service_record(info: mesh_pb2.ServiceInfo, *, agent_id: str) -> ServiceRecord:
    """As the registry stores it; an RFD 011 agent's service, which has no key, is keyed by its agent."""
    return ServiceRecord(
        key=info.service_key or f"{agent_id}/{info.component_name}",
        component_name=info.component_name,
        port=info.port,
        protocol=info.protocol,
        health_endpoint=info.health_endpoint,
        service_type=info.service_type,
        provenance=_provenance(info.provenance),
        namespace=info.namespace,
        pod_name=info.pod_name,
        pod_uid=info.pod_uid,
        container_name=info.container_name,
        pod_ip=info.pod_ip,
        node_name=info.node_name,
        labels=dict(info.labels),
        node_labels=dict(info.node_labels),
        overridden_fields=tuple(info.overridden_fields),
        workload=info.workload,
        health_state=HEALTH_STATE.decode(info.health.health_state, info.health.state) or HealthState.UNKNOWN,
        health_error=info.health.last_error,
        health_latency_ms=info.health.latency_ms,
        health_since=_seconds(info.health.since_unix_ms),
        health_interval_ms=info.health_interval_ms,
    )


def _service_info(service: ServiceRecord) -> mesh_pb2.ServiceInfo:
    info = mesh_pb2.ServiceInfo(
        component_name=service.component_name,
        port=service.port,
        health_endpoint=service.health_endpoint,
        service_type=service.service_type,
        labels=dict(service.labels),
        provenance=PROVENANCE.encode(service.provenance),
        node_name=service.node_name,
        node_labels=dict(service.node_labels),
        service_key=service.key,
        namespace=service.namespace,
        pod_name=service.pod_name,
        pod_uid=service.pod_uid,
        container_name=service.container_name,
        protocol=service.protocol,
        pod_ip=service.pod_ip,
        overridden_fields=list(service.overridden_fields),
        workload=service.workload,
        health_interval_ms=service.health_interval_ms,
    )
    info.health.state = service.health_state.value
    info.health.health_state = HEALTH_STATE.encode(service.health_state)
    info.health.last_error = service.health_error
    info.health.latency_ms = service.health_latency_ms
    info.health.since_unix_ms = _unix_ms(service.health_since)
    return info


# -- mesh.v1: what agents send, what the colony answers ---------------------------------------


# -- identity.v1 ---------------------------------------------------------------------

_CREDENTIALS = {
    "colony_secret": EnrollMethod.SECRET,
    "bootstrap_token": EnrollMethod.BOOTSTRAP_TOKEN,
    "service_account_token": EnrollMethod.SERVICE_ACCOUNT,
}


def enroll_call(request: identity_pb2.EnrollRequest) -> EnrollCall:
    which = request.WhichOneof("credential")
    return EnrollCall(
        colony_id=request.colony_id,
        node_name=request.node_name,
        csr_pem=request.csr_pem,
        method=_CREDENTIALS.get(which) if which else None,
        credential=str(getattr(request, which)) if which else "",
        version=request.version,
    )


def renewal_csr(request: identity_pb2.RenewRequest) -> bytes:
    return request.csr_pem


def issued_certificate(issued: IssuedCertificate) -> identity_pb2.Certificate:
    return identity_pb2.Certificate(
        agent_id=issued.agent_id,
        certificate_pem=issued.certificate_pem,
        ca_pem=issued.ca_pem,
        not_after_unix_ms=_unix_ms(issued.not_after),
        renew_after_unix_ms=_unix_ms(issued.renew_after),
        agent_port=issued.agent_port,
    )


def revoke_request(node: str) -> colony_pb2.RevokeAgentRequest:
    return colony_pb2.RevokeAgentRequest(node=node)


def revoked(response: colony_pb2.RevokeAgentResponse) -> tuple[str, int]:
    return response.agent_id, response.services_removed


def revoke_node(request: colony_pb2.RevokeAgentRequest) -> str:
    return request.node


def revoke_response(agent_id: str, services_removed: int) -> colony_pb2.RevokeAgentResponse:
    return colony_pb2.RevokeAgentResponse(agent_id=agent_id, services_removed=services_removed)


def _enrollment(enrollment: Enrollment) -> colony_pb2.Enrollment:
    return colony_pb2.Enrollment(
        method=enrollment.method.value,
        credential=enrollment.credential,
        enrolled_unix_ms=_unix_ms(enrollment.enrolled_at),
        renewed_unix_ms=_unix_ms(enrollment.renewed_at),
        certificate_not_after_unix_ms=_unix_ms(enrollment.not_after),
        key_sha256=enrollment.key_sha256,
    )


# -- mesh.v1 -------------------------------------------------------------------------


def registration(request: mesh_pb2.RegisterRequest) -> Registration:
    """A node agent sends its services; an RFD 011 agent registers one, by ``component_name``, and no services."""
    single = not request.services and bool(request.component_name)
    if single:
        services: tuple[ServiceRecord, ...] = (
            ServiceRecord(
                key=f"{request.agent_id}/{request.component_name}",
                component_name=request.component_name,
                labels=dict(request.labels),
            ),
        )
    else:
        services = tuple(_service_record(i, agent_id=request.agent_id) for i in request.services)
    return Registration(
        agent=AgentRecord(
            agent_id=request.agent_id,
            kind=AgentKind.SINGLE_SERVICE if single else AgentKind.NODE_AGENT,
            node_name=request.node_name,
            node_labels=dict(request.node_labels),
            version=request.version,
            labels=dict(request.labels),
        ),
        services=services,
        colony_id=request.colony_id,
        colony_secret=request.colony_secret,
        partial=request.partial,
    )


def _discovery_entry(event: mesh_pb2.DiscoveryEvent) -> AuditEntry:
    """A discovery event an agent reported; the registry fills in the agent, the node and its own time.

    The agent's time is kept as ``agent_time``; the action is one of the event kinds (``unknown`` for a
    word this colony does not know): an agent does not write the log's actions.
    """
    reason = event.reason + (f" [{', '.join(event.fields)}]" if event.fields else "")
    provenance = _provenance(event.provenance)
    kind = EVENT_KIND.decode(event.event_kind, event.kind)
    return AuditEntry(
        time=0.0,
        agent_time=_seconds(event.time_unix_ms),
        kind=AuditKind.DISCOVERY,
        action=kind.value if kind is not None else "unknown",
        namespace=event.namespace,
        pod_name=event.pod_name,
        service_name=event.service_name,
        service_key=event.service_key,
        provenance="" if provenance is Provenance.UNKNOWN else provenance.value,
        detail=reason,
    )


def delta(request: mesh_pb2.UpdateServicesRequest) -> Delta:
    return Delta(
        agent_id=request.agent_id,
        session_token=request.session_token,
        sequence=request.sequence,
        upserts=tuple(_service_record(i, agent_id=request.agent_id) for i in request.upserts),
        removed=tuple(request.removed_keys),
        events=tuple(_discovery_entry(e) for e in request.events),
        completes_registration=request.completes_registration,
    )


def heartbeat(request: mesh_pb2.HeartbeatRequest) -> SessionCall:
    return SessionCall(
        agent_id=request.agent_id,
        session_token=request.session_token,
        health=AGENT_HEALTH.decode(request.agent_health, request.health),
    )


def deregistration(request: mesh_pb2.DeregisterRequest) -> SessionCall:
    return SessionCall(agent_id=request.agent_id, session_token=request.session_token)


def register_response(*, session_token: str, refused: tuple[str, ...], reason: str) -> mesh_pb2.RegisterResponse:
    return mesh_pb2.RegisterResponse(
        accepted=True, session_token=session_token, reason=reason, refused_keys=list(refused)
    )


def update_response(applied: Applied) -> mesh_pb2.UpdateServicesResponse:
    return mesh_pb2.UpdateServicesResponse(
        applied_sequence=applied.applied_sequence,
        resync_required=applied.resync_required,
        refused_keys=list(applied.refused_keys),
    )


def heartbeat_response(*, resync_required: bool) -> mesh_pb2.HeartbeatResponse:
    return mesh_pb2.HeartbeatResponse(resync_required=resync_required)


def deregister_response() -> mesh_pb2.DeregisterResponse:
    return mesh_pb2.DeregisterResponse()


# -- colony.v1: the operator API, both ends --------------------------------------------------


def _agent_message(status: AgentStatus) -> colony_pb2.Agent:
    agent = status.agent
    return colony_pb2.Agent(
        agent_id=agent.agent_id,
        kind=agent.kind.value,
        agent_kind=AGENT_KIND.encode(agent.kind),
        node_name=agent.node_name,
        node_labels=dict(agent.node_labels),
        version=agent.version,
        state=status.state.value,
        agent_state=AGENT_STATE.encode(status.state),
        health=status.health.value,
        agent_health=AGENT_HEALTH.encode(status.health),
        first_seen_unix_ms=_unix_ms(status.first_seen),
        last_heartbeat_unix_ms=_unix_ms(status.last_heartbeat),
        services=status.services,
        labels=dict(agent.labels),
        enrollment=_enrollment(status.enrollment) if status.enrollment else None,
    )


def _agent_status(message: colony_pb2.Agent) -> AgentStatus:
    return AgentStatus(
        agent=AgentRecord(
            agent_id=message.agent_id,
            kind=AGENT_KIND.decode(message.agent_kind, message.kind) or AgentKind.NODE_AGENT,
            node_name=message.node_name,
            node_labels=dict(message.node_labels),
            version=message.version,
            labels=dict(message.labels),
        ),
        state=AGENT_STATE.decode(message.agent_state, message.state) or AgentState.HEALTHY,
        health=AGENT_HEALTH.decode(message.agent_health, message.health) or AgentHealth.UNKNOWN,
        first_seen=_seconds(message.first_seen_unix_ms),
        last_heartbeat=_seconds(message.last_heartbeat_unix_ms),
        services=message.services,
        enrollment=_enrollment_of(message) if message.HasField("enrollment") else None,
    )


def _enrollment_of(message: colony_pb2.Agent) -> Enrollment:
    e = message.enrollment
    return Enrollment(
        node_name=message.node_name,
        agent_id=message.agent_id,
        key_sha256=e.key_sha256,
        certificate_sha256="",  # not sent: operators see the key the node is bound to
        not_after=_seconds(e.certificate_not_after_unix_ms),
        method=read_word(EnrollMethod, e.method, EnrollMethod.SECRET),
        enrolled_at=_seconds(e.enrolled_unix_ms),
        renewed_at=_seconds(e.renewed_unix_ms),
        credential=e.credential,
    )


def _service_message(stored: StoredService) -> colony_pb2.Service:
    return colony_pb2.Service(
        info=_service_info(stored.service),
        agent_id=stored.agent_id,
        stale=stored.stale,
        first_seen_unix_ms=_unix_ms(stored.first_seen),
        last_seen_unix_ms=_unix_ms(stored.last_seen),
    )


def _stored_service(message: colony_pb2.Service) -> StoredService:
    return StoredService(
        service=_service_record(message.info, agent_id=message.agent_id),
        agent_id=message.agent_id,
        stale=message.stale,
        first_seen=_seconds(message.first_seen_unix_ms),
        last_seen=_seconds(message.last_seen_unix_ms),
    )


def _audit_message(logged: LoggedEntry) -> colony_pb2.AuditEntry:
    entry = logged.entry
    return colony_pb2.AuditEntry(
        id=logged.id,
        time_unix_ms=_unix_ms(entry.time),
        kind=entry.kind.value,
        audit_kind=AUDIT_KIND.encode(entry.kind),
        action=entry.action,
        actor=entry.actor,
        agent_id=entry.agent_id,
        node_name=entry.node_name,
        namespace=entry.namespace,
        pod_name=entry.pod_name,
        service_name=entry.service_name,
        service_key=entry.service_key,
        provenance=entry.provenance,
        service_provenance=PROVENANCE.encode(read_word(Provenance, entry.provenance, Provenance.UNKNOWN)),
        detail=entry.detail,
        agent_time_unix_ms=_unix_ms(entry.agent_time),
    )


def _logged_entry(message: colony_pb2.AuditEntry) -> LoggedEntry:
    return LoggedEntry(
        id=message.id,
        entry=AuditEntry(
            time=_seconds(message.time_unix_ms),
            kind=AUDIT_KIND.decode(message.audit_kind, message.kind) or AuditKind.AGENT,
            action=message.action,
            actor=message.actor,
            agent_id=message.agent_id,
            node_name=message.node_name,
            namespace=message.namespace,
            pod_name=message.pod_name,
            service_name=message.service_name,
            service_key=message.service_key,
            provenance=str(PROVENANCE.decode(message.service_provenance, message.provenance) or ""),
            detail=message.detail,
            agent_time=_seconds(message.agent_time_unix_ms),
        ),
    )


def whoami_request() -> colony_pb2.WhoAmIRequest:
    return colony_pb2.WhoAmIRequest()


def whoami_response(principal: Principal, *, colony_id: str) -> colony_pb2.WhoAmIResponse:
    return colony_pb2.WhoAmIResponse(
        operator=principal.name,
        colony_id=colony_id,
        scopes=[SCOPE.encode(scope) for scope in sorted(principal.scopes)],
        namespaces=sorted(principal.namespaces),
        expires_unix_ms=_unix_ms(principal.expires),
    )


def principal_of(response: colony_pb2.WhoAmIResponse) -> Principal:
    return Principal(
        name=response.operator,
        scopes=frozenset(s for number in response.scopes if (s := SCOPE.decode(number)) is not None),
        namespaces=frozenset(response.namespaces),
        expires=_seconds(response.expires_unix_ms),
    )


def agents_request(*, node: str) -> colony_pb2.ListAgentsRequest:
    return colony_pb2.ListAgentsRequest(node=node)


def agents_node(request: colony_pb2.ListAgentsRequest) -> str:
    return request.node


def agents_response(statuses: Iterable[AgentStatus]) -> colony_pb2.ListAgentsResponse:
    return colony_pb2.ListAgentsResponse(agents=[_agent_message(s) for s in statuses])


def agents_of(response: colony_pb2.ListAgentsResponse) -> list[AgentStatus]:
    return [_agent_status(a) for a in response.agents]


def services_request(where: ServiceFilter, *, page_token: str = "") -> colony_pb2.ListServicesRequest:
    return colony_pb2.ListServicesRequest(
        node=where.node,
        namespace=where.namespace,
        provenance=PROVENANCE.encode(where.provenance),
        name=where.name,
        page_token=page_token,
    )


def services_filter(request: colony_pb2.ListServicesRequest) -> ServiceFilter:
    """UNKNOWN provenance means any."""
    provenance = _provenance(request.provenance)
    return ServiceFilter(
        node=request.node,
        namespace=request.namespace,
        provenance=None if provenance is Provenance.UNKNOWN else provenance,
        name=request.name,
    )


def services_response(groups: Iterable[ServiceGroup], *, next_page_token: str = "") -> colony_pb2.ListServicesResponse:
    return colony_pb2.ListServicesResponse(
        groups=[
            colony_pb2.AgentServices(agent=_agent_message(g.agent), services=[_service_message(s) for s in g.services])
            for g in groups
        ],
        next_page_token=next_page_token,
    )


def service_bytes(stored: StoredService) -> int:
    """What one service adds to a ListServicesResponse, near enough to keep a page within its budget."""
    return _service_message(stored).ByteSize() + 8


def merged_services(pages: Iterable[colony_pb2.ListServicesResponse]) -> colony_pb2.ListServicesResponse:
    """The pages of one listing as one answer: an agent's group spanning pages becomes one group."""
    merged = colony_pb2.ListServicesResponse()
    groups: dict[str, colony_pb2.AgentServices] = {}
    for answer in pages:
        for group in answer.groups:
            into = groups.get(group.agent.agent_id)
            if into is None:
                into = groups[group.agent.agent_id] = merged.groups.add()
                into.agent.CopyFrom(group.agent)
            into.services.extend(group.services)
    return merged


def groups_of(response: colony_pb2.ListServicesResponse) -> list[ServiceGroup]:
    return [
        ServiceGroup(agent=_agent_status(g.agent), services=tuple(_stored_service(s) for s in g.services))
        for g in response.groups
    ]


def audit_request(query: AuditQuery, *, page_token: str = "") -> colony_pb2.QueryAuditRequest:
    return colony_pb2.QueryAuditRequest(
        since_unix_ms=_unix_ms(query.since),
        node=query.node,
        kind=query.kind.value if query.kind else "",
        audit_kind=AUDIT_KIND.encode(query.kind),
        limit=query.limit,
        page_token=page_token,
    )


def audit_query(request: colony_pb2.QueryAuditRequest) -> AuditQuery:
    """Raises ``UnknownWord`` for a kind this colony does not log (it would match nothing)."""
    kind = AUDIT_KIND.decode(request.audit_kind, request.kind)
    if kind is None and (request.kind or request.audit_kind):
        raise UnknownWord("audit kind", request.kind or str(request.audit_kind), AuditKind)
    return AuditQuery(since=_seconds(request.since_unix_ms), node=request.node, kind=kind, limit=request.limit)


def audit_response(entries: Iterable[LoggedEntry], *, next_page_token: str = "") -> colony_pb2.QueryAuditResponse:
    return colony_pb2.QueryAuditResponse(entries=[_audit_message(e) for e in entries], next_page_token=next_page_token)


def entry_bytes(logged: LoggedEntry) -> int:
    """What one entry adds to a QueryAuditResponse, near enough to keep a page within its budget."""
    return _audit_message(logged).ByteSize() + 8


def merged_audit(pages: Iterable[colony_pb2.QueryAuditResponse]) -> colony_pb2.QueryAuditResponse:
    merged = colony_pb2.QueryAuditResponse()
    for answer in pages:
        merged.entries.extend(answer.entries)
    return merged


def audit_of(response: colony_pb2.QueryAuditResponse) -> list[LoggedEntry]:
    return [_logged_entry(e) for e in response.entries]


def as_json(
    response: colony_pb2.ListAgentsResponse | colony_pb2.ListServicesResponse | colony_pb2.QueryAuditResponse,
) -> list[JsonObject]:
    """The listed items as protobuf's JSON mapping gives them (``-o json``: field names as in the .proto)."""
    items: Iterable[Message]
    if isinstance(response, colony_pb2.ListAgentsResponse):
        items = response.agents
    elif isinstance(response, colony_pb2.ListServicesResponse):
        items = response.groups
    else:
        items = response.entries
    return [
        MessageToDict(item, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        for item in items
    ]


# -- operations: colony.v1 RunOperation and agent.v1 control streams --------------------------


def run_operation_request(request: OperationRequest) -> colony_pb2.RunOperationRequest:
    return colony_pb2.RunOperationRequest(
        action=request.action.value,
        operation=ACTION.encode(request.action),
        target=request.target,
        node=request.node,
        duration_s=request.duration_s,
        filter=request.filter,
        max_bytes=request.max_bytes,
        max_packets=request.max_packets,
        frequency_hz=request.frequency_hz,
        all_pods=request.all_pods,
        namespace=request.namespace,
    )


def operation_request(request: colony_pb2.RunOperationRequest) -> OperationRequest:
    """Raises ``UnknownWord`` for an action this colony does not run."""
    action = ACTION.decode(request.operation, request.action)
    if action is None:
        raise UnknownWord("action", request.action or str(request.operation), Action)
    return OperationRequest(
        action=action,
        target=request.target,
        node=request.node,
        duration_s=request.duration_s,
        filter=request.filter,
        max_bytes=request.max_bytes,
        max_packets=request.max_packets,
        frequency_hz=request.frequency_hz,
        all_pods=request.all_pods,
        namespace=request.namespace,
    )


def _target_message(target: OperationTarget) -> agent_pb2.Target:
    return agent_pb2.Target(
        namespace=target.namespace,
        pod_name=target.pod_name,
        pod_uid=target.pod_uid,
        service_key=target.service_key,
        service_name=target.service_name,
        provenance=target.provenance.value,
        service_provenance=PROVENANCE.encode(target.provenance),
        node_name=target.node_name,
    )


def _target(message: agent_pb2.Target) -> OperationTarget:
    return OperationTarget(
        namespace=message.namespace,
        pod_name=message.pod_name,
        pod_uid=message.pod_uid,
        service_key=message.service_key,
        service_name=message.service_name,
        provenance=_provenance(message.service_provenance, message.provenance),
        node_name=message.node_name,
    )


def _result_message(result: OperationResult) -> agent_pb2.Result:
    return agent_pb2.Result(
        outcome=result.outcome.value,
        operation_outcome=OUTCOME.encode(result.outcome),
        error=result.error,
        duration_s=result.duration_s,
        bytes=result.bytes,
        packets=result.packets,
        dropped=result.dropped,
        flows=[agent_pb2.Flow(**dataclasses.asdict(f)) for f in result.flows],
        samples=result.samples,
        engine=result.engine,
        node_name=result.node_name,
        stopped_by=result.stopped_by.value if result.stopped_by else "",
        stop_reason=STOP_REASON.encode(result.stopped_by),
    )


def _result(message: agent_pb2.Result) -> OperationResult:
    return OperationResult(
        outcome=OUTCOME.decode(message.operation_outcome, message.outcome) or Outcome.FAILED,
        error=message.error,
        duration_s=message.duration_s,
        bytes=message.bytes,
        packets=message.packets,
        dropped=message.dropped,
        flows=tuple(Flow(**{name: getattr(f, name) for name in _FLOW_FIELDS}) for f in message.flows),
        samples=message.samples,
        engine=message.engine,
        node_name=message.node_name,
        stopped_by=STOP_REASON.decode(message.stop_reason, message.stopped_by),
    )


def target_output(target: OperationTarget, part: int = 0) -> colony_pb2.OperationOutput:
    """The first messages of an operation's stream: the pods the colony resolved the target to, one per part."""
    return colony_pb2.OperationOutput(target=_target_message(target), part=part)


def result_output(result: OperationResult, part: int = 0) -> colony_pb2.OperationOutput:
    """A result the colony decided itself (the agent was not connected)."""
    return colony_pb2.OperationOutput(result=_result_message(result), part=part)


def relayed(
    message: agent_pb2.AgentMessage, part: int = 0
) -> tuple[colony_pb2.OperationOutput, OperationResult | None]:
    """An agent's chunk or result, passed on to the operator as it came; the result also read, for the audit."""
    if message.WhichOneof("body") == "chunk":
        return colony_pb2.OperationOutput(chunk=message.chunk, part=part), None
    return colony_pb2.OperationOutput(result=message.result, part=part), _result(message.result)


def operation_output(output: colony_pb2.OperationOutput) -> tuple[int, OperationOutput] | None:
    """One message of an operation's stream and the part (pod) it is about, as the operator's command reads
    it (None: a kind it does not know)."""
    kind = output.WhichOneof("body")
    if kind == "target":
        return output.part, _target(output.target)
    if kind == "chunk":
        return output.part, Chunk(kind=_artifact_kind(output.chunk), data=output.chunk.data)
    if kind == "result":
        return output.part, _result(output.result)
    return None


def hello(message: agent_pb2.AgentMessage) -> SessionCall | None:
    """The first message of an agent's control stream, or None when it is not a Hello."""
    if message.WhichOneof("body") != "hello":
        return None
    return SessionCall(agent_id=message.hello.agent_id, session_token=message.hello.session_token)


def addressed(message: agent_pb2.AgentMessage) -> tuple[str, bool] | None:
    """(the request a chunk or result belongs to, whether it is the final result); None for anything else."""
    kind = message.WhichOneof("body")
    if kind == "chunk":
        return message.chunk.request_id, False
    if kind == "result":
        return message.result.request_id, True
    return None


def failed(request_id: str, reason: str) -> agent_pb2.AgentMessage:
    """The result the colony gives in the agent's place when its stream ends mid-operation."""
    return agent_pb2.AgentMessage(
        result=agent_pb2.Result(
            request_id=request_id,
            outcome=Outcome.FAILED.value,
            operation_outcome=OUTCOME.encode(Outcome.FAILED),
            error=reason,
        )
    )


def request_message(operation: ForwardedOperation) -> agent_pb2.ColonyMessage:
    request = operation.request
    return agent_pb2.ColonyMessage(
        request=agent_pb2.OperationRequest(
            request_id=operation.request_id,
            operator=operation.operator,
            action=request.action.value,
            operation=ACTION.encode(request.action),
            target=_target_message(operation.target),
            duration_s=request.duration_s,
            filter=request.filter,
            max_bytes=request.max_bytes,
            max_packets=request.max_packets,
            frequency_hz=request.frequency_hz,
        )
    )


def cancel_message(request_id: str, reason: str) -> agent_pb2.ColonyMessage:
    return agent_pb2.ColonyMessage(cancel=agent_pb2.Cancel(request_id=request_id, reason=reason))


def _artifact_kind(chunk: agent_pb2.Chunk) -> ArtifactKind:
    """What the bytes are; a kind this version does not know is kept as raw bytes (pcap is the oldest)."""
    return ARTIFACT_KIND.decode(chunk.artifact, chunk.kind) or ArtifactKind.PCAP
