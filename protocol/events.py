"""Delta events: what a commune records and what syncs.

A dossier's life is a log of events; the first creates it, each later one
changes it. Events are plain data: the officer's clock (``at``) is recorded as
given and never used to order anything; order is the queue's ``seq``.

Wire form: a msgpack map with ``"t"`` naming the kind (see SPEC.md).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .codec import pack, unpack
from .dossier import parse_timestamp, validate_dossier, validate_status
from .errors import FieldProblem, ValidationError

__all__ = [
    "MUTABLE_FIELDS",
    "DocumentAdded",
    "DossierCreated",
    "Event",
    "FieldsChanged",
    "StatusChanged",
    "apply_event",
    "decode_event",
    "derive_dossier_id",
    "encode_event",
    "event_from_wire",
    "event_to_wire",
]

# Fields a FieldsChanged event may touch. ``id`` and ``code`` never change once
# printed on a receipt; ``status`` changes only through StatusChanged.
MUTABLE_FIELDS = frozenset({
    "procedure_code", "procedure_name", "field", "channel", "applicant", "summary",
    "submitted_at", "received_at", "due_at", "fees", "documents", "processing_unit", "notes",
})


_DOSSIER_ID_NAMESPACE = uuid.UUID("8d7f3b52-61c4-4e0f-9a43-2a0c5d1e7b19")
_NAMESPACE_BYTES = _DOSSIER_ID_NAMESPACE.bytes


def derive_dossier_id(agent_id: str, epoch: int, seq: int) -> str:
    """The id of a dossier created by record (agent, epoch, seq) without one.

    Both sides compute it, so it never travels: a random id would add 16
    incompressible bytes to a dossier that otherwise compresses to ~30.
    """
    # uuid.uuid5 spelled out (the same bytes; this runs for every record ingested).
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{agent_id}/{epoch}/{seq}".encode(),
                                    usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class DossierCreated:
    """A new dossier, with its ``id`` and ``code`` assigned.

    ``derived_id`` is true when the id is :func:`derive_dossier_id` of the
    record that carries the event; the wire form then omits it.
    """

    dossier: Mapping[str, Any]
    derived_id: bool = False

    @property
    def dossier_id(self) -> str:
        return str(self.dossier["id"])


@dataclass(frozen=True)
class StatusChanged:
    """A dossier moved to ``status``; ``at`` is the officer's clock, as data."""

    dossier_id: str
    status: str
    at: str
    by: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class FieldsChanged:
    """Some intake fields were corrected; ``changes`` maps field to new value."""

    dossier_id: str
    changes: Mapping[str, Any]
    at: str
    by: str | None = None


@dataclass(frozen=True)
class DocumentAdded:
    """A document was added to a dossier after intake."""

    dossier_id: str
    document: Mapping[str, Any]
    at: str
    by: str | None = None


Event = DossierCreated | StatusChanged | FieldsChanged | DocumentAdded


def _compact(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in obj.items() if value is not None}


def event_to_wire(event: Event) -> dict[str, Any]:
    """Return the msgpack-ready map of ``event``; nil values are left out."""
    if isinstance(event, DossierCreated):
        dossier = _compact(event.dossier)
        if event.derived_id:
            dossier.pop("id", None)
        return {"t": "created", "dossier": dossier}
    if isinstance(event, StatusChanged):
        return _compact({"t": "status", "id": event.dossier_id, "status": event.status,
                         "at": event.at, "by": event.by, "note": event.note})
    if isinstance(event, FieldsChanged):
        return _compact({"t": "fields", "id": event.dossier_id, "changes": dict(event.changes),
                         "at": event.at, "by": event.by})
    return _compact({"t": "document", "id": event.dossier_id, "document": dict(event.document),
                     "at": event.at, "by": event.by})


def _problem(path: str, vi: str, en: str) -> ValidationError:
    return ValidationError([FieldProblem(path, vi, en)])


def _read_common(obj: Mapping[str, Any], allowed: frozenset[str]) -> tuple[str, str, str | None]:
    """Read the fields every change event has: ``id``, ``at`` and ``by``."""
    extra = sorted(str(k) for k in obj if k not in allowed)
    if extra:
        raise _problem(extra[0], "trường không được hỗ trợ", "unknown field")
    raw_id, at, by = obj.get("id"), obj.get("at"), obj.get("by")
    try:
        dossier_id = str(uuid.UUID(raw_id)) if isinstance(raw_id, str) else None
    except ValueError:
        dossier_id = None
    if dossier_id is None:
        raise _problem("id", "phải là UUID", "must be a UUID")
    try:
        if not isinstance(at, str):
            raise ValueError(at)
        parse_timestamp(at)
    except ValueError:
        raise _problem("at", "phải là thời điểm ISO 8601 có múi giờ",
                       "must be an ISO 8601 time with offset") from None
    if by is not None and (not isinstance(by, str) or len(by) > 200):
        raise _problem("by", "phải là chuỗi ngắn", "must be a short string")
    return dossier_id, at, by


def _created(obj: Mapping[str, Any], derived_id: str | None) -> DossierCreated:
    dossier = obj.get("dossier")
    if set(obj) != {"t", "dossier"} or not isinstance(dossier, Mapping):
        raise _problem("dossier", "sự kiện tạo hồ sơ sai cấu trúc", "malformed created event")
    if "id" in dossier or derived_id is None:
        return DossierCreated(validate_dossier(dossier, require_identity=True))
    return DossierCreated(validate_dossier({**dossier, "id": derived_id},
                                           require_identity=True), derived_id=True)


def event_from_wire(obj: Any, derived_id: str | None = None) -> Event:
    """Build an event from its wire map, validating every field.

    Args:
        obj: the decoded map.
        derived_id: the id a ``created`` event without one stands for
            (:func:`derive_dossier_id` of its record); None if unknown.

    Raises:
        ValidationError: the map is not a valid event.
    """
    if not isinstance(obj, Mapping) or not isinstance(obj.get("t"), str):
        raise _problem("t", "thiếu loại sự kiện", "missing event kind")
    kind = obj["t"]
    if kind == "created":
        return _created(obj, derived_id)
    if kind == "status":
        dossier_id, at, by = _read_common(obj, frozenset({"t", "id", "status", "at", "by", "note"}))
        note = obj.get("note")
        if note is not None and (not isinstance(note, str) or len(note) > 2000):
            raise _problem("note", "ghi chú quá dài hoặc sai kiểu", "note too long or not a string")
        return StatusChanged(dossier_id, validate_status(obj.get("status")), at, by, note)
    if kind == "fields":
        dossier_id, at, by = _read_common(obj, frozenset({"t", "id", "changes", "at", "by"}))
        changes = obj.get("changes")
        if not isinstance(changes, Mapping) or not changes:
            raise _problem("changes", "phải là đối tượng không rỗng", "must be a non-empty object")
        bad = sorted(str(k) for k in changes if k not in MUTABLE_FIELDS)
        if bad:
            raise _problem(f"changes.{bad[0]}", "không được sửa trường này",
                           "this field cannot be changed")
        return FieldsChanged(dossier_id, dict(changes), at, by)
    if kind == "document":
        dossier_id, at, by = _read_common(obj, frozenset({"t", "id", "document", "at", "by"}))
        probe = validate_dossier({"procedure_code": "1.000000", "procedure_name": "x",
                                  "applicant": {"name": "x"}, "received_at": at,
                                  "documents": [obj.get("document")]})
        return DocumentAdded(dossier_id, probe["documents"][0], at, by)
    raise _problem("t", f"loại sự kiện không rõ: {kind!r}", f"unknown event kind: {kind!r}")


def apply_event(dossier: Mapping[str, Any] | None, event: Event) -> dict[str, Any]:
    """Return the dossier's state after ``event`` (pure; validates the result).

    Raises:
        ValidationError: the event does not fit the dossier (for instance a
            change for a dossier that does not exist, or a change that makes
            the dossier invalid).
    """
    if isinstance(event, DossierCreated):
        return dict(event.dossier)
    if dossier is None:
        raise _problem("id", "hồ sơ chưa được tạo", "dossier does not exist")
    state = dict(dossier)
    if isinstance(event, StatusChanged):
        state["status"] = event.status
        return state
    if isinstance(event, FieldsChanged):
        bad = sorted(str(k) for k in event.changes if k not in MUTABLE_FIELDS)
        if bad:
            raise _problem(f"changes.{bad[0]}", "không được sửa trường này",
                           "this field cannot be changed")
        state.update(event.changes)
    else:
        state["documents"] = [*state.get("documents", []), dict(event.document)]
    return validate_dossier(state, require_identity=True)


def encode_event(event: Event) -> bytes:
    """The record bytes of ``event``: what the queue stores and the server hashes."""
    return pack(event_to_wire(event))


def decode_event(data: bytes, *, derived_id: str | None = None,
                 max_bytes: int = 1024 * 1024) -> Event:
    """Decode and validate record bytes (``derived_id`` as in :func:`event_from_wire`).

    Raises:
        DecodeError: not a well-formed msgpack map.
        ValidationError: a map that is not a valid event.
    """
    return event_from_wire(unpack(data, max_bytes=max_bytes), derived_id)
