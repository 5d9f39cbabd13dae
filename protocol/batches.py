"""Batches: records of one (agent, epoch), compressed, then sealed to the server.

Byte layout of the signed part of a ``"batch"`` envelope (a msgpack map)::

    v, kind="batch", agent, commune, epoch, first_seq, count,
    codec="zstd", key_id, sealed, agent_clock

``sealed`` is HPKE (see :mod:`protocol.sealing`) of one zstd frame holding the
``count`` records concatenated. Everything the server needs before opening it
is in clear, and all of it is covered by the agent's signature and bound into
the HPKE ``info``; the records themselves are readable only by the server.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .codec import pack, split_concatenated
from .compression import compress, decompress
from .errors import DecodeError, ErrorCode, LocalProtocolError
from .messages import (
    _MAX_SEQ,
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    Heartbeat,
    Limits,
    _closed,
    _get,
    _map,
    _seq,
    heartbeat_from_wire,
    heartbeat_to_wire,
)
from .sealing import batch_info, open_payload, seal_payload

__all__ = ["BatchBody", "SealTo", "SealedBatch", "decode_sealed_batch", "encode_batch_body",
           "open_batch"]


@dataclass(frozen=True)
class BatchBody:
    """Records ``first_seq ..`` of one epoch, each the agent's stored bytes."""

    epoch: int
    first_seq: int
    records: tuple[bytes, ...]
    agent_clock: str | None = None
    heartbeat: Heartbeat | None = None

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.records) - 1


@dataclass(frozen=True)
class SealTo:
    """Who sends and which server key the batch is sealed to."""

    agent_id: str
    commune_code: str
    key_id: int
    public_key: bytes = b""

    def __repr__(self) -> str:
        return f"SealTo({self.agent_id}, {self.commune_code}, key {self.key_id})"


@dataclass(frozen=True)
class SealedBatch:
    """A decoded batch before opening: what it claims, and the sealed payload."""

    agent_id: str
    commune_code: str
    epoch: int
    first_seq: int
    count: int
    key_id: int
    sealed: bytes
    agent_clock: str | None
    heartbeat: Heartbeat | None = None


def encode_batch_body(body: BatchBody, seal: SealTo, *, level: int = 9) -> bytes:
    """Compress, seal and encode a batch (the bytes the agent then signs)."""
    if not body.records or body.first_seq < 1 or body.epoch < 1:
        raise LocalProtocolError("a batch needs at least one record, seq and epoch from 1")
    if body.epoch > _MAX_SEQ or body.last_seq > _MAX_SEQ:
        raise LocalProtocolError("epoch or seq out of range")
    if not 1 <= level <= 22:
        raise LocalProtocolError("zstd level must be between 1 and 22")
    if not 0 <= seal.key_id <= _MAX_SEQ:
        raise LocalProtocolError("sealing key id out of range")
    for record in body.records:
        try:  # each record must be exactly one object, or the server would split differently
            split_concatenated(record, 1, max_bytes=len(record))
        except DecodeError as exc:
            raise LocalProtocolError("a record must be exactly one msgpack object") from exc
    payload = compress(b"".join(body.records), level=level)
    sealed = seal_payload(payload, seal.public_key, batch_info(
        seal.agent_id, body.epoch, body.first_seq, len(body.records)))
    message = {"v": PROTOCOL_VERSION, "kind": "batch", "agent": seal.agent_id,
               "commune": seal.commune_code, "epoch": body.epoch,
               "first_seq": body.first_seq, "count": len(body.records), "codec": "zstd",
               "key_id": seal.key_id, "sealed": sealed, "agent_clock": body.agent_clock}
    if body.heartbeat is not None:
        message["heartbeat"] = heartbeat_to_wire(body.heartbeat)
    return pack(message)


def decode_sealed_batch(data: bytes, limits: Limits = DEFAULT_LIMITS) -> SealedBatch:
    """Decode what a batch claims, without opening it."""
    obj = _map(data, "batch", limits.max_body_bytes)
    _closed(obj, {"agent", "commune", "epoch", "first_seq", "count", "codec", "key_id",
                  "sealed", "agent_clock", "heartbeat"})
    epoch, first_seq = _seq(obj, "epoch", 1), _seq(obj, "first_seq", 1)
    count = _seq(obj, "count", 1)
    if count > limits.max_records or first_seq + count - 1 > _MAX_SEQ:
        raise DecodeError(f"batch of {count} records exceeds the limit", code=ErrorCode.TOO_LARGE)
    if obj.get("codec") != "zstd":
        raise DecodeError(f"unknown codec {obj.get('codec')!r}")
    return SealedBatch(_get(obj, "agent", str), _get(obj, "commune", str), epoch, first_seq,
                       count, _seq(obj, "key_id"), _get(obj, "sealed", bytes),
                       _get(obj, "agent_clock", str, optional=True), heartbeat_from_wire(obj))


def open_batch(batch: SealedBatch, key: X25519PrivateKey,
               limits: Limits = DEFAULT_LIMITS) -> BatchBody:
    """Open, inflate and split a sealed batch.

    Raises:
        DecodeError: not sealed for this key and batch, a bomb, or malformed records.
    """
    payload = open_payload(batch.sealed, key, batch_info(batch.agent_id, batch.epoch,
                                                         batch.first_seq, batch.count))
    inflated = decompress(payload, max_bytes=limits.max_inflated_bytes)
    records = split_concatenated(inflated, batch.count, max_bytes=limits.max_record_bytes)
    return BatchBody(batch.epoch, batch.first_seq, records, batch.agent_clock, batch.heartbeat)
