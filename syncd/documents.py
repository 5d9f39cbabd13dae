"""Documents on the server: resumable, content-addressed, verified before use.

Files live in ``<data dir>/documents`` (one folder shared by every process
when several ``syncd`` share a PostgreSQL store): ``<sha256>.part`` while arriving,
``<sha256>`` once complete. The store's ``documents`` table holds the
acknowledged offset; the file is written and fsynced *before* the offset is
committed, and truncated back to the committed offset before each append, so
an acknowledged byte is durable and a torn tail is never counted. A document
becomes complete only when the whole file's SHA-256 matches its name.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections import defaultdict
from pathlib import Path

from protocol import ErrorCode
from protocol.documents import DocChunk, DocState

from .errors import RequestError, StoreError
from .ingest import utc_now
from .store import Store

__all__ = ["DocumentStore", "replace_durably"]

log = logging.getLogger("syncd.documents")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _append(path: Path, offset: int, data: bytes) -> None:
    with open(path, "a+b") as f:
        held = f.seek(0, os.SEEK_END)
        if held < offset:
            # The store says more arrived than this folder holds: another syncd
            # process took those chunks into its own folder. Refuse (retry later)
            # rather than write a file with a hole in it.
            raise StoreError(f"documents folder {path.parent} holds {held} of {offset} "
                             "acknowledged bytes; several syncd processes need one shared "
                             "documents folder")
        f.truncate(offset)
        f.seek(offset)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def replace_durably(part: Path, final: Path) -> None:
    """Rename the written (fsynced) ``part`` to ``final`` and make the rename durable."""
    os.replace(part, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DocumentStore:
    """Document files under ``root``, their state in ``store``."""

    def __init__(self, root: Path, store: Store) -> None:
        self.root = root
        self._store = store
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def path(self, sha256: str) -> Path:
        return self.root / sha256

    async def state(self, sha256: str, size: int) -> DocState:
        """What is held of ``sha256``; registers the document when new.

        Raises:
            RequestError: the same hash was announced with another size.
        """
        async with self._store.write() as txn:
            await txn.lock("document", sha256)
            row = await txn.one("SELECT size, received, complete FROM documents "
                                "WHERE sha256 = ?", sha256)
            if row is None:
                empty = size == 0 and sha256 == _EMPTY_SHA256
                if empty:
                    self.root.mkdir(exist_ok=True)
                    await asyncio.to_thread(self.path(sha256).write_bytes, b"")
                await txn.run("INSERT INTO documents (sha256, size, received, complete, "
                              "updated_at) VALUES (?, ?, 0, ?, ?)", sha256, size, int(empty),
                              utc_now())
                return DocState(sha256, size, 0, empty)
        if row[0] != size:
            raise RequestError(409, ErrorCode.CONFLICT,
                               "this document was announced with another size")
        return DocState(sha256, size, row[1], bool(row[2]))

    async def put_chunk(self, chunk: DocChunk) -> tuple[int, DocState]:
        """Store ``chunk`` if it starts at the held offset; return (HTTP status, state)."""
        async with self._locks[chunk.sha256]:
            state = await self.state(chunk.sha256, chunk.size)
            if state.complete or chunk.offset != state.offset:
                return 409, state
            self.root.mkdir(exist_ok=True)
            part = self.root / f"{chunk.sha256}.part"
            await asyncio.to_thread(_append, part, chunk.offset, chunk.data)
            offset, complete = chunk.offset + len(chunk.data), False
            if offset == chunk.size:
                if await asyncio.to_thread(_hash_file, part) == chunk.sha256:
                    await asyncio.to_thread(replace_durably, part, self.path(chunk.sha256))
                    complete = True
                else:  # a sender lied or bytes were damaged: start this document over
                    log.warning("document %s failed its hash check; discarded", chunk.sha256)
                    part.unlink(missing_ok=True)
                    offset = 0
            async with self._store.write() as txn:
                await txn.run("UPDATE documents SET received = ?, complete = ?, updated_at = ? "
                              "WHERE sha256 = ?", offset, int(complete), utc_now(), chunk.sha256)
            return 200, DocState(chunk.sha256, chunk.size, offset, complete)
