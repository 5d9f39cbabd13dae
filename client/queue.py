"""The agent's durable, encrypted, append-only queue (SQLite through aiosqlite).

Invariants:

* "Saved" means committed here: WAL journal, ``synchronous=FULL``, one
  ``BEGIN IMMEDIATE`` transaction per append call. ``seq`` is assigned inside
  that transaction, contiguous from 1 within an epoch.
* Every record is sealed with ChaCha20-Poly1305 under the queue key; the
  associated data binds agent, epoch, seq and the previous chain value, so a
  record cannot be swapped, reordered or spliced. ``chain`` is a keyed hash
  (HMAC) over the previous chain value, seq and the plaintext's SHA-256: it
  links every record to all before it without revealing content.
* Nothing in the database is plaintext dossier content: the dossier index
  stores an HMAC of the dossier id, the code counters store only numbers;
  central status changes keep the HMAC of their dossier's id and their note
  and operator name sealed (their status word and server time are not content).
* ``acked_seq`` only moves forward, except when the server reports that it
  holds less (a gap), which moves the send position back to resend.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol import derive_dossier_id, pack
from protocol.updates import CentralChange

from .clock import wall_now
from .errors import QueueCorrupt, SetupError

__all__ = ["CentralUpdate", "PendingBatch", "Queue", "QueueStatus", "Rewrite"]

_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
    CREATE TABLE records (
        epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
        nonce BLOB NOT NULL, ciphertext BLOB NOT NULL, chain BLOB NOT NULL,
        PRIMARY KEY (epoch, seq)) WITHOUT ROWID;
    CREATE TABLE sync_state (
        epoch INTEGER PRIMARY KEY, acked_seq INTEGER NOT NULL DEFAULT 0,
        last_success TEXT, last_error TEXT);
    CREATE TABLE verdicts (
        epoch INTEGER NOT NULL, seq INTEGER NOT NULL, code TEXT NOT NULL,
        message TEXT NOT NULL, PRIMARY KEY (epoch, seq)) WITHOUT ROWID;
    CREATE TABLE dossier_index (
        id_mac BLOB PRIMARY KEY, epoch INTEGER NOT NULL, seq INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE code_counters (day TEXT PRIMARY KEY, last INTEGER NOT NULL) WITHOUT ROWID;
    """,
    """
    CREATE TABLE documents (
        sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL,
        sent_offset INTEGER NOT NULL DEFAULT 0, complete INTEGER NOT NULL DEFAULT 0,
        added_seq INTEGER NOT NULL)
    """,
    """
    CREATE TABLE ack_times (
        epoch INTEGER NOT NULL, upto_seq INTEGER NOT NULL, server_time TEXT NOT NULL,
        PRIMARY KEY (epoch, upto_seq)) WITHOUT ROWID
    """,
    """
    ALTER TABLE documents ADD COLUMN erased INTEGER NOT NULL DEFAULT 0
    """,
    # An id the officer was given for a dossier that moved to a new epoch and
    # was re-identified: the dossier now has the derived id of (epoch, seq).
    """
    ALTER TABLE dossier_index ADD COLUMN moved INTEGER NOT NULL DEFAULT 0
    """,
    # When a record was appended, by the PC's clock: data for the heartbeat's
    # "oldest unsent" only, never for ordering or expiry.
    """
    ALTER TABLE records ADD COLUMN queued_at REAL
    """,
    # Statuses set at the province or district (client.updates). ``dossier_id``
    # holds the HMAC of the id (as dossier_index.id_mac); ``note`` and ``by_user``
    # are sealed. ``now_status``: the dossier's status at the server when the
    # page came. ``local_epoch``, ``local_acked_seq``: the queue's acknowledged
    # position when the page was asked for (the server had applied every record
    # up to it), to order the change against this PC's own status changes
    # without a clock. The cursor is meta ``central_after``.
    """
    CREATE TABLE central_updates (
        id INTEGER PRIMARY KEY, dossier_id BLOB NOT NULL, status TEXT NOT NULL,
        note BLOB, by_user BLOB, at TEXT NOT NULL, local_epoch INTEGER NOT NULL,
        local_acked_seq INTEGER NOT NULL, now_status TEXT NOT NULL);
    CREATE INDEX central_updates_dossier ON central_updates (dossier_id, id)
    """,
)

_INSERT_RECORD = ("INSERT INTO records (epoch, seq, nonce, ciphertext, chain, queued_at) "
                  "VALUES (?, ?, ?, ?, ?, ?)")

# Given a record's plaintext, its old (epoch, seq) and its new (epoch, seq),
# returns the plaintext to store there and, for a record that creates a
# dossier, (id it had, id it has now).
Rewrite = Callable[[bytes, int, int, int, int], tuple[bytes, tuple[str, str] | None]]


@dataclass(frozen=True)
class QueueStatus:
    """Where the queue stands, as ``sync-agent status`` reports it."""

    epoch: int
    last_seq: int
    acked_seq: int
    refused: int
    last_success: str | None
    last_error: str | None

    @property
    def pending(self) -> int:
        return self.last_seq - self.acked_seq


@dataclass(frozen=True)
class CentralUpdate:
    """A status set at the province or district, as this queue keeps it.

    ``now`` is the dossier's status at the server when it came;
    ``(local_epoch, local_acked_seq)`` the queue's acknowledged position when it
    was asked for: this PC's status records up to there had reached the server
    (so ``now`` has them in the server's order), the ones after reach it later.
    """

    id: int
    status: str
    note: str | None = field(repr=False)  # dossier content: never in a log line
    by: str | None = field(repr=False)
    at: str
    local_epoch: int
    local_acked_seq: int
    now: str


@dataclass(frozen=True)
class PendingBatch:
    """Unacknowledged records read back and checked, ready to send."""

    epoch: int
    first_seq: int
    records: tuple[bytes, ...]
    damaged: QueueCorrupt | None = None


class _Sealer:
    """Record encryption and chaining under one queue key."""

    def __init__(self, key: bytes, agent_id: str) -> None:
        def derive(label: bytes) -> bytes:
            return HKDF(hashes.SHA256(), 32, None, b"commune-sync queue " + label).derive(key)

        self._aead = ChaCha20Poly1305(derive(b"aead"))
        self._chain_key = derive(b"chain")
        self._index_key = derive(b"index")
        self.agent_id = agent_id

    def genesis(self, epoch: int) -> bytes:
        return self._mac(b"genesis" + pack([self.agent_id, epoch]))

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self._chain_key, data, hashlib.sha256).digest()

    def _aad(self, epoch: int, seq: int, prev: bytes) -> bytes:
        return pack(["commune-sync record", self.agent_id, epoch, seq, prev])

    def seal(self, epoch: int, seq: int, prev: bytes,
             plaintext: bytes) -> tuple[bytes, bytes, bytes]:
        nonce = os.urandom(12)
        ciphertext = self._aead.encrypt(nonce, plaintext, self._aad(epoch, seq, prev))
        chain = self._mac(prev + struct.pack(">Q", seq) + hashlib.sha256(plaintext).digest())
        return nonce, ciphertext, chain

    def open(self, epoch: int, seq: int, prev: bytes, row: tuple[bytes, bytes, bytes]) -> bytes:
        nonce, ciphertext, chain = row
        try:
            plaintext = self._aead.decrypt(nonce, ciphertext, self._aad(epoch, seq, prev))
        except (InvalidTag, ValueError) as exc:
            raise QueueCorrupt(epoch, seq, "does not decrypt (altered, moved or wrong key)") \
                from exc
        expected = self._mac(prev + struct.pack(">Q", seq) + hashlib.sha256(plaintext).digest())
        if not hmac.compare_digest(expected, chain):
            raise QueueCorrupt(epoch, seq, "hash chain broken")
        return plaintext

    def index_mac(self, dossier_id: str) -> bytes:
        return hmac.new(self._index_key, dossier_id.encode(), hashlib.sha256).digest()

    def _field_aad(self, column: str, row_id: int) -> bytes:
        return pack(["commune-sync central", self.agent_id, column, row_id])

    def seal_field(self, column: str, row_id: int, text: str | None) -> bytes | None:
        """``text`` sealed for one column of one row (it opens nowhere else)."""
        if text is None:
            return None
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, text.encode(), self._field_aad(column, row_id))

    def open_field(self, column: str, row_id: int, sealed: bytes | None) -> str | None:
        """What :meth:`seal_field` sealed; None if nothing was, or it does not open
        (the status beside it still counts; a note is never worth refusing a page)."""
        if sealed is None:
            return None
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:],
                                      self._field_aad(column, row_id)).decode()
        except (InvalidTag, ValueError):
            return None


async def _connect(path: Path) -> aiosqlite.Connection:
    return await aiosqlite.connect(path, isolation_level=None)


class Queue:
    """The encrypted queue in ``path``. Use :meth:`open`, then :meth:`close`."""

    def __init__(self, db: aiosqlite.Connection, sealer: _Sealer) -> None:
        self._db = db
        self._sealer = sealer
        self._closed = False
        self.path: Path | None = None

    @classmethod
    async def open(cls, path: Path, key: bytes, agent_id: str, *, create: bool = False,
                   connect: Callable[[Path], Awaitable[Any]] | None = None) -> Queue:
        """Open (or with ``create``, create) the queue database.

        ``connect`` opens the database connection (autocommit, the aiosqlite
        interface); by default aiosqlite on ``path``. Tests pass another to run
        the same queue on a simulated disk.

        Raises:
            SetupError: the database is missing, or belongs to another agent.
        """
        if not create and not path.exists():
            raise SetupError(f"queue database {path.name} is missing")
        db = await (connect or _connect)(path)
        try:
            await db.execute("PRAGMA busy_timeout = 30000")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = FULL")
            await db.execute("PRAGMA secure_delete = ON")  # erased records leave no residue
            queue = cls(db, _Sealer(key, agent_id))
            queue.path = path
            await queue._migrate(agent_id)
        except BaseException:
            await db.close()
            raise
        return queue

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._db.close()

    async def _migrate(self, agent_id: str) -> None:
        async with self._transaction():
            version = (await self._one("PRAGMA user_version"))[0]
            for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    await self._db.execute(statement)
                await self._db.execute(f"PRAGMA user_version = {number}")
            stored = await self._one("SELECT value FROM meta WHERE key = 'agent_id'")
            if stored is None:
                await self._db.execute("INSERT INTO meta VALUES ('agent_id', ?), ('epoch', 1)",
                                       (agent_id,))
                await self._db.execute("INSERT INTO sync_state (epoch) VALUES (1)")
            elif stored[0] != agent_id:
                raise SetupError("this queue belongs to another agent")

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        """One ``BEGIN IMMEDIATE`` transaction, committed if the block returns.

        On an I/O error or a full disk SQLite may already have rolled back by
        itself; the original error is the one raised, not a failed ROLLBACK.
        """
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._db.in_transaction:
                await self._db.execute("ROLLBACK")
            raise
        await self._db.execute("COMMIT")

    async def _one(self, sql: str, args: Iterable[Any] = ()) -> Any:
        async with self._db.execute(sql, tuple(args)) as cursor:
            return await cursor.fetchone()

    async def epoch(self) -> int:
        return int((await self._one("SELECT value FROM meta WHERE key = 'epoch'"))[0])

    async def _tail(self, epoch: int) -> tuple[int, bytes]:
        row = await self._one(
            "SELECT seq, chain FROM records WHERE epoch = ? ORDER BY seq DESC LIMIT 1", (epoch,))
        return (row[0], row[1]) if row else (0, self._sealer.genesis(epoch))

    async def append(
        self, build: Callable[[list[int], int, int], list[tuple[bytes, str | None]]],
        code_days: Iterable[str] = (), documents: Iterable[tuple[str, int]] = (),
    ) -> tuple[int, list[int]]:
        """Append records in one durable transaction.

        Args:
            build: given the code numbers allocated (one per ``code_days``
                entry, from that day's counter), the epoch and the first seq,
                returns the records to append in order, each as
                ``(plaintext, id of the dossier it creates or None)``.
            code_days: one ``yyMMdd`` per official code to allocate.
            documents: ``(sha256, size)`` of documents these records refer to,
                already stored, to upload after the records.

        Returns:
            ``(epoch, seqs)``; when this returns, the records are saved.
        """
        async with self._transaction():
            epoch = await self.epoch()
            numbers = [await self._next_code(day) for day in code_days]
            seq, prev = await self._tail(epoch)
            seqs = []
            for plaintext, new_dossier_id in build(numbers, epoch, seq + 1):
                seq += 1
                nonce, ciphertext, prev = self._sealer.seal(epoch, seq, prev, plaintext)
                await self._db.execute(_INSERT_RECORD, (epoch, seq, nonce, ciphertext, prev,
                                                        wall_now().timestamp()))
                if new_dossier_id is not None:
                    await self._db.execute(
                        "INSERT INTO dossier_index (id_mac, epoch, seq) VALUES (?, ?, ?)",
                        (self._sealer.index_mac(new_dossier_id), epoch, seq))
                seqs.append(seq)
            for sha256, size in documents:
                await self._db.execute(
                    "INSERT INTO documents (sha256, size, added_seq) VALUES (?, ?, ?) "
                    "ON CONFLICT (sha256) DO NOTHING", (sha256, size, seqs[0] if seqs else 0))
        return epoch, seqs

    async def _next_code(self, day: str) -> int:
        row = await self._one(
            "INSERT INTO code_counters VALUES (?, 1) "
            "ON CONFLICT (day) DO UPDATE SET last = last + 1 RETURNING last", (day,))
        return int(row[0])

    async def has_dossier(self, dossier_id: str) -> bool:
        row = await self._one("SELECT 1 FROM dossier_index WHERE id_mac = ?",
                              (self._sealer.index_mac(dossier_id),))
        return row is not None

    async def resolve_dossier(self, dossier_id: str) -> str | None:
        """The id a dossier of this queue has now (``dossier_id`` itself, or
        its new id after a move to a new epoch); None if it is not here."""
        row = await self._one("SELECT epoch, seq, moved FROM dossier_index WHERE id_mac = ?",
                              (self._sealer.index_mac(dossier_id),))
        if row is None:
            return None
        return derive_dossier_id(self._sealer.agent_id, row[0], row[1]) if row[2] else dossier_id

    async def move_to_new_epoch(self, epoch: int, keep_upto: int, rewrite: Rewrite) -> int:
        """Start a new epoch and move the records of ``epoch`` after
        ``keep_upto`` into it, in order, from seq 1; return how many moved.

        For when the server holds records of ``epoch`` that are not this
        queue's (a restored or cloned data directory): the server holds this
        queue's records up to ``keep_upto``; the ones after are only here, and
        their seqs name other records on the server. ``rewrite`` re-identifies
        what they create. One transaction: all moved, or nothing.

        Raises:
            QueueCorrupt: a record to move is damaged (nothing changes).
            SetupError: ``keep_upto`` is below the acknowledged position.
        """
        async with self._transaction():
            moved = 0
            if await self.epoch() == epoch:
                moved = await self._move(epoch, keep_upto, rewrite)
        return moved

    async def _move(self, epoch: int, keep_upto: int, rewrite: Rewrite) -> int:
        acked = (await self._one("SELECT acked_seq FROM sync_state WHERE epoch = ?", (epoch,)))[0]
        if keep_upto < acked:
            raise SetupError(f"the server disowns acknowledged record {keep_upto + 1}")
        new_epoch = 1 + (await self._one(
            "SELECT max(e) FROM (SELECT max(epoch) AS e FROM sync_state "
            "UNION ALL SELECT max(epoch) FROM records)"))[0]
        prev_row = await self._one("SELECT chain FROM records WHERE epoch = ? AND seq = ?",
                                   (epoch, keep_upto))
        prev = prev_row[0] if prev_row else self._sealer.genesis(epoch)
        async with self._db.execute(
            "SELECT seq, nonce, ciphertext, chain, queued_at FROM records "
            "WHERE epoch = ? AND seq > ? ORDER BY seq", (epoch, keep_upto),
        ) as cursor:
            rows = list(await cursor.fetchall())
        new_prev, moved = self._sealer.genesis(new_epoch), 0
        for expected, (seq, nonce, ciphertext, chain, queued_at) in enumerate(
                rows, start=keep_upto + 1):
            if seq != expected:
                raise QueueCorrupt(epoch, expected, "record missing")
            plaintext = self._sealer.open(epoch, seq, prev, (nonce, ciphertext, chain))
            prev, moved = chain, moved + 1
            plaintext, created = rewrite(plaintext, epoch, seq, new_epoch, moved)
            nonce, ciphertext, new_prev = self._sealer.seal(new_epoch, moved, new_prev, plaintext)
            await self._db.execute(_INSERT_RECORD, (new_epoch, moved, nonce, ciphertext,
                                                    new_prev, queued_at))
            if created is not None:
                old_id, new_id = created
                await self._db.execute(
                    "UPDATE dossier_index SET epoch = ?, seq = ?, moved = ? WHERE id_mac = ?",
                    (new_epoch, moved, int(old_id != new_id), self._sealer.index_mac(old_id)))
                if old_id != new_id:
                    await self._db.execute(
                        "INSERT INTO dossier_index VALUES (?, ?, ?, 0)",
                        (self._sealer.index_mac(new_id), new_epoch, moved))
        for table in ("records", "verdicts"):
            await self._db.execute(f"DELETE FROM {table} WHERE epoch = ? AND seq > ?",  # noqa: S608
                                   (epoch, keep_upto))
        await self._db.execute("UPDATE sync_state SET acked_seq = ? WHERE epoch = ?",
                               (keep_upto, epoch))
        await self._db.execute("INSERT INTO sync_state (epoch) VALUES (?)", (new_epoch,))
        await self._db.execute("UPDATE meta SET value = ? WHERE key = 'epoch'", (new_epoch,))
        return moved

    async def status(self) -> QueueStatus:
        epoch = await self.epoch()
        last_seq, _ = await self._tail(epoch)
        acked, success, error = await self._one(
            "SELECT acked_seq, last_success, last_error FROM sync_state WHERE epoch = ?", (epoch,))
        refused = (await self._one("SELECT count(*) FROM verdicts WHERE epoch = ?", (epoch,)))[0]
        return QueueStatus(epoch, last_seq, acked, refused, success, error)

    async def oldest_unsent_s(self) -> int | None:
        """Age of the oldest unacknowledged record by the PC's clock (data only)."""
        epoch = await self.epoch()
        row = await self._one(
            "SELECT min(r.queued_at) FROM records r JOIN sync_state s ON s.epoch = r.epoch "
            "WHERE r.epoch = ? AND r.seq > s.acked_seq", (epoch,))
        if row is None or row[0] is None:
            return None
        return max(0, int(wall_now().timestamp() - row[0]))

    async def read_pending(self, *, max_records: int, max_bytes: int) -> PendingBatch:
        """Read and check unacknowledged records, oldest first.

        A damaged record stops the read: the records before it are returned
        and ``damaged`` names it, so nothing damaged is ever sent.
        """
        epoch = await self.epoch()
        acked = (await self._one("SELECT acked_seq FROM sync_state WHERE epoch = ?", (epoch,)))[0]
        prev_row = await self._one("SELECT chain FROM records WHERE epoch = ? AND seq = ?",
                                   (epoch, acked))
        prev = prev_row[0] if prev_row else self._sealer.genesis(epoch)
        records: list[bytes] = []
        size, expected = 0, acked + 1
        async with self._db.execute(
            "SELECT seq, nonce, ciphertext, chain FROM records WHERE epoch = ? AND seq > ? "
            "ORDER BY seq LIMIT ?", (epoch, acked, max_records),
        ) as cursor:
            async for seq, nonce, ciphertext, chain in cursor:
                try:
                    if seq != expected:
                        raise QueueCorrupt(epoch, expected, "record missing")
                    plaintext = self._sealer.open(epoch, seq, prev, (nonce, ciphertext, chain))
                except QueueCorrupt as exc:
                    return PendingBatch(epoch, acked + 1, tuple(records), exc)
                if records and size + len(plaintext) > max_bytes:
                    break
                records.append(plaintext)
                size, prev, expected = size + len(plaintext), chain, expected + 1
        return PendingBatch(epoch, acked + 1, tuple(records))

    async def _walk(self, epoch: int) -> AsyncIterator[tuple[int, bytes | None]]:
        """Every record of ``epoch`` in order, checked: (seq, plaintext or None if
        erased by retention; an erased record's chain value still links).

        Raises:
            QueueCorrupt: naming the first bad record.
        """
        prev, expected = self._sealer.genesis(epoch), 1
        async with self._db.execute(
            "SELECT seq, nonce, ciphertext, chain FROM records WHERE epoch = ? ORDER BY seq",
            (epoch,),
        ) as cursor:
            async for seq, nonce, ciphertext, chain in cursor:
                if seq != expected:
                    raise QueueCorrupt(epoch, expected, "record missing")
                plaintext = (self._sealer.open(epoch, seq, prev, (nonce, ciphertext, chain))
                             if ciphertext else None)
                yield seq, plaintext
                prev, expected = chain, expected + 1

    async def verify(self) -> int:
        """Check every record of every epoch; return how many were checked.

        Raises:
            QueueCorrupt: naming the first bad record.
        """
        checked = 0
        async with self._db.execute("SELECT DISTINCT epoch FROM records ORDER BY epoch") as cur:
            epochs = [row[0] for row in await cur.fetchall()]
        for epoch in epochs:
            async for _ in self._walk(epoch):
                checked += 1
        return checked

    async def iter_plaintexts(self) -> list[tuple[int, bytes]]:
        """All readable records of the current epoch, decrypted and checked, in order."""
        return [(seq, plaintext) async for seq, plaintext in self._walk(await self.epoch())
                if plaintext is not None]

    async def apply_ack(self, epoch: int, acked_seq: int, verdicts: Iterable[tuple[int, str, str]],
                        when: str, server_time: str | None = None) -> None:
        """Record the server's cumulative position (monotonic) and verdicts;
        ``server_time`` (the server's clock, from the signed ack) dates them
        for retention."""
        async with self._transaction():
            await self._db.execute(
                "UPDATE sync_state SET acked_seq = max(acked_seq, ?), last_success = ?, "
                "last_error = NULL WHERE epoch = ?", (acked_seq, when, epoch))
            if server_time is not None:
                await self._db.execute(
                    "INSERT INTO ack_times VALUES (?, ?, ?) ON CONFLICT (epoch, upto_seq) "
                    "DO NOTHING", (epoch, acked_seq, server_time))
                await self._db.execute(  # the latest server time seen: retention's "now"
                    "INSERT INTO meta VALUES ('server_time', ?) ON CONFLICT (key) "
                    "DO UPDATE SET value = max(value, excluded.value)", (server_time,))
            await self._db.executemany(
                "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?)",
                [(epoch, seq, code, message) for seq, code, message in verdicts])

    async def erase_acknowledged(self, retention_days: float) -> int:
        """Erase the plaintext (ciphertext and nonce) of records acknowledged more
        than ``retention_days`` ago, by the server's clock; return how many.

        Only records the server acknowledged are erased, and their chain values
        stay, so ``verify`` still checks that nothing was removed or spliced.
        """
        rows = await self._db.execute_fetchall(
            "SELECT epoch, upto_seq, server_time FROM ack_times ORDER BY epoch, upto_seq")
        if not rows:
            return 0
        seen = await self._one("SELECT value FROM meta WHERE key = 'server_time'")
        latest = max([datetime.fromisoformat(row[2]) for row in rows]
                     + ([datetime.fromisoformat(seen[0])] if seen else []))
        cutoff = latest - timedelta(days=retention_days)
        limits: dict[int, int] = {}
        for epoch, upto, stamp in rows:
            if datetime.fromisoformat(stamp) <= cutoff:
                limits[epoch] = max(limits.get(epoch, 0), upto)
        erased = 0
        for epoch, upto in limits.items():
            cursor = await self._db.execute(
                "UPDATE records SET ciphertext = X'', nonce = X'' "
                "WHERE epoch = ? AND seq <= ? AND length(ciphertext) > 0", (epoch, upto))
            erased += cursor.rowcount
            await self._db.execute(
                "UPDATE documents SET erased = 1 WHERE complete = 1 AND added_seq <= ?", (upto,))
            # Positions below the one just erased up to will never matter again.
            await self._db.execute("DELETE FROM ack_times WHERE epoch = ? AND upto_seq < ?",
                                   (epoch, upto))
        if erased:  # old page images in the WAL would still hold the ciphertext
            await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return erased

    async def erased_documents(self) -> list[str]:
        """Documents past retention whose encrypted copy may be deleted."""
        rows = await self._db.execute_fetchall("SELECT sha256 FROM documents WHERE erased = 1")
        return [row[0] for row in rows]

    async def rewind(self, epoch: int, server_seq: int) -> None:
        """The server holds less than we thought (a gap): resend after ``server_seq``."""
        await self._db.execute("UPDATE sync_state SET acked_seq = ? WHERE epoch = ?",
                               (server_seq, epoch))

    async def next_document(self) -> tuple[str, int, int] | None:
        """The oldest document not yet complete on the server: (sha256, size, offset)."""
        return await self._one("SELECT sha256, size, sent_offset FROM documents "
                               "WHERE complete = 0 ORDER BY added_seq, sha256 LIMIT 1")

    async def set_document_state(self, sha256: str, offset: int, complete: bool) -> None:
        await self._db.execute("UPDATE documents SET sent_offset = ?, complete = ? "
                               "WHERE sha256 = ?", (offset, int(complete), sha256))

    async def documents_waiting(self) -> tuple[int, int]:
        """(documents not complete on the server, bytes of them not yet acknowledged)."""
        count, left = await self._one("SELECT count(*), coalesce(sum(size - sent_offset), 0) "
                                      "FROM documents WHERE complete = 0")
        return int(count), int(left)

    async def all_documents(self) -> list[tuple[str, int]]:
        async with self._db.execute("SELECT sha256, size FROM documents WHERE erased = 0 "
                                    "ORDER BY sha256") as cur:
            return [(row[0], row[1]) for row in await cur.fetchall()]

    async def incomplete_documents(self) -> list[tuple[str, int, int]]:
        """(sha256, size, acknowledged offset) of every document the server does not
        hold whole yet, oldest first."""
        async with self._db.execute(
                "SELECT sha256, size, sent_offset FROM documents WHERE complete = 0 "
                "ORDER BY added_seq, sha256") as cur:
            return [(row[0], row[1], row[2]) for row in await cur.fetchall()]

    async def central_cursor(self) -> int:
        """The id of the last central status change pulled (0: none yet)."""
        row = await self._one("SELECT value FROM meta WHERE key = 'central_after'")
        return int(row[0]) if row else 0

    async def store_central_updates(self, items: Iterable[CentralChange], after: int,
                                    asked_at: tuple[int, int] | None = None) -> int:
        """Keep central status changes and the cursor past them, in one
        transaction; return how many were new (one held already is left as it is).

        ``asked_at`` is the queue's (epoch, acknowledged seq) read before the
        page was asked for (default: now).
        """
        async with self._transaction():
            if asked_at is None:
                status = await self.status()
                asked_at = (status.epoch, status.acked_seq)
            epoch, acked_seq = asked_at
            new = 0
            for item in items:
                cursor = await self._db.execute(
                    "INSERT INTO central_updates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (id) DO NOTHING",
                    (item.id, self._sealer.index_mac(item.dossier_id), item.status,
                     self._sealer.seal_field("note", item.id, item.note),
                     self._sealer.seal_field("by", item.id, item.by), item.at, epoch,
                     acked_seq, item.now or item.status))
                new += max(0, cursor.rowcount)
            await self._db.execute(
                "INSERT INTO meta VALUES ('central_after', ?) ON CONFLICT (key) "
                "DO UPDATE SET value = max(value, excluded.value)", (after,))
        return new

    async def latest_central(self, dossier_ids: Iterable[str]) -> dict[str, CentralUpdate]:
        """The newest central status change of each of ``dossier_ids`` that has one."""
        by_mac = {self._sealer.index_mac(dossier_id): dossier_id for dossier_id in dossier_ids}
        if not by_mac:
            return {}
        rows = await self._db.execute_fetchall(
            "SELECT c.id, c.dossier_id, c.status, c.note, c.by_user, c.at, c.local_epoch, "
            "c.local_acked_seq, c.now_status FROM central_updates c JOIN (SELECT max(id) AS id "
            "FROM central_updates GROUP BY dossier_id) newest ON newest.id = c.id")
        out = {}
        for row_id, mac, status, note, by, at, epoch, acked_seq, now in rows:
            dossier_id = by_mac.get(bytes(mac))
            if dossier_id is not None:
                out[dossier_id] = CentralUpdate(
                    row_id, status, self._sealer.open_field("note", row_id, note),
                    self._sealer.open_field("by", row_id, by), at, epoch, acked_seq, now)
        return out

    async def wake_token(self) -> int:
        """A counter ``sync-now`` bumps to cut a waiting daemon's backoff short."""
        row = await self._one("SELECT value FROM meta WHERE key = 'wake'")
        return int(row[0]) if row else 0

    async def wake(self) -> None:
        await self._db.execute(
            "INSERT INTO meta VALUES ('wake', 1) "
            "ON CONFLICT (key) DO UPDATE SET value = value + 1")

    async def record_error(self, message: str | None) -> None:
        epoch = await self.epoch()
        await self._db.execute("UPDATE sync_state SET last_error = ? WHERE epoch = ?",
                               (message, epoch))

    async def verdicts(self) -> list[tuple[int, str, str]]:
        epoch = await self.epoch()
        async with self._db.execute(
            "SELECT seq, code, message FROM verdicts WHERE epoch = ? ORDER BY seq", (epoch,)
        ) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]  # type: ignore[misc]
