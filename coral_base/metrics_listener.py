"""The one HTTP listener both programs serve their Prometheus metrics on, when configured.

prometheus-client's WSGI app on a threading ``wsgiref`` server, on a daemon
thread: it answers every path with the exposition of one registry
(``/metrics`` is what scrapers ask for) and keeps no state of its own, so
closing it loses nothing. Only the metrics modules import this (pyproject's
import contracts): a program without a metrics listener never loads
prometheus-client.
"""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, disable_created_metrics, make_wsgi_app

from coral_base.errors import ConfigError
from coral_base.listen import split_listen

# Both programs' expositions have no *_created series: half the series, and nothing the dashboards read.
disable_created_metrics()  # type: ignore[no-untyped-call]  # process-wide, before any metric exists

POLL_S = 0.05  # how often the serving thread looks for close(): the agent's shutdown waits for it


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck scraper never holds the program


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # a scrape is not worth a log line


class MetricsListener:
    """Serves ``registry`` on ``listen`` (``host:port``; port 0 picks a free one) until ``close``."""

    def __init__(self, registry: CollectorRegistry, *, listen: str, key: str) -> None:
        host, port = split_listen(listen, key=key)
        server_class = _IPv6Server if ":" in host else _Server
        try:
            self._server = make_server(
                host, port, make_wsgi_app(registry), server_class=server_class, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise ConfigError(
                f"{key} {listen}: cannot listen ({exc.strerror or exc}): pick a free port or another address"
            ) from None
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(POLL_S,), name="metrics-listener", daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"[{host!s}]:{port}" if ":" in str(host) else f"{host!s}:{port}"

    def close(self) -> None:
        self._server.shutdown()  # returns once serve_forever has left its loop
        self._server.server_close()
        self._thread.join(timeout=5.0)
