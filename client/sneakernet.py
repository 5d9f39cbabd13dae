"""The USB stick instead of the link: export bundles, import the server's acks.

Rules:

* A bundle holds exactly the signed, sealed request bodies a sync would POST
  (batches, then document chunks), so the server checks them as it checks
  HTTP and nothing on the stick is readable or alterable.
* Exporting changes nothing in the queue: records stay pending until an ack
  (online, or from the stick) says the server holds them. Exporting twice,
  or exporting records that later go online too, is harmless: the server's
  batches are idempotent.
* Exporting streams: each part file is written (temp file, fsync, rename) as
  soon as it is full, so memory holds one part at most, never the whole
  export. A part appears under its final name only whole; if writing fails
  (stick full, read-only, not a folder) the temp file and the parts already
  written by this export are removed and :class:`ExportFailed` is raised.
* Acks are applied by the sync engine's own code (:meth:`SyncEngine.apply_batch_ack`,
  :meth:`SyncEngine.read_doc_state`): only replies signed by the pinned
  server key count, an ack covers exactly the batch whose digest it names,
  and positions only move forward, so an ack imported twice, or one for
  records that went online meanwhile, changes nothing.
* Refusals on the stick (a gap, say) are reported, never applied: the next
  online sync or export finds the server's position again. So is a refusal
  file (a whole bundle refused), once it verifies against the pinned key; one
  that does not is reported as such and otherwise ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from protocol import MEDIA_TYPE, BatchBody, DecodeError, ProtocolError
from protocol.batches import decode_sealed_batch, encode_batch_body
from protocol.bundles import (
    ACKS_SUFFIX,
    BUNDLE_SUFFIX,
    MAX_REFUSAL_BYTES,
    REFUSAL_SUFFIX,
    Refusal,
    bundle_head,
    bundle_item,
    bundle_name,
    decode_acks,
    decode_refusal,
)
from protocol.documents import DocChunk, encode_doc_chunk
from protocol.messages import batch_digest, decode_envelope, encode_envelope
from protocol.sealing import open_reply
from protocol.signing import sign_envelope

from .agent import Agent
from .errors import AgentError, QueueCorrupt, RefusedError
from .files import write_atomic
from .lock import SyncLock
from .sync import SyncEngine
from .transport import Reply

__all__ = ["ExportFailed", "ExportResult", "ExportedFile", "ImportedAcks", "export_bundles",
           "import_acks"]

BATCH_RECORDS = 1_000
BATCH_RAW_BYTES = 1 << 20
CHUNK_BYTES = 1 << 20
PART_BYTES = 32 << 20  # well under protocol.bundles.MAX_BUNDLE_BYTES


_WRITE_REASONS = {errno.ENOSPC: "full", errno.EDQUOT: "full", errno.EFBIG: "full",
                  errno.EACCES: "denied", errno.EPERM: "denied", errno.EROFS: "denied",
                  errno.ENOTDIR: "not_folder", errno.EEXIST: "not_folder",
                  errno.ENOENT: "not_folder"}


class ExportFailed(AgentError):
    """The bundle files could not be written into the folder; nothing of this
    export was left there and the queue is unchanged.

    ``reason`` is ``"full"``, ``"denied"``, ``"not_folder"`` or None (then
    ``detail``, the system's words, is all there is).
    """

    def __init__(self, folder: Path, exc: OSError) -> None:
        super().__init__(f"cannot write bundle files into {folder}: {exc.strerror or exc}")
        self.folder = folder
        self.reason = _WRITE_REASONS.get(exc.errno or 0)
        self.detail = exc.strerror or str(exc)


@dataclass
class ExportedFile:
    name: str
    batches: int = 0
    records: int = 0
    chunks: int = 0
    size: int = 0


@dataclass(frozen=True)
class ExportResult:
    files: tuple[ExportedFile, ...]
    first_seq: int
    last_seq: int
    documents: int
    damaged: QueueCorrupt | None


@dataclass
class ImportedAcks:
    """What one acks file (or refusal file) on the stick said."""

    name: str
    acked_seq: int | None = None
    documents: int = 0
    refusals: list[str] = field(default_factory=list)
    problem: str | None = None  # the file was skipped
    stale_epoch: int | None = None
    bundle_refused: Refusal | None = None  # a verified refusal of a whole bundle

    @property
    def is_refusal_file(self) -> bool:
        return self.name.endswith(REFUSAL_SUFFIX)


def _signed(agent: Agent, kind: str, signed: bytes) -> bytes:
    return encode_envelope(sign_envelope(agent.key, kind, agent.config.agent_id, signed))


class _Parts:
    """Bundle items cut into files of at most about ``part_bytes``; each part
    is written as soon as the next item would not fit, so only the open
    part's items are held."""

    def __init__(self, folder: Path, agent_id: str, stamp: str, part_bytes: int,
                 on_part: Callable[[ExportedFile, int], None] | None = None) -> None:
        self.folder, self.agent_id, self.stamp = folder, agent_id, stamp
        self.part_bytes = part_bytes
        self.on_part = on_part  # (the part written, bytes written so far)
        self.written = 0
        self.files: list[ExportedFile] = []
        self._items: list[bytes] = []  # the open part's encoded items

    async def add(self, path: str, body: bytes) -> ExportedFile:
        if self._items and self.files[-1].size + len(body) > self.part_bytes:
            await self.flush()
        if not self._items:
            self.files.append(ExportedFile(bundle_name(self.agent_id, self.stamp,
                                                       len(self.files) + 1)))
        part = self.files[-1]
        self._items.append(bundle_item(path, body))
        part.size += len(body)
        return part

    async def flush(self) -> None:
        """Write the open part, if any, under its final name."""
        if not self._items:
            return
        items, self._items = self._items, []
        head = bundle_head(self.agent_id, len(items))
        write = asyncio.ensure_future(asyncio.to_thread(
            write_atomic, self.folder / self.files[-1].name, [head, *items]))
        try:
            await asyncio.shield(write)
        except OSError as exc:
            raise ExportFailed(self.folder, exc) from exc
        except asyncio.CancelledError:
            # Interrupted (Ctrl-C): let the thread finish its file, so that
            # ``discard`` removes it instead of racing its rename.
            with contextlib.suppress(Exception):
                await write
            raise
        self.written += len(head) + sum(map(len, items))
        if self.on_part is not None:
            self.on_part(self.files[-1], self.written)

    def discard(self) -> None:
        """Remove the parts this export already wrote (it failed half way)."""
        for part in self.files:
            with contextlib.suppress(OSError):
                (self.folder / part.name).unlink(missing_ok=True)


async def _add_batches(agent: Agent, parts: _Parts) -> tuple[int, int, QueueCorrupt | None]:
    pending = await agent.queue.read_pending(max_records=1 << 40, max_bytes=1 << 60)
    seal = agent.config.seal_to()
    start = 0
    records = pending.records
    while start < len(records):
        end, raw = start, 0
        while end < len(records) and end - start < BATCH_RECORDS and (
                end == start or raw + len(records[end]) <= BATCH_RAW_BYTES):
            raw += len(records[end])
            end += 1
        # No clock and no heartbeat: by the time the stick arrives they are stale,
        # and the server would read a week's delay as clock skew.
        body = BatchBody(pending.epoch, pending.first_seq + start, records[start:end])
        signed = await asyncio.to_thread(encode_batch_body, body, seal, level=19)
        part = await parts.add("/v1/batches", _signed(agent, "batch", signed))
        part.batches += 1
        part.records += end - start
        start = end
    return pending.first_seq, pending.first_seq + len(records) - 1, pending.damaged


async def _add_documents(agent: Agent, parts: _Parts) -> int:
    docs = await agent.queue.incomplete_documents()
    seal = agent.config.seal_to()
    for sha256, size, offset in docs:
        while True:
            data = await asyncio.to_thread(agent.documents.read, sha256, size, offset,
                                           CHUNK_BYTES)
            signed = encode_doc_chunk(DocChunk(sha256, size, offset, data), seal)
            part = await parts.add("/v1/documents/chunk", _signed(agent, "doc_chunk", signed))
            part.chunks += 1
            offset += len(data)
            if offset >= size:
                break
    return len(docs)


async def export_bundles(agent: Agent, folder: Path, *, part_bytes: int = PART_BYTES,
                         on_part: Callable[[ExportedFile, int], None] | None = None
                         ) -> ExportResult:
    """Write every unacknowledged record and document chunk into bundle files
    in ``folder`` (created if missing), each part as soon as it is full.

    Args:
        part_bytes: start a new part file before its items pass this size
            (an item is never split; the server takes files up to
            ``protocol.bundles.MAX_BUNDLE_BYTES``).
        on_part: told each part as it lands, with the bytes written so far
            (progress for a long export onto a slow stick).

    Raises:
        ExportFailed: ``folder`` cannot be created or written; no file of
            this export is left in it.
        DocumentDamaged: a stored document cannot be read.
        LockBusy: a sync is running and did not finish in time.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportFailed(folder, exc) from exc
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")  # a file name only, never an order
    parts = _Parts(folder, agent.config.agent_id, stamp, part_bytes, on_part)
    try:
        # Writes happen under the lock too: a sync running meanwhile could
        # erase a completed document that this export is still reading.
        async with SyncLock(agent.paths.sync_lock, wait_s=60):
            first, last, damaged = await _add_batches(agent, parts)
            documents = await _add_documents(agent, parts)
            await parts.flush()
    except BaseException:
        parts.discard()
        raise
    return ExportResult(tuple(parts.files), first, last, documents, damaged)


async def _apply_batch(engine: SyncEngine, agent: Agent, item_status: int, reply: bytes,
                       request: bytes | None, result: ImportedAcks) -> None:
    if request is None:
        raise DecodeError("a batch ack without its request")
    env = decode_envelope(request)
    sealed = decode_sealed_batch(env.signed)
    if env.agent_id != agent.config.agent_id or sealed.agent_id != env.agent_id:
        raise DecodeError("an ack for another agent's batch")
    before = await agent.queue.status()
    if sealed.epoch != before.epoch:
        result.stale_epoch = sealed.epoch
        return
    answer = Reply(item_status, MEDIA_TYPE, reply, None)
    if item_status != 200:
        result.refusals.append(str(engine.refusal(answer)))
        return
    # The signed ack names the batch's digest: it covers exactly these records.
    held = await engine.apply_batch_ack(answer, sealed.epoch, sealed.first_seq, sealed.count,
                                        batch_digest(env), before)
    result.acked_seq = max(result.acked_seq or 0, held)


def _sha256_of(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return digest.digest()


def _read_refusal(agent: Agent, path: Path) -> ImportedAcks | None:
    """A refusal file for this agent, verified against the pinned server key
    (``problem`` says why it was not believed); None for another agent's."""
    result = ImportedAcks(path.name)
    try:
        if path.stat().st_size > MAX_REFUSAL_BYTES:
            raise DecodeError("too large for a refusal")
        data = path.read_bytes()
        with contextlib.suppress(ProtocolError):  # unverified: only to skip other PCs' files
            if decode_refusal(decode_envelope(data).signed).agent_id != agent.config.agent_id:
                return None
        refusal = decode_refusal(open_reply(data, agent.config.server_key_bytes))
        if refusal.agent_id != agent.config.agent_id:
            return None
        bundle = path.with_name(path.name.removesuffix(REFUSAL_SUFFIX) + BUNDLE_SUFFIX)
        if bundle.exists() and _sha256_of(bundle) != refusal.bundle:
            raise DecodeError("it answers another bundle than the one beside it")
        result.bundle_refused = refusal
    except ProtocolError as exc:
        result.problem = str(exc)
    except OSError as exc:
        result.problem = exc.strerror or str(exc)
    return result


async def _apply_file(engine: SyncEngine, agent: Agent, path: Path) -> ImportedAcks | None:
    if path.name.endswith(REFUSAL_SUFFIX):
        return await asyncio.to_thread(_read_refusal, agent, path)  # nothing to apply
    result = ImportedAcks(path.name)
    try:
        acks = decode_acks(await asyncio.to_thread(path.read_bytes))
        if acks.agent_id != agent.config.agent_id:
            return None  # another PC's acks on a shared stick
        for item in acks.items:
            if item.path == "/v1/batches":
                await _apply_batch(engine, agent, item.status, item.reply, item.request, result)
                continue
            try:
                state = engine.read_doc_state(Reply(item.status, MEDIA_TYPE, item.reply, None))
            except RefusedError as exc:
                result.refusals.append(str(exc))
                continue
            # Only "complete" is taken from a stick: it is final, so applying it
            # late or twice changes nothing; a partial offset may be stale.
            if state.complete:
                await agent.queue.set_document_state(state.sha256, state.size, True)
                result.documents += 1
    except (ProtocolError, AgentError) as exc:
        result.problem = str(exc)
    return result


async def import_acks(agent: Agent, folder: Path) -> list[ImportedAcks]:
    """Verify and apply every acks file for this agent in ``folder``, in name
    order, and read its refusal files (which change nothing).

    Raises:
        LockBusy: a sync is running and did not finish in time.
    """
    files = sorted(p for p in folder.iterdir()
                   if p.name.endswith((ACKS_SUFFIX, REFUSAL_SUFFIX)) and p.is_file())
    transport = agent.transport()  # never used: the engine only verifies and applies here
    results = []
    try:
        engine = agent.engine(transport)
        async with SyncLock(agent.paths.sync_lock, wait_s=60):
            for path in files:
                result = await _apply_file(engine, agent, path)
                if result is not None:
                    results.append(result)
    finally:
        await transport.close()
    return results
