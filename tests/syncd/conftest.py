"""Fixtures the server's tests share: a SQLite store in a temporary folder, the
same on each backend (SQLite, then a fresh PostgreSQL database), and server keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from syncd.keys import ServerKeys
from syncd.store import SqliteStore, Store, open_store
from tests.support.pg import create_database, drop_database


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "syncd.db")
    yield store
    await store.close()


@pytest.fixture
def keys(tmp_path: Path) -> ServerKeys:
    return ServerKeys.create(tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend_store(request: pytest.FixtureRequest, tmp_path: Path
                        ) -> AsyncIterator[Store]:
    url = await create_database() if request.param == "postgresql" else None
    opened = await open_store(tmp_path / "syncd.db", url)
    try:
        yield opened
    finally:
        await opened.close()
        if url is not None:
            await drop_database(url)
