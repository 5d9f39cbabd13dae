"""The sync engine: read unacknowledged records, send a signed batch, apply the ack.

Rules:

* The queue is the source of truth; the server's ack only moves the send
  position forward (or back, on a gap, to resend what the server lacks).
* An ack counts only if it decodes strictly and names this agent, this epoch
  and the very batch sent; anything else (a captive portal's 200 page, say)
  is a transport failure and changes nothing.
* Retries happen at this layer only, with full-jitter exponential backoff
  (tenacity), a server's ``Retry-After`` honoured and capped; refusals (4xx
  verdicts) and damaged records are not retried here:
  :meth:`SyncEngine.push_until_done` reports them.
* Batches follow the link (:mod:`client.pacing`): a few seconds of airtime
  each, request timeouts from size and measured rate.
* A waiting engine probes cheaply; when the link is back, or ``sync-now``
  asks (the queue's wake counter), it sends at once instead of sleeping on.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import random
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_never

from protocol import (
    Ack,
    BatchBody,
    CursorRequest,
    DecodeError,
    ErrorCode,
    Heartbeat,
)
from protocol.batches import encode_batch_body
from protocol.compression import level_for_rate
from protocol.documents import (
    DocChunk,
    DocState,
    DocStatusRequest,
    decode_doc_state,
    encode_doc_chunk,
    encode_doc_status,
)
from protocol.messages import (
    DEFAULT_LIMITS,
    batch_digest,
    decode_ack,
    decode_error,
    encode_cursor_request,
    encode_envelope,
)
from protocol.signing import sign_envelope

from .clock import local_now_iso
from .config import AgentConfig
from .documents import DocumentStore
from .epochs import Reidentify
from .errors import AgentError, RefusedError, SyncError, TransportError
from .lock import SyncLock
from .pacing import LinkPacer, full_jitter
from .queue import Queue, QueueStatus
from .transport import HttpTransport, Reply

__all__ = ["Stopped", "SyncEngine", "SyncLimits", "local_now_iso", "refusal_of"]

log = logging.getLogger("client.sync")


def _agent_version() -> str:
    try:
        return "commune-sync " + importlib.metadata.version("commune-sync")
    except importlib.metadata.PackageNotFoundError:
        return "commune-sync (source)"


_AGENT_VERSION = _agent_version()


def refusal_of(reply: Reply, message: bytes) -> SyncError:
    """The error a non-200 reply stands for, given its opened (verified) message:
    a refusal to report, or a transport failure to retry (408, 429, 5xx, or no
    protocol answer)."""
    try:
        err = decode_error(message)
    except DecodeError:
        return TransportError(f"HTTP {reply.status} without a protocol answer",
                              retry_after_s=reply.retry_after_s)
    if reply.status in (408, 429) or reply.status >= 500:
        return TransportError(f"HTTP {reply.status}: {err.code}: {err.message}",
                              retry_after_s=reply.retry_after_s)
    return RefusedError(err.code, err.message)


class Stopped(Exception):
    """The engine was asked to stop; raised between batches or during a wait."""


@dataclass(frozen=True)
class SyncLimits:
    max_batch_records: int = 5_000
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    probe_interval_s: float = 3.0
    wait_slice_s: float = 0.25


class SyncEngine:
    """Pushes one agent's queue to syncd."""

    def __init__(self, queue: Queue, config: AgentConfig, key: Ed25519PrivateKey,
                 transport: HttpTransport, *, limits: SyncLimits | None = None,
                 pacer: LinkPacer | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 progress: Callable[[int, int, int], None] | None = None,
                 lock_path: Path | None = None, stop: asyncio.Event | None = None,
                 rng: random.Random | None = None,
                 documents: DocumentStore | None = None,
                 save_config: Callable[[AgentConfig], None] | None = None) -> None:
        self._queue = queue
        self._config = config
        self._key = key
        self._transport = transport
        self.limits = limits or SyncLimits()
        self.pacer = pacer or LinkPacer()
        self._sleep = sleep
        self._clock = clock
        self._progress = progress  # (records acknowledged, records in all, bytes sent)
        self.sent_bytes = 0
        self._lock_path = lock_path
        self._stop = stop
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy
        self._documents = documents
        self._save_config = save_config
        self._documents_checked: set[str] = set()
        self._failures = 0  # consecutive failed attempts since the last progress
        self._position_checked = False  # see _check_position
        self._hold_until = 0.0  # no early probe before this (a server's Retry-After)

    def _check_stop(self) -> None:
        if self._stop is not None and self._stop.is_set():
            raise Stopped

    async def pause(self, seconds: float, *, probe: bool = False) -> None:
        """Wait up to ``seconds``; return early when woken or, with ``probe``,
        when a cheap probe finds the server reachable. Raises Stopped on stop."""
        now = self._clock()
        deadline, next_probe = now + seconds, now + self.limits.probe_interval_s
        wake = await self._queue.wake_token()
        while (now := self._clock()) < deadline:
            self._check_stop()
            if await self._queue.wake_token() != wake:
                log.info("woken by sync-now")
                return
            if probe and now >= max(next_probe, self._hold_until):
                if await self._transport.probe(timeout_s=min(10.0, 4 * self.pacer.rtt_s + 2)):
                    log.info("link is back; sending now")
                    return
                next_probe = self._clock() + self.limits.probe_interval_s
            await self._sleep(min(self.limits.wait_slice_s, deadline - now))
        self._check_stop()

    async def _post(self, path: str, signed: bytes, kind: str,
                    raw_bytes: int = 0) -> tuple[Reply, bytes]:
        env = sign_envelope(self._key, kind, self._config.agent_id, signed)
        body = encode_envelope(env)
        started = self._clock()
        try:
            reply = await self._transport.post(path, body,
                                               timeout_s=self.pacer.timeout_s(len(body)))
        except TransportError as exc:
            if exc.timeout:
                self.pacer.on_failure()
            raise
        if reply.status == 200:
            self.pacer.on_success(len(body), self._clock() - started, raw_bytes)
            self._failures = 0  # progress: the next failure backs off from the start
        return reply, batch_digest(env)

    def _open(self, reply: Reply) -> bytes:
        return reply.signed_message(self._config.server_key_bytes)

    def _decode_ack(self, reply: Reply, epoch: int, digest: bytes | None) -> Ack:
        message = self._open(reply)
        try:
            ack = decode_ack(message)
        except DecodeError as exc:
            raise TransportError(f"the server's reply is not a valid ack ({exc})") from exc
        if ack.agent_id != self._config.agent_id or ack.epoch != epoch or (
                digest is not None and ack.batch != digest):
            raise TransportError("the ack does not match the batch sent")
        self._learn_sealing_key(ack)
        return ack

    def _learn_sealing_key(self, ack: Ack) -> None:
        """A signed ack names the server's current sealing key; follow rotations."""
        if ack.sealing_key_id is not None and ack.sealing_key is not None and (
                ack.sealing_key_id > self._config.sealing_key_id):
            self._config = replace(self._config, sealing_key_id=ack.sealing_key_id,
                                   sealing_key=ack.sealing_key.hex())
            if self._save_config is not None:
                self._save_config(self._config)
            log.info("server sealing key %d is now current", ack.sealing_key_id)

    def refusal(self, reply: Reply) -> SyncError:
        """The error a non-200 reply stands for (a refusal only if signed)."""
        return self._refusal(reply)

    def _refusal(self, reply: Reply) -> SyncError:
        try:
            message = self._open(reply)
        except TransportError as exc:
            return exc
        return refusal_of(reply, message)

    async def heartbeat(self, status: QueueStatus | None = None) -> Heartbeat:
        """How this agent is doing, for the operators (no dossier content)."""
        status = status or await self._queue.status()
        free = None
        if self._queue.path is not None:
            with contextlib.suppress(OSError):
                free = shutil.disk_usage(self._queue.path.parent).free
        return Heartbeat(status.pending, await self._queue.oldest_unsent_s(), status.refused,
                         free, _AGENT_VERSION)

    async def push_batch(self) -> int:
        """Send one batch of pending records; return how many are newly acked.

        Returns 0 when nothing is pending. Raises SyncError or QueueCorrupt.
        """
        before = await self._queue.status()
        pending = await self._queue.read_pending(max_records=self.limits.max_batch_records,
                                                 max_bytes=self.pacer.raw_budget_bytes())
        if not pending.records:
            if pending.damaged is not None:
                raise pending.damaged
            return 0
        body = BatchBody(pending.epoch, pending.first_seq, pending.records, local_now_iso(),
                         await self.heartbeat(before))
        raw = sum(len(r) for r in pending.records)
        signed = encode_batch_body(body, self._config.seal_to(),
                                   level=level_for_rate(self.pacer.rate_bps))
        reply, digest = await self._post("/v1/batches", signed, "batch", raw)
        self.sent_bytes += len(signed)
        if reply.status == 409:
            refusal = self._refusal(reply)
            if isinstance(refusal, RefusedError) and refusal.code == ErrorCode.GAP:
                err = decode_error(self._open(reply))
                if err.acked_seq is not None and err.acked_seq < pending.first_seq:
                    log.warning("server holds up to seq %d; resending from there", err.acked_seq)
                    await self._queue.rewind(pending.epoch, err.acked_seq)
                    return 0
            raise refusal
        if reply.status != 200:
            raise self._refusal(reply)
        last_sent = pending.first_seq + len(pending.records) - 1
        held = await self.apply_batch_ack(reply, pending.epoch, pending.first_seq,
                                          len(pending.records), digest, before)
        if pending.damaged is not None and held >= last_sent:
            raise pending.damaged
        return max(0, held - before.acked_seq)

    async def apply_batch_ack(self, reply: Reply, epoch: int, first_seq: int, count: int,
                              digest: bytes, before: QueueStatus) -> int:
        """Verify the signed ack to a batch (``first_seq``, ``count`` records of
        ``epoch``, named by ``digest``) and apply it; return the seq held.

        Shared by HTTP and ``sync-agent import-acks`` (acks carried on a USB
        stick): applying an ack again, or one older than the queue's position,
        changes nothing (the position only moves forward).

        Raises:
            TransportError: not a signed ack of this batch.
        """
        ack = self._decode_ack(reply, epoch, digest)
        last_sent = first_seq + count - 1
        # What the server holds *of this queue*: the records just sent that it
        # did not call a conflict. An ack above them (an earlier, larger batch
        # whose answer was lost) is taken only up to what was compared.
        held, diverged_at = min(ack.acked_seq, last_sent), None
        conflicts = [v.seq for v in ack.verdicts if v.code == ErrorCode.CONFLICT]
        if conflicts:
            held = diverged_at = min(conflicts)
            held -= 1
        elif ack.acked_seq > last_sent >= (await self._queue.status()).last_seq:
            diverged_at = last_sent + 1  # the server holds more than this queue ever had
        await self._queue.apply_ack(epoch, held,
                                    [(v.seq, v.code, v.message) for v in ack.verdicts
                                     if v.seq <= held],
                                    local_now_iso(), ack.server_time)
        if diverged_at is not None:
            await self._new_epoch(epoch, diverged_at - 1)
        if self._progress is not None:
            self._progress(held, max(before.last_seq, last_sent), self.sent_bytes)
        return held

    async def _new_epoch(self, epoch: int, keep_upto: int) -> None:
        """The server holds records of ``epoch`` after ``keep_upto`` that are not
        this queue's (a restored or cloned data directory): move ours after it
        to a new epoch, re-identified, so no seq stands for two records."""
        moved = await self._queue.move_to_new_epoch(epoch, keep_upto,
                                                    Reidentify(self._config.agent_id))
        log.warning("the server holds other records of epoch %d after seq %d (a restored or "
                    "copied data directory?); moved %d records to epoch %d",
                    epoch, keep_upto, moved, await self._queue.epoch())

    async def push_all(self) -> None:
        """Push until nothing is pending (one attempt per batch, no retry)."""
        if self._lock_path is None:
            await self._push_all_unlocked()
            return
        async with SyncLock(self._lock_path, wait_s=30.0):
            await self._push_all_unlocked()

    def _chunk_bytes(self) -> int:
        """About 1.5 s of airtime: an outage wastes at most that much."""
        return int(min(1 << 20, max(4096, self.pacer.rate_bps * 1.5)))

    async def _document_request(self, path: str, kind: str, signed: bytes,
                                sha256: str) -> DocState:
        reply, _ = await self._post(path, signed, kind)
        state = self.read_doc_state(reply)
        if state.sha256 != sha256:
            raise TransportError("the document state does not match the request")
        await self._queue.set_document_state(sha256, state.offset, state.complete)
        return state

    def read_doc_state(self, reply: Reply) -> DocState:
        """The signed document state in a reply to a document request (shared by
        HTTP and ``sync-agent import-acks``).

        Raises:
            RefusedError, TransportError: a refusal, or not a signed state.
        """
        if reply.status not in (200, 409):
            raise self._refusal(reply)
        message = self._open(reply)
        try:
            return decode_doc_state(message, DEFAULT_LIMITS)
        except DecodeError as exc:
            if reply.status == 409:  # not "start at this offset" but a refusal
                raise self._refusal(reply) from exc
            raise TransportError(f"the server's reply is not a document state ({exc})") from exc

    async def push_document_chunk(self) -> bool:
        """Send the next chunk of the oldest incomplete document.

        The first contact for a document in this session asks the server what
        it holds, so nothing it acknowledged is sent again. Returns False when
        no document waits.
        """
        doc = await self._queue.next_document()
        if doc is None or self._documents is None:
            return False
        sha256, size, offset = doc
        if sha256 not in self._documents_checked:
            await self._document_request("/v1/documents/status", "doc_status",
                                         encode_doc_status(DocStatusRequest(sha256, size)),
                                         sha256)
            self._documents_checked.add(sha256)
            return True
        data = await asyncio.to_thread(self._documents.read, sha256, size, offset,
                                       self._chunk_bytes())
        chunk = DocChunk(sha256, size, offset, data)
        try:
            await self._document_request("/v1/documents/chunk", "doc_chunk",
                                         encode_doc_chunk(chunk, self._config.seal_to()),
                                         sha256)
        except TransportError:
            self._documents_checked.discard(sha256)  # ask again: it may have been stored
            raise
        return True

    async def _check_position(self) -> None:
        """Once per engine, with nothing to send: ask where the server stands.

        A server holding more of this epoch than this queue ever had means the
        data directory was restored from an older copy (or copied): move to a
        new epoch before new records reuse those seqs. Best effort: without a
        link, the first batch finds out instead (by a conflict).
        """
        status = await self._queue.status()
        try:
            ack = await self.cursor()
        except TransportError as exc:
            log.info("position check skipped: %s", exc)
            return
        self._position_checked = True
        if ack.epoch == status.epoch and ack.acked_seq > status.last_seq == status.acked_seq:
            await self._new_epoch(status.epoch, status.last_seq)

    async def _push_all_unlocked(self) -> None:
        rewinds = 0
        while True:
            self._check_stop()
            status = await self._queue.status()
            if status.pending <= 0 and not self._position_checked:
                await self._check_position()
                continue
            if status.pending <= 0:
                # Records always go first: one chunk, then look for records again.
                if not await self.push_document_chunk():
                    return
                continue
            if await self.push_batch() == 0 and await self._queue.epoch() == status.epoch:
                # A gap moved the position back; one resend from there must fit.
                rewinds += 1
                if rewinds > 2:
                    raise TransportError("the server keeps reporting a gap")

    async def cursor(self) -> Ack:
        """Ask the server where this agent's current epoch stands."""
        epoch = await self._queue.epoch()
        signed = encode_cursor_request(CursorRequest(epoch, local_now_iso(),
                                                     await self.heartbeat()))
        reply, _ = await self._post("/v1/cursor", signed, "cursor")
        if reply.status != 200:
            raise self._refusal(reply)
        return self._decode_ack(reply, epoch, None)

    def _wait_s(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after_s", None)
        self._failures += 1
        if retry_after is not None:  # the server asked for quiet: no probe cuts it short
            self._hold_until = self._clock() + min(retry_after, self.limits.backoff_cap_s)
        return full_jitter(self._failures, self.limits.backoff_base_s,
                           self.limits.backoff_cap_s, self._rng, retry_after)

    async def push_until_done(self, *, timeout_s: float | None = None,
                              on_retry: Callable[[AgentError], Awaitable[None]] | None = None,
                              ) -> None:
        """Push with retries until every record is acknowledged.

        Retries transport failures for ever (or until ``timeout_s``), waiting
        with full jitter but sending at once when a probe or ``sync-now``
        says so. Refusals and damage are raised.
        """
        started = self._clock()
        deadline = None if timeout_s is None else started + timeout_s

        async def sleep(seconds: float) -> None:
            if deadline is not None:
                seconds = min(seconds, max(0.0, deadline - self._clock()))
            await self.pause(seconds, probe=True)

        async def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            await self._queue.record_error(str(exc))
            log.info("sync attempt %d failed: %s", state.attempt_number, exc)
            if on_retry is not None and isinstance(exc, AgentError):
                await on_retry(exc)

        def stop(state: RetryCallState) -> bool:
            return deadline is not None and self._clock() >= deadline

        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, AgentError) and e.retriable),
            wait=self._wait_s, stop=stop_never if deadline is None else stop,
            sleep=sleep, before_sleep=before_sleep, reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self.push_all()
        except AgentError as exc:
            await self._queue.record_error(str(exc))
            raise
        erased = await self._queue.erase_acknowledged(self._config.retention_days)
        if erased:
            log.info("erased the plaintext of %d acknowledged records past retention", erased)
        if self._documents is not None:
            for sha256 in await self._queue.erased_documents():
                self._documents.path(sha256).unlink(missing_ok=True)
        log.info("queue drained in %.1f s", self._clock() - started)
