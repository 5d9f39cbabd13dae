"""Bundle, acks and refusal files: the sneakernet container (a USB stick instead
of a link).

A **bundle** holds exactly the request bodies an agent would have POSTed
(signed envelopes of ``/v1/batches`` and ``/v1/documents/chunk``), in order.
An **acks** file holds, for one bundle, the server's signed replies to them.
The container itself is neither sealed nor signed: every item inside already
is (the agent's Ed25519 signature and HPKE seal on each request, the
server's identity signature on each reply), so a file that was altered on the
stick is refused item by item, and nothing a container claims is trusted
without the item that proves it (see SPEC.md §16).

Both are one msgpack map (the strict subset of :mod:`protocol.codec`)::

    bundle: {"v": 1, "kind": "bundle", "agent": str, "items": [{"path": str, "body": bin}]}
    acks:   {"v": 1, "kind": "bundle_acks", "agent": str, "bundle": bin(32),
             "items": [{"path": str, "status": int, "reply": bin, "request": bin | nil}]}

``bundle`` is the SHA-256 of the bundle file the acks answer. ``request`` is
the batch envelope answered (so the agent can check which records an ack
covers without any local state); it is nil for document chunks.

A **refusal** answers a bundle refused as a whole. Unlike the two containers
it is itself a signed server reply (SPEC §4.6, :func:`protocol.sealing.seal_reply`)
whose message is::

    {"v": 1, "kind": "bundle_refused", "agent": str, "bundle": bin(32),
     "code": str, "message": {"vi": str, "en": str}}

so the digest of the bundle and the reason are covered by the server's
signature: a refusal cannot be moved to another bundle or reworded.

Invariant used by the streaming exporter: ``bundle_head(agent, n)`` followed by
``n`` :func:`bundle_item` encodings is byte for byte :func:`encode_bundle`.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from typing import Any

from .codec import pack, unpack
from .errors import DecodeError, ErrorCode, LocalProtocolError

__all__ = [
    "ACKS_SUFFIX",
    "BUNDLE_PATHS",
    "BUNDLE_SUFFIX",
    "BUNDLE_VERSION",
    "MAX_BUNDLE_BYTES",
    "MAX_REFUSAL_BYTES",
    "REFUSAL_SUFFIX",
    "AckItem",
    "Acks",
    "Bundle",
    "BundleItem",
    "Refusal",
    "acks_name",
    "agent_of_bundle_name",
    "bundle_digest",
    "bundle_head",
    "bundle_item",
    "bundle_name",
    "decode_acks",
    "decode_bundle",
    "decode_refusal",
    "encode_acks",
    "encode_bundle",
    "encode_refusal",
    "refusal_name",
]

BUNDLE_VERSION = 1
MAX_BUNDLE_BYTES = 96 * 1024 * 1024  # an exporter splits well below this (32 MiB parts)
MAX_ITEMS = 20_000
BUNDLE_SUFFIX = ".csbundle"
ACKS_SUFFIX = ".csacks"
REFUSAL_SUFFIX = ".csrefused"
MAX_REFUSAL_BYTES = 64 * 1024  # a signed reply around two sentences
_MAX_TEXT = 2000
BUNDLE_PATHS = frozenset({"/v1/batches", "/v1/documents/chunk"})
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_BUNDLE_NAME = re.compile(r"([A-Za-z0-9_.-]{1,64})-[A-Za-z0-9_.]{1,64}-\d{3,}"
                          + re.escape(BUNDLE_SUFFIX))


@dataclass(frozen=True)
class BundleItem:
    path: str
    body: bytes

    def __repr__(self) -> str:
        return f"BundleItem({self.path!r}, {len(self.body)} bytes)"


@dataclass(frozen=True)
class Bundle:
    agent_id: str
    items: tuple[BundleItem, ...]


@dataclass(frozen=True)
class AckItem:
    path: str
    status: int
    reply: bytes
    request: bytes | None = None


@dataclass(frozen=True)
class Acks:
    agent_id: str
    bundle: bytes
    items: tuple[AckItem, ...]


@dataclass(frozen=True)
class Refusal:
    """The server's answer to a bundle it refused as a whole (nothing stored).

    ``code`` is an :class:`~protocol.errors.ErrorCode` value (kept a str so that
    a newer server's code still decodes); the messages are for the officer.
    """

    agent_id: str
    bundle: bytes  # SHA-256 of the refused bundle file
    code: str
    message_vi: str
    message_en: str

    def message(self, lang: str) -> str:
        return self.message_vi if lang == "vi" else self.message_en


def bundle_digest(data: bytes) -> bytes:
    """The SHA-256 naming a bundle file's exact bytes (repeated by its acks)."""
    return hashlib.sha256(data).digest()


def bundle_name(agent_id: str, stamp: str, part: int) -> str:
    """File name of part ``part`` of an export: the agent first, so that
    several PCs' bundles share one folder without clashing."""
    if not (_NAME.fullmatch(agent_id) and _NAME.fullmatch(stamp)):
        raise LocalProtocolError("agent id and stamp must be plain names")
    return f"{agent_id}-{stamp}-{part:03d}{BUNDLE_SUFFIX}"


def acks_name(bundle_file_name: str) -> str:
    """The acks file answering ``bundle_file_name`` (beside it)."""
    stem = bundle_file_name.removesuffix(BUNDLE_SUFFIX)
    return stem + ACKS_SUFFIX


def refusal_name(bundle_file_name: str) -> str:
    """The refusal file answering ``bundle_file_name`` (beside it)."""
    return bundle_file_name.removesuffix(BUNDLE_SUFFIX) + REFUSAL_SUFFIX


def agent_of_bundle_name(bundle_file_name: str) -> str | None:
    """The agent a file name in the :func:`bundle_name` form starts with, or None.

    A name only (anyone can rename a file): used to address the refusal of a
    file that does not even decode as a bundle, never to authenticate.
    """
    match = _BUNDLE_NAME.fullmatch(bundle_file_name)
    return match.group(1) if match else None


def _array_header(count: int) -> bytes:
    """msgpack's shortest array header, as :func:`pack` writes it."""
    if count < 16:
        return bytes([0x90 | count])
    if count < 1 << 16:
        return b"\xdc" + struct.pack(">H", count)
    return b"\xdd" + struct.pack(">I", count)


def bundle_head(agent_id: str, count: int) -> bytes:
    """The bytes of a bundle file before its ``count`` items (for writing a
    bundle item by item; see the module's invariant)."""
    if not 0 <= count < 1 << 32:
        raise LocalProtocolError("bad bundle item count")
    empty = pack({"v": BUNDLE_VERSION, "kind": "bundle", "agent": agent_id, "items": []})
    return empty[:-1] + _array_header(count)  # the empty array is the last byte


def bundle_item(path: str, body: bytes) -> bytes:
    """The bytes of one bundle item, as they follow :func:`bundle_head`."""
    if path not in BUNDLE_PATHS:
        raise LocalProtocolError(f"no bundle item may target {path!r}")
    return pack({"path": path, "body": body})


def encode_bundle(bundle: Bundle) -> bytes:
    return bundle_head(bundle.agent_id, len(bundle.items)) + b"".join(
        bundle_item(i.path, i.body) for i in bundle.items)


def _container(data: bytes, kind: str, keys: set[str]) -> dict[str, Any]:
    obj = unpack(data, max_bytes=MAX_BUNDLE_BYTES, max_items=MAX_ITEMS)
    if not isinstance(obj, dict):
        raise DecodeError(f"{kind}: expected a map")
    if type(obj.get("v")) is not int or obj["v"] != BUNDLE_VERSION:
        raise DecodeError(f"{kind}: unsupported version {obj.get('v')!r}",
                          code=ErrorCode.UNSUPPORTED_VERSION)
    if obj.get("kind") != kind:
        raise DecodeError(f"expected a {kind} file, got {obj.get('kind')!r}")
    if set(obj) != keys | {"v", "kind"}:
        raise DecodeError(f"{kind}: unexpected or missing fields")
    agent = obj["agent"]
    if not isinstance(agent, str) or not 0 < len(agent) <= 64:
        raise DecodeError(f"{kind}: malformed agent id")
    if not isinstance(obj["items"], list) or not all(isinstance(i, dict) for i in obj["items"]):
        raise DecodeError(f"{kind}: items must be a list of maps")
    return obj


def _path(item: dict[str, Any]) -> str:
    path = item.get("path")
    if path not in BUNDLE_PATHS:
        raise DecodeError(f"bundle item for an unknown path {path!r}")
    return str(path)


def decode_bundle(data: bytes) -> Bundle:
    """Decode a bundle file; nothing in it is authenticated yet.

    Raises:
        DecodeError: not a well-formed v1 bundle.
    """
    obj = _container(data, "bundle", {"agent", "items"})
    items = []
    for item in obj["items"]:
        if set(item) != {"path", "body"} or not isinstance(item["body"], bytes):
            raise DecodeError("bundle: malformed item")
        items.append(BundleItem(_path(item), item["body"]))
    return Bundle(obj["agent"], tuple(items))


def encode_acks(acks: Acks) -> bytes:
    return pack({"v": BUNDLE_VERSION, "kind": "bundle_acks", "agent": acks.agent_id,
                 "bundle": acks.bundle,
                 "items": [{"path": i.path, "status": i.status, "reply": i.reply,
                            "request": i.request} for i in acks.items]})


def decode_acks(data: bytes) -> Acks:
    """Decode an acks file; every reply in it still has to be verified.

    Raises:
        DecodeError: not a well-formed v1 acks file.
    """
    obj = _container(data, "bundle_acks", {"agent", "bundle", "items"})
    if not isinstance(obj["bundle"], bytes) or len(obj["bundle"]) != 32:
        raise DecodeError("bundle_acks: malformed bundle digest")
    items = []
    for item in obj["items"]:
        status, reply, request = item.get("status"), item.get("reply"), item.get("request")
        if (set(item) != {"path", "status", "reply", "request"} or type(status) is not int
                or not 100 <= status <= 599 or not isinstance(reply, bytes)
                or not (request is None or isinstance(request, bytes))):
            raise DecodeError("bundle_acks: malformed item")
        items.append(AckItem(_path(item), status, reply, request))
    return Acks(obj["agent"], obj["bundle"], tuple(items))


def encode_refusal(refusal: Refusal) -> bytes:
    """The message of a refusal reply (to be signed with ``seal_reply``)."""
    return pack({"v": BUNDLE_VERSION, "kind": "bundle_refused", "agent": refusal.agent_id,
                 "bundle": refusal.bundle, "code": refusal.code,
                 "message": {"vi": refusal.message_vi, "en": refusal.message_en}})


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_TEXT:
        raise DecodeError(f"bundle_refused: malformed {what}")
    return value


def decode_refusal(message: bytes) -> Refusal:
    """Decode the message of a refusal reply (after ``open_reply`` verified it).

    Raises:
        DecodeError: not a well-formed v1 refusal.
    """
    obj = unpack(message, max_bytes=MAX_REFUSAL_BYTES, max_items=16)
    if not isinstance(obj, dict):
        raise DecodeError("bundle_refused: expected a map")
    if type(obj.get("v")) is not int or obj["v"] != BUNDLE_VERSION:
        raise DecodeError(f"bundle_refused: unsupported version {obj.get('v')!r}",
                          code=ErrorCode.UNSUPPORTED_VERSION)
    if obj.get("kind") != "bundle_refused":
        raise DecodeError(f"expected a bundle_refused message, got {obj.get('kind')!r}")
    if set(obj) != {"v", "kind", "agent", "bundle", "code", "message"}:
        raise DecodeError("bundle_refused: unexpected or missing fields")
    agent = obj["agent"]
    if not isinstance(agent, str) or not 0 < len(agent) <= 64:
        raise DecodeError("bundle_refused: malformed agent id")
    if not isinstance(obj["bundle"], bytes) or len(obj["bundle"]) != 32:
        raise DecodeError("bundle_refused: malformed bundle digest")
    code = obj["code"]
    if not isinstance(code, str) or not 0 < len(code) <= 64:
        raise DecodeError("bundle_refused: malformed code")
    texts = obj["message"]
    if not isinstance(texts, dict) or set(texts) != {"vi", "en"}:
        raise DecodeError("bundle_refused: the message must be in vi and en")
    return Refusal(agent, obj["bundle"], code, _text(texts["vi"], "message"),
                   _text(texts["en"], "message"))
