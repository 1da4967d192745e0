"""Files that hold secrets: written whole, 0600, in a 0700 directory, never through a symlink.

Keys, certificates' keys, token hashes and enrollment records are written
here. Someone who can write to the directory could otherwise plant a
symlink where the next write lands (and have the secret written to a file
they can read), or watch a half-written file. Reading follows symlinks on
purpose: a Kubernetes Secret volume is made of them
(``operator-tokens.yaml -> ..data/operator-tokens.yaml``).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_private(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``, mode 0600 (or ``mode``), in a 0700 directory, never through a symlink.

    The bytes go to a fresh temporary file (``O_EXCL|O_NOFOLLOW``: nothing
    planted there is reused) that is renamed over ``path`` only when
    complete, so a reader sees the old file or the new one.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class PendingFile:
    """An output file that appears, 0600, only when it is complete (``keep``), and never otherwise.

    Used for what an operation writes (a capture, a profile): a refused or
    failed tap no longer truncates the file it was pointed at, and a capture
    (payload) is not readable by other users while or after it is written.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self.file = os.fdopen(fd, "wb")

    def keep(self) -> None:
        """Put the complete file in place (replacing what was there)."""
        self.file.close()
        self._tmp.replace(self.path)

    def discard(self) -> None:
        """Forget what was written; whatever ``path`` held stays as it was."""
        self.file.close()
        self._tmp.unlink(missing_ok=True)
