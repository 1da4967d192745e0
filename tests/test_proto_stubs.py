"""The committed gRPC stubs are exactly what `make proto` generates, and import."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "proto"))

import generate  # noqa: E402


def test_committed_stubs_are_not_stale(tmp_path: Path) -> None:
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in generate.generate(tmp_path)}
    committed = {
        p.relative_to(REPO): p.read_bytes()
        for p in (REPO / "coral_base" / "wire").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    stale = sorted(str(path) for path in fresh.keys() | committed.keys() if fresh.get(path) != committed.get(path))
    assert stale == [], f"run `make proto` and commit: {stale}"


@pytest.mark.parametrize(
    ("module", "symbol"),
    [
        ("coral_base.wire.cri.runtime.v1.api_pb2_grpc", "RuntimeServiceStub"),
        ("coral_base.wire.containerd.services.events.v1.events_pb2_grpc", "EventsStub"),
        ("coral_base.wire.coral.mesh.v1.mesh_pb2", "RegisterRequest"),
    ],
)
def test_generated_stubs_import_from_the_package(module: str, symbol: str) -> None:
    assert hasattr(importlib.import_module(module), symbol)


def test_cri_messages_keep_the_upstream_wire_names() -> None:
    from coral_base.wire.cri.runtime.v1 import api_pb2

    assert api_pb2.DESCRIPTOR.services_by_name["RuntimeService"].full_name == "runtime.v1.RuntimeService"


@pytest.mark.parametrize(
    ("message", "field", "number"),
    [
        ("ServiceInfo", "component_name", 1),
        ("ServiceInfo", "provenance", 6),
        ("ServiceInfo", "node_labels", 8),
        ("RegisterRequest", "services", 10),
        ("RegisterRequest", "colony_secret", 4),
        ("RegisterRequest", "wireguard_pubkey", 7),
        ("RegisterRequest", "node_name", 11),
        ("RegisterRequest", "node_labels", 12),
    ],
)
def test_mesh_field_numbers_are_those_of_rfd_012(message: str, field: str, number: int) -> None:
    from coral_base.wire.coral.mesh.v1 import mesh_pb2

    assert mesh_pb2.DESCRIPTOR.message_types_by_name[message].fields_by_name[field].number == number
