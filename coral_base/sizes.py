"""Kubernetes-style sizes (``100Mi``, ``1G``, ``512Ki``, ``1500``) for byte ceilings in flags and config.

Read by ``bitmath`` in its SI system, which follows Kubernetes quantities:
``Ki``/``Mi``/``Gi`` are powers of 1024, ``k``/``M``/``G`` powers of 1000,
a bare number is bytes (``100MiB`` and ``100MB`` are accepted too).
"""

from __future__ import annotations

import math
import re

import bitmath

_SIZE = re.compile(r"^\d+(?:\.\d+)?\s*[a-zA-Z]*$", re.ASCII)
_EXAMPLES = "e.g. 100Mi, 1Gi, 500M, or a number of bytes"


class NotASize(ValueError):
    """The text does not read as a size in bytes, or is not a whole positive number of them."""


def parse_size(value: str | int) -> int:
    """``"100Mi"`` -> 104857600; ``"1G"`` -> 1000000000; ``4096`` -> 4096 (> 0)."""
    if isinstance(value, int):
        size = float(value)
    else:
        text = value.strip()
        if not _SIZE.match(text):
            raise NotASize(f"{value!r} is not a size ({_EXAMPLES})")
        try:
            size = float(bitmath.parse_string(text, strict=False, system=bitmath.SI).bytes)
        except ValueError:
            raise NotASize(f"{value!r} is not a size ({_EXAMPLES})") from None
    if not math.isfinite(size) or size < 1 or size != int(size):
        raise NotASize(f"{value!r} is not a whole positive number of bytes ({_EXAMPLES})")
    return int(size)
