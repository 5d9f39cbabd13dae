"""The sync engine: read unacknowledged records, send a signed batch, apply the ack.

Rules:

* The queue is the source of truth; the server's ack only moves the send
  position forward (or back, on a gap, to resend what the server lacks).
* An ack counts only if it decodes strictly and names this agent, this epoch
  and the very batch sent; anything else (a captive portal's 200 page, say)
  is a transport failure and changes nothing.
* Retries happen at this layer only, with full-jitter exponential backoff
  (tenacity); refusals (4xx verdicts) and damaged records are not retried
  here: :func:`push_until_done` reports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_delay,
    stop_never,
    wait_random_exponential,
)

from protocol import (
    MEDIA_TYPE,
    Ack,
    BatchBody,
    CursorRequest,
    DecodeError,
    ErrorCode,
)
from protocol.messages import (
    batch_digest,
    decode_ack,
    decode_error,
    encode_batch_body,
    encode_cursor_request,
    encode_envelope,
)
from protocol.signing import sign_envelope

from .config import AgentConfig
from .errors import AgentError, RefusedError, SyncError, TransportError
from .lock import SyncLock
from .queue import Queue

__all__ = ["Stopped", "SyncEngine", "SyncLimits", "local_now_iso"]

log = logging.getLogger("client.sync")
VN_TZ = timezone(timedelta(hours=7))


def local_now_iso() -> str:
    """The PC's clock in Vietnam time, as data (never used for ordering)."""
    return datetime.now(VN_TZ).isoformat(timespec="seconds")


class Stopped(Exception):
    """The engine was asked to stop; raised between batches or during a wait."""


@dataclass(frozen=True)
class SyncLimits:
    max_batch_records: int = 500
    max_batch_bytes: int = 512 * 1024
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 60.0


class SyncEngine:
    """Pushes one agent's queue to syncd."""

    def __init__(self, queue: Queue, config: AgentConfig, key: Ed25519PrivateKey,
                 transport: object, *, limits: SyncLimits | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 progress: Callable[[int, int], None] | None = None,
                 lock_path: Path | None = None, stop: asyncio.Event | None = None) -> None:
        self._queue = queue
        self._config = config
        self._key = key
        self._transport = transport
        self.limits = limits or SyncLimits()
        self._sleep = sleep
        self._progress = progress
        self._lock_path = lock_path
        self._stop = stop

    async def pause(self, seconds: float) -> None:
        """Wait ``seconds``, or raise Stopped as soon as a stop is requested."""
        if self._stop is None:
            await self._sleep(seconds)
            return
        if self._stop.is_set():
            raise Stopped
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        if self._stop.is_set():
            raise Stopped

    async def _post(self, path: str, signed: bytes, kind: str) -> tuple[object, bytes]:
        env = sign_envelope(self._key, kind, self._config.agent_id, signed)
        reply = await self._transport.post(path, encode_envelope(env))  # type: ignore[attr-defined]
        return reply, batch_digest(env)

    def _decode_ack(self, reply: object, epoch: int, digest: bytes | None) -> Ack:
        try:
            if reply.content_type != MEDIA_TYPE:  # type: ignore[attr-defined]
                raise DecodeError(f"reply of type {reply.content_type!r}")  # type: ignore[attr-defined]
            ack = decode_ack(reply.body)  # type: ignore[attr-defined]
        except DecodeError as exc:
            raise TransportError(f"the server's reply is not a valid ack ({exc})") from exc
        if ack.agent_id != self._config.agent_id or ack.epoch != epoch or (
                digest is not None and ack.batch != digest):
            raise TransportError("the ack does not match the batch sent")
        return ack

    def _refusal(self, reply: object) -> SyncError:
        status = reply.status  # type: ignore[attr-defined]
        try:
            err = decode_error(reply.body)  # type: ignore[attr-defined]
        except DecodeError:
            return TransportError(f"HTTP {status} without a protocol answer")
        if status == 429 or status >= 500:
            return TransportError(f"HTTP {status}: {err.code}: {err.message}")
        return RefusedError(err.code, err.message)

    async def push_batch(self) -> int:
        """Send one batch of pending records; return how many are newly acked.

        Returns 0 when nothing is pending. Raises SyncError or QueueCorrupt.
        """
        before = await self._queue.status()
        pending = await self._queue.read_pending(max_records=self.limits.max_batch_records,
                                                 max_bytes=self.limits.max_batch_bytes)
        if not pending.records:
            if pending.damaged is not None:
                raise pending.damaged
            return 0
        body = BatchBody(pending.epoch, pending.first_seq, pending.records, local_now_iso())
        reply, digest = await self._post("/v1/batches", encode_batch_body(body), "batch")
        status = reply.status  # type: ignore[attr-defined]
        if status == 409:
            refusal = self._refusal(reply)
            if isinstance(refusal, RefusedError) and refusal.code == ErrorCode.GAP:
                err = decode_error(reply.body)  # type: ignore[attr-defined]
                if err.acked_seq is not None and err.acked_seq < pending.first_seq:
                    log.warning("server holds up to seq %d; resending from there", err.acked_seq)
                    await self._queue.rewind(pending.epoch, err.acked_seq)
                    return 0
            raise refusal
        if status != 200:
            raise self._refusal(reply)
        ack = self._decode_ack(reply, pending.epoch, digest)
        last_sent = pending.first_seq + len(pending.records) - 1
        if ack.acked_seq > last_sent:
            raise RefusedError("server_ahead", "the server holds more records than this queue")
        await self._queue.apply_ack(pending.epoch, ack.acked_seq,
                                    [(v.seq, v.code, v.message) for v in ack.verdicts],
                                    local_now_iso())
        newly = max(0, ack.acked_seq - before.acked_seq)
        if self._progress is not None:
            self._progress(ack.acked_seq, max(before.last_seq, last_sent))
        if pending.damaged is not None and ack.acked_seq >= last_sent:
            raise pending.damaged
        return newly

    async def push_all(self) -> None:
        """Push until nothing is pending (one attempt per batch, no retry)."""
        if self._lock_path is None:
            await self._push_all_unlocked()
            return
        async with SyncLock(self._lock_path, wait_s=30.0):
            await self._push_all_unlocked()

    async def _push_all_unlocked(self) -> None:
        rewinds = 0
        while True:
            if self._stop is not None and self._stop.is_set():
                raise Stopped
            status = await self._queue.status()
            if status.pending <= 0:
                return
            if await self.push_batch() == 0:
                # A gap moved the position back; one resend from there must fit.
                rewinds += 1
                if rewinds > 2:
                    raise TransportError("the server keeps reporting a gap")

    async def cursor(self) -> Ack:
        """Ask the server where this agent's current epoch stands."""
        epoch = await self._queue.epoch()
        signed = encode_cursor_request(CursorRequest(epoch, local_now_iso()))
        reply, _ = await self._post("/v1/cursor", signed, "cursor")
        if reply.status != 200:  # type: ignore[attr-defined]
            raise self._refusal(reply)
        return self._decode_ack(reply, epoch, None)

    async def push_until_done(self, *, timeout_s: float | None = None,
                              on_retry: Callable[[AgentError], Awaitable[None]] | None = None,
                              ) -> None:
        """Push with retries until every record is acknowledged.

        Retries transport failures with full-jitter exponential backoff, for
        ever when ``timeout_s`` is None. Refusals and damage are raised.
        """
        started = time.monotonic()
        deadline = None if timeout_s is None else started + timeout_s

        async def sleep(seconds: float) -> None:
            if deadline is not None:
                seconds = min(seconds, max(0.0, deadline - time.monotonic()))
            await self.pause(seconds)

        async def before_sleep(state: object) -> None:
            exc = state.outcome.exception()  # type: ignore[attr-defined]
            await self._queue.record_error(str(exc))
            if on_retry is not None:
                await on_retry(exc)

        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, AgentError) and e.retriable),
            wait=wait_random_exponential(multiplier=self.limits.backoff_base_s,
                                         max=self.limits.backoff_cap_s),
            stop=stop_never if timeout_s is None else stop_after_delay(timeout_s),
            sleep=sleep, before_sleep=before_sleep, reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self.push_all()
        except AgentError as exc:
            await self._queue.record_error(str(exc))
            raise
        log.info("queue drained in %.1f s", time.monotonic() - started)
