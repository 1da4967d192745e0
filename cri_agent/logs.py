"""Discovery events as log lines: ``service.added``, ``pod.skipped``, ``pod.error``…"""

from __future__ import annotations

import logging
from typing import Any

from coral_base.logs import emit
from cri_agent.model import DiscoveryEvent, EventKind

_SUBJECT = {
    EventKind.ADDED: "service",
    EventKind.UPDATED: "service",
    EventKind.REMOVED: "service",
    EventKind.SKIPPED: "pod",
    EventKind.ERROR: "pod",
}


def emit_discovery(logger: logging.Logger, event: DiscoveryEvent) -> None:
    fields: dict[str, Any] = {"namespace": event.namespace, "pod": event.pod_name}
    if event.key:
        fields["key"] = event.key
    if event.service:
        fields["service"] = event.service
    if event.provenance:
        fields["provenance"] = event.provenance.value
    if event.reason:
        fields["reason"] = event.reason
    if event.fields:
        fields["fields"] = list(event.fields)
    level = logging.WARNING if event.kind == EventKind.ERROR else logging.INFO
    emit(logger, f"{_SUBJECT[event.kind]}.{event.kind.value}", level=level, **fields)
