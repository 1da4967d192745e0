"""How large one gRPC message may be, on every server and channel of the colony, its agents and the CLI.

gRPC's default receive limit (4 MiB) is implicit and one-sided: a sender
finds out by a ``RESOURCE_EXHAUSTED`` it can do nothing about. Every party
states the limit instead (``CHANNEL_OPTIONS``), and senders keep each
message well below it: the agent chunks its registration and deltas
(``cri_agent.sync``), the colony pages its listings (``operator_service``).
A chunk stays below 4 MiB too, so an older colony still receives it.
"""

from __future__ import annotations

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024  # what one registration part, delta or listing page carries at most (one item may exceed)

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)
