"""What flows down about dossiers: status changes made centrally (SPEC §18).

An agent asks, in a signed envelope of kind ``updates``, for the changes to
its commune's dossiers after the last one it holds (``after``, an id the
server assigned); the server answers one page, in id order, with the id to
ask after next and whether more wait.

Invariants the decoders enforce:

* Maps are closed: an unknown key is ``malformed``.
* A page holds at most :data:`MAX_ITEMS` items, ids strictly increasing, each
  ≥ 1; ``next`` is at least the last item's id.
* Items are the schema's words: a known status name, a UUID dossier id, an
  ISO 8601 ``at`` with offset, ``note`` ≤ 2000 characters, ``by`` ≤ 200.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from typing import Any

from .codec import pack
from .dossier import parse_timestamp, validate_status
from .errors import DecodeError, ValidationError
from .messages import DEFAULT_LIMITS, PROTOCOL_VERSION, Limits, _closed, _get, _map, _seq

__all__ = [
    "KIND",
    "MAX_ITEMS",
    "CentralChange",
    "UpdatesPage",
    "UpdatesRequest",
    "decode_updates_page",
    "decode_updates_request",
    "encode_updates_page",
    "encode_updates_request",
]

KIND = "updates"  # the envelope kind, the request's kind and the reply's kind
MAX_ITEMS = 200
MAX_NOTE = 2000
MAX_BY = 200
_ITEM_KEYS = frozenset({"id", "dossier_id", "status", "note", "by", "at", "now"})
_MAX_PAGE_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class UpdatesRequest:
    """Ask for the central changes of the agent's commune after id ``after``."""

    after: int


def encode_updates_request(req: UpdatesRequest) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "kind": KIND, "after": req.after})


def decode_updates_request(data: bytes, limits: Limits = DEFAULT_LIMITS) -> UpdatesRequest:
    """Raises DecodeError: not a closed ``updates`` request with ``after`` in 0..2^63-1."""
    obj = _map(data, KIND, min(1024, limits.max_body_bytes))
    _closed(obj, {"after"})
    return UpdatesRequest(_seq(obj, "after"))


@dataclass(frozen=True)
class CentralChange:
    """Dossier ``dossier_id`` was set to ``status`` at the province or district.

    ``at`` is the server's clock (Vietnam time), ``by`` the operator. ``now``
    is the dossier's status at the server when the page was made (a commune's
    own status record applied after this change there makes it differ).
    """

    id: int
    dossier_id: str
    status: str
    note: str | None
    by: str | None
    at: str
    now: str | None = None

    def __repr__(self) -> str:  # the note is dossier content: never in a log line
        return f"CentralChange({self.id}, {self.dossier_id}, {self.status!r})"


@dataclass(frozen=True)
class UpdatesPage:
    """One answer: ``items`` in id order, the id to ask after next, and whether
    more items wait after it."""

    items: tuple[CentralChange, ...]
    next: int
    more: bool


def _item_to_wire(item: CentralChange) -> dict[str, Any]:
    return {"id": item.id, "dossier_id": item.dossier_id, "status": item.status,
            "note": item.note, "by": item.by, "at": item.at, "now": item.now}


def encode_updates_page(page: UpdatesPage) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "kind": KIND,
                 "items": [_item_to_wire(i) for i in page.items], "next": page.next,
                 "more": page.more})


def _text(obj: dict[str, Any], key: str, limit: int) -> str | None:
    value = _get(obj, key, str, optional=True)
    if value is not None and len(value) > limit:
        raise DecodeError(f"updates: {key} longer than {limit} characters")
    return None if value is None else str(value)


def _item(raw: Any) -> CentralChange:
    if not isinstance(raw, dict):
        raise DecodeError("updates: an item is not a map")
    extra = set(raw) - _ITEM_KEYS
    if extra:
        raise DecodeError(f"updates: unknown item fields: {', '.join(sorted(map(str, extra)))}")
    dossier_id, at = _get(raw, "dossier_id", str), _get(raw, "at", str)
    try:
        canonical = str(uuid.UUID(dossier_id))
        status = validate_status(raw.get("status"))
        now = None if raw.get("now") is None else validate_status(raw["now"], "now")
        parse_timestamp(at)
    except (ValueError, ValidationError) as exc:
        raise DecodeError(f"updates: malformed item ({exc})") from exc
    if canonical != dossier_id or len(at) > 40:
        raise DecodeError("updates: malformed item")
    return CentralChange(_seq(raw, "id", 1), dossier_id, status, _text(raw, "note", MAX_NOTE),
                         _text(raw, "by", MAX_BY), at, now)


def decode_updates_page(data: bytes, limits: Limits = DEFAULT_LIMITS) -> UpdatesPage:
    """Raises DecodeError: not a closed, well-ordered page of valid items."""
    obj = _map(data, KIND, min(_MAX_PAGE_BYTES, limits.max_body_bytes))
    _closed(obj, {"items", "next", "more"})
    raw_items = _get(obj, "items", list)
    if len(raw_items) > MAX_ITEMS:
        raise DecodeError(f"updates: more than {MAX_ITEMS} items")
    items = tuple(_item(raw) for raw in raw_items)
    if any(a.id >= b.id for a, b in itertools.pairwise(items)):
        raise DecodeError("updates: item ids are not increasing")
    following = _seq(obj, "next")
    if items and following < items[-1].id:
        raise DecodeError("updates: next is before the last item")
    return UpdatesPage(items, following, bool(_get(obj, "more", bool)))
