"""A small HTTP listener: GET routes answered by a bounded pool of threads (the status page, the probes).

A stranger cannot hold it: each connection has a few seconds to send its
request (``REQUEST_TIMEOUT_S``), at most ``WORKERS`` are answered at once
and ``BACKLOG`` more wait; beyond that a connection is closed at once. A
client that goes away mid-answer is one log line, not a traceback.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, NamedTuple
from urllib.parse import SplitResult, urlsplit

from coral_base.logs import emit

log = logging.getLogger("coral_colony.web")

REQUEST_TIMEOUT_S = 5.0  # to send the request line and headers (and to read each answer's bytes)
WORKERS = 8
BACKLOG = 32  # connections waiting for a worker; more are closed at once


class Response(NamedTuple):
    status: HTTPStatus
    content_type: str
    body: bytes


def text(status: HTTPStatus, body: str) -> Response:
    return Response(status, "text/plain; charset=utf-8", body.encode())


Route = Callable[[SplitResult], Response]  # the request's URL -> the answer


class HttpListener:
    """Serves ``routes`` (path -> answer) on ``listen`` (host:port; port 0 picks one); anything else is a 404."""

    def __init__(self, listen: str, routes: Mapping[str, Route], *, name: str) -> None:
        host, _, port = listen.rpartition(":")

        class Handler(BaseHTTPRequestHandler):
            timeout = REQUEST_TIMEOUT_S  # the socket's: an idle half-request ends here

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                route = routes.get(url.path)
                self._send(route(url) if route is not None else text(HTTPStatus.NOT_FOUND, "not found\n"))

            def _send(self, response: Response) -> None:
                self.send_response(response.status)
                self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(response.body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
                self.end_headers()
                self.wfile.write(response.body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # requests are not worth a log line each

        self._server = _PooledServer((host.strip("[]") or "127.0.0.1", int(port)), Handler, name=name)
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.pool.shutdown(wait=False, cancel_futures=True)


class _PooledServer(HTTPServer):
    """``HTTPServer`` answering from a bounded pool instead of a thread per connection."""

    request_queue_size = 128  # the kernel's accept queue: connections are taken (and shed) quickly

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *, name: str) -> None:
        super().__init__(address, handler)
        self.name = name
        self.pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix=name)
        self._slots = threading.BoundedSemaphore(WORKERS + BACKLOG)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # saturated: close rather than queue without end
            return
        self.pool.submit(self._answer, request, client_address)

    def _answer(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception as exc:
            self.handle_error(request, client_address, exc)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any, exc: BaseException | None = None) -> None:
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else "error"
        emit(log, "web.request_failed", level=logging.DEBUG, listener=self.name, reason=reason)

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        super().server_bind()
