"""What an operation's BPF filter may say.

Any filter is capped in length: dumpcap gets it as one argument, and an
oversized one failed with E2BIG after the guardrails had admitted it.

In observe-only mode the filter is the only way left to read payload. The
kernel runs it on the whole packet before the header snaplen cuts it, so a
filter such as ``tcp[20:4] = 0x47455420`` turns ``sample``'s packet counts
into an oracle for payload bytes (3 packets for the right guess, 0 for a
wrong one). There, a filter may use only header primitives: ``host``,
``net`` (with ``mask``), ``port``, ``portrange``, ``src``/``dst``, protocol
names and ``proto``, joined by ``and``/``or``/``not`` and parentheses. No
byte accessors, no arithmetic, no comparisons.
"""

from __future__ import annotations

import re

MAX_FILTER_CHARS = 1024

_LOGIC = frozenset({"and", "or", "not", "&&", "||", "!", "(", ")"})
_QUALIFIERS = frozenset(
    {"host", "net", "port", "portrange", "src", "dst", "proto", "mask"}
    | {"ip", "ip6", "tcp", "udp", "icmp", "icmp6", "sctp", "arp"}
)
_NAMED_BY = frozenset({"host", "port", "portrange", "proto"})  # a name may follow these (a host, a service)
_TOKEN = re.compile(r"\s*(&&|\|\||!|\(|\)|[^\s()!&|]+)\s*", re.ASCII)
_ADDRESS = re.compile(r"[0-9A-Fa-f:.]*[:.][0-9A-Fa-f:.]*(/[0-9]{1,3})?", re.ASCII)  # IPv4, IPv6, a CIDR
_NUMBERS = re.compile(r"[0-9]{1,5}(-[0-9]{1,5})?", re.ASCII)  # a port, a range, a protocol number
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9.-]*", re.ASCII)


def problem(bpf_filter: str, *, header_only: bool) -> str | None:
    """Why the filter is refused, or None."""
    if len(bpf_filter) > MAX_FILTER_CHARS:
        return f"the filter has {len(bpf_filter)} characters, over the limit of {MAX_FILTER_CHARS}"
    if not header_only:
        return None
    previous = ""
    position = 0
    while position < len(bpf_filter):
        match = _TOKEN.match(bpf_filter, position)
        token = match.group(1) if match else bpf_filter[position:]
        if match is None or not _allowed(token.lower(), previous):
            return (
                f"observe-only mode: a sample filter may use only host, net, port and protocol primitives "
                f"(with and, or, not, parentheses); {token!r} is refused"
            )
        previous, position = token.lower(), match.end()
    return None


def _allowed(token: str, previous: str) -> bool:
    if token in _LOGIC or token in _QUALIFIERS:
        return True
    if _ADDRESS.fullmatch(token) or _NUMBERS.fullmatch(token):
        return True
    return previous in _NAMED_BY and _NAME.fullmatch(token) is not None
