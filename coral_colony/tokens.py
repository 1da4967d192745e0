"""Named colony tokens with scopes: who may call the colony, and for what.

``coral colony token create NAME --scope read,operate --namespace shop``
prints a random token once and stores only its SHA-256 in
``DIR/operator-tokens.yaml`` (mode 0600, in a 0700 directory). The NAME is
the caller's identity in the audit log. Each token carries scopes
(``coral_base.vocabulary.Scope``): ``read`` (agents, services), ``audit``,
``operate`` (tap, profile, sample), each limited to some namespaces when
``--namespace`` is given, ``admin`` (revoke agents' enrollments); or ``enroll`` alone for a bootstrap token, which
expires. A token written before scopes existed keeps what it could do then:
``read``, ``audit`` and ``operate`` everywhere.

A running colony re-reads the file when it changes, so creating or revoking
a token needs no restart, also when the file is a Secret volume's symlink.
The file is written whole through a fresh ``O_EXCL|O_NOFOLLOW`` temporary
file renamed over it: a symlink planted in its place is replaced, never
written through.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from coral_base.errors import ConfigError
from coral_base.private_files import write_private
from coral_base.vocabulary import Scope
from coral_colony.model import Principal

TOKENS_FILE = "operator-tokens.yaml"
OPERATOR_SCOPES = frozenset({Scope.READ, Scope.AUDIT, Scope.OPERATE, Scope.ADMIN})  # every scope but enroll
LEGACY_SCOPES = frozenset({Scope.READ, Scope.AUDIT, Scope.OPERATE})  # what a token without scopes could do
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,62}$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a Kubernetes namespace name


@dataclass(frozen=True, slots=True)
class TokenInfo:
    name: str
    created: float
    scopes: frozenset[Scope]
    namespaces: frozenset[str]
    expires: float


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_scopes(words: Iterable[str]) -> frozenset[Scope]:
    """``read,operate`` (comma- or space-separated) as scopes; an unknown word names the known ones."""
    scopes: set[Scope] = set()
    for word in (w.strip() for text in words for w in text.replace(",", " ").split()):
        try:
            scopes.add(Scope(word))
        except ValueError:
            raise ConfigError(f"unknown scope {word!r}: one of {', '.join(Scope)}") from None
    return frozenset(scopes)


class OperatorTokens:
    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = directory / TOKENS_FILE
        self.clock = clock
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._by_digest: dict[str, Principal] = {}

    # -- administration (the `coral colony token` commands) --------------------------

    def create(
        self,
        name: str,
        *,
        scopes: Iterable[Scope],
        namespaces: Iterable[str] = (),
        ttl_s: float = 0.0,
    ) -> str:
        """A new token for ``name``; printed once, never stored in clear."""
        scopes, namespaces = frozenset(scopes), frozenset(namespaces)
        if not _NAME.match(name):
            raise ConfigError(f"token name {name!r}: letters, digits and ._@- only, at most 63 characters")
        if not scopes:
            raise ConfigError(f"say what {name!r} may do: --scope with one or more of {', '.join(Scope)}")
        if Scope.ENROLL in scopes and scopes != {Scope.ENROLL}:
            raise ConfigError("an enroll (bootstrap) token can do nothing else: create a separate operator token")
        if Scope.ENROLL in scopes and not 0 < ttl_s <= 7 * 86400:
            raise ConfigError("a bootstrap token must expire within 7 days: --expires 24h, say")
        if bad := sorted(n for n in namespaces if not _NAMESPACE.match(n)):
            raise ConfigError(f"not a namespace name: {', '.join(bad)}")
        entries = self._read()
        if name in entries:
            raise ConfigError(f"a token named {name!r} exists: revoke it first (coral colony token revoke {name})")
        token = f"coral_{secrets.token_urlsafe(32)}"
        now = self.clock()
        entries[name] = {
            "sha256": _digest(token),
            "created": now,
            "scopes": sorted(scope.value for scope in scopes),
            "namespaces": sorted(namespaces),
            "expires": now + ttl_s if ttl_s else 0.0,
        }
        self._write(entries)
        return token

    def revoke(self, name: str) -> None:
        entries = self._read()
        if name not in entries:
            raise ConfigError(f"no token named {name!r} (coral colony token list shows them)")
        del entries[name]
        self._write(entries)

    def list(self) -> list[TokenInfo]:
        infos = []
        for name, entry in sorted(self._read().items()):
            principal = _principal(name, entry)
            infos.append(
                TokenInfo(
                    name=name,
                    created=_number(entry.get("created")),
                    scopes=principal.scopes,
                    namespaces=principal.namespaces,
                    expires=principal.expires,
                )
            )
        return infos

    # -- the server's check -------------------------------------------------------------

    def authenticate(self, token: str) -> Principal | None:
        """Who ``token`` belongs to, with its scopes; None for an unknown or expired token."""
        if not token:
            return None
        with self._lock:
            self._reload()
            principal = self._by_digest.get(_digest(token))
        if principal is None or (principal.expires and principal.expires <= self.clock()):
            return None
        return principal

    # -- the file -----------------------------------------------------------------------

    def _reload(self) -> None:
        try:
            st = self.path.stat()  # followed: a Secret volume swaps the file behind a symlink when it changes
        except FileNotFoundError:
            self._stamp, self._by_digest = None, {}
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._by_digest = {str(e["sha256"]): _principal(name, e) for name, e in self._read().items()}
            self._stamp = stamp

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot be read ({exc.strerror})") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{self.path}: not valid YAML ({exc})") from None
        tokens = data.get("tokens", {}) if isinstance(data, dict) else None
        if not isinstance(tokens, dict):
            raise ConfigError(f"{self.path}: expected a `tokens:` mapping of name -> {{sha256, created, scopes}}")
        return {str(k): dict(v) for k, v in tokens.items()}

    def _write(self, entries: dict[str, dict[str, object]]) -> None:
        write_private(self.path, yaml.safe_dump({"tokens": entries}, sort_keys=True).encode())


def _principal(name: str, entry: dict[str, object]) -> Principal:
    words = entry.get("scopes")
    scopes = LEGACY_SCOPES if words is None else parse_scopes(str(w) for w in _list(words))
    return Principal(
        name=name,
        scopes=scopes,
        namespaces=frozenset(str(n) for n in _list(entry.get("namespaces"))),
        expires=_number(entry.get("expires")),
    )


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0
