"""Which event source the CRI provider uses, against an in-process gRPC runtime.

containerd 1.6 (the harness) answers UNIMPLEMENTED to CRI GetContainerEvents,
so the integration tests only exercise the containerd-events fallback. Here a
real gRPC server on a unix socket plays a runtime that implements the CRI
stream (containerd >= 1.7, CRI-O) and one that does not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from coral_base.wire.containerd.services.events.v1 import events_pb2, events_pb2_grpc
from coral_base.wire.cri.runtime.v1 import api_pb2
from cri_agent.errors import RuntimeUnavailable
from cri_agent.providers.cri import CriClient, RuntimeEvent


async def container_events(request: Any, context: Any) -> AsyncIterator[Any]:
    yield api_pb2.ContainerEventResponse(container_id="c1", container_event_type=api_pb2.CONTAINER_STARTED_EVENT)


def cri_runtime(*, with_events: bool) -> grpc.GenericRpcHandler[Any, Any]:
    """A CRI RuntimeService that implements GetContainerEvents, or nothing (UNIMPLEMENTED)."""
    handlers = {}
    if with_events:
        handlers["GetContainerEvents"] = grpc.unary_stream_rpc_method_handler(
            container_events,
            request_deserializer=api_pb2.GetEventsRequest.FromString,
            response_serializer=api_pb2.ContainerEventResponse.SerializeToString,
        )
    return grpc.method_handlers_generic_handler("runtime.v1.RuntimeService", handlers)


class Containerd(events_pb2_grpc.EventsServicer):
    async def Subscribe(self, request: Any, context: Any) -> AsyncIterator[Any]:
        assert list(request.filters) == ["namespace==k8s.io"]
        for topic in ("/images/update", "/snapshot/prepare", "/tasks/start"):
            yield events_pb2.Envelope(namespace="k8s.io", topic=topic)


async def first_event(tmp_path: Path, runtime: grpc.GenericRpcHandler[Any, Any]) -> RuntimeEvent:
    socket = tmp_path / "cri.sock"
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((runtime,))
    events_pb2_grpc.add_EventsServicer_to_server(Containerd(), server)
    server.add_insecure_port(f"unix://{socket}")
    await server.start()
    client = CriClient(socket)
    try:
        events = client.events()
        return await asyncio.wait_for(anext(events), 5)
    finally:
        await client.close()
        await server.stop(None)


def test_cri_container_events_are_used_where_the_runtime_implements_them(tmp_path: Path) -> None:
    event = asyncio.run(first_event(tmp_path, cri_runtime(with_events=True)))
    assert (event.source, event.topic, event.object_id) == ("cri", "CONTAINER_STARTED_EVENT", "c1")


def test_containerd_events_are_the_fallback_and_only_pod_topics_wake_discovery(tmp_path: Path) -> None:
    event = asyncio.run(first_event(tmp_path, cri_runtime(with_events=False)))
    assert (event.source, event.topic) == ("containerd", "/tasks/start")


def test_a_missing_socket_is_a_typed_transient_error_that_says_what_to_do(tmp_path: Path) -> None:
    async def list_pods() -> None:
        await CriClient(tmp_path / "absent.sock").pods()

    with pytest.raises(RuntimeUnavailable, match="mount the host's runtime socket or set --cri-socket") as raised:
        asyncio.run(list_pods())
    assert raised.value.transient
