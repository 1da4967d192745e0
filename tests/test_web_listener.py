"""The colony's small HTTP listener (status page, probes): strangers cannot hold it, aborted clients are quiet."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator
from http import HTTPStatus

import pytest

from coral_colony.web import listener
from coral_colony.web.listener import HttpListener, text


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpListener]:
    monkeypatch.setattr(listener, "REQUEST_TIMEOUT_S", 0.5)
    serving = HttpListener("127.0.0.1:0", {"/healthz": lambda url: text(HTTPStatus.OK, "ok\n")}, name="test-web")
    serving.start()
    yield serving
    serving.stop()


def get(serving: HttpListener, path: str = "/healthz") -> int:
    host, port = serving.address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def test_idle_half_requests_hold_neither_threads_nor_the_listener(served: HttpListener) -> None:
    host, port = served.address.rsplit(":", 1)
    idle = []
    for _ in range(100):  # each sends half a request line and goes quiet
        conn = socket.create_connection((host, int(port)))
        conn.sendall(b"GET /hea")
        idle.append(conn)
    try:
        started = time.monotonic()
        status = 0
        while status != HTTPStatus.OK and time.monotonic() - started < 5:
            try:  # shed while the pool is full; answered once the idle ones time out
                status = get(served)
            except (ConnectionError, http.client.HTTPException):
                time.sleep(0.1)
        took = time.monotonic() - started
        workers = [t for t in __import__("threading").enumerate() if t.name.startswith("test-web_")]
    finally:
        for conn in idle:
            conn.close()
    assert status == HTTPStatus.OK and took < 5
    assert len(workers) <= listener.WORKERS


def test_a_client_that_goes_away_mid_request_is_not_a_traceback(
    served: HttpListener, capsys: pytest.CaptureFixture[str]
) -> None:
    host, port = served.address.rsplit(":", 1)
    for _ in range(5):
        conn = socket.create_connection((host, int(port)))
        conn.sendall(b"GET /healthz HTTP/1.1\r\n")
        conn.close()
    assert get(served) == HTTPStatus.OK
    assert "Traceback" not in capsys.readouterr().err
