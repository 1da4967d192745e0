"""Durations: Go-style words; where a bare number misleads (a retention), a unit is required."""

from __future__ import annotations

import pytest

from coral_base.durations import NotADuration, NotPositive, parse_duration, parse_span
from coral_cli import main


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("90d", 7_776_000.0), ("15", 15.0)],
)
def test_durations_read_as_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_a_span_needs_its_unit() -> None:
    assert parse_span("90d") == 7_776_000.0
    with pytest.raises(NotADuration, match="'400' needs a unit"):
        parse_span("400")
    with pytest.raises(NotPositive):
        parse_span("0d")


def test_the_colony_refuses_a_retention_without_a_unit(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["colony", "start", "--dir", "/nonexistent", "--audit-retention", "400"])
    assert exited.value.code == 2
    assert "'400' needs a unit (e.g. 90d, 2160h)" in capsys.readouterr().err
