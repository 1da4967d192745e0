"""Named operator tokens: who may call the colony's operator API.

``coral colony token create NAME`` prints a random token once and stores
only its SHA-256 in ``DIR/operator-tokens.yaml`` (mode 0600). The NAME is
the operator's identity in the audit log. A running colony re-reads the
file when it changes, so creating or revoking a token needs no restart.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from coral_base.errors import ConfigError

TOKENS_FILE = "operator-tokens.yaml"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,62}$")


@dataclass(frozen=True, slots=True)
class TokenInfo:
    name: str
    created: float


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class OperatorTokens:
    def __init__(self, directory: Path) -> None:
        self.path = directory / TOKENS_FILE
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._by_digest: dict[str, str] = {}

    # -- administration (the `coral colony token` commands) --------------------------

    def create(self, name: str) -> str:
        """A new token for ``name``; printed once, never stored in clear."""
        if not _NAME.match(name):
            raise ConfigError(f"token name {name!r}: letters, digits and ._@- only, at most 63 characters")
        entries = self._read()
        if name in entries:
            raise ConfigError(f"a token named {name!r} exists: revoke it first (coral colony token revoke {name})")
        token = f"coral_{secrets.token_urlsafe(32)}"
        entries[name] = {"sha256": _digest(token), "created": time.time()}
        self._write(entries)
        return token

    def revoke(self, name: str) -> None:
        entries = self._read()
        if name not in entries:
            raise ConfigError(f"no token named {name!r} (coral colony token list shows them)")
        del entries[name]
        self._write(entries)

    def list(self) -> list[TokenInfo]:
        return [TokenInfo(name=n, created=float(str(e.get("created", 0.0)))) for n, e in sorted(self._read().items())]

    # -- the server's check -------------------------------------------------------------

    def authenticate(self, token: str) -> str | None:
        """The operator name ``token`` belongs to, else None."""
        if not token:
            return None
        with self._lock:
            self._reload()
            return self._by_digest.get(_digest(token))

    # -- the file -----------------------------------------------------------------------

    def _reload(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._by_digest = None, {}
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._by_digest = {str(e["sha256"]): name for name, e in self._read().items()}
            self._stamp = stamp

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            data = yaml.safe_load(self.path.read_text()) or {}
        except FileNotFoundError:
            return {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{self.path}: not valid YAML ({exc})") from None
        tokens = data.get("tokens", {}) if isinstance(data, dict) else None
        if not isinstance(tokens, dict):
            raise ConfigError(f"{self.path}: expected a `tokens:` mapping of name -> {{sha256, created}}")
        return {str(k): dict(v) for k, v in tokens.items()}

    def _write(self, entries: dict[str, dict[str, object]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump({"tokens": entries}, f, sort_keys=True)
        tmp.replace(self.path)
