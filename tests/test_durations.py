"""Durations: Go-style words; where a bare number misleads (a retention), a unit is required."""

from __future__ import annotations

import pytest

from coral_base.durations import NotADuration, NotPositive, parse_duration, parse_since, parse_span
from coral_base.sizes import NotASize, parse_size
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


@pytest.mark.parametrize(
    ("text", "seconds"), [("1h30m", 5400.0), ("1.5h", 5400.0), ("2h45m30s", 9930.0), ("1d12h", 129600.0)]
)
def test_go_durations_combine_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["nan", "inf", "1e3", "\uff15s", "soon", ""])
def test_what_go_would_refuse_is_not_a_duration(text: str) -> None:
    with pytest.raises(NotADuration):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("100Mi", 104_857_600), ("1G", 1_000_000_000), ("512Ki", 524_288), ("1500", 1500), ("1.5Ki", 1536)],
)
def test_sizes_read_as_kubernetes_quantities(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["0.5", "-5", "lots", "1x", "0"])
def test_a_size_is_a_whole_positive_number_of_bytes(text: str) -> None:
    with pytest.raises(NotASize):
        parse_size(text)


def test_since_is_a_duration_back_or_a_time() -> None:
    assert parse_since("1h30m", now=10_000.0) == 4600.0
    assert parse_since("1970-01-01T01:00:00Z", now=0.0) == 3600.0
    with pytest.raises(NotADuration, match="give a duration back"):
        parse_since("yesterday", now=0.0)
