"""Secret and output files: written whole, private, never through a symlink, and never half."""

from __future__ import annotations

import stat
from pathlib import Path

from coral_base.private_files import PendingFile, write_private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_private_file_is_0600_in_a_0700_directory_and_replaces_a_planted_symlink(tmp_path: Path) -> None:
    target = tmp_path / "theirs"
    target.write_text("")
    directory = tmp_path / "colony"
    directory.mkdir(mode=0o700)
    (directory / "secret").symlink_to(target)
    write_private(directory / "secret", b"s3cret")
    assert ((directory / "secret").read_bytes(), mode(directory / "secret"), target.read_text()) == (
        b"s3cret",
        0o600,
        "",
    )
    write_private(tmp_path / "new" / "ca.crt", b"public", mode=0o644)
    assert (mode(tmp_path / "new"), mode(tmp_path / "new" / "ca.crt")) == (0o700, 0o644)


def test_an_output_file_appears_only_when_kept(tmp_path: Path) -> None:
    out = tmp_path / "capture.pcap"
    out.write_bytes(b"yesterday")
    failed = PendingFile(out)
    failed.file.write(b"half a capture")
    failed.discard()
    assert out.read_bytes() == b"yesterday" and sorted(p.name for p in tmp_path.iterdir()) == ["capture.pcap"]
    done = PendingFile(out)
    done.file.write(b"today")
    done.keep()
    assert (out.read_bytes(), mode(out)) == (b"today", 0o600)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["capture.pcap"]
