"""The agent's side of the colony's wire: the only module that reads or writes its protobuf fields.

Three protocols, one peer. ``identity.v1``: the enrollment request with its
one credential, and the certificate the colony answers with. ``mesh.v1`` (RFD 012's field numbers): services
and discovery events become ``ServiceInfo`` and ``DiscoveryEvent`` messages,
serialized once and compared as bytes by ``sync``; the registration
requests are built from those bytes. ``agent.v1``: the colony's operation
requests become ``OperationRequest`` records for the guardrails and the
runner, and their artifacts and results go back as messages.

Closed sets travel as protobuf enums and, for older colonies, as the words
they used to read (``coral_base.wire_enums``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from coral_base.vocabulary import (
    Action,
    AgentHealth,
    ArtifactKind,
    EnrollMethod,
    EventKind,
    HealthState,
    Outcome,
    StopReason,
)
from coral_base.wire.coral.agent.v1 import agent_pb2
from coral_base.wire.coral.identity.v1 import identity_pb2
from coral_base.wire.coral.mesh.v1 import mesh_pb2
from coral_base.wire_enums import WireEnum
from cri_agent.model import DiscoveryEvent, Health, Provenance, ServiceInfo
from cri_agent.operation import Artifact, OperationRequest, OperationResult, OperationTarget

PROVENANCE = WireEnum(Provenance, mesh_pb2.ServiceProvenance, "SERVICE_PROVENANCE_")
EVENT_KIND = WireEnum(EventKind, mesh_pb2.DiscoveryEventKind, "DISCOVERY_EVENT_KIND_")
HEALTH_STATE = WireEnum(HealthState, mesh_pb2.HealthState, "HEALTH_STATE_")
AGENT_HEALTH = WireEnum(AgentHealth, mesh_pb2.AgentHealth, "AGENT_HEALTH_")
ACTION = WireEnum(Action, agent_pb2.OperationAction, "OPERATION_ACTION_")
OUTCOME = WireEnum(Outcome, agent_pb2.OperationOutcome, "OPERATION_OUTCOME_")
STOP_REASON = WireEnum(StopReason, agent_pb2.StopReason, "STOP_REASON_")
ARTIFACT_KIND = WireEnum(ArtifactKind, agent_pb2.ArtifactKind, "ARTIFACT_KIND_")


# -- identity.v1 -----------------------------------------------------------------------------------------------------

_CREDENTIAL_FIELD = {
    EnrollMethod.SECRET: "colony_secret",
    EnrollMethod.BOOTSTRAP_TOKEN: "bootstrap_token",
    EnrollMethod.SERVICE_ACCOUNT: "service_account_token",
}


def enroll_request(
    *, colony_id: str, node_name: str, csr_pem: str, method: EnrollMethod, credential: str, version: str
) -> identity_pb2.EnrollRequest:
    request = identity_pb2.EnrollRequest(
        colony_id=colony_id, node_name=node_name, csr_pem=csr_pem.encode(), version=version
    )
    setattr(request, _CREDENTIAL_FIELD[method], credential)
    return request


def renew_request(csr_pem: str) -> identity_pb2.RenewRequest:
    return identity_pb2.RenewRequest(csr_pem=csr_pem.encode())


def certificate(message: identity_pb2.Certificate) -> tuple[str, str, str, float, float, int]:
    """(agent id, certificate PEM, CA PEM, not after, renew after, agent port) of a Certificate."""
    return (
        message.agent_id,
        message.certificate_pem.decode(),
        message.ca_pem.decode(),
        message.not_after_unix_ms / 1000,
        message.renew_after_unix_ms / 1000,
        message.agent_port,
    )


# -- mesh.v1 ---------------------------------------------------------------------------------------------------------


def service(service: ServiceInfo, health: Health | None) -> mesh_pb2.ServiceInfo:
    """Without node labels: they travel once, in the registration (the colony gives them to its services)."""
    info = mesh_pb2.ServiceInfo(
        component_name=service.name,
        port=service.port or 0,
        health_endpoint=service.health_endpoint,
        service_type=service.service_type,
        labels=dict(service.labels),
        provenance=PROVENANCE.encode(service.provenance),
        node_name=service.node_name,
        service_key=service.key,
        namespace=service.namespace,
        pod_name=service.pod_name,
        pod_uid=service.pod_uid,
        container_name=service.container,
        protocol=service.protocol or "",
        pod_ip=service.pod_ip,
        health_interval_ms=int(service.health_interval_s * 1000),
        overridden_fields=list(service.overridden_fields),
        workload=service.workload,
    )
    if health is not None:
        info.health.health_state = HEALTH_STATE.encode(health.state)
        info.health.state = health.state.value
        info.health.last_error = health.last_error
        info.health.latency_ms = health.latency_ms or 0.0
        info.health.since_unix_ms = int(health.since * 1000)
    return info


def event(event: DiscoveryEvent, *, at: float) -> mesh_pb2.DiscoveryEvent:
    return mesh_pb2.DiscoveryEvent(
        time_unix_ms=int(at * 1000),
        event_kind=EVENT_KIND.encode(event.kind),
        kind=event.kind.value,
        namespace=event.namespace,
        pod_name=event.pod_name,
        pod_uid=event.pod_uid or "",
        service_key=event.key or "",
        service_name=event.service,
        provenance=PROVENANCE.encode(event.provenance),
        reason=event.reason,
        fields=list(event.fields),
    )


def register_request(
    *,
    agent_id: str,
    colony_id: str,
    secret: str,
    version: str,
    node_name: str,
    node_labels: Mapping[str, str],
    services: Iterable[bytes],
    partial: bool = False,
) -> mesh_pb2.RegisterRequest:
    return mesh_pb2.RegisterRequest(
        agent_id=agent_id,
        colony_id=colony_id,
        colony_secret=secret,
        version=version,
        node_name=node_name,
        node_labels=dict(node_labels),
        services=[mesh_pb2.ServiceInfo.FromString(data) for data in services],
        partial=partial,
    )


def update_request(
    *,
    agent_id: str,
    session: str,
    sequence: int,
    upserts: Iterable[bytes],
    removed: Iterable[str],
    events: Iterable[bytes],
    completes_registration: bool = False,
) -> mesh_pb2.UpdateServicesRequest:
    return mesh_pb2.UpdateServicesRequest(
        agent_id=agent_id,
        session_token=session,
        sequence=sequence,
        upserts=[mesh_pb2.ServiceInfo.FromString(data) for data in upserts],
        removed_keys=list(removed),
        events=[mesh_pb2.DiscoveryEvent.FromString(data) for data in events],
        completes_registration=completes_registration,
    )


def heartbeat_request(*, agent_id: str, session: str, health: AgentHealth, sequence: int) -> mesh_pb2.HeartbeatRequest:
    return mesh_pb2.HeartbeatRequest(
        agent_id=agent_id,
        session_token=session,
        agent_health=AGENT_HEALTH.encode(health),
        health=health.value,
        sequence=sequence,
    )


def deregister_request(*, agent_id: str, session: str) -> mesh_pb2.DeregisterRequest:
    return mesh_pb2.DeregisterRequest(agent_id=agent_id, session_token=session)


# -- agent.v1 --------------------------------------------------------------------------------------------------------


def hello(*, agent_id: str, session: str) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(hello=agent_pb2.Hello(agent_id=agent_id, session_token=session))


def colony_message(message: agent_pb2.ColonyMessage) -> OperationRequest | str | None:
    """An operation to run, the request id of one to cancel, or None (a body this agent does not know)."""
    body = message.WhichOneof("body")
    if body == "cancel":
        return message.cancel.request_id
    if body != "request":
        return None
    request = message.request
    target = request.target
    return OperationRequest(
        request_id=request.request_id,
        operator=request.operator,
        action=ACTION.decode(request.operation, request.action) or request.action,
        target=OperationTarget(
            namespace=target.namespace,
            pod_name=target.pod_name,
            pod_uid=target.pod_uid,
            service_key=target.service_key,
            service_name=target.service_name,
            provenance=PROVENANCE.decode(target.service_provenance, target.provenance),
        ),
        duration_s=request.duration_s,
        filter=request.filter,
        max_bytes=request.max_bytes,
        max_packets=request.max_packets,
        frequency_hz=request.frequency_hz,
    )


def artifact(artifact: Artifact) -> agent_pb2.AgentMessage:
    chunk = agent_pb2.Chunk(
        request_id=artifact.request_id,
        artifact=ARTIFACT_KIND.encode(artifact.kind),
        kind=artifact.kind.value,
        data=artifact.data,
    )
    return agent_pb2.AgentMessage(chunk=chunk)


def result(result: OperationResult) -> agent_pb2.AgentMessage:
    message = agent_pb2.Result(
        request_id=result.request_id,
        operation_outcome=OUTCOME.encode(result.outcome),
        outcome=result.outcome.value if result.outcome else "",
        error=result.error,
        duration_s=result.duration_s,
        bytes=result.bytes,
        packets=result.packets,
        dropped=result.dropped,
        samples=result.samples,
        engine=result.engine,
        node_name=result.node_name,
        stop_reason=STOP_REASON.encode(result.stopped_by),
        stopped_by=result.stopped_by.value if result.stopped_by else "",
    )
    for flow in result.flows:
        protocol, src, sport, dst, dport = flow.key
        message.flows.add(
            protocol=protocol,
            src=src,
            src_port=sport,
            dst=dst,
            dst_port=dport,
            packets=flow.packets,
            bytes=flow.bytes,
            first_seen_unix_ms=int(flow.first_seen * 1000),
            last_seen_unix_ms=int(flow.last_seen * 1000),
        )
    return agent_pb2.AgentMessage(result=message)
