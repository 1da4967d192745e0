"""Which operation may run, and within which limits.

Checked in this order, and the first that fails is the refusal, naming the
limit: unknown action; observe-only mode (tap and profile refused, sample
allowed: it keeps no payload); the pod is on this node and its namespace
is one the filters include; a finite, non-negative duration within the hard
cap; byte, packet and frequency ceilings; the BPF filter's length, and in
observe-only mode its words (``bpf_filter``); one operation per pod; at most ``max_concurrent`` on
the node; the operator's rate (a sliding minute). An admitted operation
holds its slots until ``release``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from coral_base.clock import SYSTEM_CLOCK, Clock
from coral_base.vocabulary import Action
from cri_agent.config import OpsSettings
from cri_agent.ops import bpf_filter

WRITES_PAYLOAD = (Action.TAP, Action.PROFILE)  # what observe-only mode refuses


class Refused(Exception):
    """The request breaks a guardrail; the message names it."""


@dataclass(frozen=True, slots=True)
class Request:
    action: Action | str  # a str is a word this agent does not know
    operator: str
    pod_uid: str
    namespace: str
    duration_s: float = 0.0
    max_bytes: int = 0
    max_packets: int = 0
    frequency_hz: int = 0
    filter: str = ""


@dataclass(frozen=True, slots=True)
class Permit:
    """What the operation may use: the request's values, defaulted and checked."""

    action: Action
    pod_uid: str
    duration_s: float
    max_bytes: int
    max_packets: int
    frequency_hz: int
    nice: int
    profile_bytes: int = 64 * 1024 * 1024  # perf.data's cap (ops.profileMaxBytes)


class Guardrails:
    def __init__(self, settings: OpsSettings, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.clock = clock
        self._running: dict[str, Action] = {}  # pod uid -> action
        self._recent: dict[str, deque[float]] = {}

    def admit(self, request: Request, *, pod_known: bool, namespace_included: bool) -> Permit:
        s = self.settings
        if not isinstance(request.action, Action):
            raise Refused(f"unknown action {request.action!r} (one of {', '.join(Action)})")
        if s.observe_only and request.action in WRITES_PAYLOAD:
            raise Refused(f"observe-only mode: {request.action} is refused on this node (sample is allowed)")
        if not pod_known:
            raise Refused("no such pod on this node (it may have just gone)")
        if not namespace_included:
            raise Refused(f"namespace {request.namespace} is excluded by this agent's filters")
        if not math.isfinite(request.duration_s) or request.duration_s < 0:
            raise Refused(f"duration {request.duration_s:g}s is not a positive number of seconds (0: the default)")
        duration = request.duration_s or s.default_duration
        if duration > s.max_duration:
            raise Refused(f"duration {duration:g}s is over the hard cap ops.maxDuration={s.max_duration:g}s")
        if request.max_bytes > s.max_bytes:
            raise Refused(f"max bytes {request.max_bytes} is over the ceiling ops.maxBytes={s.max_bytes}")
        if request.max_packets > s.max_packets:
            raise Refused(f"max packets {request.max_packets} is over the ceiling ops.maxPackets={s.max_packets}")
        frequency = request.frequency_hz or min(49, s.max_frequency_hz)
        if frequency > s.max_frequency_hz:
            raise Refused(f"frequency {frequency} Hz is over the ceiling ops.maxFrequencyHz={s.max_frequency_hz}")
        if (why := bpf_filter.problem(request.filter, header_only=s.observe_only)) is not None:
            raise Refused(why)
        if request.pod_uid in self._running:
            raise Refused(f"one operation per pod: a {self._running[request.pod_uid]} is already running on this pod")
        if len(self._running) >= s.max_concurrent:
            raise Refused(f"at most ops.maxConcurrent={s.max_concurrent} operations at a time on this node")
        now = self.clock.monotonic()
        recent = self._recent.setdefault(request.operator, deque())
        while recent and recent[0] <= now - 60.0:
            recent.popleft()
        if len(recent) >= s.rate_per_minute:
            wait = 60.0 - (now - recent[0])
            raise Refused(
                f"rate limit: at most ops.ratePerMinute={s.rate_per_minute} operations a minute for "
                f"{request.operator}; retry in {wait:.0f}s"
            )
        recent.append(now)
        self._running[request.pod_uid] = request.action
        return Permit(
            action=request.action,
            pod_uid=request.pod_uid,
            duration_s=duration,
            max_bytes=request.max_bytes or s.max_bytes,
            max_packets=request.max_packets or s.max_packets,
            frequency_hz=frequency,
            nice=s.nice,
            profile_bytes=s.profile_max_bytes,
        )

    def release(self, permit: Permit) -> None:
        self._running.pop(permit.pod_uid, None)

    @property
    def running(self) -> int:
        return len(self._running)
