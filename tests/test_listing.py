"""Listings as kubectl prints them: formats, --no-headers, "No resources found", watching; one schema per resource."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import yaml

from coral_base import documents
from coral_base.listing import Column, JsonObject, Listing, watch
from coral_colony.cli import queries
from coral_colony.model import ServiceRecord, StoredService

Item = tuple[str, int]
COLUMNS: tuple[Column[Item], ...] = (Column("NAME", lambda i: i[0]), Column("COUNT", lambda i: str(i[1]), wide=True))


def doc(item: tuple[str, int]) -> JsonObject:
    return {"name": item[0], "count": item[1]}


@pytest.mark.parametrize(
    ("output", "no_headers", "printed"),
    [
        ("table", False, "NAME\na\nbb\n"),
        ("table", True, "a\nbb\n"),
        ("wide", False, "NAME  COUNT\na     1\nbb    2\n"),
        ("json", False, json.dumps([{"name": "a", "count": 1}, {"name": "bb", "count": 2}], indent=2) + "\n"),
        ("yaml", False, "- name: a\n  count: 1\n- name: bb\n  count: 2\n"),
    ],
)
def test_a_listing_prints_in_the_format_asked(output: str, no_headers: bool, printed: str) -> None:
    out = io.StringIO()
    Listing(COLUMNS, doc, output=output, no_headers=no_headers, out=out).print([("a", 1), ("bb", 2)])
    assert out.getvalue() == printed


def test_an_empty_table_says_no_resources_found_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    Listing(COLUMNS, doc).print([])
    assert capsys.readouterr() == ("", "No resources found\n")


def test_a_watch_prints_the_listing_then_only_what_changed_until_ctrl_c() -> None:
    answers = [[("a", 1), ("b", 1)], [("a", 1), ("b", 2)], [("a", 1), ("b", 2)]]
    polls: Iterator[list[Item]] = iter(answers)
    slept: list[float] = []

    def sleep(interval: float) -> None:
        slept.append(interval)
        if len(slept) == len(answers):
            raise KeyboardInterrupt

    out = io.StringIO()
    listing = Listing(COLUMNS, doc, output="wide", out=out)
    watch(lambda: next(polls), listing, key=lambda i: i[0], interval=1.0, sleep=sleep)
    assert out.getvalue().splitlines() == ["NAME  COUNT", "a     1", "b     1", "b     2"]


def test_a_watch_in_yaml_prints_one_document_per_change() -> None:
    out = io.StringIO()
    listing = Listing(COLUMNS, doc, output="yaml", stream=True, out=out)
    listing.print([("a", 1)])
    listing.print([("a", 2)])
    assert list(yaml.safe_load_all(out.getvalue())) == [{"name": "a", "count": 1}, {"name": "a", "count": 2}]


def test_times_are_rfc3339_in_utc_and_unknown_is_null() -> None:
    assert (documents.rfc3339(1_764_000_000.25), documents.rfc3339(0.0)) == ("2025-11-24T16:00:00.250Z", None)


@pytest.mark.parametrize(
    ("detail", "document"),
    [
        ('{"duration_s": 10, "filter": "tcp"}', {"duration_s": 10, "filter": "tcp"}),
        ("wrong colony id or secret", {"reason": "wrong colony id or secret"}),
        ("", {}),
    ],
)
def test_an_audit_detail_is_always_an_object(detail: str, document: JsonObject) -> None:
    assert documents.detail_object(detail) == document


def colony_service() -> JsonObject:
    return queries.service_document(StoredService(ServiceRecord(key="k", component_name="web", port=80), agent_id="a"))


def test_a_colony_service_document_has_real_types_and_its_provenance_as_a_word() -> None:
    service = colony_service()
    assert (service["port"], service["protocol"], service["provenance"], service["stale"]) == (
        80,
        "TCP",
        "unknown",
        False,
    )
