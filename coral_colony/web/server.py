"""Serves the status page over HTTP from its own registry connection (read-only).

Bound to localhost unless the operator configures another address: the
page has no authentication, so exposing it is a deliberate choice.
"""

from __future__ import annotations

import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from coral_base.clock import SYSTEM_CLOCK, Clock
from coral_colony.stores.reader import RegistryReader
from coral_colony.web.page import Filters, render


class StatusPage:
    def __init__(self, database: Path, *, colony_id: str, listen: str, clock: Clock = SYSTEM_CLOCK) -> None:
        host, _, port = listen.rpartition(":")
        self.colony_id = colony_id
        self.clock = clock
        self._registry = RegistryReader(database)  # the server's writer created and migrated the file
        self._lock = threading.Lock()
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/healthz":
                    self._send(HTTPStatus.OK, "text/plain", b"ok\n")
                elif url.path == "/":
                    html = page.html(Filters.from_query(parse_qs(url.query)))
                    self._send(HTTPStatus.OK, "text/html; charset=utf-8", html.encode())
                else:
                    self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")

            def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # requests are not worth a log line each

        self._server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="status-page", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def html(self, filters: Filters) -> str:
        with self._lock:
            agents = self._registry.agents(node=filters.node)
            services = self._registry.services(filters.services())
            nodes = sorted({a.agent.node_name for a in self._registry.agents() if a.agent.node_name})
        return render(
            colony_id=self.colony_id,
            agents=agents,
            services=services,
            nodes=nodes,
            filters=filters,
            now=self.clock.time(),
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._registry.close()
