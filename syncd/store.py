"""The server's store: SQLite (the embedded default) or PostgreSQL.

Both backends run the same queries (``?`` placeholders, standard SQL with
``ON CONFLICT``) through :class:`Txn`; only connections, transactions, locks
and the schema's spelling differ.

Invariants:

* Every request's work runs inside one transaction (:meth:`Store.write`), so
  a batch is applied entirely or not at all, and when it returns the change is
  durable (SQLite ``synchronous=FULL``; PostgreSQL's commit).
* SQLite: one write connection and an asyncio lock, ``BEGIN IMMEDIATE``:
  transactions never overlap. PostgreSQL: a pool, transactions overlap, and
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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg

from protocol import Heartbeat

from .errors import StoreError

__all__ = ["AgentRow", "PostgresStore", "SqliteStore", "Store", "StoredRecord", "Txn",
           "open_store"]

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
)

# The same schema for PostgreSQL, in its types. Seqs and epochs are up to
# 2^63 - 1, hence BIGINT.
_PG_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE agents (
        agent_id TEXT PRIMARY KEY, commune_code TEXT NOT NULL, name TEXT,
        public_key BYTEA NOT NULL UNIQUE, counter_block BIGINT NOT NULL,
        enrolled_at TEXT NOT NULL, last_seen TEXT, revoked_at TEXT, previous_key BYTEA);
    CREATE TABLE tokens (
        token_hash BYTEA PRIMARY KEY, commune_code TEXT NOT NULL, name TEXT,
        created_at TEXT NOT NULL, expires_at TEXT NOT NULL,
        public_key BYTEA, agent_id TEXT, used_at TEXT);
    CREATE TABLE positions (
        agent_id TEXT NOT NULL, epoch BIGINT NOT NULL, acked_seq BIGINT NOT NULL,
        updated_at TEXT NOT NULL, PRIMARY KEY (agent_id, epoch));
    CREATE TABLE records (
        agent_id TEXT NOT NULL, epoch BIGINT NOT NULL, seq BIGINT NOT NULL,
        hash BYTEA NOT NULL, data BYTEA NOT NULL, received_at TEXT NOT NULL,
        verdict_code TEXT, verdict_message TEXT, dossier_id TEXT,
        PRIMARY KEY (agent_id, epoch, seq));
    CREATE INDEX records_dossier ON records (dossier_id);
    CREATE TABLE dossiers (
        id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, commune_code TEXT NOT NULL,
        code TEXT NOT NULL, status TEXT NOT NULL, data TEXT NOT NULL,
        updated_at TEXT NOT NULL);
    CREATE INDEX dossiers_commune ON dossiers (commune_code);
    CREATE TABLE alerts (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, kind TEXT NOT NULL,
        agent_id TEXT, epoch BIGINT, seq BIGINT, detail TEXT NOT NULL,
        fingerprint BYTEA NOT NULL UNIQUE, created_at TEXT NOT NULL);
    CREATE TABLE documents (
        sha256 TEXT PRIMARY KEY, size BIGINT NOT NULL, received BIGINT NOT NULL,
        complete INTEGER NOT NULL, updated_at TEXT NOT NULL)
    """,
    """
    ALTER TABLE agents ADD COLUMN heartbeat_at TEXT;
    ALTER TABLE agents ADD COLUMN queue_depth BIGINT;
    ALTER TABLE agents ADD COLUMN oldest_unsent_s BIGINT;
    ALTER TABLE agents ADD COLUMN quarantined BIGINT;
    ALTER TABLE agents ADD COLUMN free_disk_bytes BIGINT;
    ALTER TABLE agents ADD COLUMN agent_version TEXT;
    ALTER TABLE agents ADD COLUMN agent_clock TEXT;
    ALTER TABLE agents ADD COLUMN clock_skew_s DOUBLE PRECISION
    """,
)


@dataclass(frozen=True)
class AgentRow:
    agent_id: str
    commune_code: str
    name: str | None
    public_key: bytes
    counter_block: int
    revoked: bool
    previous_key: bytes | None = None


@dataclass(frozen=True)
class StoredRecord:
    hash: bytes
    verdict_code: str | None
    verdict_message: str | None


class Txn:
    """Operations inside one write transaction (see :meth:`Store.write`).

    SQL here uses ``?`` placeholders; each backend runs it its own way.
    """

    async def one(self, sql: str, *args: Any) -> Any:
        raise NotImplementedError

    async def run(self, sql: str, *args: Any) -> None:
        raise NotImplementedError

    async def lock(self, kind: str, key: str) -> None:
        """Serialise this transaction with every other one that locks the same
        (kind, key) until it ends. A no-op where transactions never overlap."""

    async def position(self, agent_id: str, epoch: int) -> int:
        row = await self.one("SELECT acked_seq FROM positions WHERE agent_id = ? AND epoch = ?",
                             agent_id, epoch)
        return int(row[0]) if row else 0

    async def set_position(self, agent_id: str, epoch: int, seq: int, now: str) -> None:
        await self.run(
            "INSERT INTO positions VALUES (?, ?, ?, ?) ON CONFLICT (agent_id, epoch) "
            "DO UPDATE SET acked_seq = excluded.acked_seq, updated_at = excluded.updated_at",
            agent_id, epoch, seq, now)

    async def record(self, agent_id: str, epoch: int, seq: int) -> StoredRecord | None:
        row = await self.one("SELECT hash, verdict_code, verdict_message FROM records "
                             "WHERE agent_id = ? AND epoch = ? AND seq = ?", agent_id, epoch, seq)
        return StoredRecord(*row) if row else None

    async def insert_record(self, agent_id: str, epoch: int, seq: int, digest: bytes,
                            data: bytes, now: str, verdict: tuple[str, str] | None,
                            dossier_id: str | None) -> None:
        code, message = verdict or (None, None)
        await self.run("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       agent_id, epoch, seq, digest, data, now, code, message, dossier_id)

    async def dossier(self, dossier_id: str) -> tuple[dict[str, Any], str, str] | None:
        """The dossier's state, owner and commune; locked until this transaction ends."""
        await self.lock("dossier", dossier_id)
        row = await self.one("SELECT data, agent_id, commune_code FROM dossiers WHERE id = ?",
                             dossier_id)
        return (json.loads(row[0]), row[1], row[2]) if row else None

    async def put_dossier(self, state: dict[str, Any], agent_id: str, commune_code: str,
                          now: str) -> None:
        await self.run(
            "INSERT INTO dossiers VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "code = excluded.code, status = excluded.status, data = excluded.data, "
            "updated_at = excluded.updated_at",
            state["id"], agent_id, commune_code, state["code"], state["status"],
            json.dumps(state, ensure_ascii=False, sort_keys=True), now)

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


class _SqliteTxn(Txn):
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def one(self, sql: str, *args: Any) -> Any:
        async with self._db.execute(sql, args) as cursor:
            return await cursor.fetchone()

    async def run(self, sql: str, *args: Any) -> None:
        await self._db.execute(sql, args)


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

    async def run(self, sql: str, *args: Any) -> None:
        await self._conn.execute(_pg_sql(sql), *args)

    async def lock(self, kind: str, key: str) -> None:
        await self._conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                                 f"{kind}:{key}")


class Store:
    """What the server keeps. Use :func:`open_store`, then :meth:`close`."""

    path: Path | None = None  # the SQLite file, if that is the backend

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Txn]:
        """One transaction: committed (durably) on normal exit, rolled back on error."""
        raise NotImplementedError
        yield  # pragma: no cover

    async def read(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Rows of a read-only query (``?`` placeholders)."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

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
    """The SQLite store in ``path``: one connection, transactions one at a time."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute("PRAGMA busy_timeout = 30000")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = FULL")
            store = cls(db, path)
            async with store.write() as txn:  # migrations, recorded in their transaction
                version = (await txn.one("PRAGMA user_version"))[0]
                for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                    for statement in filter(str.strip, script.split(";")):
                        await txn.run(statement)
                    await txn.run(f"PRAGMA user_version = {number}")
        except BaseException:
            await db.close()
            raise
        return store

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._db.close()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Txn]:
        """One transaction: committed (durably) on normal exit, rolled back on error."""
        async with self._lock:
            try:
                await self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"store unavailable: {exc}") from exc
            try:
                yield _SqliteTxn(self._db)
            except BaseException as exc:
                if self._db.in_transaction:  # SQLite may have rolled back by itself
                    await asyncio.shield(self._db.execute("ROLLBACK"))
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"store unavailable: {exc}") from exc
                raise
            try:
                await asyncio.shield(self._db.execute("COMMIT"))
            except sqlite3.Error as exc:
                await self._db.execute("ROLLBACK")
                raise StoreError(f"commit failed: {exc}") from exc

    async def read(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self._lock, self._db.execute(sql, args) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]


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
