"""Dossier (hồ sơ) schema: validation and normalisation of the intake format.

Rules kept here:

* Every problem is reported, one :class:`FieldProblem` per bad field, in
  Vietnamese and English; nothing is half-accepted.
* Strings are normalised to Unicode NFC, so the same name typed on two
  keyboards compares equal.
* Timestamps are kept exactly as written once they parse as ISO 8601 with an
  offset: they are data from the PC's clock, never used for ordering.
* ``id`` and ``code`` are assigned by the caller when missing (they need a
  random source and a counter, which this package does not own).
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from .errors import FieldProblem, ValidationError

__all__ = [
    "CHANNELS",
    "STATUSES",
    "STATUS_CODES",
    "STATUS_LABELS",
    "normalise_text",
    "parse_timestamp",
    "validate_dossier",
    "validate_status",
]

# Status names and the national portal's codes (TrangThaiHoSo).
STATUS_CODES: Mapping[str, int] = {
    "registered": 1,
    "received": 2,
    "rejected": 3,
    "processing": 4,
    "supplement_requested": 5,
    "awaiting_fees": 6,
    "withdrawn": 7,
    "stopped": 8,
    "finished": 9,
    "returned": 10,
}
STATUSES = tuple(STATUS_CODES)
# What a person reads for each status: (Vietnamese, English).
STATUS_LABELS: Mapping[str, tuple[str, str]] = {
    "registered": ("Đã đăng ký", "Registered"),
    "received": ("Đã tiếp nhận", "Received"),
    "rejected": ("Từ chối", "Rejected"),
    "processing": ("Đang xử lý", "Processing"),
    "supplement_requested": ("Yêu cầu bổ sung", "Supplement requested"),
    "awaiting_fees": ("Chờ nộp phí", "Awaiting fees"),
    "withdrawn": ("Rút hồ sơ", "Withdrawn"),
    "stopped": ("Dừng xử lý", "Stopped"),
    "finished": ("Đã giải quyết", "Finished"),
    "returned": ("Đã trả kết quả", "Returned"),
}
CHANNELS: Mapping[str, int] = {"direct": 1, "online": 2, "postal": 3}
APPLICANT_TYPES = ("citizen", "business", "agency", "other")
ID_TYPES = ("cccd", "cmnd", "passport", "tax_code")

_PROCEDURE_CODE = re.compile(r"[123]\.\d{6}(?:[.\-][A-Za-z0-9][A-Za-z0-9.\-]{0,40})?",
                             re.ASCII)
_DOSSIER_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._]{0,39}-\d{6}-\d{4,6}", re.ASCII)
_COMMUNE_CODE = re.compile(r"\d{5}", re.ASCII)
_ID_NUMBER = {
    "cccd": (re.compile(r"\d{12}", re.ASCII), "12 chữ số", "12 digits"),
    "cmnd": (re.compile(r"\d{9}|\d{12}", re.ASCII), "9 hoặc 12 chữ số", "9 or 12 digits"),
    "passport": (re.compile(r"[A-Z0-9]{6,12}"), "6–12 chữ hoặc số", "6–12 letters or digits"),
    "tax_code": (re.compile(r"\d{10}(?:-\d{3})?", re.ASCII), "10 chữ số (hoặc 10-3)",
                 "10 digits (or 10-3)"),
}
_SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)
_MAX_DOCUMENT = 200 * 1024 * 1024
_PHONE = re.compile(r"\+?\d{8,15}", re.ASCII)
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{1,63}")
_MAX_LIST = 200
# Unicode category Cc is exactly these 65 code points; multiline text may hold \n and \t.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_MULTILINE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_MAX_VND = 10**12


def normalise_text(value: str) -> str:
    """Return ``value`` in Unicode NFC with surrounding whitespace removed."""
    return unicodedata.normalize("NFC", value).strip()


def parse_timestamp(value: str) -> datetime:
    """Parse ISO 8601 with an explicit offset; raise ``ValueError`` otherwise."""
    if len(value) > 40:
        raise ValueError("too long")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError("missing offset")
    return parsed


class _Checker:
    """Collects problems while reading one object."""

    def __init__(self) -> None:
        self.problems: list[FieldProblem] = []

    def fail(self, path: str, vi: str, en: str) -> None:
        self.problems.append(FieldProblem(path, vi, en))

    def text(
        self, obj: Mapping[str, Any], key: str, path: str, *,
        required: bool = False, max_len: int = 500, multiline: bool = False,
    ) -> str | None:
        value = obj.get(key)
        if value is None:
            if required:
                self.fail(path, "bắt buộc", "is required")
            return None
        if not isinstance(value, str):
            self.fail(path, "phải là chuỗi ký tự", "must be a string")
            return None
        value = normalise_text(value)
        if multiline:
            value = value.replace("\r\n", "\n")
        if required and not value:
            self.fail(path, "không được để trống", "must not be empty")
            return None
        if len(value) > max_len:
            self.fail(path, f"dài quá {max_len} ký tự", f"longer than {max_len} characters")
            return None
        if (_CONTROL_MULTILINE if multiline else _CONTROL).search(value):
            self.fail(path, "chứa ký tự điều khiển", "contains control characters")
            return None
        return value

    def pattern(
        self, obj: Mapping[str, Any], key: str, path: str, regex: re.Pattern[str],
        hint: tuple[str, str], *, required: bool = False,
    ) -> str | None:
        value = self.text(obj, key, path, required=required, max_len=64)
        if value is not None and not regex.fullmatch(value):
            self.fail(path, f"sai định dạng ({hint[0]})", f"wrong format ({hint[1]})")
            return None
        return value

    def choice(
        self, obj: Mapping[str, Any], key: str, path: str, options: tuple[str, ...],
        default: str | None,
    ) -> str | None:
        value = obj.get(key)
        if value is None:
            return default
        if value not in options:
            allowed = ", ".join(options)
            self.fail(path, f"phải là một trong: {allowed}", f"must be one of: {allowed}")
            return default
        return str(value)

    def timestamp(
        self, obj: Mapping[str, Any], key: str, path: str, *, required: bool = False
    ) -> str | None:
        value = obj.get(key)
        if value is None:
            if required:
                self.fail(path, "bắt buộc", "is required")
            return None
        if isinstance(value, str):
            try:
                parse_timestamp(value)
            except ValueError:
                pass
            else:
                return value
        self.fail(
            path,
            "phải là thời điểm ISO 8601 có múi giờ, ví dụ 2026-11-26T09:30:00+07:00",
            "must be an ISO 8601 time with offset, e.g. 2026-11-26T09:30:00+07:00",
        )
        return None

    def integer(
        self, obj: Mapping[str, Any], key: str, path: str, *, low: int, high: int,
        default: int | None = None,
    ) -> int | None:
        value = obj.get(key)
        if value is None:
            value = default
        if value is None:
            self.fail(path, "bắt buộc", "is required")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, "phải là số nguyên", "must be an integer")
            return None
        if not low <= value <= high:
            self.fail(path, f"phải từ {low} đến {high}", f"must be between {low} and {high}")
            return None
        return value

    def unknown(self, obj: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> None:
        for key in obj:
            if key not in allowed:
                path = f"{prefix}{key}" if isinstance(key, str) else f"{prefix}{key!r}"
                self.fail(path, "trường không được hỗ trợ", "unknown field")

    def objects(
        self, obj: Mapping[str, Any], key: str,
        read_one: Callable[[Mapping[str, Any], str], dict[str, Any]],
    ) -> list[dict[str, Any]]:
        value = obj.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(key, "phải là danh sách", "must be a list")
            return []
        if len(value) > _MAX_LIST:
            self.fail(key, f"nhiều quá {_MAX_LIST} mục", f"more than {_MAX_LIST} items")
            return []
        out = []
        for index, item in enumerate(value):
            path = f"{key}[{index}]"
            if not isinstance(item, Mapping):
                self.fail(path, "phải là đối tượng", "must be an object")
                continue
            out.append(read_one(item, path))
        return out


_TOP_FIELDS = frozenset({
    "id", "code", "procedure_code", "procedure_name", "field", "channel", "applicant",
    "summary", "submitted_at", "received_at", "due_at", "fees", "documents",
    "processing_unit", "status", "notes",
})
_APPLICANT_FIELDS = frozenset({
    "name", "type", "id_type", "id_number", "phone", "email", "address", "commune_code",
})


def _given(raw: Mapping[str, Any], normalised: dict[str, Any]) -> dict[str, Any]:
    """Keep only the keys the input gave: nested objects are stored as written
    (normalised), without defaults, so what comes back is what was sent."""
    return {key: value for key, value in normalised.items() if key in raw}


def _read_applicant(check: _Checker, value: Any) -> dict[str, Any] | None:
    if value is None:
        check.fail("applicant", "bắt buộc", "is required")
        return None
    if not isinstance(value, Mapping):
        check.fail("applicant", "phải là đối tượng", "must be an object")
        return None
    check.unknown(value, _APPLICANT_FIELDS, "applicant.")
    id_type = check.choice(value, "id_type", "applicant.id_type", ID_TYPES, None)
    id_number = check.text(value, "id_number", "applicant.id_number", max_len=32)
    if id_number is not None:
        rule = _ID_NUMBER.get(id_type or "")
        compact = id_number.replace(" ", "").upper()
        if rule is not None and not rule[0].fullmatch(compact):
            check.fail("applicant.id_number", f"sai định dạng ({rule[1]})",
                       f"wrong format ({rule[2]})")
    phone = check.text(value, "phone", "applicant.phone", max_len=32)
    if phone is not None and not _PHONE.fullmatch(re.sub(r"[\s.\-()]", "", phone)):
        check.fail("applicant.phone", "số điện thoại không hợp lệ", "not a phone number")
    email = check.text(value, "email", "applicant.email", max_len=320)
    if email is not None and not _EMAIL.fullmatch(email):
        check.fail("applicant.email", "địa chỉ email không hợp lệ", "not an email address")
    return _given(value, {
        "name": check.text(value, "name", "applicant.name", required=True, max_len=200),
        "type": check.choice(value, "type", "applicant.type", APPLICANT_TYPES, "citizen"),
        "id_type": id_type,
        "id_number": id_number,
        "phone": phone,
        "email": email,
        "address": check.text(value, "address", "applicant.address", max_len=500),
        "commune_code": check.pattern(value, "commune_code", "applicant.commune_code",
                                      _COMMUNE_CODE, ("5 chữ số", "5 digits")),
    })


def _read_fee(check: _Checker) -> Callable[[Mapping[str, Any], str], dict[str, Any]]:
    def read(item: Mapping[str, Any], path: str) -> dict[str, Any]:
        check.unknown(item, frozenset({"name", "amount"}), f"{path}.")
        return _given(item, {
            "name": check.text(item, "name", f"{path}.name", required=True, max_len=200),
            "amount": check.integer(item, "amount", f"{path}.amount", low=0, high=_MAX_VND),
        })
    return read


def _read_document(check: _Checker) -> Callable[[Mapping[str, Any], str], dict[str, Any]]:
    def read(item: Mapping[str, Any], path: str) -> dict[str, Any]:
        check.unknown(item, frozenset({"name", "copies", "path", "sha256", "size"}), f"{path}.")
        sha256 = check.pattern(item, "sha256", f"{path}.sha256", _SHA256,
                               ("64 chữ số hex", "64 hex digits"))
        size = check.integer(item, "size", f"{path}.size", low=0, high=_MAX_DOCUMENT,
                             default=0) if "size" in item else None
        if ("sha256" in item) != ("size" in item):
            check.fail(f"{path}.sha256", "sha256 và size phải đi cùng nhau",
                       "sha256 and size go together")
        return _given(item, {
            "name": check.text(item, "name", f"{path}.name", required=True, max_len=300),
            "copies": check.integer(item, "copies", f"{path}.copies", low=1, high=1000,
                                    default=1),
            "path": check.text(item, "path", f"{path}.path", max_len=1024),
            "sha256": sha256,
            "size": size,
        })
    return read


def _read_id(check: _Checker, value: Any) -> str | None:
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return str(uuid.UUID(value))
    except ValueError:
        check.fail("id", "phải là UUID", "must be a UUID")
        return None


def validate_dossier(obj: Any, *, require_identity: bool = False) -> dict[str, Any]:
    """Check one intake object and return its normalised form.

    Args:
        obj: the decoded JSON (or msgpack) object.
        require_identity: when true, ``id`` and ``code`` must be present
            (as they are once a dossier has been recorded).

    Returns:
        A new dict holding every intake field, defaults filled in.

    Raises:
        ValidationError: listing every problem found.
    """
    check = _Checker()
    if not isinstance(obj, Mapping):
        raise ValidationError([FieldProblem("(dossier)", "phải là đối tượng JSON",
                                            "must be a JSON object")])
    check.unknown(obj, _TOP_FIELDS, "")
    dossier = {
        "id": _read_id(check, obj.get("id")),
        "code": check.pattern(obj, "code", "code", _DOSSIER_CODE,
                              ("đơn vị-yyMMdd-NNNN", "unit-yyMMdd-NNNN")),
        "procedure_code": check.pattern(obj, "procedure_code", "procedure_code",
                                        _PROCEDURE_CODE, ("ví dụ 1.001193", "e.g. 1.001193"),
                                        required=True),
        "procedure_name": check.text(obj, "procedure_name", "procedure_name", required=True),
        "field": check.text(obj, "field", "field", max_len=200),
        "channel": check.choice(obj, "channel", "channel", tuple(CHANNELS), "direct"),
        "applicant": _read_applicant(check, obj.get("applicant")),
        "summary": check.text(obj, "summary", "summary", max_len=2000, multiline=True),
        "submitted_at": check.timestamp(obj, "submitted_at", "submitted_at"),
        "received_at": check.timestamp(obj, "received_at", "received_at", required=True),
        "due_at": check.timestamp(obj, "due_at", "due_at"),
        "fees": check.objects(obj, "fees", _read_fee(check)),
        "documents": check.objects(obj, "documents", _read_document(check)),
        "processing_unit": check.text(obj, "processing_unit", "processing_unit", max_len=200),
        "status": check.choice(obj, "status", "status", STATUSES, "received"),
        "notes": check.text(obj, "notes", "notes", max_len=4000, multiline=True),
    }
    if require_identity:
        for key in ("id", "code"):
            if dossier[key] is None and not any(p.path == key for p in check.problems):
                check.fail(key, "bắt buộc", "is required")
    if check.problems:
        raise ValidationError(check.problems)
    return dossier


def validate_status(value: Any, path: str = "status") -> str:
    """Return ``value`` if it is a known status name, else raise ValidationError."""
    if isinstance(value, str) and value in STATUS_CODES:
        return value
    allowed = ", ".join(STATUSES)
    raise ValidationError([FieldProblem(path, f"phải là một trong: {allowed}",
                                        f"must be one of: {allowed}")])
