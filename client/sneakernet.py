"""The USB stick instead of the link: export bundles, import the server's acks.

Rules:

* A bundle holds exactly the signed, sealed request bodies a sync would POST
  (batches, then document chunks), so the server checks them as it checks
  HTTP and nothing on the stick is readable or alterable.
* Exporting changes nothing in the queue: records stay pending until an ack
  (online, or from the stick) says the server holds them. Exporting twice,
  or exporting records that later go online too, is harmless: the server's
  batches are idempotent.
* Acks are applied by the sync engine's own code (:meth:`SyncEngine.apply_batch_ack`,
  :meth:`SyncEngine.read_doc_state`): only replies signed by the pinned
  server key count, an ack covers exactly the batch whose digest it names,
  and positions only move forward, so an ack imported twice, or one for
  records that went online meanwhile, changes nothing.
* Refusals on the stick (a gap, say) are reported, never applied: the next
  online sync or export finds the server's position again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from protocol import MEDIA_TYPE, BatchBody, DecodeError, ProtocolError
from protocol.batches import decode_sealed_batch, encode_batch_body
from protocol.bundles import (
    ACKS_SUFFIX,
    Bundle,
    BundleItem,
    bundle_name,
    decode_acks,
    encode_bundle,
)
from protocol.documents import DocChunk, encode_doc_chunk
from protocol.messages import batch_digest, decode_envelope, encode_envelope
from protocol.signing import sign_envelope

from .agent import Agent
from .errors import AgentError, QueueCorrupt, RefusedError
from .files import write_atomic
from .lock import SyncLock
from .sync import SyncEngine
from .transport import Reply

__all__ = ["ExportResult", "ExportedFile", "ImportedAcks", "export_bundles", "import_acks"]

BATCH_RECORDS = 1_000
BATCH_RAW_BYTES = 1 << 20
CHUNK_BYTES = 1 << 20
PART_BYTES = 32 << 20  # well under protocol.bundles.MAX_BUNDLE_BYTES


@dataclass
class ExportedFile:
    name: str
    batches: int = 0
    records: int = 0
    chunks: int = 0
    size: int = 0
    items: list[BundleItem] = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class ExportResult:
    files: tuple[ExportedFile, ...]
    first_seq: int
    last_seq: int
    documents: int
    damaged: QueueCorrupt | None


@dataclass
class ImportedAcks:
    name: str
    acked_seq: int | None = None
    documents: int = 0
    refusals: list[str] = field(default_factory=list)
    problem: str | None = None  # the file was skipped
    stale_epoch: int | None = None


def _signed(agent: Agent, kind: str, signed: bytes) -> bytes:
    return encode_envelope(sign_envelope(agent.key, kind, agent.config.agent_id, signed))


class _Parts:
    """Bundle items cut into files of at most about PART_BYTES."""

    def __init__(self, agent_id: str, stamp: str) -> None:
        self.agent_id, self.stamp = agent_id, stamp
        self.files: list[ExportedFile] = []

    def add(self, path: str, body: bytes) -> ExportedFile:
        if not self.files or self.files[-1].size + len(body) > PART_BYTES:
            self.files.append(ExportedFile(bundle_name(self.agent_id, self.stamp,
                                                       len(self.files) + 1)))
        part = self.files[-1]
        part.items.append(BundleItem(path, body))
        part.size += len(body)
        return part


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
        part = parts.add("/v1/batches", _signed(agent, "batch", signed))
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
            parts.add("/v1/documents/chunk", _signed(agent, "doc_chunk", signed)).chunks += 1
            offset += len(data)
            if offset >= size:
                break
    return len(docs)


async def export_bundles(agent: Agent, folder: Path) -> ExportResult:
    """Write every unacknowledged record and document chunk into bundle files.

    Raises:
        DocumentDamaged: a stored document cannot be read.
        LockBusy: a sync is running and did not finish in time.
    """
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")  # a file name only, never an order
    parts = _Parts(agent.config.agent_id, stamp)
    async with SyncLock(agent.paths.sync_lock, wait_s=60):
        first, last, damaged = await _add_batches(agent, parts)
        documents = await _add_documents(agent, parts)
    for part in parts.files:
        data = encode_bundle(Bundle(agent.config.agent_id, tuple(part.items)))
        await asyncio.to_thread(write_atomic, folder / part.name, data)
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


async def _apply_file(engine: SyncEngine, agent: Agent, path: Path) -> ImportedAcks | None:
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
    """Verify and apply every acks file for this agent in ``folder``, in name order.

    Raises:
        LockBusy: a sync is running and did not finish in time.
    """
    files = sorted(p for p in folder.iterdir() if p.name.endswith(ACKS_SUFFIX) and p.is_file())
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
