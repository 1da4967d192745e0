"""serve() owns the registry's writer: it creates it before anything reads the file and closes it on every way out."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
from pathlib import Path

import pytest

from coral_colony.identity import ColonyIdentity, init_colony
from coral_colony.server import serve
from coral_colony.stores.schema import SCHEMA_VERSION, version_of
from coral_colony.stores.writer import RegistryWriter


def writer_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("registry-writer")]


@pytest.fixture
def identity(tmp_path: Path) -> ColonyIdentity:
    return init_colony(tmp_path / "colony", colony_id="c1", hosts=["127.0.0.1"])


def test_serve_creates_the_registry_and_closes_its_writer_when_stopped(
    identity: ColonyIdentity, tmp_path: Path
) -> None:
    database = tmp_path / "colony.db"

    async def scenario() -> list[str]:
        stop = asyncio.Event()
        task = asyncio.create_task(
            serve(identity, listen="127.0.0.1:0", database=database, stop=stop, web_listen="", heartbeat_timeout=0.3)
        )
        await asyncio.sleep(0.5)  # the registry clock has written through the writer
        running = writer_threads()
        stop.set()
        await asyncio.wait_for(task, 10)
        return running

    assert asyncio.run(scenario()) != []
    assert writer_threads() == []
    with sqlite3.connect(database) as db:
        assert version_of(db) == SCHEMA_VERSION


def test_a_colony_that_cannot_listen_still_closes_its_writer(
    identity: ColonyIdentity, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[Path] = []
    close = RegistryWriter.close

    def recorded(writer: RegistryWriter) -> None:
        closed.append(writer.path)
        close(writer)

    monkeypatch.setattr(RegistryWriter, "close", recorded)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def scenario() -> None:
            await serve(
                identity,
                listen=f"127.0.0.1:{port}",
                database=tmp_path / "colony.db",
                stop=asyncio.Event(),
                web_listen="",
            )

        with pytest.raises(RuntimeError):
            asyncio.run(scenario())
    assert (closed, writer_threads()) == ([tmp_path / "colony.db"], [])
