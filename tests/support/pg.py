"""PostgreSQL for tests: a fresh, uniquely named database per test, dropped afterwards.

PostgreSQL is part of what CI provides (``.ci/run`` starts it when it is down),
so a test that needs it never skips: when the server cannot be reached it
fails with a sentence saying so.

``CS_TEST_PG`` may name another server (``postgresql://user@host:port``);
the default is the local one with trust authentication.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg
import pytest

__all__ = ["PG_SERVER", "create_database", "database_url", "drop_database", "fresh_database",
           "fresh_database_sync", "pg_query", "require_postgres"]

PG_SERVER = os.environ.get("CS_TEST_PG", "postgresql://postgres@127.0.0.1:5432").rstrip("/")
_ADMIN_DB = "postgres"
_PREFIX = "cs_test_"


def database_url(name: str) -> str:
    return f"{PG_SERVER}/{name}"


async def _admin() -> Any:
    """A connection to the ``postgres`` database, or a loud failure."""
    try:
        return await asyncpg.connect(database_url(_ADMIN_DB), timeout=10)
    except Exception as exc:  # refused, timed out, auth, no such database: all the same here
        problem = f"{exc.__class__.__name__}: {exc}"
    pytest.fail(f"PostgreSQL is not reachable at {PG_SERVER} ({problem}). These tests need it "
                "and do not skip: `.ci/run` starts it (pg_ctlcluster … main start), or set "
                "CS_TEST_PG to a reachable server.", pytrace=False)


async def require_postgres() -> None:
    """Fail the test, with a clear message, unless PostgreSQL answers."""
    conn = await _admin()
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


async def create_database() -> str:
    """Create a database named ``cs_test_<hex>``; return its URL."""
    name = _PREFIX + secrets.token_hex(6)
    conn = await _admin()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return database_url(name)


async def drop_database(url: str) -> None:
    """Drop a database made by :func:`create_database`, even with connections left."""
    name = url.rsplit("/", 1)[1]
    if not name.startswith(_PREFIX):
        raise ValueError(f"not a test database: {name}")
    conn = await _admin()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A new, empty database's URL; dropped at the end."""
    url = await create_database()
    try:
        yield url
    finally:
        await drop_database(url)


@contextmanager
def fresh_database_sync() -> Iterator[str]:
    """:func:`fresh_database` for synchronous (process-level) tests."""
    url = asyncio.run(create_database())
    try:
        yield url
    finally:
        asyncio.run(drop_database(url))


async def _query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return [tuple(row) for row in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


def pg_query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of one query (``$1`` placeholders), from synchronous code."""
    return asyncio.run(_query(url, sql, *args))
