"""Document (scanned attachment) transfer messages: resumable, content-addressed.

A document is named by the SHA-256 of its bytes and uploaded in chunks, in
the spirit of tus: the server says how many bytes it holds (``offset``); a
chunk must start exactly there; bytes the server acknowledged are never sent
again; the server checks the whole-file hash before it marks the document
complete. Both requests travel in signed envelopes (kinds ``doc_status`` and
``doc_chunk``); the answer to either is a ``doc_state``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .batches import SealTo
from .codec import pack
from .errors import DecodeError, LocalProtocolError
from .messages import PROTOCOL_VERSION, Limits, _closed, _get, _map, _seq
from .sealing import chunk_info, open_payload, seal_payload

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "DocChunk",
    "DocState",
    "DocStatusRequest",
    "SealedChunk",
    "decode_doc_chunk",
    "decode_doc_state",
    "decode_doc_status",
    "encode_doc_chunk",
    "encode_doc_state",
    "encode_doc_status",
    "open_doc_chunk",
]

MAX_DOCUMENT_BYTES = 200 * 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)


def _sha(obj: dict[str, Any]) -> str:
    value = _get(obj, "sha256", str)
    if not _SHA256.fullmatch(value):
        raise DecodeError("sha256 must be 64 lowercase hex digits")
    return str(value)


def _size(obj: dict[str, Any]) -> int:
    size = _seq(obj, "size")
    if size > MAX_DOCUMENT_BYTES:
        raise DecodeError("document larger than the limit")
    return size


@dataclass(frozen=True)
class DocStatusRequest:
    """Ask how much of document ``sha256`` (of ``size`` bytes) the server holds."""

    sha256: str
    size: int


def encode_doc_status(req: DocStatusRequest) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "kind": "doc_status", "sha256": req.sha256,
                 "size": req.size})


def decode_doc_status(data: bytes, limits: Limits) -> DocStatusRequest:
    obj = _map(data, "doc_status", 1024)
    _closed(obj, {"sha256", "size"})
    return DocStatusRequest(_sha(obj), _size(obj))


@dataclass(frozen=True)
class DocChunk:
    """Bytes ``offset .. offset + len(data)`` of document ``sha256``."""

    sha256: str
    size: int
    offset: int
    data: bytes

    def __repr__(self) -> str:  # never print document contents
        return f"DocChunk({self.sha256[:12]}…, offset={self.offset}, {len(self.data)} bytes)"


@dataclass(frozen=True)
class SealedChunk:
    """A decoded chunk before opening; ``sealed`` is HPKE of its bytes."""

    sha256: str
    size: int
    offset: int
    key_id: int
    sealed: bytes


def encode_doc_chunk(chunk: DocChunk, seal: SealTo) -> bytes:
    """Seal the chunk's bytes to the server (scans are personal data too)."""
    if not chunk.data or chunk.offset + len(chunk.data) > chunk.size:
        raise LocalProtocolError("a chunk must be non-empty and inside the document")
    if not 0 <= seal.key_id < 2**63:
        raise LocalProtocolError("sealing key id out of range")
    sealed = seal_payload(chunk.data, seal.public_key,
                          chunk_info(seal.agent_id, chunk.sha256, chunk.size, chunk.offset))
    return pack({"v": PROTOCOL_VERSION, "kind": "doc_chunk", "sha256": chunk.sha256,
                 "size": chunk.size, "offset": chunk.offset, "key_id": seal.key_id,
                 "sealed": sealed})


def decode_doc_chunk(data: bytes, limits: Limits) -> SealedChunk:
    obj = _map(data, "doc_chunk", limits.max_body_bytes)
    _closed(obj, {"sha256", "size", "offset", "key_id", "sealed"})
    return SealedChunk(_sha(obj), _size(obj), _seq(obj, "offset"), _seq(obj, "key_id"),
                       _get(obj, "sealed", bytes))


def open_doc_chunk(chunk: SealedChunk, key: X25519PrivateKey, agent_id: str) -> DocChunk:
    """Open a sealed chunk sent by ``agent_id``.

    Raises:
        DecodeError: not sealed for this key, agent and position, or out of bounds.
    """
    data = open_payload(chunk.sealed, key,
                        chunk_info(agent_id, chunk.sha256, chunk.size, chunk.offset))
    if not data or chunk.offset + len(data) > chunk.size:
        raise DecodeError("chunk is empty or runs past the document's size")
    return DocChunk(chunk.sha256, chunk.size, chunk.offset, data)


@dataclass(frozen=True)
class DocState:
    """What the server holds of a document: ``offset`` bytes; ``complete`` once
    the whole file arrived and its SHA-256 matched."""

    sha256: str
    size: int
    offset: int
    complete: bool


def encode_doc_state(state: DocState) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "kind": "doc_state", "sha256": state.sha256,
                 "size": state.size, "offset": state.offset, "complete": state.complete})


def decode_doc_state(data: bytes, limits: Limits) -> DocState:
    obj = _map(data, "doc_state", 1024)
    _closed(obj, {"sha256", "size", "offset", "complete"})
    state = DocState(_sha(obj), _size(obj), _seq(obj, "offset"), _get(obj, "complete", bool))
    if state.offset > state.size:
        raise DecodeError("offset beyond size")
    return state
