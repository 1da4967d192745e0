"""The JSON/YAML shape of each resource: one schema per resource, whichever program shows it.

``coral agent services`` (the agent's cache) and ``coral services`` (the
colony) print a service through ``service``; the keyword arguments are the
schema, so the two views cannot drift. Values have their real types:
integers, booleans, floats, RFC 3339 times in UTC (``null`` when unknown),
closed sets as their words (``discovered``, never ``SERVICE_PROVENANCE_…``),
and ``detail`` as an object.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping

from coral_base.listing import JsonObject


def rfc3339(seconds: float | None) -> str | None:
    """Unix seconds as ``2026-11-25T10:00:00.123Z``; ``None`` for an unknown (zero) time."""
    if not seconds:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _word(value: str) -> str | None:
    return value or None


def detail_object(detail: str) -> JsonObject:
    """An audit entry's detail: the object it holds (an operation's parameters), or ``{"reason": words}``."""
    if detail.startswith("{"):
        try:
            parsed = json.loads(detail)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    return {"reason": detail} if detail else {}


def service(
    *,
    key: str,
    name: str,
    namespace: str,
    pod_name: str,
    pod_uid: str,
    container: str,
    port: int | None,
    protocol: str,
    service_type: str,
    provenance: str,
    pod_ip: str,
    node_name: str,
    agent_id: str,
    workload: str,
    labels: Mapping[str, str],
    overridden_fields: Iterable[str],
    health_endpoint: str,
    health_interval_s: float | None,
    health_state: str,
    health_since: float | None,
    health_latency_ms: float | None,
    health_error: str | None,
    first_seen: float | None,
    last_seen: float | None,
    stale: bool,
) -> JsonObject:
    """A service (``coral services``, ``coral agent services``)."""
    return {
        "key": key,
        "name": name,
        "namespace": namespace,
        "pod_name": pod_name,
        "pod_uid": pod_uid,
        "container": _word(container),
        "port": port or None,
        "protocol": _word(protocol) if port else None,
        "type": _word(service_type),
        "provenance": provenance,
        "pod_ip": _word(pod_ip),
        "node_name": _word(node_name),
        "agent_id": _word(agent_id),
        "workload": _word(workload),
        "labels": dict(sorted(labels.items())),
        "overridden_fields": list(overridden_fields),
        "health": {
            "state": health_state,
            "endpoint": _word(health_endpoint),
            "interval_s": health_interval_s or None,
            "since": rfc3339(health_since),
            "latency_ms": health_latency_ms or None,
            "error": health_error or None,
        },
        "first_seen": rfc3339(first_seen),
        "last_seen": rfc3339(last_seen),
        "stale": stale,
    }


def agent(
    *,
    agent_id: str,
    kind: str,
    node_name: str,
    state: str,
    health: str,
    services: int,
    version: str,
    first_seen: float | None,
    last_heartbeat: float | None,
    labels: Mapping[str, str],
    node_labels: Mapping[str, str],
    enrollment: JsonObject | None = None,
) -> JsonObject:
    """A node agent as the colony knows it (``coral agents``); ``enrollment`` null: it holds no certificate."""
    return {
        "agent_id": agent_id,
        "kind": kind,
        "node_name": _word(node_name),
        "state": state,
        "health": health,
        "services": services,
        "version": _word(version),
        "first_seen": rfc3339(first_seen),
        "last_heartbeat": rfc3339(last_heartbeat),
        "labels": dict(sorted(labels.items())),
        "node_labels": dict(sorted(node_labels.items())),
        "enrollment": enrollment,
    }


def enrollment(
    *, method: str, credential: str, enrolled_at: float, renewed_at: float, not_after: float, key_sha256: str
) -> JsonObject:
    """How a node agent proved who it is, and until when its certificate holds."""
    return {
        "method": method,
        "credential": _word(credential),
        "enrolled_at": rfc3339(enrolled_at),
        "renewed_at": rfc3339(renewed_at),
        "certificate_not_after": rfc3339(not_after),
        "key_sha256": key_sha256,
    }


def audit_entry(
    *,
    id: int,
    time: float,
    kind: str,
    action: str,
    actor: str,
    agent_id: str,
    node_name: str,
    namespace: str,
    pod_name: str,
    service_name: str,
    service_key: str,
    provenance: str,
    detail: str,
) -> JsonObject:
    """An entry of the colony's audit log (``coral audit``)."""
    return {
        "id": id,
        "time": rfc3339(time),
        "kind": kind,
        "action": action,
        "actor": _word(actor),
        "agent_id": _word(agent_id),
        "node_name": _word(node_name),
        "namespace": _word(namespace),
        "pod_name": _word(pod_name),
        "service_name": _word(service_name),
        "service_key": _word(service_key),
        "provenance": _word(provenance),
        "detail": detail_object(detail),
    }


def discovery_event(
    *,
    id: int,
    time: float,
    kind: str,
    node_name: str,
    namespace: str,
    pod_name: str,
    pod_uid: str,
    service_key: str,
    service_name: str,
    reason: str,
    fields: Iterable[str],
) -> JsonObject:
    """A discovery event in an agent's cache (``coral agent events``)."""
    return {
        "id": id,
        "time": rfc3339(time),
        "kind": kind,
        "node_name": _word(node_name),
        "namespace": _word(namespace),
        "pod_name": _word(pod_name),
        "pod_uid": _word(pod_uid),
        "service_key": _word(service_key),
        "service_name": _word(service_name),
        "reason": reason,
        "fields": list(fields),
    }


def condition(*, name: str, ok: bool, reason: str, since: float | None, updated: float | None) -> JsonObject:
    """One of an agent's health conditions (``coral agent status``)."""
    return {"name": name, "ok": bool(ok), "reason": reason, "since": rfc3339(since), "updated": rfc3339(updated)}


def flow(
    *,
    protocol: str,
    src: str,
    src_port: int,
    dst: str,
    dst_port: int,
    packets: int,
    bytes: int,
    first_seen: float,
    last_seen: float,
) -> JsonObject:
    """A flow of ``coral sample``: counts only, no payload."""
    return {
        "protocol": protocol,
        "src": src,
        "src_port": src_port or None,
        "dst": dst,
        "dst_port": dst_port or None,
        "packets": packets,
        "bytes": bytes,
        "first_seen": rfc3339(first_seen),
        "last_seen": rfc3339(last_seen),
    }
