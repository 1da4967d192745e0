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
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import grpc.aio

from coral_base.wire.coral.agent.v1 import agent_pb2
from coral_base.wire.coral.colony.v1 import colony_pb2, colony_pb2_grpc
from coral_base.wire.coral.mesh.v1 import mesh_pb2
from coral_colony.audit import AuditEntry
from coral_colony.registry import Registry
from coral_colony.router import AgentNotConnected, Router
from coral_colony.tokens import OperatorTokens

_T = TypeVar("_T")
AppendAudit = Callable[[list[AuditEntry]], Awaitable[None]]

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
        workload=row.get("workload") or "",
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
        record: AppendAudit,
        router: Router,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reader = reader
        self.tokens = tokens
        self.colony_id = colony_id
        self.record = record
        self.router = router
        self.clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry-reader")

    async def _read(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _operator(self, context: Any, method: str) -> str:
        token = operator_token(context.invocation_metadata())
        principal = await self._read(lambda: self.tokens.authenticate(token))
        if principal is None:
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
        assert principal is not None
        return principal.name

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

    async def RunOperation(self, request: Any, context: Any) -> AsyncIterator[Any]:
        operator = await self._operator(context, "RunOperation")
        started = self.clock()
        parameters = {
            "duration_s": request.duration_s,
            "filter": request.filter,
            "max_bytes": request.max_bytes,
            "max_packets": request.max_packets,
            "frequency_hz": request.frequency_hz,
        }
        if request.action not in ACTIONS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"unknown action {request.action!r}: {', '.join(ACTIONS)}"
            )
        try:
            target, agent_id, node = await self._read(
                lambda: resolve_pod(self.reader, request.target, node=request.node)
            )
        except LookupError as exc:
            await self._audit_operation(
                operator, request.action, agent_pb2.Target(), "", "", parameters, _refusal(str(exc)), started
            )
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            raise  # unreachable: abort raises
        forwarded = agent_pb2.OperationRequest(
            request_id=uuid.uuid4().hex,
            operator=operator,
            action=request.action,
            target=target,
            duration_s=request.duration_s,
            filter=request.filter,
            max_bytes=request.max_bytes,
            max_packets=request.max_packets,
            frequency_hz=request.frequency_hz,
        )
        result: Any = None
        yield colony_pb2.OperationOutput(target=target)
        try:
            async for message in self.router.run(agent_id, forwarded):
                if message.WhichOneof("body") == "chunk":
                    yield colony_pb2.OperationOutput(chunk=message.chunk)
                else:
                    result = message.result
                    yield colony_pb2.OperationOutput(result=result)
        except AgentNotConnected:
            result = _refusal(
                f"the agent of node {node} ({agent_id}) holds no control stream: is it running and registered?",
                outcome="failed",
            )
            yield colony_pb2.OperationOutput(result=result)
        finally:
            if result is None:
                result = agent_pb2.Result(outcome="cancelled", error="the operator cancelled")
            await self._audit_operation(operator, request.action, target, agent_id, node, parameters, result, started)

    async def _audit_operation(
        self,
        operator: str,
        action: str,
        target: Any,
        agent_id: str,
        node: str,
        parameters: dict[str, object],
        result: Any,
        started: float,
    ) -> None:
        detail = {
            "outcome": result.outcome,
            "error": result.error,
            "parameters": {k: v for k, v in parameters.items() if v},
            "duration_s": round(result.duration_s or (self.clock() - started), 3),
            "bytes": result.bytes,
            "packets": result.packets,
            "dropped": result.dropped,
            "samples": result.samples,
            "stopped_by": result.stopped_by,
        }
        entry = AuditEntry(
            time=started,
            kind="operation",
            action=action,
            actor=operator,
            agent_id=agent_id,
            node_name=node,
            namespace=target.namespace,
            pod_name=target.pod_name,
            service_name=target.service_name,
            service_key=target.service_key,
            provenance=target.provenance,
            detail=json.dumps(detail, sort_keys=True),
        )
        await asyncio.shield(self.record([entry]))

    def close(self) -> None:
        self._executor.shutdown(wait=True)


ACTIONS = ("tap", "profile", "sample")


def _refusal(error: str, *, outcome: str = "refused") -> Any:
    return agent_pb2.Result(outcome=outcome, error=error)


def resolve_pod(reader: Registry, target: str, *, node: str = "") -> tuple[Any, str, str]:
    """A service key, ``namespace/pod`` or a service name -> (target, owning agent, node).

    With ``node``, a ``namespace/pod`` the registry does not list (its namespace
    may be filtered out) goes to that node's agent, which decides.
    """
    rows = reader.services(key=target) if target.count("/") >= 2 else []
    by_service = True
    if not rows and target.count("/") == 1:
        namespace, pod = target.split("/")
        rows = reader.services(namespace=namespace, pod_name=pod)
        by_service = False
    if not rows and "/" not in target:
        rows = reader.services(name_exact=target)
    if not rows and node and target.count("/") == 1:
        agents = [a for a in reader.agents(node=node) if a["kind"] == "node-agent"]
        if not agents:
            raise LookupError(f"no node agent on node {node!r} (coral agents lists them)")
        namespace, pod = target.split("/")
        return agent_pb2.Target(namespace=namespace, pod_name=pod), str(agents[0]["agent_id"]), node
    if not rows:
        raise LookupError(f"no service or pod {target!r} in the colony (coral services lists them)")
    pods = sorted({(r["namespace"], r["pod_name"]) for r in rows})
    if len(pods) > 1:
        choices = ", ".join(f"{ns}/{pod}" for ns, pod in pods[:10])
        raise LookupError(f"{target!r} matches {len(pods)} pods ({choices}): name one as namespace/pod")
    row = rows[0]
    if row["stale"]:
        raise LookupError(f"{target!r} is stale: the agent of node {row['node_name']} is unreachable")
    chosen = agent_pb2.Target(
        namespace=row["namespace"],
        pod_name=row["pod_name"],
        pod_uid=row["pod_uid"],
        service_key=row["key"] if by_service and len(rows) == 1 else "",
        service_name=row["component_name"] if by_service else "",
        provenance=row["provenance"] if by_service else "",
    )
    owner = next((a for a in reader.agents() if a["agent_id"] == row["agent_id"]), None)
    return chosen, str(row["agent_id"]), str(owner["node_name"] if owner else row["node_name"])


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
