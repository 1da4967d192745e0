"""A call whose registry write found the disk full ends UNAVAILABLE with a clear status, not an exception.

The writer rolls the change back and raises ``RegistryFull``
(``coral_colony.stores.writer``); this interceptor, on both endpoints,
turns it into ``UNAVAILABLE "registry cannot be written: disk full"`` for
unary calls and for streamed answers (an operation audits its start and its
end). Agents retry UNAVAILABLE with backoff, so their deltas land once space
returns; reads use their own connection and keep being served.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
import grpc.aio

from coral_base.logs import emit
from coral_colony.stores.writer import DISK_FULL, RegistryFull

log = logging.getLogger("coral_colony.unwritable")


class DiskFull(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic in the stubs only
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if (unary := handler.unary_unary) is not None:

            async def answered(request: Any, context: Any) -> Any:
                try:
                    return await unary(request, context)
                except RegistryFull:
                    await _refuse(context, method)

            return grpc.unary_unary_rpc_method_handler(
                answered,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if (streamed := handler.unary_stream) is not None:

            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    async for message in cast(AsyncIterator[Any], streamed(request, context)):  # grpc.aio's
                        yield message
                except RegistryFull:
                    await _refuse(context, method)

            return grpc.unary_stream_rpc_method_handler(
                streaming,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


async def _refuse(context: Any, method: str) -> None:
    emit(log, "registry.full", level=logging.ERROR, method=method)
    await context.abort(grpc.StatusCode.UNAVAILABLE, DISK_FULL)
