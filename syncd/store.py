"""The server's SQLite store (the embedded default).

Invariants:

* One write connection; every request's work runs inside one
  ``BEGIN IMMEDIATE`` transaction under an asyncio lock, so a batch is
  applied entirely or not at all, and nothing reads another request's
  uncommitted state. ``synchronous=FULL``: when COMMIT returns, it is on disk.
* Migrations are numbered and applied in the same transaction that records
  them (``PRAGMA user_version``).
* Times stored here are the server's clock (ISO 8601, UTC).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from .errors import StoreError

__all__ = ["AgentRow", "SqliteStore", "StoredRecord", "Txn"]

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
    """Operations inside one write transaction (see :meth:`SqliteStore.write`)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def one(self, sql: str, *args: Any) -> Any:
        async with self._db.execute(sql, args) as cursor:
            return await cursor.fetchone()

    async def run(self, sql: str, *args: Any) -> None:
        await self._db.execute(sql, args)

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

    async def touch_agent(self, agent_id: str, now: str) -> None:
        await self.run("UPDATE agents SET last_seen = ? WHERE agent_id = ?", now, agent_id)


class SqliteStore:
    """The SQLite store in ``path``. Use :meth:`open` and :meth:`close`."""

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
            async with store.write() as txn:
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
                yield Txn(self._db)
            except BaseException:
                await asyncio.shield(self._db.execute("ROLLBACK"))
                raise
            try:
                await asyncio.shield(self._db.execute("COMMIT"))
            except sqlite3.Error as exc:
                await self._db.execute("ROLLBACK")
                raise StoreError(f"commit failed: {exc}") from exc

    async def read(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self._lock, self._db.execute(sql, args) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]

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
            "a.revoked_at FROM agents a LEFT JOIN positions p ON p.agent_id = a.agent_id AND "
            "p.epoch = (SELECT max(epoch) FROM positions WHERE agent_id = a.agent_id) "
            "ORDER BY a.commune_code, a.agent_id")
        return [{"agent_id": r[0], "commune_code": r[1], "name": r[2], "epoch": r[3] or 1,
                 "acked_seq": r[4] or 0, "last_seen": r[5], "revoked": r[6] is not None}
                for r in rows]

    async def alerts(self) -> list[dict[str, Any]]:
        rows = await self.read("SELECT id, kind, agent_id, epoch, seq, detail, created_at "
                               "FROM alerts ORDER BY id")
        keys = ("id", "kind", "agent_id", "epoch", "seq", "detail", "created_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]
