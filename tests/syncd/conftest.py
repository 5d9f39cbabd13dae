"""Fixtures the server's tests share: a SQLite store in a temporary folder and server keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from syncd.keys import ServerKeys
from syncd.store import SqliteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "syncd.db")
    yield store
    await store.close()


@pytest.fixture
def keys(tmp_path: Path) -> ServerKeys:
    return ServerKeys.create(tmp_path)
