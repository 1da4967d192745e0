"""Logs are events: ``event=service.added key=… provenance=…`` or JSON lines.

Both programs log this way: an event name (``service.added``,
``runtime.unavailable``, ``colony.started``…) and keyword fields, never
formatted into the message, so a JSON consumer gets them as fields. Secrets
never reach this module: callers pass only what may be logged.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_FIELDS = "coral_fields"


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, _FIELDS, {})
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"{stamp}Z", record.levelname.lower(), f"event={record.getMessage()}"]
        parts += [f"{key}={_quote(value)}" for key, value in fields.items()]
        return " ".join(parts)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, _FIELDS, {})
        return json.dumps(
            {
                "ts": record.created,
                "level": record.levelname.lower(),
                "event": record.getMessage(),
                "logger": record.name,
                **fields,
            },
            default=str,
        )


def _quote(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' "=')) else text


def configure(*, fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def emit(logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event with its fields."""
    logger.log(level, event, extra={_FIELDS: fields})
