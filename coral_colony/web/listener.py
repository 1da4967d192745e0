"""A small HTTP listener: GET routes answered from its own threads (the status page, the probe endpoints)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple
from urllib.parse import SplitResult, urlsplit


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

        self._server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), Handler)
        self._server.daemon_threads = True
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
