"""Serves the status page over HTTP from its own registry connection (read-only).

Bound to localhost unless the operator configures another address: the
page has no authentication, so exposing it is a deliberate choice.
"""

from __future__ import annotations

import threading
from http import HTTPStatus
from pathlib import Path
from urllib.parse import SplitResult, parse_qs

from coral_base.clock import SYSTEM_CLOCK, Clock
from coral_colony.stores.reader import RegistryReader
from coral_colony.web.listener import HttpListener, Response, text
from coral_colony.web.page import Filters, render


class StatusPage:
    def __init__(self, database: Path, *, colony_id: str, listen: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self.colony_id = colony_id
        self.clock = clock
        self._registry = RegistryReader(database)  # the server's writer created and migrated the file
        self._lock = threading.Lock()
        self._listener = HttpListener(
            listen, {"/": self._page, "/healthz": lambda _: text(HTTPStatus.OK, "ok\n")}, name="status-page"
        )

    @property
    def address(self) -> str:
        return self._listener.address

    def _page(self, url: SplitResult) -> Response:
        html = self.html(Filters.from_query(parse_qs(url.query)))
        return Response(HTTPStatus.OK, "text/html; charset=utf-8", html.encode())

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
        self._listener.start()

    def stop(self) -> None:
        self._listener.stop()
        self._registry.close()
