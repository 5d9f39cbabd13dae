"""Batch payload compression: zstd with a shipped, versioned dictionary.

Why (measured on realistic dossier batches; SPEC.md §13 has the tables):
with the trained dictionary a lone dossier costs ~60 bytes instead of ~330
with zlib level 9, and at level 19 a backlog in batches of 300 costs ~29
bytes a dossier, close to the information in them, where zlib 9 stays at ~39.
The level is chosen by the sender per batch (slow links earn the CPU of a high
level); the decoder does not care.

Rules:

* The payload is one zstd frame that declares its content size (the decoder
  refuses anything larger than its limit before inflating) and its dictionary
  id (the decoder picks the dictionary by id; 0 means none).
* Every dictionary ever shipped stays in :data:`DICTIONARIES`, so a batch
  written long ago still decodes. New dictionaries get new ids.
"""

from __future__ import annotations

import base64
from functools import cache

import zstandard

from . import zstd_dictionaries
from .errors import DecodeError, ErrorCode

__all__ = ["CURRENT_DICTIONARY_ID", "DICTIONARIES", "compress", "decompress", "level_for_rate"]

#: dictionary id -> dictionary bytes; never remove an entry.
DICTIONARIES: dict[int, bytes] = {
    dict_id: zstandard.ZstdDecompressor().decompress(base64.b85decode(text))
    for dict_id, text in zstd_dictionaries.ENCODED.items()
}
CURRENT_DICTIONARY_ID = max(DICTIONARIES) if DICTIONARIES else 0


@cache
def _dictionary(dict_id: int) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(DICTIONARIES[dict_id])


@cache
def _compressor(level: int, dict_id: int) -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(
        level=level, dict_data=_dictionary(dict_id) if dict_id else None,
        write_content_size=True, write_checksum=False, write_dict_id=True)


def level_for_rate(rate_bytes_per_s: float) -> int:
    """A zstd level whose CPU time stays small beside the airtime it saves."""
    if rate_bytes_per_s < 25_000:
        return 19
    if rate_bytes_per_s < 250_000:
        return 12
    return 6


def compress(data: bytes, *, level: int = 9, dict_id: int | None = None) -> bytes:
    """Compress ``data`` as one frame (with the current dictionary by default)."""
    chosen = CURRENT_DICTIONARY_ID if dict_id is None else dict_id
    return bytes(_compressor(level, chosen).compress(data))


def decompress(data: bytes, *, max_bytes: int) -> bytes:
    """Inflate one frame, refusing more than ``max_bytes`` of output.

    Raises:
        DecodeError: not exactly one well-formed frame with a declared size,
            an unknown dictionary, or (code TOO_LARGE) a declared size beyond
            the limit: a compression bomb is refused before inflating.
    """
    try:
        params = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError as exc:
        raise DecodeError("payload is not a zstd frame") from exc
    size = params.content_size
    if size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR, 0):
        # Size 0 is refused too: a payload always holds a record, and the
        # library skips its checks of what follows an empty frame.
        raise DecodeError("payload frame does not declare a usable size")
    if size > max_bytes:
        raise DecodeError(f"payload inflates to {size} bytes, beyond {max_bytes}",
                          code=ErrorCode.TOO_LARGE)
    if params.dict_id and params.dict_id not in DICTIONARIES:
        raise DecodeError(f"payload uses unknown dictionary {params.dict_id}")
    dctx = zstandard.ZstdDecompressor(
        dict_data=_dictionary(params.dict_id) if params.dict_id else None)
    try:
        out = dctx.decompress(data, max_output_size=max_bytes, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise DecodeError("payload is corrupt, truncated or has trailing bytes") from exc
    if len(out) != size:
        raise DecodeError("payload size does not match its frame header")
    return bytes(out)
