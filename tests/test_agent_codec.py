"""The agent's codec: enums on the wire, and the words older colonies still send and read."""

from __future__ import annotations

from enum import StrEnum

import pytest

from coral_base.vocabulary import Action, AgentHealth, ArtifactKind, EventKind, Outcome, Provenance, StopReason
from coral_base.wire.coral.agent.v1 import agent_pb2
from coral_base.wire.coral.mesh.v1 import mesh_pb2
from coral_base.wire_enums import WireEnum
from cri_agent import colony_codec
from cri_agent.model import DiscoveryEvent, PodUID
from cri_agent.operation import Artifact, Flow, OperationRequest, OperationResult


def test_a_request_from_a_colony_that_sends_only_words_is_understood() -> None:
    old = agent_pb2.ColonyMessage(
        request=agent_pb2.OperationRequest(
            request_id="r1",
            operator="alice",
            action="sample",
            target=agent_pb2.Target(namespace="shop", pod_name="web-0", provenance="overridden"),
            duration_s=2.0,
        )
    )
    request = colony_codec.colony_message(old)
    assert isinstance(request, OperationRequest)
    assert request.action is Action.SAMPLE
    assert request.target.provenance is Provenance.OVERRIDDEN
    assert (request.request_id, request.operator, request.duration_s) == ("r1", "alice", 2.0)


def test_the_enum_wins_over_the_word() -> None:
    message = agent_pb2.ColonyMessage(
        request=agent_pb2.OperationRequest(action="tap", operation=agent_pb2.OPERATION_ACTION_PROFILE)
    )
    request = colony_codec.colony_message(message)
    assert isinstance(request, OperationRequest)
    assert request.action is Action.PROFILE


def test_an_action_this_agent_does_not_know_stays_a_word_for_the_guardrails_to_refuse() -> None:
    request = colony_codec.colony_message(agent_pb2.ColonyMessage(request=agent_pb2.OperationRequest(action="exec")))
    assert isinstance(request, OperationRequest)
    assert request.action == "exec"
    assert not isinstance(request.action, Action)


def test_a_cancel_is_its_request_id_and_an_unknown_body_is_none() -> None:
    assert colony_codec.colony_message(agent_pb2.ColonyMessage(cancel=agent_pb2.Cancel(request_id="r9"))) == "r9"
    assert colony_codec.colony_message(agent_pb2.ColonyMessage()) is None


def test_results_and_artifacts_carry_the_enum_and_the_word() -> None:
    result = OperationResult(
        request_id="r1",
        node_name="node-a",
        outcome=Outcome.OK,
        stopped_by=StopReason.MAX_BYTES,
        flows=[Flow(("tcp", "10.0.0.1", 1234, "10.0.0.2", 80), packets=3, bytes=180, first_seen=1.5, last_seen=2.0)],
    )
    sent = colony_codec.result(result).result
    assert (sent.operation_outcome, sent.outcome) == (agent_pb2.OPERATION_OUTCOME_OK, "ok")
    assert (sent.stop_reason, sent.stopped_by) == (agent_pb2.STOP_REASON_MAX_BYTES, "max-bytes")
    assert (sent.flows[0].dst_port, sent.flows[0].first_seen_unix_ms) == (80, 1500)
    running = colony_codec.result(OperationResult(request_id="r2", node_name="n")).result
    assert (running.operation_outcome, running.outcome) == (agent_pb2.OPERATION_OUTCOME_UNSPECIFIED, "")
    chunk = colony_codec.artifact(Artifact("r1", ArtifactKind.SVG, b"<svg/>")).chunk
    assert (chunk.artifact, chunk.kind, chunk.data) == (agent_pb2.ARTIFACT_KIND_SVG, "svg", b"<svg/>")


def test_heartbeats_and_events_carry_the_enum_and_the_word() -> None:
    beat = colony_codec.heartbeat_request(agent_id="a", session="s", health=AgentHealth.DEGRADED, sequence=3)
    assert (beat.agent_health, beat.health) == (mesh_pb2.AGENT_HEALTH_DEGRADED, "degraded")
    event = colony_codec.event(
        DiscoveryEvent(EventKind.SKIPPED, "kube-system", "dns", PodUID("u"), reason="namespace excluded"), at=2.0
    )
    assert (event.event_kind, event.kind, event.time_unix_ms) == (
        mesh_pb2.DISCOVERY_EVENT_KIND_SKIPPED,
        "skipped",
        2000,
    )
    assert event.provenance == mesh_pb2.SERVICE_PROVENANCE_UNKNOWN


class _Lopsided(StrEnum):
    TAP = "tap"
    PROFILE = "profile"


def test_a_vocabulary_and_a_wire_enum_that_disagree_fail_at_import() -> None:
    with pytest.raises(ValueError, match="OPERATION_ACTION_"):
        WireEnum(_Lopsided, agent_pb2.OperationAction, "OPERATION_ACTION_")
    with pytest.raises(ValueError):  # a member the wire does not have
        WireEnum(Outcome, agent_pb2.OperationAction, "OPERATION_ACTION_")
