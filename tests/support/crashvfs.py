"""A simulated disk that loses power, as a SQLite VFS (APSW), and an aiosqlite
look-alike over APSW so that the real :class:`client.queue.Queue` runs on it.

In the spirit of SQLite's own crash-test VFS (``src/test6.c``). The model:

* Every file lives in memory twice: what the OS shows (every write so far,
  what reads return) and what is durable (its content as of the last
  ``xSync`` of *that* file). Writes and size changes since then are pending.
* A power cut happens at a chosen VFS call (the N-th ``xWrite``,
  ``xTruncate`` or ``xSync`` since the disk was armed); that call itself
  completes before or after the cut, by a coin toss. At the cut, each file's
  on-disk image is built from its durable content, and every sector
  (``sector_size`` bytes, 512 by default) touched since the last sync meets
  one fate, drawn independently per sector from a seeded ``random.Random``:

  - *written*: it holds the newest content, or sometimes an earlier version
    written since the sync (write-back happened between two writes);
  - *lost*: it holds its durable content;
  - *torn*: up to a random byte it holds one version, after it another.

  Since sectors are drawn independently, a later write can survive while an
  earlier one (even of the same transaction) is lost: reordering. A file
  whose size changed since its last sync comes back at its durable size, its
  new size, or (when it grew) a sector boundary in between; space that
  appears without surviving data reads as zeros.
* ``xSync`` makes a file's pending writes and size durable, nothing else.
* After the cut the process runs on (the writes go to the OS view only) until
  the harness stops it; the image, frozen at the cut, is what the next boot
  finds. :meth:`CrashDisk.export` writes it to real files for SQLite to open.

Not modelled (documented simplifications):

* File creation and deletion are durable at once (no directory sync model):
  a WAL that was created is there after the cut, a deleted journal is gone.
* Writes never damage bytes they do not cover: the files report
  ``SQLITE_IOCAP_POWERSAFE_OVERWRITE`` as the default unix VFS does, and the
  torn-sector model only mixes versions of a sector, each of which agrees with
  the others outside the bytes actually written.
* No shared memory: a Python VFS has no ``xShm*`` methods, so connections run
  in ``locking_mode=EXCLUSIVE`` (the WAL index lives in heap memory, no -shm
  file), one connection per disk, and locks are no-ops. The WAL's on-disk
  format, commit, checkpoint and recovery are the same as with shared memory.
* Media errors, bit rot, lying fsync, and file-system metadata journaling.
"""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import apsw

__all__ = [
    "ApswConnection",
    "CrashDisk",
    "CrashVFS",
    "Fates",
    "SimFile",
    "connector",
]

_PSOW = int(apsw.mapping_device_characteristics["SQLITE_IOCAP_POWERSAFE_OVERWRITE"])
_OPEN_CREATE = int(apsw.mapping_open_flags["SQLITE_OPEN_CREATE"])
_OPEN_DELETEONCLOSE = int(apsw.mapping_open_flags["SQLITE_OPEN_DELETEONCLOSE"])


@dataclass(frozen=True)
class Fates:
    """Relative weights of what happens to one unsynced sector at a cut."""

    written: float = 1.0
    lost: float = 1.0
    torn: float = 1.0

    def draw(self, rng: random.Random) -> str:
        return rng.choices(("written", "lost", "torn"),
                           (self.written, self.lost, self.torn))[0]


class SimFile:
    """One file's content: what the OS shows (``data``), what is durable
    (``durable``) and, per sector touched since the last sync, every version
    it has held since (``versions``)."""

    def __init__(self, content: bytes = b"", sector_size: int = 512) -> None:
        self.data = bytearray(content)
        self.durable = bytes(content)
        self.sector_size = sector_size
        self.versions: dict[int, list[bytes]] = {}

    @property
    def pending(self) -> bool:
        return bool(self.versions) or len(self.data) != len(self.durable)

    def _note(self, start: int, end: int) -> None:
        """Bytes ``[start, end)`` changed: keep each touched sector's new version."""
        size = self.sector_size
        for sector in range(start // size, (end + size - 1) // size):
            self.versions.setdefault(sector, []).append(
                bytes(self.data[sector * size:(sector + 1) * size]))

    def read(self, amount: int, offset: int) -> bytes:
        return bytes(self.data[offset:offset + amount])

    def write(self, data: bytes, offset: int) -> None:
        start = min(offset, len(self.data))  # a gap before offset becomes zeros
        if offset > len(self.data):
            self.data.extend(bytes(offset - len(self.data)))
        self.data[offset:offset + len(data)] = data
        self._note(start, offset + len(data))

    def truncate(self, size: int) -> None:
        old = len(self.data)
        if size < old:
            del self.data[size:]
        else:
            self.data.extend(bytes(size - old))
        if size != old:
            self._note(min(size, old), max(size, old))

    def sync(self) -> None:
        self.durable = bytes(self.data)
        self.versions.clear()

    def crash_image(self, rng: random.Random, fates: Fates,
                    stats: Counter[str] | None = None) -> bytes:
        """What this file holds after a power cut now (see the module docstring)."""
        stats = Counter() if stats is None else stats
        size = self.sector_size
        old, new = len(self.durable), len(self.data)
        length = new
        if old != new:
            low, high = sorted((old, new))
            between = range((low // size + 1) * size, high, size)
            choices = [old, new] + ([rng.choice(between)] if new > old and between else [])
            length = rng.choice(choices)
            stats["size kept" if length == new else "size lost"] += 1
        image = bytearray(self.durable[:length].ljust(length, b"\0"))
        for sector in sorted(self.versions):
            start = sector * size
            if start >= length:
                stats["sectors lost"] += 1
                continue
            chain = [v.ljust(size, b"\0")
                     for v in [self.durable[start:start + size], *self.versions[sector]]]
            fate = fates.draw(rng)
            stats[f"sectors {fate}"] += 1
            if fate == "lost":
                content = chain[0]
            elif fate == "written":
                content = chain[-1] if rng.random() < 0.75 else rng.choice(chain[1:])
            else:
                first, second = rng.sample(range(len(chain)), 2)
                cut = rng.randrange(1, size)
                content = chain[first][:cut] + chain[second][cut:]
            end = min(start + size, length)
            image[start:end] = content[:end - start]
        return bytes(image)


class CrashDisk:
    """Files by name, a power-cut trigger, and the image the cut left.

    Args:
        files: initial durable content by file name (e.g. a previous image).
        seed: seeds every random choice the disk makes.
        sector_size: the unit of loss, tearing and reordering.
        fates: weights of the fates of one unsynced sector.
    """

    def __init__(self, files: Mapping[str, bytes] | None = None, *, seed: int,
                 sector_size: int = 512, fates: Fates | None = None) -> None:
        self.sector_size = sector_size
        self.fates = fates or Fates()
        self.rng = random.Random(seed)
        self.files = {name: SimFile(content, sector_size)
                      for name, content in (files or {}).items()}
        self.ops = 0  # xWrite, xTruncate and xSync calls so far
        self.cut_at: int | None = None
        self.image: dict[str, bytes] | None = None
        self.stats: Counter[str] = Counter()

    @property
    def cut(self) -> bool:
        return self.image is not None

    def arm(self, after_ops: int) -> None:
        """Cut the power during the ``after_ops``-th write/truncate/sync from now."""
        assert after_ops >= 1
        self.cut_at = self.ops + after_ops

    def operate(self, apply: Callable[[], None], what: str) -> None:
        """Run one write, truncate or sync (``what``, for the figures); the cut may
        fall just before or just after it."""
        self.ops += 1
        if self.image is None and self.ops == self.cut_at:
            after = self.rng.random() < 0.5
            self.stats[f"cut {'after' if after else 'before'} {what}"] += 1
            if after:
                apply()
                self.power_cut()
                return
            self.power_cut()
        apply()

    def power_cut(self) -> dict[str, bytes]:
        """Freeze (once) and return what the disk holds if the power goes now."""
        if self.image is None:
            self.image = {name: file.crash_image(self.rng, self.fates, self.stats)
                          for name, file in sorted(self.files.items())}
        return self.image

    def pending(self) -> list[str]:
        """Files with writes or size changes not yet synced."""
        return [name for name, file in sorted(self.files.items()) if file.pending]

    def export(self, directory: Path) -> list[Path]:
        """Write the image as real files in ``directory`` (by base name)."""
        assert self.image is not None, "no power cut yet"
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, content in self.image.items():
            path = directory / Path(name).name
            path.write_bytes(content)
            paths.append(path)
        return paths


def _kind(path: str) -> str:
    """``db``, ``wal``, ``journal``...: the part of the name after the database's."""
    name = Path(path).name
    return name.rpartition("-")[2] if "-" in name else "db"


class _File:
    """The VFS file object: every call goes to a :class:`SimFile`."""

    def __init__(self, disk: CrashDisk, file: SimFile, name: str) -> None:
        self._disk = disk
        self._file = file
        self._name = name

    def xRead(self, amount: int, offset: int) -> bytes:  # short reads are zero-filled
        return self._file.read(amount, offset)

    def xWrite(self, data: bytes, offset: int) -> None:
        self._disk.operate(lambda: self._file.write(bytes(data), offset), f"xWrite {self._name}")

    def xTruncate(self, newsize: int) -> None:
        self._disk.operate(lambda: self._file.truncate(newsize), f"xTruncate {self._name}")

    def xSync(self, flags: int) -> None:
        self._disk.operate(self._file.sync, f"xSync {self._name}")

    def xFileSize(self) -> int:
        return len(self._file.data)

    def xLock(self, level: int) -> None:
        pass

    def xUnlock(self, level: int) -> None:
        pass

    def xCheckReservedLock(self) -> bool:
        return False

    def xFileControl(self, op: int, ptr: int) -> bool:
        return False  # not handled: SQLite's defaults apply

    def xSectorSize(self) -> int:
        return self._disk.sector_size

    def xDeviceCharacteristics(self) -> int:
        return _PSOW

    def xClose(self) -> None:
        pass


class CrashVFS(apsw.VFS):
    """A registered VFS over ``disk``; use as a context manager to unregister."""

    _names = itertools.count(1)

    def __init__(self, disk: CrashDisk) -> None:
        self.disk = disk
        self.vfs_name = f"crashvfs-{next(self._names)}"
        super().__init__(self.vfs_name, base="")  # time, randomness, sleep: the default's

    def __enter__(self) -> CrashVFS:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.unregister()

    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> Any:
        # A plain object with the xMethods will do: APSW calls them by name.
        flags[1] = flags[0]
        if name is None or flags[0] & _OPEN_DELETEONCLOSE:  # temporary: not on the disk
            return _File(self.disk, SimFile(sector_size=self.disk.sector_size), "temporary")
        path = name.filename() if isinstance(name, apsw.URIFilename) else name
        if path not in self.disk.files:
            if not flags[0] & _OPEN_CREATE:
                raise apsw.CantOpenError(f"no such file: {path}")
            self.disk.files[path] = SimFile(sector_size=self.disk.sector_size)
        return _File(self.disk, self.disk.files[path], _kind(path))

    def xAccess(self, pathname: str, flags: int) -> bool:
        return pathname in self.disk.files

    def xDelete(self, filename: str, syncdir: bool) -> None:
        self.disk.files.pop(filename, None)

    def xFullPathname(self, name: str) -> str:
        return name


# --------------------------------------------------------------------------- aiosqlite look-alike

_SYNCHRONOUS = re.compile(r"\s*PRAGMA\s+synchronous\s*=\s*(\w+)\s*", re.IGNORECASE)
_DML = ("INSERT", "UPDATE", "DELETE", "REPLACE")


class Cursor:
    """The finished result of one statement, read like an aiosqlite cursor."""

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int, lastrowid: int) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    async def fetchone(self) -> tuple[Any, ...] | None:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    async def fetchmany(self, size: int = 1) -> list[tuple[Any, ...]]:
        rows = self._rows[self._next:self._next + size]
        self._next += len(rows)
        return rows

    async def fetchall(self) -> list[tuple[Any, ...]]:
        rows = self._rows[self._next:]
        self._next = len(self._rows)
        return rows

    def __aiter__(self) -> Cursor:
        return self

    async def __anext__(self) -> tuple[Any, ...]:
        row = await self.fetchone()
        if row is None:
            raise StopAsyncIteration
        return row

    async def close(self) -> None:
        self._rows, self._next = [], 0

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _Statement:
    """What ``execute`` returns: awaitable, or an async context manager, as in aiosqlite."""

    def __init__(self, run: Callable[[], Cursor]) -> None:
        self._run = run
        self._cursor: Cursor | None = None

    async def _result(self) -> Cursor:
        return self._run()

    def __await__(self) -> Generator[Any, None, Cursor]:
        return self._result().__await__()

    async def __aenter__(self) -> Cursor:
        self._cursor = self._run()
        return self._cursor

    async def __aexit__(self, *exc: object) -> None:
        if self._cursor is not None:
            await self._cursor.close()


class ApswConnection:
    """The part of ``aiosqlite.Connection`` the queue uses, on an APSW connection
    (run synchronously: the event loop waits for each statement).

    Every statement's rows are read at once. ``rowcount`` is the number of rows
    changed for INSERT/UPDATE/DELETE/REPLACE, -1 otherwise, as in ``sqlite3``.
    Errors are APSW's exception types, not ``sqlite3``'s.

    Args:
        db: the APSW connection; closed by :meth:`close`.
        synchronous: if given, every ``PRAGMA synchronous = X`` runs with this
            value instead (the negative control). The values asked for are in
            ``synchronous_requested``.
    """

    def __init__(self, db: apsw.Connection, *, synchronous: str | None = None) -> None:
        self.raw = db
        self.synchronous = synchronous
        self.synchronous_requested: list[str] = []

    def _rewrite(self, sql: str) -> str:
        match = _SYNCHRONOUS.fullmatch(sql)
        if match:
            self.synchronous_requested.append(match.group(1).upper())
            if self.synchronous is not None:
                return f"PRAGMA synchronous = {self.synchronous}"
        return sql

    def _run(self, sql: str, parameters: Iterable[Sequence[Any]] | Sequence[Any],
             many: bool) -> Cursor:
        sql = self._rewrite(sql)
        before = self.raw.total_changes()
        cursor = self.raw.cursor()
        try:
            if many:
                rows = list(cursor.executemany(sql, list(parameters)))
            else:
                rows = list(cursor.execute(sql, tuple(parameters)))
        finally:
            cursor.close()
        changed = self.raw.total_changes() - before
        dml = sql.lstrip().upper().startswith(_DML)
        return Cursor(rows, changed if dml else -1, self.raw.last_insert_rowid())

    @property
    def in_transaction(self) -> bool:
        return bool(self.raw.in_transaction)

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> _Statement:
        return _Statement(lambda: self._run(sql, parameters, many=False))

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> _Statement:
        return _Statement(lambda: self._run(sql, parameters, many=True))

    async def execute_fetchall(self, sql: str,
                               parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await (await self.execute(sql, parameters)).fetchall()

    async def close(self) -> None:
        self.raw.close()


def connector(vfs: CrashVFS, *, synchronous: str | None = None,
              wal_autocheckpoint: int | None = None
              ) -> Callable[[Path], Awaitable[ApswConnection]]:
    """A ``connect`` for :meth:`Queue.open <client.queue.Queue.open>`: the database
    on ``vfs``, in exclusive locking mode so that WAL needs no shared memory.

    Args:
        synchronous: see :class:`ApswConnection` (None: as the queue asks).
        wal_autocheckpoint: pages; small values make checkpoints and WAL
            restarts (the other durability-critical paths) frequent.
    """
    async def connect(path: Path) -> ApswConnection:
        db = apsw.Connection(str(path), vfs=vfs.vfs_name)
        try:
            db.execute("PRAGMA locking_mode = EXCLUSIVE")
            if wal_autocheckpoint is not None:
                db.execute(f"PRAGMA wal_autocheckpoint = {int(wal_autocheckpoint)}")
        except BaseException:
            db.close()
            raise
        return ApswConnection(db, synchronous=synchronous)

    return connect
