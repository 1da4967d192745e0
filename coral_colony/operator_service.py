"""The ``coral.colony.v1.Colony`` gRPC service: what operators (the CLI) call.

Every call needs ``authorization: Bearer <token>`` metadata with a token
from ``coral colony token create NAME``; NAME is the caller's identity.
A missing or unknown token fails UNAUTHENTICATED and is audited. Reads use
their own registry connection and thread, so operators never queue behind
agents' writes; what this service audits goes to the writer (``record``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Protocol, TypeVar, cast

import grpc
import grpc.aio

from coral_base.message_limits import CHUNK_BYTES
from coral_base.vocabulary import workload_of
from coral_base.wire.coral.colony.v1 import colony_pb2, colony_pb2_grpc
from coral_colony import codec
from coral_colony.model import (
    DEFAULT_AUDIT_LIMIT,
    AuditEntry,
    AuditKind,
    ForwardedOperation,
    LoggedEntry,
    OperationRequest,
    OperationResult,
    OperationTarget,
    Outcome,
    Principal,
    Provenance,
    Scope,
    ServiceGroup,
    StoredService,
)
from coral_colony.refusals import Refusals
from coral_colony.router import AgentNotConnected, Router
from coral_colony.stores.reader import RegistryReader
from coral_colony.stores.services import ServicePosition, position
from coral_colony.targets import Resolved, TooManyPods, resolve
from coral_colony.tokens import OPERATOR_SCOPES, OperatorTokens

log = logging.getLogger("coral_colony.operator_service")
_T = TypeVar("_T")
_Item = TypeVar("_Item")
_Context = grpc.aio.ServicerContext[object, object]
AppendAudit = Callable[[Sequence[AuditEntry]], Awaitable[None]]


class Revoke(Protocol):
    """Revoke a node's enrollment: (agent id, services removed), or None when the node is not enrolled."""

    def __call__(self, node_name: str, *, by: str) -> Awaitable[tuple[str, int] | None]: ...


async def _no_revocation(node_name: str, *, by: str) -> tuple[str, int] | None:
    return None


NO_TOKEN = (
    "no operator token: pass --token or set CORAL_TOKEN"
    " (create one on the colony with `coral colony token create NAME`)"
)
BAD_TOKEN = "the colony does not know this operator token: it was revoked or belongs to another colony"
MAX_FILTER_CHARS = 1024  # as the agents' own limit: refused here before it travels
OPERATION_STARTED = "operation.started"  # the audit action of an operation routed to its agent
MAX_OPERATIONS_PER_OPERATOR = 8  # operations one token may have running at once (each holds a stream and an agent)
# Pods one token's running operations may cover at once (a tap of deploy/NAME covers each replica). An operator
# who stops reading holds a few MiB a pod in the colony (~6: the relay's chunk, the one waiting for room, the
# one on its way and its copies; BENCHMARKS.md, Reliability): at most ~100 MiB a token.
MAX_PODS_PER_OPERATOR = 16
MAX_AUDIT_LIMIT = 10_000  # entries one QueryAudit returns at most (a 2^32 limit read the whole log into memory)
DEFAULT_PAGE_SIZE = 500  # services or audit entries in one page, when the request names no page_size
MAX_PAGE_SIZE = 1000  # larger page sizes are capped; a page also stops at CHUNK_BYTES


def _page_size(asked: int) -> int:
    return min(asked or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _within_budget(items: Sequence[_Item], size_of: Callable[[_Item], int]) -> list[_Item]:
    """The leading ``items`` whose messages fit in ``CHUNK_BYTES`` (the first always: one item may exceed it)."""
    kept: list[_Item] = []
    room = CHUNK_BYTES
    for item in items:
        room -= size_of(item)
        if kept and room < 0:
            break
        kept.append(item)
    return kept


def operator_token(metadata: grpc.aio.Metadata | None) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value.removeprefix("Bearer ").strip()
    return ""


class OperatorService(colony_pb2_grpc.ColonyServicer):
    def __init__(
        self,
        reader: RegistryReader,
        tokens: OperatorTokens,
        *,
        colony_id: str,
        record: AppendAudit,
        router: Router,
        clock: Callable[[], float] = time.time,
        refusals: Refusals | None = None,
        revoke: Revoke = _no_revocation,
    ) -> None:
        self.reader = reader
        self.revoke = revoke
        self.tokens = tokens
        self.colony_id = colony_id
        self.record = record
        self.refusals = refusals or Refusals(record)
        self.router = router
        self.clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry-reader")
        self._running: Counter[str] = Counter()  # operations under way, by operator
        self._pods: Counter[str] = Counter()  # the pods they cover, by operator

    async def _read(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _operator(self, context: _Context, method: str, scope: Scope | None) -> Principal:
        """The caller, when its token is valid and holds ``scope`` (None: any operator scope)."""
        token = operator_token(context.invocation_metadata())
        principal = await self._read(lambda: self.tokens.authenticate(token))
        if principal is None:
            missing = "no token" if not token else "unknown token"
            await self._refused("", f"{missing}: {method}", context, reason=missing)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, NO_TOKEN if not token else BAD_TOKEN)
            raise AssertionError("unreachable: abort raises")
        why: str | None = None
        if not principal.scopes & OPERATOR_SCOPES:
            why = f"token {principal.name!r} is a bootstrap token: it enrolls agents and calls nothing else"
        elif scope is not None:
            why = principal.refusal(scope)
        if why is not None:
            await self._refused(principal.name, f"{why}: {method}", context, reason=f"{principal.name}: {why}")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
        return principal

    async def _refused(self, actor: str, detail: str, context: _Context, *, reason: str) -> None:
        """Audit a refused call, once a minute per caller and ``reason`` (``coral_colony.refusals``)."""
        entry = AuditEntry(
            time=self.clock(), kind=AuditKind.AUTH, action="operator.refused", actor=actor, detail=detail
        )
        await self.refusals.refused(entry, peer=context.peer(), reason=reason)

    async def WhoAmI(self, request: colony_pb2.WhoAmIRequest, context: _Context) -> colony_pb2.WhoAmIResponse:
        principal = await self._operator(context, "WhoAmI", None)
        return codec.whoami_response(principal, colony_id=self.colony_id)

    async def RevokeAgent(
        self, request: colony_pb2.RevokeAgentRequest, context: _Context
    ) -> colony_pb2.RevokeAgentResponse:
        principal = await self._operator(context, "RevokeAgent", Scope.ADMIN)
        node = codec.revoke_node(request)
        revoked = await self.revoke(node, by=principal.name)
        if revoked is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"node {node!r} has no enrollment in force")
            raise AssertionError("unreachable: abort raises")
        return codec.revoke_response(*revoked)

    async def ListAgents(
        self, request: colony_pb2.ListAgentsRequest, context: _Context
    ) -> colony_pb2.ListAgentsResponse:
        await self._operator(context, "ListAgents", Scope.READ)
        node = codec.agents_node(request)
        return codec.agents_response(await self._read(lambda: self.reader.agents(node=node)))

    async def ListServices(
        self, request: colony_pb2.ListServicesRequest, context: _Context
    ) -> colony_pb2.ListServicesResponse:
        """One page of the services, grouped by agent (an agent's group may continue on the next page)."""
        principal = await self._operator(context, "ListServices", Scope.READ)
        where = codec.services_filter(request)
        if where.namespace and (why := principal.refusal(Scope.READ, namespace=where.namespace)):
            await self._refused(principal.name, f"{why}: ListServices", context, reason=f"{principal.name}: {why}")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
        after = cast(ServicePosition | None, await self._position(context, "services", request.page_token, str, 5))
        size = _page_size(request.page_size)
        agents, services = await self._read(
            lambda: (self.reader.agents(node=where.node), self.reader.services(where, after=after, limit=size + 1))
        )
        page = _within_budget(services[:size], codec.service_bytes)
        token = codec.page_token("services", position(page[-1])) if len(page) < len(services) else ""
        if principal.namespaces:  # a namespace-limited token sees its namespaces' services only
            page = [s for s in page if s.service.namespace in principal.namespaces]
        by_agent: dict[str, list[StoredService]] = {status.agent.agent_id: [] for status in agents}
        for stored in page:
            if stored.agent_id in by_agent:
                by_agent[stored.agent_id].append(stored)
        # Agents without services are listed once, on the first page, unless a filter asked for services.
        filtered = bool(where.namespace or where.name or where.provenance or principal.namespaces or after)
        groups = [
            ServiceGroup(agent=status, services=tuple(by_agent[status.agent.agent_id]))
            for status in agents
            if by_agent[status.agent.agent_id] or not filtered
        ]
        return codec.services_response(groups, next_page_token=token)

    async def QueryAudit(
        self, request: colony_pb2.QueryAuditRequest, context: _Context
    ) -> colony_pb2.QueryAuditResponse:
        """One page of the newest ``limit`` entries, oldest first; the token holds ids, so new entries shift
        nothing."""
        principal = await self._operator(context, "QueryAudit", Scope.AUDIT)
        try:
            query = codec.audit_query(request)
        except codec.UnknownWord as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # unreachable: abort raises
        query = replace(query, limit=min(query.limit or DEFAULT_AUDIT_LIMIT, MAX_AUDIT_LIMIT))
        position_ = await self._position(context, "audit", request.page_token, int, 2)
        size = _page_size(request.page_size)

        def read() -> tuple[list[LoggedEntry], int]:
            after, upto = cast(tuple[int, int], position_) if position_ else self.reader.audit_window(query)
            return self.reader.audit_page(query, after=after, upto=upto, size=size + 1), upto

        entries, upto = await self._read(read)
        page = _within_budget(entries[:size], codec.entry_bytes)
        token = codec.page_token("audit", (page[-1].id, upto)) if len(page) < len(entries) else ""
        if principal.namespaces:  # entries about its namespaces' pods only
            page = [e for e in page if e.entry.namespace in principal.namespaces]
        return codec.audit_response(page, next_page_token=token)

    async def _position(
        self, context: _Context, listing: str, token: str, kind: type, length: int
    ) -> tuple[str | int, ...] | None:
        """The position a page token holds (None: the first page); INVALID_ARGUMENT when it is not one."""
        try:
            return codec.page_position(listing, token, kinds=(kind,) * length)
        except codec.BadPageToken as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # unreachable: abort raises

    async def RunOperation(
        self, request: colony_pb2.RunOperationRequest, context: _Context
    ) -> AsyncIterator[colony_pb2.OperationOutput]:
        principal = await self._operator(context, "RunOperation", Scope.OPERATE)
        operator = principal.name
        if self._running[operator] >= MAX_OPERATIONS_PER_OPERATOR:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"operator {operator} has {MAX_OPERATIONS_PER_OPERATOR} operations running, the most one token may:"
                " wait for one to end",
            )
        self._running[operator] += 1
        try:
            async for output in self._run_operation(request, context, principal):
                yield output
        finally:
            self._running[operator] -= 1
            if not self._running[operator]:
                del self._running[operator]

    async def _run_operation(
        self, request: colony_pb2.RunOperationRequest, context: _Context, principal: Principal
    ) -> AsyncIterator[colony_pb2.OperationOutput]:
        operator = principal.name
        started = self.clock()
        try:
            asked = codec.operation_request(request)
        except codec.UnknownWord as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # unreachable: abort raises
        if (malformed := malformed_operation(asked)) is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, malformed)
        by_name = "/" in asked.target and workload_of(asked.target) is None  # namespace/pod, or a service key
        named = asked.namespace or (asked.target.split("/", 1)[0] if by_name else None)
        if named is not None and (why := principal.refusal(Scope.OPERATE, namespace=named)):
            await self._refused(
                operator, f"{why}: RunOperation", context, reason=f"{operator}: {why}"
            )  # before looking
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
        try:
            pods = await self._read(lambda: resolve(self.reader, asked))
        except (LookupError, TooManyPods) as exc:
            refusal = OperationResult(outcome=Outcome.REFUSED, error=str(exc))
            await self._audit_operation(operator, asked, Resolved(OperationTarget(), ""), refusal, started)
            status = grpc.StatusCode.NOT_FOUND if isinstance(exc, LookupError) else grpc.StatusCode.RESOURCE_EXHAUSTED
            await context.abort(status, str(exc))
            raise  # unreachable: abort raises
        for pod in pods:
            if why := principal.refusal(Scope.OPERATE, namespace=pod.target.namespace):
                await self._refused(operator, f"{why}: RunOperation", context, reason=f"{operator}: {why}")
                refusal = OperationResult(outcome=Outcome.REFUSED, error=why)
                await self._audit_operation(operator, asked, pod, refusal, started)
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
        if self._pods[operator] + len(pods) > MAX_PODS_PER_OPERATOR:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"operator {operator} has operations running on {self._pods[operator]} pods and this one takes"
                f" {len(pods)}: {MAX_PODS_PER_OPERATOR} at once is the most one token may (narrow it with --node"
                " or --namespace, or wait)",
            )
        self._pods[operator] += len(pods)
        try:
            async with contextlib.aclosing(self._run_pods(asked, pods, operator, started)) as outputs:
                async for output in outputs:
                    yield output
        finally:
            self._pods[operator] -= len(pods)
            if not self._pods[operator]:
                del self._pods[operator]

    async def _run_pods(
        self, asked: OperationRequest, pods: list[Resolved], operator: str, started: float
    ) -> AsyncGenerator[colony_pb2.OperationOutput, None]:
        forwarded = [
            ForwardedOperation(
                request_id=uuid.uuid4().hex, operator=operator, request=asked, target=replace(pod.target, node_name="")
            )
            for pod in pods
        ]
        # Recorded before the operator hears anything and the agents hear of it: an operation that never
        # ends (the colony killed, the disk full when the result comes) still left its start in the log.
        for pod, operation in zip(pods, forwarded, strict=True):
            await self._audit_operation(operator, asked, pod, None, started, operation.request_id, len(pods))
        for part, pod in enumerate(pods):
            yield codec.target_output(pod.target, part)
        parts = [
            self._run_part(asked, pod, operation, part, len(pods))
            for part, (pod, operation) in enumerate(zip(pods, forwarded, strict=True))
        ]
        outputs = parts[0] if len(parts) == 1 else merged(parts)
        async with contextlib.aclosing(outputs):  # the operator went away: each part cancels and is audited now
            async for output in outputs:
                yield output

    async def _run_part(
        self, asked: OperationRequest, pod: Resolved, operation: ForwardedOperation, part: int, parts: int
    ) -> AsyncGenerator[colony_pb2.OperationOutput, None]:
        """One pod's operation, on its agent: its chunks and its result, and the audit entry of its end."""
        started = self.clock()
        result: OperationResult | None = None
        try:
            relay = self.router.run(pod.agent_id, operation, within_s=asked.result_deadline_s)
            async with contextlib.aclosing(relay):  # closed early: the agent is told to cancel, at once
                async for message in relay:
                    output, final = codec.relayed(message, part)
                    if final is not None:
                        result = final
                    yield output
        except AgentNotConnected:
            result = OperationResult(
                outcome=Outcome.FAILED,
                error=f"the agent of node {pod.node} ({pod.agent_id}) holds no control stream:"
                " is it running and registered?",
            )
            yield codec.result_output(result, part)
        finally:
            if result is None:
                result = OperationResult(outcome=Outcome.CANCELLED, error="the operator cancelled")
            await self._audit_operation(operation.operator, asked, pod, result, started, operation.request_id, parts)

    async def _audit_operation(
        self,
        operator: str,
        asked: OperationRequest,
        pod: Resolved,
        result: OperationResult | None,
        started: float,
        request_id: str = "",
        parts: int = 1,
    ) -> None:
        """One entry per operation asked (refused or not) and pod, written when it ends, and one more when the
        colony routes it to its agent (``result`` None: action ``operation.started``, at that moment)."""
        target = pod.target
        detail: dict[str, object] = {"parameters": asked.parameters()}
        if request_id:
            detail["request_id"] = request_id  # pairs an operation's start with its end
        if parts > 1:
            detail["pods"] = parts  # one of the pods of a fan-out (deploy/NAME, --all-pods), each audited
        if result is None:
            detail.update(action=asked.action.value, deadline_s=round(asked.result_deadline_s, 3))
        else:
            detail.update(
                outcome=result.outcome.value,
                error=result.error,
                duration_s=round(result.duration_s or (self.clock() - started), 3),
                bytes=result.bytes,
                packets=result.packets,
                dropped=result.dropped,
                samples=result.samples,
                stopped_by=result.stopped_by.value if result.stopped_by else "",
            )
        entry = AuditEntry(
            time=self.clock() if result is None else started,
            kind=AuditKind.OPERATION,
            action=OPERATION_STARTED if result is None else asked.action.value,
            actor=operator,
            agent_id=pod.agent_id,
            node_name=target.node_name,
            namespace=target.namespace,
            pod_name=target.pod_name,
            service_name=target.service_name,
            service_key=target.service_key,
            provenance="" if target.provenance is Provenance.UNKNOWN else target.provenance.value,
            detail=json.dumps(detail, sort_keys=True),
        )
        await asyncio.shield(self.record([entry]))

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def malformed_operation(asked: OperationRequest) -> str | None:
    """Why the colony refuses to forward ``asked`` at all (the agent checks again), or None."""
    if not math.isfinite(asked.duration_s) or asked.duration_s < 0:
        return f"duration {asked.duration_s:g}s is not a positive number of seconds (0: the agent's default)"
    if len(asked.filter) > MAX_FILTER_CHARS:
        return f"the filter has {len(asked.filter)} characters, over the limit of {MAX_FILTER_CHARS}"
    return None


_Output = TypeVar("_Output")


class _Done:
    """Put by a part when its stream is over."""


async def merged(streams: Sequence[AsyncIterator[_Output]]) -> AsyncGenerator[_Output, None]:
    """The messages of several streams as they come, each stream read by its own task.

    At most one message per stream waits to be taken, so a reader that stops
    reading stops every stream (each bounded by its own backpressure) rather
    than growing a queue. Closing the generator cancels the streams.
    """
    queue: asyncio.Queue[_Output | _Done] = asyncio.Queue(maxsize=len(streams))

    async def pump(stream: AsyncIterator[_Output]) -> None:
        try:
            async for message in stream:
                await queue.put(message)
        except Exception:  # a part that breaks ends alone (the reader sees no result for it)
            log.exception("one part of an operation failed")
        await queue.put(_Done())  # not when cancelled: nobody reads any more

    tasks = [asyncio.create_task(pump(stream)) for stream in streams]
    try:
        running = len(tasks)
        while running:
            message = await queue.get()
            if isinstance(message, _Done):
                running -= 1
            else:
                yield message
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
