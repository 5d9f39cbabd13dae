"""The server's store: SQLite (the embedded default) or PostgreSQL.

Both backends run the same queries (``?`` placeholders, standard SQL with
``ON CONFLICT``) through :class:`Txn`; only connections, transactions, locks
and the schema's spelling differ.

Invariants:

* Every request's work runs inside one transaction (:meth:`Store.write`), so
  a batch is applied entirely or not at all, and when it returns the change is
  durable (SQLite ``synchronous=FULL``; PostgreSQL's commit).
* SQLite: one write connection on its own thread and an asyncio lock: one
  writer at a time, each inside a savepoint of a transaction that writers
  arriving together share, committed once for all of them (group commit);
  reads go to a second connection. PostgreSQL: a pool, transactions overlap, and
  work on the same agent, token, commune, dossier or document is serialised
  by :meth:`Txn.lock` (a transaction-scoped advisory lock), so several
  ``syncd`` processes on one database apply each batch exactly once.
* Migrations are numbered and applied in the same transaction that records
  them (``PRAGMA user_version``; PostgreSQL: table ``schema_migrations``).
* Times stored here are the server's clock (ISO 8601, UTC).
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import asyncpg

from protocol import Heartbeat

from .errors import StoreError

__all__ = ["AgentRow", "BatchView", "HeldDossier", "NewRecord", "PostgresStore", "SqliteStore",
           "Store", "StoredRecord", "Txn", "open_store"]

_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE agents (
        agent_id TEXT PRIMARY KEY, commune_code TEXT NOT NULL, name TEXT,
        public_key BLOB NOT NULL UNIQUE, counter_block INTEGER NOT NULL,
        enrolled_at TEXT NOT NULL, last_seen TEXT, revoked_at TEXT);
    CREATE TABLE tokens (
        token_hash BLOB PRIMARY KEY, commune_code TEXT NOT NULL, name TEXT,
        created_at TEXT NOT NULL, expires_at TEXT NOT NULL,
        public_key BLOB, agent_id TEXT, used_at TEXT);
    CREATE TABLE positions (
        agent_id TEXT NOT NULL, epoch INTEGER NOT NULL, acked_seq INTEGER NOT NULL,
        updated_at TEXT NOT NULL, PRIMARY KEY (agent_id, epoch));
    CREATE TABLE records (
        agent_id TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
        hash BLOB NOT NULL, data BLOB NOT NULL, received_at TEXT NOT NULL,
        verdict_code TEXT, verdict_message TEXT, dossier_id TEXT,
        PRIMARY KEY (agent_id, epoch, seq));
    CREATE INDEX records_dossier ON records (dossier_id);
    CREATE TABLE dossiers (
        id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, commune_code TEXT NOT NULL,
        code TEXT NOT NULL, status TEXT NOT NULL, data TEXT NOT NULL,
        updated_at TEXT NOT NULL);
    CREATE INDEX dossiers_commune ON dossiers (commune_code);
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY, kind TEXT NOT NULL, agent_id TEXT, epoch INTEGER,
        seq INTEGER, detail TEXT NOT NULL, fingerprint BLOB NOT NULL UNIQUE,
        created_at TEXT NOT NULL)
    """,
    """
    CREATE TABLE documents (
        sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, received INTEGER NOT NULL,
        complete INTEGER NOT NULL, updated_at TEXT NOT NULL)
    """,
    """
    ALTER TABLE agents ADD COLUMN previous_key BLOB
    """,
    # The heartbeat: what the agent last said about itself, and its clock's skew.
    """
    ALTER TABLE agents ADD COLUMN heartbeat_at TEXT;
    ALTER TABLE agents ADD COLUMN queue_depth INTEGER;
    ALTER TABLE agents ADD COLUMN oldest_unsent_s INTEGER;
    ALTER TABLE agents ADD COLUMN quarantined INTEGER;
    ALTER TABLE agents ADD COLUMN free_disk_bytes INTEGER;
    ALTER TABLE agents ADD COLUMN agent_version TEXT;
    ALTER TABLE agents ADD COLUMN agent_clock TEXT;
    ALTER TABLE agents ADD COLUMN clock_skew_s REAL
    """,
    # Operators of the pages: scrypt password hashes, server-side sessions.
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL,
        created_at TEXT NOT NULL);
    CREATE TABLE sessions (
        token_hash BLOB PRIMARY KEY, user_name TEXT NOT NULL, csrf TEXT NOT NULL,
        created_at TEXT NOT NULL, expires_at TEXT NOT NULL)
    """,
    # What flows down to agents: the procedure catalogue and the holiday list.
    """
    CREATE TABLE published (
        name TEXT PRIMARY KEY, version INTEGER NOT NULL, body BLOB NOT NULL,
        updated_at TEXT NOT NULL)
    """,
    # What flows down about dossiers: statuses set centrally (syncd.central), read
    # by each commune's agents in id order.
    """
    CREATE TABLE central_changes (
        id INTEGER PRIMARY KEY, dossier_id TEXT NOT NULL, commune_code TEXT NOT NULL,
        status TEXT NOT NULL, note TEXT, by_user TEXT, created_at TEXT NOT NULL);
    CREATE INDEX central_changes_commune ON central_changes (commune_code, id);
    CREATE INDEX central_changes_dossier ON central_changes (dossier_id)
    """,
)


def _postgres_spelling(script: str) -> str:
    """A SQLite migration in PostgreSQL's types: seqs, epochs and sizes reach
    2^63 - 1 (BIGINT), bytes are BYTEA, the alert id an identity column."""
    script = script.replace("id INTEGER PRIMARY KEY",
                            "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
    script = re.sub(r"\bINTEGER\b", "BIGINT", script)
    script = re.sub(r"\bBLOB\b", "BYTEA", script)
    return re.sub(r"\bREAL\b", "DOUBLE PRECISION", script)


_PG_MIGRATIONS: tuple[str, ...] = tuple(map(_postgres_spelling, _MIGRATIONS))


@dataclass(frozen=True)
class AgentRow:
    agent_id: str
    commune_code: str
    name: str | None
    public_key: bytes
    counter_block: int
    revoked: bool
    previous_key: bytes | None = None


class NewRecord(NamedTuple):
    """A row of ``records``, in the table's column order."""

    agent_id: str
    epoch: int
    seq: int
    hash: bytes
    data: bytes
    received_at: str
    verdict_code: str | None
    verdict_message: str | None
    dossier_id: str | None


@dataclass(frozen=True)
class HeldDossier:
    state: dict[str, Any]
    owner: str
    commune_code: str


_T = TypeVar("_T")
_IN_CHUNK = 500  # ids per ``IN (…)`` list: far below either backend's parameter limit
_DOSSIERS_IN = "SELECT id, data, agent_id, commune_code FROM dossiers WHERE id IN ({marks})"


@dataclass(frozen=True)
class BatchView:
    position: int
    held: dict[int, StoredRecord]
    dossiers: dict[str, HeldDossier]


@dataclass(frozen=True)
class StoredRecord:
    hash: bytes
    verdict_code: str | None
    verdict_message: str | None


class Txn(ABC):
    """Operations inside one write transaction (see :meth:`Store.write`).

    SQL here uses ``?`` placeholders; each backend runs it its own way.
    """

    @abstractmethod
    async def one(self, sql: str, *args: Any) -> Any:
        """The first row of ``sql``, or None."""

    @abstractmethod
    async def run(self, sql: str, *args: Any) -> None:
        """Execute ``sql``."""

    @abstractmethod
    async def all(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Every row of ``sql``."""

    async def reads(self, queries: list[tuple[str, tuple[Any, ...]]]
                    ) -> list[list[tuple[Any, ...]]]:
        """The rows of each query, in order (one round trip where the backend allows)."""
        return [await self.all(sql, *args) for sql, args in queries]

    @abstractmethod
    async def many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Execute ``sql`` once per row of arguments (one round trip where the
        backend allows)."""

    @abstractmethod
    async def lock(self, kind: str, key: str) -> None:
        """Serialise this transaction with every other one that locks the same
        (kind, key) until it ends."""

    async def lock_many(self, kind: str, keys: Collection[str]) -> None:
        """:meth:`lock` each key, in one order every transaction shares."""
        for key in sorted(set(keys)):
            await self.lock(kind, key)

    async def position(self, agent_id: str, epoch: int) -> int:
        row = await self.one("SELECT acked_seq FROM positions WHERE agent_id = ? AND epoch = ?",
                             agent_id, epoch)
        return int(row[0]) if row else 0

    async def set_position(self, agent_id: str, epoch: int, seq: int, now: str) -> None:
        await self.run(
            "INSERT INTO positions VALUES (?, ?, ?, ?) ON CONFLICT (agent_id, epoch) "
            "DO UPDATE SET acked_seq = excluded.acked_seq, updated_at = excluded.updated_at",
            agent_id, epoch, seq, now)

    async def batch_view(self, agent_id: str, epoch: int, low: int, high: int,
                         dossier_ids: Collection[str]) -> BatchView:
        """What applying records ``low``..``high`` of (agent, epoch) needs, read
        together: the position, the records held in that range, and the held
        dossiers among ``dossier_ids`` (each locked until this transaction ends)."""
        wanted = sorted(set(dossier_ids))
        await self.lock_many("dossier", wanted)
        chunks = [wanted[start:start + _IN_CHUNK] for start in range(0, len(wanted), _IN_CHUNK)]
        position, held, *found = await self.reads([
            ("SELECT acked_seq FROM positions WHERE agent_id = ? AND epoch = ?",
             (agent_id, epoch)),
            ("SELECT seq, hash, verdict_code, verdict_message FROM records "
             "WHERE agent_id = ? AND epoch = ? AND seq BETWEEN ? AND ?",
             (agent_id, epoch, low, high)),
            *((_DOSSIERS_IN.format(marks=", ".join("?" * len(chunk))), tuple(chunk))
              for chunk in chunks)])
        return BatchView(
            int(position[0][0]) if position else 0,
            {int(seq): StoredRecord(bytes(digest), code, message)
             for seq, digest, code, message in held},
            {dossier_id: HeldDossier(json.loads(data), owner, commune)
             for rows in found for dossier_id, data, owner, commune in rows})

    async def insert_records(self, rows: list[NewRecord]) -> None:
        if rows:
            await self.many("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [tuple(row) for row in rows])

    async def insert_record(self, agent_id: str, epoch: int, seq: int, digest: bytes,
                            data: bytes, now: str, verdict: tuple[str, str] | None,
                            dossier_id: str | None) -> None:
        code, message = verdict or (None, None)
        await self.insert_records([NewRecord(agent_id, epoch, seq, digest, data, now, code,
                                             message, dossier_id)])

    async def put_dossiers(self, dossiers: list[HeldDossier], now: str) -> None:
        """Insert or replace each dossier's state (its owner and commune are kept
        when it exists)."""
        if not dossiers:
            return
        await self.many(
            "INSERT INTO dossiers VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "code = excluded.code, status = excluded.status, data = excluded.data, "
            "updated_at = excluded.updated_at",
            [(d.state["id"], d.owner, d.commune_code, d.state["code"], d.state["status"],
              json.dumps(d.state, ensure_ascii=False, sort_keys=True), now) for d in dossiers])

    async def put_dossier(self, state: dict[str, Any], agent_id: str, commune_code: str,
                          now: str) -> None:
        await self.put_dossiers([HeldDossier(state, agent_id, commune_code)], now)

    async def add_alert(self, kind: str, agent_id: str | None, epoch: int | None,
                        seq: int | None, detail: str, fingerprint: bytes, now: str) -> None:
        await self.run("INSERT INTO alerts (kind, agent_id, epoch, seq, detail, fingerprint, "
                       "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                       kind, agent_id, epoch, seq, detail, fingerprint, now)

    async def touch_agent(self, agent_id: str, now: str, heartbeat: Heartbeat | None = None,
                          agent_clock: str | None = None) -> None:
        """Record contact, and the agent's heartbeat and clock skew when it sent them."""
        if heartbeat is None and agent_clock is None:
            await self.run("UPDATE agents SET last_seen = ? WHERE agent_id = ?", now, agent_id)
            return
        hb = heartbeat or Heartbeat()
        await self.run(
            "UPDATE agents SET last_seen = ?, heartbeat_at = ?, queue_depth = ?, "
            "oldest_unsent_s = ?, quarantined = ?, free_disk_bytes = ?, agent_version = ?, "
            "agent_clock = ?, clock_skew_s = ? WHERE agent_id = ?",
            now, now, hb.queue_depth, hb.oldest_unsent_s, hb.quarantined, hb.free_disk_bytes,
            hb.agent_version, agent_clock, _skew_s(agent_clock, now), agent_id)




def _skew_s(agent_clock: str | None, now: str) -> float | None:
    """The agent's clock minus the server's, in seconds (recorded, never trusted)."""
    if agent_clock is None:
        return None
    try:
        agent = datetime.fromisoformat(agent_clock)
    except ValueError:
        return None
    if agent.tzinfo is None:
        return None
    return round((agent - datetime.fromisoformat(now)).total_seconds(), 3)


class _SqliteThread:
    """One SQLite connection, used only from its own thread: each call runs
    there, in order, as one hop from the event loop."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncd-sqlite")
        self._conn: sqlite3.Connection | None = None

    def call(self, fn: Callable[[sqlite3.Connection], _T]) -> asyncio.Future[_T]:
        """Queue ``fn`` now (calls run in the order they were made)."""
        def run() -> _T:
            assert self._conn is not None
            return fn(self._conn)
        return asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def connect(self, path: Path) -> None:
        def connect() -> None:
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        if self._conn is not None:
            await self.call(sqlite3.Connection.close)
        self._executor.shutdown(wait=True)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:  # SQLite may have rolled back by itself
        conn.execute("ROLLBACK")


def _undo(conn: sqlite3.Connection) -> bool:
    """Undo one member of a group (see :class:`SqliteStore`): false when the
    whole transaction is gone (SQLite rolls back by itself on a full disk or
    an I/O error) and the group must fail."""
    if not conn.in_transaction:
        return False
    try:
        conn.execute("ROLLBACK TO member")
        conn.execute("RELEASE member")
    except sqlite3.Error:
        _rollback(conn)
        return False
    return True


class _SqliteTxn(Txn):
    """One member of a group. Writes are staged and sent with the next read or
    when the member ends, so a batch costs a few hops to the connection's
    thread, not one per statement (a staged write that fails fails the member
    all the same)."""

    def __init__(self, thread: _SqliteThread, group: _Group) -> None:
        self._thread = thread
        self._group = group
        self._staged: list[tuple[str, Any, bool]] = [("SAVEPOINT member", (), False)]
        if not group.begun:
            self._staged.insert(0, ("BEGIN IMMEDIATE", (), False))
        self.sent = False  # whether any of this member's statements reached SQLite

    def _run_staged(self, conn: sqlite3.Connection) -> None:
        staged, self._staged = self._staged, []
        self.sent = True
        for sql, args, many in staged:
            (conn.executemany if many else conn.execute)(sql, args).close()
            if sql == "BEGIN IMMEDIATE":
                self._group.begun = True

    def _then(self, fn: Callable[[sqlite3.Connection], _T]) -> asyncio.Future[_T]:
        """Queue the staged writes, then ``fn``."""
        def run(conn: sqlite3.Connection) -> _T:
            self._run_staged(conn)
            return fn(conn)
        return self._thread.call(run)

    async def one(self, sql: str, *args: Any) -> Any:
        return await self._then(lambda conn: conn.execute(sql, args).fetchone())

    async def all(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return await self._then(lambda conn: conn.execute(sql, args).fetchall())

    async def reads(self, queries: list[tuple[str, tuple[Any, ...]]]
                    ) -> list[list[tuple[Any, ...]]]:
        return await self._then(lambda conn: [conn.execute(sql, args).fetchall()
                                              for sql, args in queries])

    async def run(self, sql: str, *args: Any) -> None:
        self._staged.append((sql, args, False))

    async def many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._staged.append((sql, rows, True))

    async def lock(self, kind: str, key: str) -> None:
        return None  # one connection, one member at a time: already serialised

    def finish(self) -> asyncio.Future[tuple[sqlite3.Error | None, bool]]:
        """Send the staged writes and end this member. Returns its error, if
        any, and whether the group's transaction survived it."""
        def run(conn: sqlite3.Connection) -> tuple[sqlite3.Error | None, bool]:
            try:
                self._run_staged(conn)
                conn.execute("RELEASE member")
            except sqlite3.Error as exc:
                return exc, _undo(conn)
            return None, True
        return self._thread.call(run)


def _commit(conn: sqlite3.Connection) -> sqlite3.Error | None:
    """Commit the open transaction, if any; on failure roll it back and say why."""
    if not conn.in_transaction:
        return None
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _rollback(conn)
        return exc
    return None


class _Group:
    """Writers sharing one SQLite transaction and its commit (and fsync)."""

    def __init__(self) -> None:
        self.members = 0
        self.begun = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.done.add_done_callback(lambda f: f.cancelled() or f.exception())

    def end(self, error: BaseException | None) -> None:
        if not self.done.done():
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(StoreError(f"store unavailable: {error}"))


_PLACEHOLDER = re.compile(r"\?")


def _pg_sql(sql: str) -> str:
    """``?`` placeholders to PostgreSQL's ``$1, $2, …`` (no query here has a
    literal question mark)."""
    counter = iter(range(1, 1 << 16))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


class _PgTxn(Txn):
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def one(self, sql: str, *args: Any) -> Any:
        row = await self._conn.fetchrow(_pg_sql(sql), *args)
        return None if row is None else tuple(row)

    async def all(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await self._conn.fetch(_pg_sql(sql), *args)]

    async def run(self, sql: str, *args: Any) -> None:
        await self._conn.execute(_pg_sql(sql), *args)

    async def many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        await self._conn.executemany(_pg_sql(sql), rows)

    async def lock(self, kind: str, key: str) -> None:
        await self.lock_many(kind, (key,))

    async def lock_many(self, kind: str, keys: Collection[str]) -> None:
        """One statement taking every lock, in the order of their hashes (the
        order any other transaction takes them in)."""
        if keys:
            await self._conn.execute(
                "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT "
                "hashtextextended($1 || x, 0) AS k FROM unnest($2::text[]) AS x ORDER BY k) AS s",
                f"{kind}:", list(keys))


class Store(ABC):
    """What the server keeps. Use :func:`open_store`, then :meth:`close`."""

    path: Path | None = None  # the SQLite file, if that is the backend

    @abstractmethod
    def write(self) -> AbstractAsyncContextManager[Txn]:
        """One transaction: committed (durably) on normal exit, rolled back on error."""

    @abstractmethod
    async def read(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Rows of a read-only query (``?`` placeholders)."""

    @abstractmethod
    async def close(self) -> None:
        """Release the connection or pool."""

    async def agent(self, agent_id: str) -> AgentRow | None:
        rows = await self.read("SELECT agent_id, commune_code, name, public_key, counter_block, "
                               "revoked_at IS NOT NULL, previous_key FROM agents "
                               "WHERE agent_id = ?", agent_id)
        return AgentRow(*rows[0][:5], bool(rows[0][5]), rows[0][6]) if rows else None

    async def dossiers(self, commune_code: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT data, agent_id, commune_code FROM dossiers"
        args: tuple[Any, ...] = ()
        if commune_code is not None:
            sql, args = sql + " WHERE commune_code = ?", (commune_code,)
        complete = {row[0] for row in await self.read(
            "SELECT sha256 FROM documents WHERE complete = 1")}
        out = []
        for data, agent_id, commune in await self.read(sql + " ORDER BY code, id", *args):
            dossier = json.loads(data)
            for doc in dossier.get("documents", []):
                if "sha256" in doc:
                    doc["complete"] = doc["sha256"] in complete
            out.append({**dossier, "agent_id": agent_id, "commune_code": commune})
        return out

    async def agents(self) -> list[dict[str, Any]]:
        rows = await self.read(
            "SELECT a.agent_id, a.commune_code, a.name, p.epoch, p.acked_seq, a.last_seen, "
            "a.revoked_at, a.heartbeat_at, a.queue_depth, a.oldest_unsent_s, a.quarantined, "
            "a.free_disk_bytes, a.agent_version, a.agent_clock, a.clock_skew_s "
            "FROM agents a LEFT JOIN positions p ON p.agent_id = a.agent_id AND "
            "p.epoch = (SELECT max(epoch) FROM positions WHERE agent_id = a.agent_id) "
            "ORDER BY a.commune_code, a.agent_id")
        heartbeat = ("heartbeat_at", "queue_depth", "oldest_unsent_s", "quarantined",
                     "free_disk_bytes", "agent_version", "agent_clock", "clock_skew_s")
        return [{"agent_id": r[0], "commune_code": r[1], "name": r[2], "epoch": r[3] or 1,
                 "acked_seq": r[4] or 0, "last_seen": r[5], "revoked": r[6] is not None,
                 **dict(zip(heartbeat, r[7:], strict=True))}
                for r in rows]

    async def alerts(self) -> list[dict[str, Any]]:
        rows = await self.read("SELECT id, kind, agent_id, epoch, seq, detail, created_at "
                               "FROM alerts ORDER BY id")
        keys = ("id", "kind", "agent_id", "epoch", "seq", "detail", "created_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]


class SqliteStore(Store):
    """The SQLite store in ``path``. One connection writes, one writer at a
    time; another reads (WAL: a read sees the last commit and waits for no write).

    Group commit: a writer that ends while others wait for the connection
    leaves the transaction open for them (its work inside a savepoint, undone
    alone if it fails) and waits; the last of the group commits for all, so
    a crowd of batches shares one fsync. Nobody's :meth:`write` returns before
    the commit that holds its work.
    """

    MAX_GROUP = 64  # writers per commit: bounds how long the first one waits

    def __init__(self, thread: _SqliteThread, path: Path) -> None:
        self._thread = thread
        self._reader: _SqliteThread | None = None
        self.path = path
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._group: _Group | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._closed = False

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        thread = _SqliteThread()
        store = cls(thread, path)
        try:
            await thread.connect(path)
            await thread.call(lambda conn: conn.executescript(
                "PRAGMA busy_timeout = 30000; PRAGMA journal_mode = WAL; "
                "PRAGMA synchronous = FULL; PRAGMA cache_size = -65536"))
            async with store.write() as txn:  # migrations, recorded in their transaction
                version = (await txn.one("PRAGMA user_version"))[0]
                for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                    for statement in filter(str.strip, script.split(";")):
                        await txn.run(statement)
                    await txn.run(f"PRAGMA user_version = {number}")
            store._reader = reader = _SqliteThread()
            await reader.connect(path)
            await reader.call(lambda conn: conn.executescript(
                "PRAGMA busy_timeout = 30000; PRAGMA query_only = 1"))
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._commit_group()
            await self._thread.close()
            if self._reader is not None:
                await self._reader.close()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Txn]:
        """One transaction: committed (durably) on normal exit, rolled back on error."""
        self._waiting += 1
        try:
            await self._lock.acquire()
        except BaseException:
            self._waiting -= 1
            self._adopt_orphan()
            raise
        self._waiting -= 1
        failure: BaseException | None = None
        try:
            group = self._group = self._group or _Group()
            group.members += 1
            txn = _SqliteTxn(self._thread, group)
            try:
                yield txn
            except BaseException as exc:
                failure = exc
                if txn.sent and not await asyncio.shield(self._thread.call(_undo)):
                    self._end(group, exc)  # the whole transaction is gone
            else:
                failure, survived = await asyncio.shield(txn.finish())
                if not survived:
                    self._end(group, failure)
            if self._group is group and (not self._waiting or group.members >= self.MAX_GROUP):
                self._end(group, await asyncio.shield(self._thread.call(_commit)))
        finally:
            self._lock.release()
        if failure is not None:
            if isinstance(failure, sqlite3.Error):
                raise StoreError(f"store unavailable: {failure}") from failure
            raise failure
        await asyncio.shield(group.done)

    def _end(self, group: _Group, error: BaseException | None) -> None:
        group.end(error)
        if self._group is group:
            self._group = None

    def _adopt_orphan(self) -> None:
        """A writer gave up waiting: if the group was left to it, commit the group."""
        if self._group is not None and not self._waiting and not self._lock.locked():
            task = asyncio.ensure_future(self._commit_group())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _commit_group(self) -> None:
        async with self._lock:
            if self._group is not None:
                self._end(self._group, await asyncio.shield(self._thread.call(_commit)))

    async def read(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        assert self._reader is not None
        try:
            return await self._reader.call(lambda conn: conn.execute(sql, args).fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"store unavailable: {exc}") from exc


class PostgresStore(Store):
    """PostgreSQL through an asyncpg pool; several ``syncd`` processes may share it."""

    def __init__(self, pool: Any, url: str) -> None:
        self._pool = pool
        self.url = url
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, min_size: int = 2, max_size: int = 16) -> PostgresStore:
        try:
            pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size,
                                             command_timeout=60)
        except (OSError, asyncpg.PostgresError, ValueError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        store = cls(pool, url)
        try:
            await store._migrate()
        except BaseException:
            await pool.close()
            raise
        return store

    async def _migrate(self) -> None:
        async with self.write() as txn:
            await txn.lock("schema", "migrations")  # two processes starting at once
            await txn.run("CREATE TABLE IF NOT EXISTS schema_migrations ("
                          "version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
            version = (await txn.one("SELECT coalesce(max(version), 0) "
                                     "FROM schema_migrations"))[0]
            for number, script in enumerate(_PG_MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    await txn.run(statement)
                await txn.run("INSERT INTO schema_migrations VALUES (?, "
                              "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS'))",
                              number)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._pool.close()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Txn]:
        try:
            conn = await self._pool.acquire()
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"store unavailable: {exc}") from exc
        try:
            transaction = conn.transaction()
            await transaction.start()
            try:
                yield _PgTxn(conn)
            except BaseException:
                await asyncio.shield(transaction.rollback())
                raise
            try:
                await asyncio.shield(transaction.commit())
            except asyncpg.PostgresError as exc:
                raise StoreError(f"commit failed: {exc}") from exc
        except (OSError, asyncpg.PostgresError) as exc:
            # A race another process won (a unique key), a deadlock the database
            # broke, or a lost connection: nothing was committed; retry later.
            raise StoreError(f"store unavailable: {exc}") from exc
        finally:
            await self._pool.release(conn)

    async def read(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        try:
            async with self._pool.acquire() as conn:
                return [tuple(row) for row in await conn.fetch(_pg_sql(sql), *args)]
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"store unavailable: {exc}") from exc


def is_postgres_url(url: str | None) -> bool:
    return bool(url) and url.split(":", 1)[0] in ("postgres", "postgresql")  # type: ignore[union-attr]


async def open_store(database: Path, url: str | None = None) -> Store:
    """The store: PostgreSQL at ``url`` (``postgresql://…``), else SQLite at ``database``."""
    if url is None:
        return await SqliteStore.open(database)
    if not is_postgres_url(url):
        raise StoreError(f"--db must be a postgresql:// URL, not {url.split(':', 1)[0]}:")
    return await PostgresStore.open(url)
