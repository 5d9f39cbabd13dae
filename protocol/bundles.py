"""Bundle and acks files: the sneakernet container (a USB stick instead of a link).

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
"""

from __future__ import annotations

import hashlib
import re
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
    "AckItem",
    "Acks",
    "Bundle",
    "BundleItem",
    "acks_name",
    "bundle_digest",
    "bundle_name",
    "decode_acks",
    "decode_bundle",
    "encode_acks",
    "encode_bundle",
]

BUNDLE_VERSION = 1
MAX_BUNDLE_BYTES = 96 * 1024 * 1024  # an exporter splits well below this (32 MiB parts)
MAX_ITEMS = 20_000
BUNDLE_SUFFIX = ".csbundle"
ACKS_SUFFIX = ".csacks"
BUNDLE_PATHS = frozenset({"/v1/batches", "/v1/documents/chunk"})
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


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


def encode_bundle(bundle: Bundle) -> bytes:
    for item in bundle.items:
        if item.path not in BUNDLE_PATHS:
            raise LocalProtocolError(f"no bundle item may target {item.path!r}")
    return pack({"v": BUNDLE_VERSION, "kind": "bundle", "agent": bundle.agent_id,
                 "items": [{"path": i.path, "body": i.body} for i in bundle.items]})


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
