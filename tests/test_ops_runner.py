"""The runner: whatever happens, one result, and the operations row says what happened."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from coral_base.vocabulary import Action, Outcome
from cri_agent.config import OpsSettings
from cri_agent.model import ContainerID, ContainerRecord, ContainerState, PodRecord, PodUID, SandboxID
from cri_agent.operation import OperationRequest, OperationResult, OperationTarget
from cri_agent.ops.guardrails import Guardrails
from cri_agent.ops.runner import OperationRunner, PodView


def run(lookup: Any, request: OperationRequest) -> tuple[list[object], list[Mapping[str, Any]]]:
    rows: list[Mapping[str, Any]] = []

    async def record(row: Mapping[str, Any]) -> None:
        rows.append(row)

    async def scenario() -> list[object]:
        runner = OperationRunner(Guardrails(OpsSettings()), node_name="node-a", lookup=lookup, record=record)
        return [message async for message in runner.run(request)]

    return asyncio.run(scenario()), rows


def request(action: Action | str = Action.TAP) -> OperationRequest:
    return OperationRequest("r1", "alice", action, OperationTarget("shop", "web-0", "uid-1"), duration_s=1.0)


def test_a_bug_in_the_runner_is_a_failed_result_and_a_failed_row() -> None:
    def lookup(uid: PodUID, namespace: str, name: str) -> PodView | None:
        raise RuntimeError("the snapshot was torn")

    messages, rows = run(lookup, request())
    assert len(messages) == 1 and isinstance(result := messages[0], OperationResult)
    assert result.outcome is Outcome.FAILED
    assert result.error == "internal error: RuntimeError: the snapshot was torn"
    assert [(r["outcome"], r["error"], r["action"]) for r in rows] == [("failed", result.error, "tap")]


def test_a_refusal_is_one_result_and_one_refused_row() -> None:
    messages, rows = run(lambda uid, namespace, name: None, request("exec"))
    assert len(messages) == 1 and isinstance(result := messages[0], OperationResult)
    assert (result.outcome, result.node_name) == (Outcome.REFUSED, "node-a")
    assert "unknown action 'exec'" in result.error
    assert [(r["outcome"], r["action"], r["operator"]) for r in rows] == [("refused", "exec", "alice")]


def test_a_pid_that_is_no_longer_the_pods_process_fails_the_tap_instead_of_entering_its_namespace() -> None:
    # The last poll said the container runs this pid; it is now this test's own process, in no container.
    stale = ContainerRecord(ContainerID("c" * 64), "app", ContainerState.RUNNING, pid=os.getpid(), pids=(os.getpid(),))
    pod = PodRecord(PodUID("uid-1"), "web-0", "shop", SandboxID("s" * 64), containers=(stale,))
    messages, rows = run(lambda uid, namespace, name: PodView(pod, included=True), request())
    assert len(messages) == 1 and isinstance(result := messages[0], OperationResult)
    assert result.outcome is Outcome.FAILED
    assert "none of its 1 known pids is still one of its processes" in result.error
    assert [r["outcome"] for r in rows] == ["failed"]
