"""Group commit in the SQLite store: writers that overlap share one commit,
and each still succeeds or fails alone.

A real SQLite file throughout; what was committed is read back through a
separate ``sqlite3`` connection, as another process would see it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from syncd.errors import StoreError
from syncd.store import SqliteStore, Txn

DEADLINE_S = 10.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "syncd.db")
    try:
        yield store
    finally:
        await store.close()


def committed_alerts(store: SqliteStore) -> list[str]:
    """Alert details as a second connection sees them (committed state only)."""
    assert store.path is not None
    with sqlite3.connect(store.path) as conn:
        return sorted(row[0] for row in conn.execute("SELECT detail FROM alerts"))


async def add_alert(txn: Txn, name: str) -> None:
    await txn.add_alert("test", None, None, None, name, name.encode(), "now")


async def until(condition: Callable[[], bool], what: str) -> None:
    """Yield to the loop until ``condition`` holds (no sleeping on a guess)."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0)


def count_commits(store: SqliteStore) -> list[str]:
    """Every COMMIT the write connection runs from now on."""
    seen: list[str] = []
    conn = store._thread._conn
    assert conn is not None
    conn.set_trace_callback(lambda sql: seen.append(sql) if sql == "COMMIT" else None)
    return seen


async def writer(store: SqliteStore, name: str,
                 body: Callable[[Txn], Awaitable[None]] | None = None) -> None:
    async with store.write() as txn:
        await add_alert(txn, name)
        if body is not None:
            await body(txn)


async def test_overlapping_writers_share_commits_and_fail_alone(store: SqliteStore) -> None:
    commits = count_commits(store)

    async def boom(txn: Txn) -> None:
        await txn.one("SELECT 1")  # its alert has reached SQLite before it fails
        raise RuntimeError("refused")

    async def duplicate(txn: Txn) -> None:  # a write SQLite refuses (primary key)
        await txn.run("INSERT INTO positions VALUES ('a', 1, 1, 'now')")
        await txn.run("INSERT INTO positions VALUES ('a', 1, 2, 'now')")

    kinds = {0: None, 1: boom, 2: duplicate}
    names = [f"w{n:02d}" for n in range(60)]
    results = await asyncio.gather(*(writer(store, name, kinds[n % 3])
                                     for n, name in enumerate(names)), return_exceptions=True)

    for n, result in enumerate(results):
        if n % 3 == 0:
            assert result is None, (n, result)
        elif n % 3 == 1:
            assert isinstance(result, RuntimeError) and str(result) == "refused"
        else:
            assert isinstance(result, StoreError) and "UNIQUE" in str(result)
    assert committed_alerts(store) == [name for n, name in enumerate(names) if n % 3 == 0]
    assert await store.read("SELECT count(*) FROM positions") == [(0,)]
    assert 1 <= len(commits) < len(names) // 3, "writers that overlap share a commit"


async def test_a_lone_writer_commits_before_write_returns(store: SqliteStore) -> None:
    commits = count_commits(store)
    for name in ("one", "two", "three"):
        await writer(store, name)
        assert name in committed_alerts(store)
    assert len(commits) == 3


async def test_a_transaction_lost_mid_group_fails_every_member_in_it(store: SqliteStore) -> None:
    """SQLite can end a transaction by itself (a full disk, an I/O error): the
    writers whose work was in it are told so, and nothing of theirs is kept."""
    async def hold_until_someone_waits(txn: Txn) -> None:
        await until(lambda: store._waiting >= 1, "a second writer")

    async def lose_the_transaction(txn: Txn) -> None:
        await txn.run("ROLLBACK")

    first = asyncio.ensure_future(writer(store, "first", hold_until_someone_waits))
    await until(lambda: store._lock.locked(), "the first writer")
    second = asyncio.ensure_future(writer(store, "second", lose_the_transaction))
    results = await asyncio.gather(first, second, return_exceptions=True)

    assert all(isinstance(r, StoreError) for r in results), results
    assert committed_alerts(store) == []
    await writer(store, "after")  # the store goes on
    assert committed_alerts(store) == ["after"]


async def test_a_failing_last_member_still_commits_the_group(store: SqliteStore) -> None:
    async def hold_until_someone_waits(txn: Txn) -> None:
        await until(lambda: store._waiting >= 1, "a second writer")

    async def fail(txn: Txn) -> None:
        raise RuntimeError("refused")

    first = asyncio.ensure_future(writer(store, "first", hold_until_someone_waits))
    await until(lambda: store._lock.locked(), "the first writer")
    second = asyncio.ensure_future(writer(store, "second", fail))
    results = await asyncio.gather(first, second, return_exceptions=True)

    assert results[0] is None and isinstance(results[1], RuntimeError)
    assert committed_alerts(store) == ["first"]


async def test_a_writer_cancelled_while_the_group_waits_for_it_does_not_strand_it(
        store: SqliteStore) -> None:
    """The first writer leaves the transaction open for a second that was waiting;
    the second is cancelled before it gets the connection: the group is committed
    all the same and the first writer returns."""
    async def hold_until_someone_waits(txn: Txn) -> None:
        await until(lambda: store._waiting >= 1, "a second writer")

    first = asyncio.ensure_future(writer(store, "first", hold_until_someone_waits))
    await until(lambda: store._lock.locked(), "the first writer")
    second = asyncio.ensure_future(writer(store, "second"))
    # The window: the first writer has passed the connection on (the lock is
    # free, the group still open) and the second has not run yet.
    await until(lambda: not store._lock.locked() and store._group is not None,
                "the first writer to pass the transaction on")
    assert store._waiting == 1
    second.cancel()

    await asyncio.wait_for(first, DEADLINE_S)
    with pytest.raises(asyncio.CancelledError):
        await second
    assert committed_alerts(store) == ["first"]
    await writer(store, "after")
    assert committed_alerts(store) == ["after", "first"]
