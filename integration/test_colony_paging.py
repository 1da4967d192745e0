"""`coral services` and `coral audit` list everything however large (issue 11, row 4): the colony pages
ListServices and QueryAudit, the CLI follows the pages. Against a real colony on its own thread."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from coral_base.vocabulary import EventKind
from coral_base.wire.coral.colony.v1 import colony_pb2, colony_pb2_grpc
from coral_cli import main
from coral_colony.operator_service import MAX_PAGE_SIZE
from cri_agent.model import DiscoveryEvent, PodUID, ServiceInfo
from integration.test_colony_sizes import until
from tests.colony import ColonyThread, enrolling_sync
from tests.test_colony_operator import coral
from tests.test_sync import svc

SERVICES = 5000
BIG_DETAIL = "d" * 1_000_000


def publish(colony: ColonyThread, services: list[ServiceInfo], events: list[DiscoveryEvent]) -> None:
    """The node agent of node-a registers ``services`` (in parts) and reports ``events``, then leaves."""

    async def register() -> None:
        sync = enrolling_sync(
            colony.address, colony.directory, node="node-a", identity_path=colony.directory.parent / "node-a.json"
        )
        sync.set_services({s.key: s for s in services}, {})
        sync.add_events(events, at=time.time())
        task = asyncio.create_task(sync.run())
        try:
            await until(lambda: sync.in_sync, within=60)
        finally:
            task.cancel()

    colony.call(register())


@pytest.fixture(autouse=True)
def no_cli_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORAL_CONFIG", str(tmp_path / "coral-config.yaml"))


@pytest.fixture(scope="module")
def colony(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ColonyThread]:
    thread = ColonyThread(tmp_path_factory.mktemp("paging") / "colony").start()
    services = [replace(svc(n), labels={"app": f"web-{n}", "tier": "frontend"}) for n in range(SERVICES)]
    big = DiscoveryEvent(
        kind=EventKind.ERROR, namespace="shop", pod_name="web-0", pod_uid=PodUID("uid-0"), reason=BIG_DETAIL
    )
    publish(thread, services, [big])
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def token(colony: ColonyThread) -> str:
    return colony.token("alice")


def test_services_lists_five_thousand_services_through_the_pages(
    colony: ColonyThread, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(coral(colony, "services", "-o", "json", token=token)) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(s["key"] for s in listed) == sorted(svc(n).key for n in range(SERVICES))


def test_audit_lists_a_megabyte_entry_among_the_rest(
    colony: ColonyThread, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(coral(colony, "audit", "--limit", "10000", "-o", "json", token=token)) == 0
    entries = json.loads(capsys.readouterr().out)
    ids = [e["id"] for e in entries]
    assert ids == sorted(set(ids)) and len(ids) > SERVICES  # every registration, once, in order
    assert any(BIG_DETAIL in json.dumps(e["detail"]) for e in entries)


def stub(colony: ColonyThread, token: str) -> colony_pb2_grpc.ColonyStub:
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=colony.ca.read_bytes()),
        grpc.access_token_call_credentials(token),
    )
    return colony_pb2_grpc.ColonyStub(grpc.secure_channel(colony.address, credentials))


def test_the_colony_caps_a_page_and_its_token_resumes_after_it(colony: ColonyThread, token: str) -> None:
    colony_api = stub(colony, token)
    first = colony_api.ListServices(colony_pb2.ListServicesRequest(page_size=100_000))
    second = colony_api.ListServices(colony_pb2.ListServicesRequest(page_token=first.next_page_token))
    keys = [s.info.service_key for answer in (first, second) for g in answer.groups for s in g.services]
    assert len([s for g in first.groups for s in g.services]) == MAX_PAGE_SIZE
    assert len(keys) == len(set(keys)) and first.next_page_token and second.next_page_token


def test_audit_pages_hold_still_while_entries_are_logged(colony: ColonyThread, token: str) -> None:
    colony_api = stub(colony, token)
    first = colony_api.QueryAudit(colony_pb2.QueryAuditRequest(limit=50, page_size=20))
    colony.token("bob")  # logs an entry: the window of the first page does not move
    rest = colony_api.QueryAudit(
        colony_pb2.QueryAuditRequest(limit=50, page_size=100, page_token=first.next_page_token)
    )
    ids = [e.id for answer in (first, rest) for e in answer.entries]
    assert len(ids) == 50 and ids == sorted(ids) and not rest.next_page_token


def test_a_forged_page_token_is_refused(colony: ColonyThread, token: str) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        stub(colony, token).ListServices(colony_pb2.ListServicesRequest(page_token="bm90LWEtdG9rZW4="))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
