"""Strict msgpack encoding and decoding shared by every message.

Decoding rules (the peer may be hostile):

* exactly one msgpack object, no trailing bytes;
* only nil, bool, int, float, str, bin, array and map; no ext types
  (timestamps included); map keys are strings;
* bounded sizes: total input, every str/bin/array/map, and nesting depth.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import DecodeError, ErrorCode

__all__ = ["MAX_DEPTH", "pack", "split_concatenated", "unpack"]

MAX_DEPTH = 16


def pack(obj: Any) -> bytes:
    """Encode ``obj`` as msgpack (str as str, bytes as bin)."""
    return bytes(msgpack.packb(obj, use_bin_type=True))


def _reject_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack ext type {code} is not allowed")


_SCALARS = frozenset({type(None), bool, int, float, str, bytes})


def _check_plain(obj: Any, depth: int) -> None:
    """Only plain types below ``obj`` (map keys are checked by :func:`_pairs`),
    nested at most :data:`MAX_DEPTH` deep. Exact types: msgpack builds no subclasses."""
    kind = type(obj)
    if kind is dict:
        values: Any = obj.values()
    elif kind is list:
        values = obj
    elif kind in _SCALARS:
        return
    else:
        raise DecodeError(f"value of type {kind.__name__} is not allowed")
    if depth > MAX_DEPTH or (depth == MAX_DEPTH and values):  # a child would be too deep
        raise DecodeError("message nested too deeply")
    for value in values:
        if type(value) not in _SCALARS:
            _check_plain(value, depth + 1)


def _pairs(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise DecodeError("duplicate map key")
    for key in obj:
        if type(key) is not str:
            raise DecodeError("map keys must be strings")
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


def split_concatenated(data: bytes, count: int, *, max_bytes: int) -> tuple[bytes, ...]:
    """Split ``data`` into exactly ``count`` msgpack objects, returned as their bytes.

    Each object is skipped, not built; its bytes are checked strictly later by
    whoever decodes them (:func:`unpack`).

    Raises:
        DecodeError: fewer or more objects than ``count``, or malformed bytes.
    """
    unpacker = msgpack.Unpacker(None, max_buffer_size=max(len(data), 1), raw=False,
                                strict_map_key=True, ext_hook=_reject_ext,
                                max_bin_len=max_bytes, max_str_len=max_bytes,
                                max_array_len=100_000, max_map_len=100_000, max_ext_len=0)
    unpacker.feed(data)
    parts, start = [], 0
    try:
        for _ in range(count):
            unpacker.skip()
            end = unpacker.tell()
            if end - start > max_bytes:
                raise DecodeError("a record exceeds the size limit", code=ErrorCode.TOO_LARGE)
            parts.append(data[start:end])
            start = end
    except (msgpack.OutOfData, ValueError, TypeError, msgpack.FormatError,
            msgpack.StackError, RecursionError) as exc:
        raise DecodeError("payload does not hold the announced records") from exc
    if start != len(data):
        raise DecodeError("payload has bytes after the announced records")
    return tuple(parts)
