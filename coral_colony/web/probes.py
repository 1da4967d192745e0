"""``/healthz`` and ``/readyz`` for the kubelet, on a listener of their own.

The status page stays on localhost (it has no login and shows every
service); the kubelet probes the pod's IP, so the probes get their own
address (``coral colony start --probe-listen``), which serves these two
paths and nothing else: 200 and ``ok``, or 503 and why. They say nothing
an unauthenticated caller could use.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Protocol

from coral_colony.web.listener import HttpListener, Response, Route, text


class Probed(Protocol):
    """What the probes ask (coral_colony.health.ColonyHealth answers)."""

    def live(self) -> tuple[bool, str]: ...

    def ready(self) -> tuple[bool, str]: ...


class ProbeEndpoints:
    def __init__(self, health: Probed, *, listen: str) -> None:
        self._listener = HttpListener(
            listen, {"/healthz": _answer(health.live), "/readyz": _answer(health.ready)}, name="probes"
        )

    @property
    def address(self) -> str:
        return self._listener.address

    def start(self) -> None:
        self._listener.start()

    def stop(self) -> None:
        self._listener.stop()


def _answer(verdict: Callable[[], tuple[bool, str]]) -> Route:
    def route(_: object) -> Response:
        ok, reason = verdict()
        return text(HTTPStatus.OK, "ok\n") if ok else text(HTTPStatus.SERVICE_UNAVAILABLE, reason + "\n")

    return route
