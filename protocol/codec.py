"""Strict msgpack encoding and decoding shared by every message.

Decoding rules (the peer may be hostile):

* exactly one msgpack object, no trailing bytes;
* only nil, bool, int, float, str, bin, array and map; no ext types
  (timestamps included); map keys are strings;
* bounded sizes: total input, every str/bin/array/map, and nesting depth.
"""

from __future__ import annotations

import zlib
from typing import Any

import msgpack

from .errors import DecodeError, ErrorCode

__all__ = ["MAX_DEPTH", "compress", "decompress", "pack", "unpack"]

MAX_DEPTH = 16


def pack(obj: Any) -> bytes:
    """Encode ``obj`` as msgpack (str as str, bytes as bin)."""
    return bytes(msgpack.packb(obj, use_bin_type=True))


def _reject_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack ext type {code} is not allowed")


def _check_plain(obj: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise DecodeError("message nested too deeply")
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise DecodeError("map keys must be strings")
            _check_plain(value, depth + 1)
    elif isinstance(obj, list):
        for item in obj:
            _check_plain(item, depth + 1)
    elif obj is not None and not isinstance(obj, bool | int | float | str | bytes):
        raise DecodeError(f"value of type {type(obj).__name__} is not allowed")


def _pairs(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise DecodeError("duplicate map key")
    return obj


def unpack(data: bytes, *, max_bytes: int, max_items: int = 100_000) -> Any:
    """Decode exactly one msgpack object from ``data``.

    Raises:
        DecodeError: anything but one well-formed, plain, bounded object.
    """
    if len(data) > max_bytes:
        raise DecodeError(f"message of {len(data)} bytes exceeds {max_bytes}",
                          code=ErrorCode.TOO_LARGE)
    try:
        obj = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True, timestamp=0,
            object_pairs_hook=_pairs,
            ext_hook=_reject_ext, max_bin_len=max_bytes, max_str_len=max_bytes,
            max_array_len=max_items, max_map_len=max_items, max_ext_len=0,
        )
    except DecodeError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, RecursionError) as exc:
        raise DecodeError(f"not a valid msgpack message: {exc.__class__.__name__}") from exc
    _check_plain(obj, 0)
    return obj


def compress(data: bytes) -> bytes:
    """Compress a batch payload (zlib, level 9; see SPEC.md for why)."""
    return zlib.compress(data, 9)


def decompress(data: bytes, *, max_bytes: int) -> bytes:
    """Inflate zlib ``data``, refusing more than ``max_bytes`` of output.

    Raises:
        DecodeError: corrupt stream, trailing garbage, or a compression bomb.
    """
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise DecodeError("payload is not a valid zlib stream") from exc
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise DecodeError(f"payload inflates beyond {max_bytes} bytes",
                          code=ErrorCode.TOO_LARGE)
    if not inflater.eof or inflater.unused_data:
        raise DecodeError("payload is truncated or has trailing bytes")
    return out
