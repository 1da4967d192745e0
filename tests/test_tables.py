"""Table output: what agents and workloads send cannot drive the operator's terminal."""

from __future__ import annotations

import pytest

from coral_base.tables import print_table, printable


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("payments-api", "payments-api"),
        ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),  # sets the terminal's title
        ("ok\x1b[2J\x1b[H", "ok\\x1b[2J\\x1b[H"),  # clears the screen
        ("line\rfake", "line\\rfake"),
        ("a\nb", "a\\nb"),
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),  # right-to-left override
        ("\x9b31m", "\\x9b31m"),  # the one-byte C1 CSI
        ("café ✓", "café ✓"),  # printable Unicode stays as it is
    ],
)
def test_control_characters_are_escaped(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_a_table_escapes_its_cells_and_aligns_on_what_it_prints(capsys: pytest.CaptureFixture[str]) -> None:
    print_table(["AGENT", "HEALTH"], [["node-a\x1b[31m", "healthy"], ["b", "unknown"]])
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert out.splitlines() == [
        "AGENT           HEALTH",
        "node-a\\x1b[31m  healthy",
        "b               unknown",
    ]
