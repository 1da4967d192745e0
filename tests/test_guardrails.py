"""Guardrails: each refusal names its limit; admitted operations hold their slots."""

from __future__ import annotations

import re

import pytest

from coral_base.clock import VirtualClock
from coral_base.vocabulary import Action
from cri_agent.config import OpsSettings
from cri_agent.ops.guardrails import Guardrails, Refused, Request


def request(action: str = "tap", *, pod: str = "p1", operator: str = "alice", **changes: object) -> Request:
    """A request as the codec decodes it: a known word becomes its Action, an unknown one stays a str."""
    word: Action | str = Action(action) if action in set(Action) else action
    return Request(action=word, operator=operator, pod_uid=pod, namespace="shop", **changes)  # type: ignore[arg-type]


def admit(guard: Guardrails, req: Request, *, known: bool = True, included: bool = True) -> object:
    return guard.admit(req, pod_known=known, namespace_included=included)


@pytest.mark.parametrize(
    ("settings", "req", "known", "included", "message"),
    [
        (OpsSettings(observe_only=True), request("tap"), True, True, "observe-only mode: tap is refused"),
        (OpsSettings(observe_only=True), request("profile"), True, True, "observe-only mode: profile is refused"),
        (OpsSettings(), request("exec"), True, True, "unknown action 'exec'"),
        (OpsSettings(), request(), False, True, "no such pod on this node"),
        (OpsSettings(), request(), True, False, "namespace shop is excluded by this agent's filters"),
        (OpsSettings(), request(duration_s=301), True, True, "over the hard cap ops.maxDuration=300s"),
        (OpsSettings(max_bytes=10), request(max_bytes=11), True, True, "ops.maxBytes=10"),
        (OpsSettings(max_packets=10), request(max_packets=11), True, True, "ops.maxPackets=10"),
        (OpsSettings(), request("profile", frequency_hz=200), True, True, "ops.maxFrequencyHz=99"),
        (OpsSettings(), request(duration_s=float("nan")), True, True, "duration nans is not a positive number"),
        (OpsSettings(), request(duration_s=float("inf")), True, True, "duration infs is not a positive number"),
        (OpsSettings(), request(duration_s=-1.0), True, True, "duration -1s is not a positive number"),
        (OpsSettings(), request(filter="port 80 or " * 200), True, True, "characters, over the limit of 1024"),
        (
            OpsSettings(observe_only=True),
            request("sample", filter="tcp[20:4] = 0x47455420"),
            True,
            True,
            "observe-only mode: a sample filter may use only host, net, port and protocol primitives",
        ),
    ],
)
def test_refusals_name_the_limit(
    settings: OpsSettings, req: Request, known: bool, included: bool, message: str
) -> None:
    with pytest.raises(Refused, match=re.escape(message)):
        admit(Guardrails(settings), req, known=known, included=included)


def test_observe_only_allows_sample_and_defaults_fill_the_permit() -> None:
    permit = Guardrails(OpsSettings(observe_only=True)).admit(
        request("sample"), pod_known=True, namespace_included=True
    )
    assert (permit.duration_s, permit.max_bytes, permit.max_packets, permit.frequency_hz, permit.nice) == (
        60.0,
        100 * 1024 * 1024,
        1_000_000,
        49,
        10,
    )


def test_one_per_pod_and_a_node_wide_cap_until_released() -> None:
    guard = Guardrails(OpsSettings(max_concurrent=2))
    first = guard.admit(request(pod="p1"), pod_known=True, namespace_included=True)
    with pytest.raises(Refused, match=re.escape("one operation per pod: a tap is already running")):
        admit(guard, request("sample", pod="p1"))
    admit(guard, request(pod="p2"))
    with pytest.raises(Refused, match=re.escape("at most ops.maxConcurrent=2")):
        admit(guard, request(pod="p3"))
    guard.release(first)
    admit(guard, request(pod="p3"))
    assert guard.running == 2


def test_the_rate_limit_is_per_operator_over_a_sliding_minute() -> None:
    clock = VirtualClock()
    guard = Guardrails(OpsSettings(rate_per_minute=2, max_concurrent=10), clock=clock)
    for pod in ("a", "b"):
        guard.release(guard.admit(request(pod=pod), pod_known=True, namespace_included=True))
    with pytest.raises(Refused, match=re.escape("ops.ratePerMinute=2 operations a minute for alice; retry in 60s")):
        admit(guard, request(pod="c"))
    admit(guard, request(pod="c", operator="bob"))
    clock.advance(60.5)
    admit(guard, request(pod="d"))


@pytest.mark.parametrize(
    "header_filter",
    [
        "host 10.0.0.1 and port 80",
        "tcp and (src net 10.0.0.0/8 or not dst port 443)",
        "ip6 and host fe80::1",
        "net 10.0.0.0 mask 255.0.0.0 || portrange 8000-8080",
        "host db.shop.svc and ip proto 6",
    ],
)
def test_observe_only_sample_takes_header_primitives(header_filter: str) -> None:
    admit(Guardrails(OpsSettings(observe_only=True)), request("sample", filter=header_filter))


@pytest.mark.parametrize(
    "payload_filter",
    ["len > 100", "greater 100", "ether[0] & 1 != 0", "udp port 53 and udp[8] = 1", "tcp[tcpflags] & tcp-syn != 0"],
)
def test_observe_only_sample_refuses_anything_that_reads_past_the_headers(payload_filter: str) -> None:
    with pytest.raises(Refused, match="observe-only mode: a sample filter"):
        admit(Guardrails(OpsSettings(observe_only=True)), request("sample", filter=payload_filter))


def test_outside_observe_only_a_filter_is_only_capped_in_length() -> None:
    admit(Guardrails(OpsSettings()), request("tap", filter="tcp[20:4] = 0x47455420"))
