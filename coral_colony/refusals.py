"""Refused callers, audited without letting a stranger fill the disk.

Anyone who can reach the colony's port can be refused, as often as they
like, with fields as long as a gRPC message allows: 20 refused Register
calls with a 7 MB agent id once added 137 MB to the audit log. So a refusal
is audited once per caller (its address, without the port), reason and
minute, its fields cut to ``FIELD_CHARS``. The reason is the colony's own
word for the refusal (``no token``, ``wrong secret``, or an authenticated
token's name and the scope it lacks), never a field the caller chose: a
stranger varying its agent id still gets one row a minute; the ones that follow within the
minute are counted, and one row at the end of the minute says how many
(``… and 41 more like it``). What is kept in memory is bounded too: past
``MAX_CALLERS`` callers in a minute, further ones share one row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from coral_colony.model import AuditEntry

FIELD_CHARS = 256
WINDOW_S = 60.0
MAX_CALLERS = 2_000  # windows kept at most (~2 KB each once cut): a flood from many addresses stays ~4 MB

Record = Callable[[Sequence[AuditEntry]], Awaitable[None]]


@dataclass(slots=True)
class _Window:
    started: float
    first: AuditEntry
    more: int = 0


class Refusals:
    def __init__(self, record: Record, *, on_refused: Callable[[AuditEntry], None] | None = None) -> None:
        self.record = record
        self.on_refused = on_refused  # every refused call, before folding (the colony's metrics)
        self._windows: dict[tuple[str, str], _Window] = {}

    async def refused(self, entry: AuditEntry, *, peer: str, reason: str) -> None:
        """Audit ``entry`` (a refusal of ``peer``'s call, for ``reason``) unless this minute already has one like it."""
        if self.on_refused is not None:
            self.on_refused(entry)
        caller = caller_of(peer)
        key = (caller, reason)
        if key not in self._windows and len(self._windows) >= MAX_CALLERS:
            key = ("(many callers)", reason)
        await self.flush(entry.time)
        window = self._windows.get(key)
        if window is not None:
            window.more += 1
            return
        first = shortened(entry, caller=caller)
        self._windows[key] = _Window(started=entry.time, first=first)
        await self.record([first])

    async def flush(self, now: float) -> None:
        """Close the windows a minute old, with one row for what each counted after its first."""
        ended = [k for k, w in self._windows.items() if now - w.started >= WINDOW_S]
        closing = [self._windows.pop(k) for k in ended]
        summaries = [
            dataclasses.replace(
                w.first,
                time=now,
                detail=f"… and {w.more} more like it in the {now - w.started:.0f} s after {w.first.time:.0f}",
            )
            for w in closing
            if w.more
        ]
        if summaries:
            await self.record(summaries)


def caller_of(peer: str) -> str:
    """``ipv4:10.0.0.7:53122`` -> ``ipv4:10.0.0.7``: a caller is its address, whatever port it dials from."""
    head, _, port = peer.rpartition(":")
    return head if head and port.isdigit() else peer or "unknown peer"


def shortened(entry: AuditEntry, *, caller: str) -> AuditEntry:
    return dataclasses.replace(
        entry,
        action=_cut(entry.action),
        actor=_cut(entry.actor),
        agent_id=_cut(entry.agent_id),
        node_name=_cut(entry.node_name),
        namespace=_cut(entry.namespace),
        pod_name=_cut(entry.pod_name),
        service_name=_cut(entry.service_name),
        service_key=_cut(entry.service_key),
        detail=_cut(f"{entry.detail} (from {caller})"),
    )


def _cut(text: str) -> str:
    return text if len(text) <= FIELD_CHARS else text[: FIELD_CHARS - 1] + "…"
