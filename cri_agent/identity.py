"""The agent's identity record: who it is to its colony, kept across restarts and upgrades.

One versioned JSON file next to the cache (``<cache dir>/identity.json``,
0600, written whole through ``coral_base.private_files``): the colony id,
the agent id and node name the colony signed, the private key the agent
made, its certificate and the colony's CAs, when to renew, and room for the
mesh (a WireGuard key pair and the mesh address the colony assigns). An
agent that restarts reads it and reconnects with the same identity: no
re-enrollment, no new audit entry. A record for another colony or another
node is not used (the agent enrolls again and says why); a record written
by a newer agent is refused, never rewritten.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from coral_base.errors import CoralError
from coral_base.private_files import write_private

VERSION = 1
FILE_NAME = "identity.json"


class IdentityError(CoralError):
    """The identity record cannot be read or made; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Identity:
    colony_id: str
    agent_id: str
    node_name: str
    key_pem: str
    certificate_pem: str = ""  # empty until the colony signed it
    ca_pem: str = ""
    not_after: float = 0.0
    renew_after: float = 0.0
    enrolled_at: float = 0.0
    agent_address: str = ""  # host:port of the colony's mutual-TLS agent endpoint
    wireguard_private_key: str = ""  # the mesh (RFD 012): kept here when it comes
    wireguard_public_key: str = ""
    mesh_address: str = ""

    @property
    def enrolled(self) -> bool:
        return bool(self.certificate_pem)

    def matches(self, *, colony_id: str, node_name: str) -> str | None:
        """Why this record cannot be used for ``colony_id``/``node_name``, or None."""
        if self.colony_id != colony_id:
            return f"it belongs to colony {self.colony_id!r}, not {colony_id!r}"
        if self.node_name != node_name:
            return f"it belongs to node {self.node_name!r}, not {node_name!r}"
        return None

    def signed(
        self,
        *,
        agent_id: str,
        certificate_pem: str,
        ca_pem: str,
        not_after: float,
        renew_after: float,
        agent_address: str,
        at: float,
    ) -> Identity:
        return replace(
            self,
            agent_id=agent_id,
            agent_address=agent_address,
            certificate_pem=certificate_pem,
            ca_pem=ca_pem,
            not_after=not_after,
            renew_after=renew_after,
            enrolled_at=self.enrolled_at or at,
        )


def _read(path: Path) -> bytes:
    """The record's bytes; a symlink in its place is refused (the agent wrote a plain file there)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        return file.read(1 << 20)


def path_for(cache: Path) -> Path:
    return cache.parent / FILE_NAME


def load(path: Path) -> Identity | None:
    """The record at ``path``, or None when there is none yet."""
    try:
        data = json.loads(_read(path))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IdentityError(f"{path}: cannot be read safely ({exc.strerror}; a symlink is refused)") from None
    except ValueError as exc:
        raise IdentityError(f"{path}: not a valid identity record ({exc}); move it aside to enroll again") from None
    if not isinstance(data, dict) or not isinstance(data.get("version"), int):
        raise IdentityError(f"{path}: not an identity record (no version); move it aside to enroll again")
    if data["version"] > VERSION:
        raise IdentityError(
            f"{path}: written by a newer agent (record version {data['version']}, this agent knows {VERSION}); "
            "run that version, or move the file aside to enroll again"
        )
    known = {f.name for f in fields(Identity)}
    try:
        return Identity(**{k: v for k, v in data.items() if k in known})
    except TypeError as exc:
        raise IdentityError(f"{path}: an incomplete identity record ({exc}); move it aside to enroll again") from None


def save(path: Path, identity: Identity) -> None:
    write_private(path, json.dumps({"version": VERSION, **asdict(identity)}, indent=2, sort_keys=True).encode())


async def new_key(agent_id: str, *, key_pem: str = "") -> tuple[str, str]:
    """A private key (fresh, or ``key_pem``) and a signing request for it, made by ``cri_agent.keygen`` in a
    child process."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cri_agent.keygen",
        agent_id,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await child.communicate(key_pem.encode())
    if child.returncode != 0:
        raise IdentityError(f"could not make a key: {err.decode(errors='replace').strip()[-300:]}")
    made = json.loads(out)
    return str(made["key_pem"]), str(made["csr_pem"])
