"""The ``coral.colony.v1.Colony`` gRPC service: what operators (the CLI) call.

Every call needs ``authorization: Bearer <token>`` metadata with a token
from ``coral colony token create NAME``; NAME is the caller's identity.
A missing or unknown token fails UNAUTHENTICATED and is audited. Reads use
their own registry connection and thread, so operators never queue behind
agents' writes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import grpc.aio

from coral_colony.audit import AuditEntry
from coral_colony.registry import Registry
from coral_colony.tokens import OperatorTokens
from cri_agent._proto.coral.colony.v1 import colony_pb2, colony_pb2_grpc
from cri_agent._proto.coral.mesh.v1 import mesh_pb2

_T = TypeVar("_T")
Record = Callable[[list[AuditEntry]], Awaitable[None]]

_PROVENANCE_NAMES = {
    mesh_pb2.SERVICE_PROVENANCE_EXPLICIT: "explicit",
    mesh_pb2.SERVICE_PROVENANCE_DISCOVERED: "discovered",
    mesh_pb2.SERVICE_PROVENANCE_OVERRIDDEN: "overridden",
}
_PROVENANCE_VALUES = {name: value for value, name in _PROVENANCE_NAMES.items()}
NO_TOKEN = (
    "no operator token: pass --token or set CORAL_TOKEN"
    " (create one on the colony with `coral colony token create NAME`)"
)
BAD_TOKEN = "the colony does not know this operator token: it was revoked or belongs to another colony"


def operator_token(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value.removeprefix("Bearer ").strip()
    return ""


def agent_message(row: Mapping[str, Any]) -> Any:
    return colony_pb2.Agent(
        agent_id=row["agent_id"],
        kind=row["kind"],
        node_name=row["node_name"],
        node_labels=json.loads(row["node_labels"] or "{}"),
        version=row["version"],
        state=row["state"],
        health=row["health"],
        first_seen_unix_ms=int(row["first_seen"] * 1000),
        last_heartbeat_unix_ms=int(row["last_heartbeat"] * 1000),
        services=int(row.get("services", 0)),
        labels=json.loads(row["labels"] or "{}"),
    )


def service_message(row: Mapping[str, Any]) -> Any:
    info = mesh_pb2.ServiceInfo(
        component_name=row["component_name"],
        port=row["port"],
        health_endpoint=row["health_endpoint"],
        service_type=row["service_type"],
        labels=json.loads(row["labels"] or "{}"),
        provenance=_PROVENANCE_VALUES.get(row["provenance"], mesh_pb2.SERVICE_PROVENANCE_UNKNOWN),
        node_name=row["node_name"],
        node_labels=json.loads(row["node_labels"] or "{}"),
        service_key=row["key"],
        namespace=row["namespace"],
        pod_name=row["pod_name"],
        pod_uid=row["pod_uid"],
        container_name=row["container_name"],
        protocol=row["protocol"],
        pod_ip=row["pod_ip"],
        overridden_fields=json.loads(row["overridden_fields"] or "[]"),
    )
    info.health.state = row["health_state"]
    info.health.last_error = row["health_error"]
    info.health.latency_ms = row.get("health_latency_ms") or 0.0
    info.health.since_unix_ms = int((row.get("health_since") or 0.0) * 1000)
    info.health_interval_ms = row.get("health_interval_ms") or 0
    return colony_pb2.Service(
        info=info,
        agent_id=row["agent_id"],
        stale=bool(row["stale"]),
        first_seen_unix_ms=int(row["first_seen"] * 1000),
        last_seen_unix_ms=int(row["last_seen"] * 1000),
    )


class OperatorService(colony_pb2_grpc.ColonyServicer):
    def __init__(
        self,
        reader: Registry,
        tokens: OperatorTokens,
        *,
        colony_id: str,
        record: Record,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reader = reader
        self.tokens = tokens
        self.colony_id = colony_id
        self.record = record
        self.clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry-reader")

    async def _read(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _operator(self, context: Any, method: str) -> str:
        token = operator_token(context.invocation_metadata())
        name = await self._read(lambda: self.tokens.authenticate(token))
        if name is None:
            peer = context.peer() or "unknown peer"
            why = "no token" if not token else "unknown token"
            await self.record(
                [
                    AuditEntry(
                        time=self.clock(), kind="auth", action="operator.refused", detail=f"{why} from {peer}: {method}"
                    )
                ]
            )
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, NO_TOKEN if not token else BAD_TOKEN)
        assert name is not None
        return name

    async def WhoAmI(self, request: Any, context: Any) -> Any:
        name = await self._operator(context, "WhoAmI")
        return colony_pb2.WhoAmIResponse(operator=name, colony_id=self.colony_id)

    async def ListAgents(self, request: Any, context: Any) -> Any:
        await self._operator(context, "ListAgents")
        rows = await self._read(lambda: self.reader.agents(node=request.node))
        return colony_pb2.ListAgentsResponse(agents=[agent_message(r) for r in rows])

    async def ListServices(self, request: Any, context: Any) -> Any:
        await self._operator(context, "ListServices")
        provenance = _PROVENANCE_NAMES.get(request.provenance, "")

        def query() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            services = self.reader.services(
                node=request.node, namespace=request.namespace, provenance=provenance, name=request.name
            )
            return self.reader.agents(node=request.node), services

        agents, services = await self._read(query)
        groups: dict[str, Any] = {}
        for row in agents:
            groups[row["agent_id"]] = colony_pb2.AgentServices(agent=agent_message(row))
        for row in services:
            group = groups.get(row["agent_id"])
            if group is not None:
                group.services.append(service_message(row))
        filtered = bool(request.namespace or request.name or provenance)
        return colony_pb2.ListServicesResponse(
            groups=[g for g in groups.values() if g.services or not filtered],
        )

    async def QueryAudit(self, request: Any, context: Any) -> Any:
        await self._operator(context, "QueryAudit")
        rows = await self._read(
            lambda: self.reader.audit.query(
                since=request.since_unix_ms / 1000, node=request.node, kind=request.kind, limit=request.limit
            )
        )
        return colony_pb2.QueryAuditResponse(
            entries=[
                colony_pb2.AuditEntry(
                    id=r["id"],
                    time_unix_ms=int(r["time"] * 1000),
                    **{k: r[k] for k in _AUDIT_TEXT},
                )
                for r in rows
            ]
        )

    def close(self) -> None:
        self._executor.shutdown(wait=True)


_AUDIT_TEXT = (
    "kind",
    "action",
    "actor",
    "agent_id",
    "node_name",
    "namespace",
    "pod_name",
    "service_name",
    "service_key",
    "provenance",
    "detail",
)
