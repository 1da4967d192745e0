"""The colony's codec: every field and enum value of the messages it maps, both ways, with nothing lost."""

from __future__ import annotations

from typing import TypeVar

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from coral_base.vocabulary import AgentHealth, ArtifactKind, StopReason
from coral_base.wire.coral.agent.v1 import agent_pb2
from coral_base.wire.coral.colony.v1 import colony_pb2
from coral_base.wire.coral.mesh.v1 import mesh_pb2
from coral_colony import codec
from coral_colony.model import (
    PROVENANCES,
    Action,
    AgentKind,
    AgentRecord,
    AgentState,
    AgentStatus,
    AuditEntry,
    AuditKind,
    AuditQuery,
    Chunk,
    Flow,
    ForwardedOperation,
    LoggedEntry,
    OperationRequest,
    OperationResult,
    OperationTarget,
    Outcome,
    Provenance,
    ServiceFilter,
    ServiceGroup,
    StoredService,
)

_M = TypeVar("_M", bound=Message)


def filled(message: _M) -> _M:
    """Every field set to a value that is not its default (a field added to the .proto is filled too)."""
    for field in message.DESCRIPTOR.fields:
        name = field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            getattr(message, name).update({f"{name}-key": f"{name}-value"})
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            filled(getattr(message, name))
        elif field.type == FieldDescriptor.TYPE_ENUM:
            assert field.enum_type is not None
            setattr(message, name, max(v.number for v in field.enum_type.values))
        elif field.type == FieldDescriptor.TYPE_STRING and field.is_repeated:
            getattr(message, name).append(f"{name}-value")
        elif field.type == FieldDescriptor.TYPE_STRING:
            setattr(message, name, f"{name}-value")
        elif field.type == FieldDescriptor.TYPE_DOUBLE:
            setattr(message, name, 1.5)
        else:
            setattr(message, name, 7000)
    return message


def test_every_service_field_survives_the_trip_from_an_agent_to_an_operator() -> None:
    info = filled(mesh_pb2.ServiceInfo())
    info.health.state = "unknown"  # the word an older colony reads agrees with the enum beside it (the last: UNKNOWN)
    [record] = codec.registration(mesh_pb2.RegisterRequest(agent_id="a", services=[info])).services
    group = ServiceGroup(
        agent=AgentStatus(AgentRecord("a", AgentKind.NODE_AGENT)), services=(StoredService(record, "a"),)
    )
    response = codec.services_response([group])
    assert response.groups[0].services[0].info == info
    assert codec.groups_of(response) == [group]


def test_every_provenance_on_the_wire_has_a_name_and_comes_back() -> None:
    for number in mesh_pb2.ServiceProvenance.values():
        info = mesh_pb2.ServiceInfo(component_name="web", provenance=number)
        [record] = codec.registration(mesh_pb2.RegisterRequest(agent_id="a", services=[info])).services
        assert (record.provenance is Provenance.UNKNOWN) == (number == mesh_pb2.SERVICE_PROVENANCE_UNKNOWN)
    for provenance in PROVENANCES:
        assert (
            codec.services_filter(codec.services_request(ServiceFilter(provenance=provenance))).provenance is provenance
        )
    assert codec.services_filter(codec.services_request(ServiceFilter())).provenance is None


def test_an_rfd_011_agent_registers_one_service_keyed_by_its_agent() -> None:
    request = mesh_pb2.RegisterRequest(agent_id="laptop", component_name="api", labels={"team": "a"}, colony_id="c")
    call = codec.registration(request)
    assert (call.agent.kind, call.colony_id, [(s.key, s.labels) for s in call.services]) == (
        AgentKind.SINGLE_SERVICE,
        "c",
        [("laptop/api", {"team": "a"})],
    )


def test_discovery_events_become_audit_entries_without_a_provenance_when_it_is_unknown() -> None:
    events = [
        mesh_pb2.DiscoveryEvent(
            time_unix_ms=1500, kind="error", reason="bad port", fields=["coral.io/port"], pod_name="web-0"
        ),
        mesh_pb2.DiscoveryEvent(kind="added", provenance=mesh_pb2.SERVICE_PROVENANCE_OVERRIDDEN),
    ]
    delta = codec.delta(mesh_pb2.UpdateServicesRequest(agent_id="a", sequence=3, removed_keys=["k"], events=events))
    assert (delta.sequence, delta.removed) == (3, ("k",))
    assert [(e.agent_time, e.kind, e.action, e.detail, e.provenance) for e in delta.events] == [
        (1.5, AuditKind.DISCOVERY, "error", "bad port [coral.io/port]", ""),
        (0.0, AuditKind.DISCOVERY, "added", "", "overridden"),
    ]


def test_an_agent_neither_times_nor_words_the_entries_it_reports() -> None:
    forged = mesh_pb2.DiscoveryEvent(time_unix_ms=1, kind="agent.deregistered\x1b[2J", reason="x")
    (entry,) = codec.delta(mesh_pb2.UpdateServicesRequest(agent_id="a", sequence=1, events=[forged])).events
    assert (entry.time, entry.agent_time, entry.action) == (0.0, 0.001, "unknown")  # the registry stamps the time


def test_agents_and_audit_entries_come_back_as_they_were_listed() -> None:
    status = AgentStatus(
        AgentRecord("a", AgentKind.NODE_AGENT, "node-a", {"zone": "a"}, "0.1.0", {"l": "1"}),
        state=AgentState.UNREACHABLE,
        health=AgentHealth.DEGRADED,
        first_seen=1.5,
        last_heartbeat=2.25,
        services=3,
    )
    assert codec.agents_of(codec.agents_response([status])) == [status]
    logged = LoggedEntry(7, AuditEntry(time=3.5, kind=AuditKind.AUTH, action="operator.refused", detail="no token"))
    assert codec.audit_of(codec.audit_response([logged])) == [logged]
    query = AuditQuery(since=10.0, node="node-a", kind=AuditKind.AUTH, limit=5)
    assert codec.audit_query(codec.audit_request(query)) == query


def test_operations_travel_from_the_command_to_the_agent_and_their_output_back() -> None:
    asked = OperationRequest(Action.TAP, "shop/web-0", node="node-a", duration_s=2.0, filter="tcp", max_bytes=9)
    assert codec.operation_request(codec.run_operation_request(asked)) == asked
    target = OperationTarget("shop", "web-0", "u1", "shop/u1/web/80", "web", Provenance.DISCOVERED)
    sent = codec.request_message(ForwardedOperation("r1", "alice", asked, target))
    assert (sent.request.request_id, sent.request.operator, sent.request.action, sent.request.target.pod_uid) == (
        "r1",
        "alice",
        "tap",
        "u1",
    )
    assert codec.operation_output(codec.target_output(target)) == (0, target)
    result = OperationResult(Outcome.OK, duration_s=1.5, packets=4, flows=(Flow("tcp", "a", 1, "b", 2, 3, 4, 5, 6),))
    assert codec.operation_output(codec.result_output(result, 2)) == (2, result)
    chunk = agent_pb2.AgentMessage(chunk=agent_pb2.Chunk(request_id="r1", kind="pcap", data=b"x"))
    output, final = codec.relayed(chunk, 1)
    assert (codec.operation_output(output), final, codec.addressed(chunk)) == (
        (1, Chunk(ArtifactKind.PCAP, b"x")),
        None,
        ("r1", False),
    )
    failed = codec.failed("r1", "gone")
    assert (codec.relayed(failed)[1], codec.addressed(failed)) == (
        OperationResult(Outcome.FAILED, "gone"),
        ("r1", True),
    )


def test_an_unknown_action_is_refused_with_the_ones_the_colony_runs() -> None:
    with pytest.raises(codec.UnknownWord, match="unknown action 'dump': tap, profile, sample"):
        codec.operation_request(colony_pb2.RunOperationRequest(action="dump"))
    with pytest.raises(codec.UnknownWord, match="unknown audit kind 'gossip': registration, "):
        codec.audit_query(colony_pb2.QueryAuditRequest(kind="gossip"))


def test_older_peers_words_are_read_when_the_enum_is_unset_and_both_are_written() -> None:
    old_agent = mesh_pb2.HeartbeatRequest(agent_id="a", session_token="s", health="degraded")
    assert codec.heartbeat(old_agent).health is AgentHealth.DEGRADED
    old_cli = colony_pb2.RunOperationRequest(action="sample", target="shop/web-0")
    assert codec.operation_request(old_cli).action is Action.SAMPLE
    old_result = agent_pb2.Result(outcome="cancelled", stopped_by="max-bytes")
    part, read = codec.operation_output(colony_pb2.OperationOutput(result=old_result)) or (None, None)
    assert part == 0 and isinstance(read, OperationResult)
    assert (read.outcome, read.stopped_by) == (Outcome.CANCELLED, StopReason.MAX_BYTES)
    _, odd = codec.operation_output(colony_pb2.OperationOutput(result=agent_pb2.Result(outcome="exploded"))) or (0, 0)
    assert isinstance(odd, OperationResult) and odd.outcome is Outcome.FAILED  # what this colony does not know
    sent = codec.run_operation_request(OperationRequest(Action.PROFILE, "web"))
    assert (sent.action, sent.operation) == ("profile", agent_pb2.OPERATION_ACTION_PROFILE)
    status = AgentStatus(AgentRecord("a", AgentKind.NODE_AGENT), state=AgentState.UNREACHABLE)
    [message] = codec.agents_response([status]).agents
    assert (message.state, message.agent_state, message.health, message.agent_health) == (
        "unreachable",
        colony_pb2.AGENT_STATE_UNREACHABLE,
        "unknown",
        mesh_pb2.AGENT_HEALTH_UNKNOWN,
    )
