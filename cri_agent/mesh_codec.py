"""The agent's side of mesh.v1: the only module that reads or writes its protobuf fields.

Services and discovery events become ``ServiceInfo`` and ``DiscoveryEvent``
messages (serialized once, compared as bytes by ``sync``); the three
requests are built from those bytes. Field numbers are RFD 012's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from coral_base.wire.coral.mesh.v1 import mesh_pb2
from cri_agent.model import DiscoveryEvent, Health, Provenance, ServiceInfo

_PROVENANCE = {
    Provenance.EXPLICIT: mesh_pb2.SERVICE_PROVENANCE_EXPLICIT,
    Provenance.DISCOVERED: mesh_pb2.SERVICE_PROVENANCE_DISCOVERED,
    Provenance.OVERRIDDEN: mesh_pb2.SERVICE_PROVENANCE_OVERRIDDEN,
}


def service(service: ServiceInfo, health: Health | None, node_labels: Mapping[str, str]) -> Any:
    info = mesh_pb2.ServiceInfo(
        component_name=service.name,
        port=service.port or 0,
        health_endpoint=service.health_endpoint,
        service_type=service.service_type,
        labels=dict(service.labels),
        provenance=_PROVENANCE[service.provenance],
        node_name=service.node_name,
        node_labels=dict(node_labels),
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
        info.health.state = health.state.value
        info.health.last_error = health.last_error
        info.health.latency_ms = health.latency_ms or 0.0
        info.health.since_unix_ms = int(health.since * 1000)
    return info


def event(event: DiscoveryEvent, *, at: float) -> Any:
    return mesh_pb2.DiscoveryEvent(
        time_unix_ms=int(at * 1000),
        kind=event.kind.value,
        namespace=event.namespace,
        pod_name=event.pod_name,
        pod_uid=event.pod_uid or "",
        service_key=event.key or "",
        service_name=event.service,
        provenance=_PROVENANCE[event.provenance] if event.provenance else mesh_pb2.SERVICE_PROVENANCE_UNKNOWN,
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
) -> Any:
    return mesh_pb2.RegisterRequest(
        agent_id=agent_id,
        colony_id=colony_id,
        colony_secret=secret,
        version=version,
        node_name=node_name,
        node_labels=dict(node_labels),
        services=[mesh_pb2.ServiceInfo.FromString(data) for data in services],
    )


def update_request(
    *,
    agent_id: str,
    session: str,
    sequence: int,
    upserts: Iterable[bytes],
    removed: Iterable[str],
    events: Iterable[bytes],
) -> Any:
    return mesh_pb2.UpdateServicesRequest(
        agent_id=agent_id,
        session_token=session,
        sequence=sequence,
        upserts=[mesh_pb2.ServiceInfo.FromString(data) for data in upserts],
        removed_keys=list(removed),
        events=[mesh_pb2.DiscoveryEvent.FromString(data) for data in events],
    )


def heartbeat_request(*, agent_id: str, session: str, health: str, sequence: int) -> Any:
    return mesh_pb2.HeartbeatRequest(agent_id=agent_id, session_token=session, health=health, sequence=sequence)
