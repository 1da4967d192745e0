"""Every gRPC channel and server option the programs set, in one place.

Clients (the agent's channels to the colony, the operator CLI's) ping an
idle connection so that a dead peer (a node powered off, a colony whose
host vanished, a NAT that dropped the flow) is noticed within
``KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS``, not at the next write.

Servers (the colony's two endpoints) allow those pings and no more often
(a client pinging faster is sent GOAWAY after two strikes), ping their own
clients likewise, bound the streams one connection may hold, close a
connection that carried no call for ``MAX_CONNECTION_IDLE_MS``, and keep
their receive windows at HTTP/2's initial 64 KiB (``BDP_PROBE``).

gRPC has no per-peer-address connection limit; what bounds a stranger is
the per-connection stream cap, the idle timeout, the Hello deadline of
``Connect`` (``coral_colony.router``) and the per-token operation cap
(``coral_colony.operator_service``).

Every list starts with the message-size limits (``coral_base.message_limits``). Callers take a list and
may add their own (``channel_options(("grpc.ssl_target_name_override", ...))``).
"""

from __future__ import annotations

import enum
from typing import Final

from coral_base.message_limits import CHANNEL_OPTIONS

Option = tuple[str, int | str]

KEEPALIVE_TIME_MS: Final = 30_000  # a client pings a connection silent this long
KEEPALIVE_TIMEOUT_MS: Final = 10_000  # ... and gives it up when the ping is not answered within this
MIN_PING_INTERVAL_MS: Final = 10_000  # a server accepts a client's pings no more often than this
SERVER_KEEPALIVE_TIME_MS: Final = 60_000  # a server pings its clients too: a vanished agent frees its stream
MAX_CONCURRENT_STREAMS: Final = 64  # calls one connection may have open at once, on each endpoint
MAX_CONNECTION_IDLE_MS: Final = 300_000  # the public endpoint closes a connection without calls this long
# A server's receive window does not grow with bandwidth-delay probing. Probing opens a stream's window to
# several MiB on a fast link, and that is what gRPC holds for a stream the colony stopped reading (an agent's
# control stream while its operator reads nothing: coral_colony.router): up to 35 MiB of one stalled tap.
# Without it the window stays at 64 KiB; a stream the colony reads still takes a whole message per round
# trip (gRPC opens the window to the message being read), so a tap moves one 1 MiB chunk per round trip:
# ~70 MiB/s at 10 ms, ~18 MiB/s at 50 ms (BENCHMARKS.md, the reliability notes).
BDP_PROBE: Final = 0


class Endpoint(enum.Enum):
    """The colony's two servers (``coral_colony.server``)."""

    PUBLIC = "public"  # server TLS: operators and enrolling agents; strangers reach it
    AGENTS = "agents"  # mutual TLS: enrolled agents, each holding its Connect stream for good


def _keepalive(time_ms: int) -> list[Option]:
    return [
        ("grpc.keepalive_time_ms", time_ms),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging a connection that sends no data
    ]


def channel_options(*extra: Option) -> list[Option]:
    """A client channel's options: the message limits, keepalive (and whatever the caller adds)."""
    return [*CHANNEL_OPTIONS, *_keepalive(KEEPALIVE_TIME_MS), *extra]


def server_options(endpoint: Endpoint) -> list[Option]:
    """A colony server's options: keepalive enforcement, its own pings, a stream cap, fixed receive windows
    (both endpoints read agents' control streams: the public one with ``--allow-shared-secret-agents``),
    and for the public endpoint an idle timeout (the agent endpoint's connections are the agents'
    long-lived streams)."""
    options = [
        *CHANNEL_OPTIONS,
        *_keepalive(SERVER_KEEPALIVE_TIME_MS),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
        ("grpc.http2.bdp_probe", BDP_PROBE),
    ]
    if endpoint is Endpoint.PUBLIC:
        options.append(("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS))
    return options
