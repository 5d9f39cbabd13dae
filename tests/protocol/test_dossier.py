"""The dossier (hồ sơ) intake format and the events that change a dossier.

What an intake officer's tools rely on: a correct dossier passes with its
defaults filled in and its text normalised; every wrong field is reported
once, by path, in Vietnamese and English; events apply as expected and
survive their wire encoding, which leaves out nil values; a ``created`` event
may leave out the dossier id, which then is derived from the record's
(agent, epoch, seq) exactly as SPEC.md §6.3 says.
"""

from __future__ import annotations

import copy
import unicodedata
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.codec import pack
from protocol.dossier import CHANNELS, STATUS_CODES, STATUSES, validate_dossier
from protocol.errors import DecodeError, ErrorCode, FieldProblem, ValidationError
from protocol.events import (
    MUTABLE_FIELDS,
    DocumentAdded,
    DossierCreated,
    FieldsChanged,
    StatusChanged,
    apply_event,
    decode_event,
    derive_dossier_id,
    encode_event,
    event_from_wire,
    event_to_wire,
)

PROPS = settings(max_examples=40, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow])

DOSSIER_ID = "6f1c2b9e-8a4d-4e21-9b1f-3c5d7e9a0b12"
AT = "2026-11-26T10:15:00+07:00"


def valid_dossier() -> dict[str, Any]:
    """A birth registration received at the one-stop desk of a mountain commune."""
    return {
        "procedure_code": "1.001193",
        "procedure_name": "Đăng ký khai sinh",
        "field": "Hộ tịch",
        "applicant": {
            "name": "Nguyễn Thị Hoà",
            "type": "citizen",
            "id_type": "cccd",
            "id_number": "010190012345",
            "phone": "0912 345 678",
            "email": "hoa.nguyen@example.vn",
            "address": "Thôn Nậm Cang, xã Bản Hồ, tỉnh Lào Cai",
            "commune_code": "02809",
        },
        "summary": "Đăng ký khai sinh cho con thứ hai.\nCó giấy chứng sinh bản chính.",
        "submitted_at": "2026-11-26T08:55:00+07:00",
        "received_at": "2026-11-26T09:30:00+07:00",
        "due_at": "2026-11-27T17:00:00+07:00",
        "fees": [
            {"name": "Lệ phí đăng ký khai sinh", "amount": 0},
            {"name": "Phí cấp bản sao trích lục", "amount": 8000},
        ],
        "documents": [
            {"name": "Tờ khai đăng ký khai sinh", "copies": 1},
            {"name": "Giấy chứng sinh", "copies": 1, "path": "scan/giay-chung-sinh.pdf"},
        ],
        "processing_unit": "Bộ phận Một cửa UBND xã Bản Hồ",
        "notes": "Công dân nộp trực tiếp tại bộ phận một cửa",
    }


def recorded_dossier() -> dict[str, Any]:
    """The valid dossier as stored once created: with id and code, normalised."""
    return validate_dossier({**valid_dossier(), "id": DOSSIER_ID, "code": "BANHO-261126-0001"},
                            require_identity=True)


def problems_of(obj: Any, **kwargs: Any) -> tuple[FieldProblem, ...]:
    with pytest.raises(ValidationError) as info:
        validate_dossier(obj, **kwargs)
    assert info.value.code is ErrorCode.INVALID_RECORD
    return info.value.problems


def _has_vietnamese_letters(text: str) -> bool:
    return any(not ch.isascii() and ch.isalpha() for ch in text)


# -- a valid dossier -------------------------------------------------------------------------


def test_valid_dossier_passes_and_defaults_are_filled() -> None:
    given_dossier = valid_dossier()
    before = copy.deepcopy(given_dossier)
    out = validate_dossier(given_dossier)
    assert given_dossier == before  # the input is not modified
    assert out["channel"] == "direct"
    assert out["status"] == "received"
    assert out["id"] is None and out["code"] is None  # assigned later by the caller
    assert out["procedure_code"] == "1.001193"
    assert out["applicant"]["name"] == "Nguyễn Thị Hoà"
    assert out["applicant"]["id_number"] == "010190012345"
    assert out["applicant"]["commune_code"] == "02809"
    assert out["received_at"] == "2026-11-26T09:30:00+07:00"  # kept exactly as written
    # nested objects come back as written (normalised), nothing added
    assert out["applicant"] == given_dossier["applicant"]
    assert out["fees"] == given_dossier["fees"]
    assert out["documents"] == given_dossier["documents"]
    assert out["summary"] == given_dossier["summary"]  # newlines allowed in the summary


def test_minimal_dossier_gets_every_field_and_all_defaults() -> None:
    out = validate_dossier({"procedure_code": "2.000815",
                            "procedure_name": "Chứng thực bản sao từ bản chính",
                            "applicant": {"name": "Giàng A Páo"},
                            "received_at": "2026-11-26T14:00:00+07:00",
                            "documents": [{"name": "Sổ hộ khẩu"}]})
    assert set(out) == {"id", "code", "procedure_code", "procedure_name", "field", "channel",
                        "applicant", "summary", "submitted_at", "received_at", "due_at",
                        "fees", "documents", "processing_unit", "status", "notes"}
    assert (out["channel"], out["status"]) == ("direct", "received")
    assert out["applicant"] == {"name": "Giàng A Páo"}
    assert out["documents"] == [{"name": "Sổ hộ khẩu"}]
    assert out["fees"] == []
    for key in ("id", "code", "field", "summary", "submitted_at", "due_at", "processing_unit",
                "notes"):
        assert out[key] is None, key


def test_explicit_values_are_kept() -> None:
    out = validate_dossier({**valid_dossier(), "channel": "postal", "status": "processing",
                            "id": DOSSIER_ID.upper(), "code": "BANHO-261126-0001"})
    assert (out["channel"], out["status"]) == ("postal", "processing")
    assert out["id"] == DOSSIER_ID  # canonical form of the UUID
    assert out["code"] == "BANHO-261126-0001"


@pytest.mark.parametrize("key", ["status", "channel"])
def test_explicit_null_status_or_channel_never_yields_an_unknown_value(key: str) -> None:
    """JSON ``null`` for ``status``/``channel`` must give the default or a problem,
    never a dossier whose status or channel is not one of the known names."""
    known = STATUS_CODES if key == "status" else CHANNELS
    try:
        out = validate_dossier({**valid_dossier(), key: None})
    except ValidationError as exc:
        assert [p.path for p in exc.problems] == [key]
    else:
        assert out[key] in known, f"{key} came out as {out[key]!r}"


def test_names_are_normalised_to_nfc() -> None:
    name = "Nguyễn Thị Hoà"
    nfd = unicodedata.normalize("NFD", name)
    assert nfd != name  # the test means something only if the forms differ
    dossier = valid_dossier()
    dossier["applicant"]["name"] = f"  {nfd} "
    dossier["procedure_name"] = unicodedata.normalize("NFD", "Đăng ký kết hôn")
    dossier["applicant"]["address"] = unicodedata.normalize("NFD", "Bản Sin Chải, xã Bản Hồ")
    out = validate_dossier(dossier)
    assert out["applicant"]["name"] == name
    assert unicodedata.is_normalized("NFC", out["applicant"]["name"])
    assert out["procedure_name"] == "Đăng ký kết hôn"
    assert out["applicant"]["address"] == "Bản Sin Chải, xã Bản Hồ"


def test_nfd_and_nfc_dossiers_validate_to_the_same_thing() -> None:
    dossier = valid_dossier()
    assert validate_dossier(_map_strings(dossier, _nfd)) == validate_dossier(dossier)


def test_windows_line_endings_in_multiline_fields_become_newlines() -> None:
    out = validate_dossier({**valid_dossier(), "summary": "Dòng một\r\nDòng hai",
                            "notes": "Ghi chú\r\n\tthụt lề"})
    assert out["summary"] == "Dòng một\nDòng hai"
    assert out["notes"] == "Ghi chú\n\tthụt lề"
    # ... but a single-line field keeps refusing them
    crlf_name = {**valid_dossier(), "procedure_name": "Đăng ký\r\nkhai sinh"}
    assert [p.path for p in problems_of(crlf_name)] == ["procedure_name"]


# -- one problem per bad field -----------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set ``value`` at a dotted path (``applicant.phone``, ``fees.1.amount``)."""
    def mutate(dossier: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = dossier
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value
    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(dossier: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = dossier
        for part in parents:
            target = target[part]
        del target[last]
    return mutate


BAD_FIELDS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "procedure-code-no-dot": (_set("procedure_code", "1001193"), "procedure_code"),
    "procedure-code-bad-level": (_set("procedure_code", "4.001193"), "procedure_code"),
    "procedure-code-short": (_set("procedure_code", "1.00119"), "procedure_code"),
    "procedure-name-missing": (_drop("procedure_name"), "procedure_name"),
    "procedure-name-blank": (_set("procedure_name", "   "), "procedure_name"),
    "procedure-name-not-text": (_set("procedure_name", 1193), "procedure_name"),
    "applicant-missing": (_drop("applicant"), "applicant"),
    "applicant-not-object": (_set("applicant", "Nguyễn Thị Hoà"), "applicant"),
    "applicant-name-missing": (_drop("applicant.name"), "applicant.name"),
    "applicant-name-empty": (_set("applicant.name", ""), "applicant.name"),
    "applicant-type-bad": (_set("applicant.type", "person"), "applicant.type"),
    "cccd-11-digits": (_set("applicant.id_number", "01019001234"), "applicant.id_number"),
    "cccd-13-digits": (_set("applicant.id_number", "0101900123456"), "applicant.id_number"),
    "cccd-letter": (_set("applicant.id_number", "01019001234A"), "applicant.id_number"),
    "phone-letters": (_set("applicant.phone", "số máy bàn"), "applicant.phone"),
    "phone-too-short": (_set("applicant.phone", "09123"), "applicant.phone"),
    "email-no-at": (_set("applicant.email", "hoa.nguyen.example.vn"), "applicant.email"),
    "commune-code-4-digits": (_set("applicant.commune_code", "2809"), "applicant.commune_code"),
    "received-at-no-offset": (_set("received_at", "2026-11-26T09:30:00"), "received_at"),
    "received-at-vn-format": (_set("received_at", "26/11/2026 09:30"), "received_at"),
    "received-at-missing": (_drop("received_at"), "received_at"),
    "due-at-date-only": (_set("due_at", "2026-11-27"), "due_at"),
    "fee-amount-negative": (_set("fees.1.amount", -8000), "fees[1].amount"),
    "fee-amount-bool": (_set("fees.1.amount", True), "fees[1].amount"),
    "fee-amount-text": (_set("fees.1.amount", "8000"), "fees[1].amount"),
    "fee-amount-float": (_set("fees.1.amount", 8000.0), "fees[1].amount"),
    "fee-name-missing": (_set("fees.1", {"amount": 8000}), "fees[1].name"),
    "fees-not-list": (_set("fees", {"name": "Lệ phí", "amount": 0}), "fees"),
    "fee-not-object": (_set("fees.0", 8000), "fees[0]"),
    "document-copies-zero": (_set("documents.0.copies", 0), "documents[0].copies"),
    "document-copies-bool": (_set("documents.0.copies", False), "documents[0].copies"),
    "document-unknown-field": (_set("documents.1.pages", 3), "documents[1].pages"),
    "unknown-top-level": (_set("ma_ho_so", "000.00.09.H23-261126-0001"), "ma_ho_so"),
    "unknown-applicant-field": (_set("applicant.so_cmnd_cu", "123456789"),
                                "applicant.so_cmnd_cu"),
    "status-bad": (_set("status", "done"), "status"),
    "status-vietnamese": (_set("status", "Đã tiếp nhận"), "status"),
    "channel-bad": (_set("channel", "email"), "channel"),
    "id-not-uuid": (_set("id", "hs-0001"), "id"),
    "code-bad": (_set("code", "0001/2026"), "code"),
    "summary-control-char": (_set("summary", "Hồ sơ\x07 khai sinh"), "summary"),
    "field-too-long": (_set("field", "Hộ tịch " * 40), "field"),
}


@pytest.mark.parametrize("mutate,path", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_each_bad_field_gives_one_problem_naming_it(
    mutate: Callable[[dict[str, Any]], None], path: str,
) -> None:
    dossier = valid_dossier()
    mutate(dossier)
    problems = problems_of(dossier)
    assert [p.path for p in problems] == [path]
    problem = problems[0]
    assert problem.message_vi and problem.message_en
    assert problem.message_vi != problem.message_en
    assert _has_vietnamese_letters(problem.message_vi), problem.message_vi
    assert problem.render("vi") == f"{path}: {problem.message_vi}"
    assert problem.render("en") == f"{path}: {problem.message_en}"


@pytest.mark.parametrize("digits", [
    "０１０１９００１２３４５",  # fullwidth digits, as some IMEs type them
    "٠١٠١٩٠٠١٢٣٤٥",  # Arabic-Indic digits
], ids=["fullwidth", "arabic-indic"])
def test_cccd_must_be_twelve_ascii_digits(digits: str) -> None:
    assert len(digits) == 12 and digits.isdigit() and not digits.isascii()
    dossier = valid_dossier()
    dossier["applicant"]["id_number"] = digits
    assert [p.path for p in problems_of(dossier)] == ["applicant.id_number"]


def test_other_id_types_follow_their_own_format() -> None:
    dossier = valid_dossier()
    dossier["applicant"].update(id_type="cmnd", id_number="012345678")
    assert validate_dossier(dossier)["applicant"]["id_number"] == "012345678"
    dossier["applicant"].update(id_type="passport", id_number="c1234567")
    assert validate_dossier(dossier)["applicant"]["id_type"] == "passport"
    dossier["applicant"].update(id_type="tax_code", id_number="0101234567-001")
    assert validate_dossier(dossier)["applicant"]["id_number"] == "0101234567-001"
    dossier["applicant"].update(id_type="tax_code", id_number="010123456")
    assert [p.path for p in problems_of(dossier)] == ["applicant.id_number"]


def test_several_problems_are_all_reported_at_once() -> None:
    dossier = valid_dossier()
    for key in ("procedure-code-no-dot", "applicant-name-missing", "cccd-11-digits",
                "phone-letters", "received-at-no-offset", "fee-amount-negative",
                "document-copies-zero", "unknown-top-level", "unknown-applicant-field",
                "status-bad", "channel-bad"):
        BAD_FIELDS[key][0](dossier)
    with pytest.raises(ValidationError) as info:
        validate_dossier(dossier)
    paths = [p.path for p in info.value.problems]
    assert sorted(paths) == sorted([
        "procedure_code", "applicant.name", "applicant.id_number", "applicant.phone",
        "received_at", "fees[1].amount", "documents[0].copies", "ma_ho_so",
        "applicant.so_cmnd_cu", "status", "channel",
    ])
    for path in paths:  # the exception text names every field
        assert path in str(info.value)


def test_not_an_object_is_one_problem() -> None:
    for value in (None, [], "hồ sơ", 1):
        assert len(problems_of(value)) == 1


def test_recorded_dossier_needs_id_and_code() -> None:
    assert sorted(p.path for p in problems_of(valid_dossier(), require_identity=True)) == [
        "code", "id"]
    # A malformed id is reported once, not also as missing.
    problems = problems_of({**valid_dossier(), "id": "x", "code": "BANHO-261126-0001"},
                           require_identity=True)
    assert [p.path for p in problems] == ["id"]


# -- events ------------------------------------------------------------------------------------


def test_dossier_created_gives_the_dossier() -> None:
    dossier = recorded_dossier()
    event = DossierCreated(dossier)
    assert event.dossier_id == DOSSIER_ID
    assert apply_event(None, event) == dossier


def test_status_changed_changes_only_the_status() -> None:
    before = recorded_dossier()
    snapshot = copy.deepcopy(before)
    after = apply_event(before, StatusChanged(DOSSIER_ID, "processing", AT, "cb.tuphap"))
    assert after["status"] == "processing"
    assert {k: v for k, v in after.items() if k != "status"} == {
        k: v for k, v in snapshot.items() if k != "status"}
    assert before == snapshot  # pure: the given state is untouched


def test_fields_changed_replaces_fields_and_normalises_them() -> None:
    before = recorded_dossier()
    snapshot = copy.deepcopy(before)
    applicant = {**before["applicant"],
                 "name": unicodedata.normalize("NFD", "Nguyễn Thị Hòa"), "phone": "0987654321"}
    after = apply_event(before, FieldsChanged(
        DOSSIER_ID, {"applicant": applicant, "due_at": "2026-11-28T17:00:00+07:00"}, AT))
    assert after["applicant"]["name"] == "Nguyễn Thị Hòa"
    assert after["applicant"]["phone"] == "0987654321"
    assert after["due_at"] == "2026-11-28T17:00:00+07:00"
    unchanged = set(before) - {"applicant", "due_at"}
    assert {k: after[k] for k in unchanged} == {k: snapshot[k] for k in unchanged}
    assert before == snapshot


def test_fields_changed_that_breaks_the_dossier_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        apply_event(recorded_dossier(), FieldsChanged(
            DOSSIER_ID, {"fees": [{"name": "Lệ phí", "amount": -1}]}, AT))
    assert [p.path for p in info.value.problems] == ["fees[0].amount"]


def test_document_added_appends_a_document() -> None:
    before = recorded_dossier()
    doc = {"name": unicodedata.normalize("NFD", "Giấy xác nhận cư trú"), "copies": 2}
    after = apply_event(before, DocumentAdded(DOSSIER_ID, doc, AT))
    assert after["documents"] == [*before["documents"],
                                  {"name": "Giấy xác nhận cư trú", "copies": 2}]
    assert len(before["documents"]) == 2


@pytest.mark.parametrize("event", [
    StatusChanged(DOSSIER_ID, "finished", AT),
    FieldsChanged(DOSSIER_ID, {"notes": "x"}, AT),
    DocumentAdded(DOSSIER_ID, {"name": "Tờ khai", "copies": 1, "path": None}, AT),
], ids=["status", "fields", "document"])
def test_change_to_a_missing_dossier_is_refused(event: Any) -> None:
    with pytest.raises(ValidationError):
        apply_event(None, event)


@pytest.mark.parametrize("field,value", [
    ("id", "0b7f1f0e-3a51-4f5e-9c57-1b1f0e3a514f"),
    ("code", "BANHO-261126-0002"),
    ("status", "finished"),
])
def test_fields_changed_on_the_wire_cannot_touch_id_code_or_status(field: str, value: str) -> None:
    wire = {"t": "fields", "id": DOSSIER_ID, "changes": {field: value}, "at": AT, "by": None}
    with pytest.raises(ValidationError) as info:
        event_from_wire(wire)
    assert [p.path for p in info.value.problems] == [f"changes.{field}"]
    with pytest.raises(ValidationError):
        decode_event(pack(wire))
    # ... even hidden among allowed changes
    wire["changes"] = {"notes": "sửa ghi chú", field: value}
    with pytest.raises(ValidationError):
        event_from_wire(wire)


@pytest.mark.parametrize("field,value", [
    ("id", "0b7f1f0e-3a51-4f5e-9c57-1b1f0e3a514f"),
    ("code", "BANHO-261126-0002"),
    ("status", "finished"),
])
def test_apply_event_refuses_fields_changed_touching_id_code_or_status(
    field: str, value: str,
) -> None:
    """The rule holds for an event built in code too, not only for one read off the wire."""
    before = recorded_dossier()
    snapshot = copy.deepcopy(before)
    for changes in ({field: value}, {"notes": "sửa ghi chú", field: value}):
        with pytest.raises(ValidationError) as info:
            apply_event(before, FieldsChanged(DOSSIER_ID, changes, AT))
        assert [p.path for p in info.value.problems] == [f"changes.{field}"]
        assert info.value.code is ErrorCode.INVALID_RECORD
    assert before == snapshot  # nothing was half-applied
    # ... even when the "change" would keep the value it has
    with pytest.raises(ValidationError):
        apply_event(before, FieldsChanged(DOSSIER_ID, {field: before[field]}, AT))


@pytest.mark.parametrize("wire,path", [
    ({"id": DOSSIER_ID, "status": "finished", "at": AT}, "t"),
    ({"t": "deleted", "id": DOSSIER_ID, "at": AT}, "t"),
    ({"t": "status", "id": "hs-1", "status": "finished", "at": AT}, "id"),
    ({"t": "status", "id": DOSSIER_ID, "status": "xong", "at": AT}, "status"),
    ({"t": "status", "id": DOSSIER_ID, "status": "finished", "at": "2026-11-26T10:15:00"}, "at"),
    ({"t": "status", "id": DOSSIER_ID, "status": "finished"}, "at"),
    ({"t": "status", "id": DOSSIER_ID, "status": "finished", "at": AT, "by": 7}, "by"),
    ({"t": "status", "id": DOSSIER_ID, "status": "finished", "at": AT, "note": "x" * 2001},
     "note"),
    ({"t": "status", "id": DOSSIER_ID, "status": "finished", "at": AT, "extra": 1}, "extra"),
    ({"t": "fields", "id": DOSSIER_ID, "changes": {}, "at": AT}, "changes"),
    ({"t": "created", "dossier": {"procedure_code": "1.001193"}, "at": AT}, "dossier"),
    ({"t": "created", "dossier": [DOSSIER_ID]}, "dossier"),
    ({"t": "created"}, "dossier"),
    ({"t": "status", "id": None, "status": "finished", "at": AT}, "id"),
], ids=["no-kind", "unknown-kind", "bad-id", "bad-status", "at-no-offset", "at-missing",
        "by-not-text", "note-too-long", "unknown-field", "empty-changes", "created-extra-key",
        "created-not-a-map", "created-no-dossier", "status-nil-id"])
def test_malformed_events_name_the_bad_field(wire: dict[str, Any], path: str) -> None:
    with pytest.raises(ValidationError) as info:
        event_from_wire(wire)
    assert [p.path for p in info.value.problems] == [path]


def test_created_event_validates_the_dossier_and_needs_identity() -> None:
    with pytest.raises(ValidationError) as info:
        event_from_wire({"t": "created", "dossier": valid_dossier()})
    assert sorted(p.path for p in info.value.problems) == ["code", "id"]
    bad = {**recorded_dossier(), "status": "xong"}
    with pytest.raises(ValidationError) as info:
        decode_event(encode_event(DossierCreated(bad)))
    assert [p.path for p in info.value.problems] == ["status"]


def test_document_added_with_a_bad_document_is_refused() -> None:
    with pytest.raises(ValidationError):
        event_from_wire({"t": "document", "id": DOSSIER_ID, "at": AT,
                         "document": {"name": "Tờ khai", "copies": 0}})
    with pytest.raises(ValidationError):
        event_from_wire({"t": "document", "id": DOSSIER_ID, "at": AT, "document": None})


def test_decode_event_distinguishes_bad_bytes_from_bad_events() -> None:
    with pytest.raises(DecodeError):
        decode_event(b"\x82\xa1t")  # truncated msgpack
    with pytest.raises(ValidationError):
        decode_event(pack({"t": "status"}))


def test_realistic_events_round_trip() -> None:
    events = [
        DossierCreated(recorded_dossier()),
        StatusChanged(DOSSIER_ID, "supplement_requested", AT, "Lò Văn Sính",
                      "Thiếu giấy chứng sinh bản chính"),
        FieldsChanged(DOSSIER_ID, {"notes": "Đã bổ sung", "due_at": AT}, AT, None),
        DocumentAdded(DOSSIER_ID, {"name": "Giấy chứng sinh", "copies": 1, "path": None}, AT,
                      "Lò Văn Sính"),
    ]
    for event in events:
        data = encode_event(event)
        assert decode_event(data) == event
        assert encode_event(decode_event(data)) == data  # same record bytes, same hash
        assert event_from_wire(event_to_wire(event)) == event


# -- wire form: nil values are left out ----------------------------------------------------------


def test_event_maps_leave_out_nil_values() -> None:
    wires = [
        event_to_wire(StatusChanged(DOSSIER_ID, "processing", AT)),
        event_to_wire(FieldsChanged(DOSSIER_ID, {"notes": "x"}, AT)),
        event_to_wire(DocumentAdded(DOSSIER_ID, {"name": "Tờ khai"}, AT)),
    ]
    assert wires == [
        {"t": "status", "id": DOSSIER_ID, "status": "processing", "at": AT},
        {"t": "fields", "id": DOSSIER_ID, "changes": {"notes": "x"}, "at": AT},
        {"t": "document", "id": DOSSIER_ID, "document": {"name": "Tờ khai"}, "at": AT},
    ]
    assert encode_event(StatusChanged(DOSSIER_ID, "processing", AT)) == pack(wires[0])


def test_created_dossier_leaves_out_its_nil_top_level_fields_only() -> None:
    dossier = validate_dossier({
        "id": DOSSIER_ID, "code": "BANHO-261126-0001", "procedure_code": "1.001193",
        "procedure_name": "Đăng ký khai sinh", "received_at": AT,
        "applicant": {"name": "Giàng Seo Páo", "address": None},
        "documents": [{"name": "Tờ khai", "path": None}],
    }, require_identity=True)
    assert len(dossier) == 16 and dossier["notes"] is None
    wire = event_to_wire(DossierCreated(dossier))["dossier"]
    assert set(wire) == {"id", "code", "procedure_code", "procedure_name", "channel",
                         "applicant", "received_at", "fees", "documents", "status"}
    # Nested maps are written as given; defaults and empty lists are not nil.
    assert wire["applicant"] == {"name": "Giàng Seo Páo", "address": None}
    assert wire["documents"] == [{"name": "Tờ khai", "path": None}]
    assert (wire["fees"], wire["channel"], wire["status"]) == ([], "direct", "received")
    # Decoding gives back the full normalised dossier, nils included.
    assert decode_event(encode_event(DossierCreated(dossier))) == DossierCreated(dossier)


def test_absent_and_nil_optional_keys_decode_alike() -> None:
    """A peer (or an older agent) may still write nil; both forms mean the same event."""
    compact = {"t": "status", "id": DOSSIER_ID, "status": "finished", "at": AT}
    assert event_from_wire({**compact, "by": None, "note": None}) == event_from_wire(compact)
    dossier = {**recorded_dossier(), "notes": None, "field": None}
    compact_dossier = event_to_wire(DossierCreated(dossier))["dossier"]
    assert "notes" not in compact_dossier and "field" not in compact_dossier
    with_nils = {"t": "created", "dossier": {**compact_dossier, "notes": None, "field": None}}
    assert event_from_wire(with_nils) == event_from_wire({"t": "created",
                                                          "dossier": compact_dossier})


def test_nil_inside_changes_is_kept_and_clears_the_field() -> None:
    before = recorded_dossier()
    assert before["notes"] is not None
    event = FieldsChanged(DOSSIER_ID, {"notes": None, "due_at": None}, AT)
    data = encode_event(event)
    assert msgpack.unpackb(data, raw=False)["changes"] == {"notes": None, "due_at": None}
    decoded = decode_event(data)
    assert decoded == event
    after = apply_event(before, decoded)
    assert after["notes"] is None and after["due_at"] is None


# -- derived dossier ids -------------------------------------------------------------------------

AGENT = "ag-0123456789abcdef"
ID_NAMESPACE = uuid.UUID("8d7f3b52-61c4-4e0f-9a43-2a0c5d1e7b19")


def _uuid5(agent_id: str, epoch: int, seq: int) -> str:
    """The standard library's uuid5 (RFC 4122 §4.3), as SPEC.md §6.3 names it."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{agent_id}/{epoch}/{seq}"))


def test_derived_id_known_answer() -> None:
    # SPEC.md §6.3 and §12: the first record of agent ag-0123456789abcdef, epoch 1.
    assert derive_dossier_id(AGENT, 1, 1) == "dee7ca1e-40ad-564e-8d99-959072f07525"
    assert derive_dossier_id(AGENT, 1, 2) == _uuid5(AGENT, 1, 2)


@PROPS
@given(agent=st.text(min_size=1, max_size=64), epoch=st.integers(1, 2**63 - 1),
       seq=st.integers(1, 2**63 - 1))
def test_derived_id_is_a_deterministic_uuid5_of_agent_epoch_and_seq(
    agent: str, epoch: int, seq: int,
) -> None:
    derived = derive_dossier_id(agent, epoch, seq)
    assert derived == derive_dossier_id(agent, epoch, seq) == _uuid5(agent, epoch, seq)
    parsed = uuid.UUID(derived)
    assert str(parsed) == derived  # canonical: lowercase, hyphenated
    assert (parsed.version, parsed.variant) == (5, uuid.RFC_4122)


def test_derived_ids_differ_for_every_record_position() -> None:
    positions = [(agent, epoch, seq) for agent in (AGENT, "ag-0123456789abcdee", "ag-1", "ag-1/1")
                 for epoch in (1, 2, 11) for seq in (1, 2, 11, 111)]
    ids = {derive_dossier_id(*position) for position in positions}
    assert len(ids) == len(positions)


def _derived_dossier(seq: int = 1) -> dict[str, Any]:
    dossier = recorded_dossier()
    dossier["id"] = derive_dossier_id(AGENT, 1, seq)
    return dossier


def test_created_event_without_id_round_trips_only_with_its_derived_id() -> None:
    dossier = _derived_dossier()
    event = DossierCreated(dossier, derived_id=True)
    data = encode_event(event)
    assert "id" not in msgpack.unpackb(data, raw=False)["dossier"]  # it never travels
    assert len(data) < len(encode_event(DossierCreated(dossier)))
    decoded = decode_event(data, derived_id=dossier["id"])
    assert decoded == event and decoded.derived_id
    assert encode_event(decoded) == data  # the same record bytes, so the same hash
    assert event_from_wire(event_to_wire(event), dossier["id"]) == event
    # Without the record's position the id is unknown: the event is invalid.
    with pytest.raises(ValidationError) as info:
        decode_event(data)
    assert [p.path for p in info.value.problems] == ["id"]
    # Elsewhere in the queue the same bytes name another dossier.
    elsewhere = decode_event(data, derived_id=derive_dossier_id(AGENT, 1, 2))
    assert isinstance(elsewhere, DossierCreated)
    assert elsewhere.dossier_id == derive_dossier_id(AGENT, 1, 2) != dossier["id"]


def test_created_event_with_an_id_keeps_it_whatever_the_derived_id() -> None:
    event = DossierCreated(recorded_dossier())
    decoded = decode_event(encode_event(event), derived_id=derive_dossier_id(AGENT, 1, 1))
    assert decoded == event
    assert decoded.dossier_id == DOSSIER_ID and not decoded.derived_id


def test_derived_id_is_validated_like_any_id() -> None:
    data = encode_event(DossierCreated(_derived_dossier(), derived_id=True))
    with pytest.raises(ValidationError) as info:
        decode_event(data, derived_id="hs-0001")
    assert [p.path for p in info.value.problems] == ["id"]
    upper = decode_event(data, derived_id=derive_dossier_id(AGENT, 1, 1).upper())
    assert upper.dossier_id == derive_dossier_id(AGENT, 1, 1)  # normalised


def test_created_event_with_a_nil_id_is_not_a_derived_id() -> None:
    """Only an absent id stands for the derived one; nil is refused (SPEC.md §6.3)."""
    wire = event_to_wire(DossierCreated(_derived_dossier(), derived_id=True))
    wire["dossier"]["id"] = None
    with pytest.raises(ValidationError) as info:
        event_from_wire(wire, derive_dossier_id(AGENT, 1, 1))
    assert [p.path for p in info.value.problems] == ["id"]


def test_created_event_without_code_is_invalid_even_with_a_derived_id() -> None:
    wire = event_to_wire(DossierCreated(_derived_dossier(), derived_id=True))
    del wire["dossier"]["code"]
    with pytest.raises(ValidationError) as info:
        event_from_wire(wire, derive_dossier_id(AGENT, 1, 1))
    assert [p.path for p in info.value.problems] == ["code"]


def test_derived_id_applies_only_to_created_events() -> None:
    other = derive_dossier_id(AGENT, 9, 9)
    event = StatusChanged(DOSSIER_ID, "finished", AT)
    assert decode_event(encode_event(event), derived_id=other) == event
    with pytest.raises(ValidationError):
        decode_event(pack({"t": "status", "status": "finished", "at": AT}), derived_id=other)


# -- properties over generated dossiers --------------------------------------------------------

VI_LOWER = ("aăâbcdđeêghiklmnoôơpqrstuưvxy"
            "áàảãạắằẳẵặấầẩẫậéèẻẽẹếềểễệíìỉĩịóòỏõọốồổỗộớờởỡợúùủũụứừửữựýỳỷỹỵ")
word = st.text(alphabet=VI_LOWER + VI_LOWER.upper(), min_size=1, max_size=8)
phrase = st.lists(word, min_size=1, max_size=5).map(" ".join)
OFFSETS = [timezone(timedelta(hours=7)), UTC, timezone(timedelta(hours=-5, minutes=-30))]
timestamps = st.builds(
    lambda dt, tz: dt.replace(tzinfo=tz).isoformat(),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)),
    st.sampled_from(OFFSETS),
)


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


applicants = st.fixed_dictionaries(
    {"name": phrase},
    optional={
        "type": st.sampled_from(["citizen", "business", "agency", "other"]),
        "id_type": st.just("cccd"),
        "phone": st.from_regex(r"0[0-9]{9}", fullmatch=True),
        "email": st.from_regex(r"[a-z]{1,8}@[a-z]{1,8}\.vn", fullmatch=True),
        "address": _optional(phrase),
        "commune_code": st.from_regex(r"[0-9]{5}", fullmatch=True),
    },
).flatmap(lambda a: st.just(a) if a.get("id_type") != "cccd" else st.builds(
    lambda n: {**a, "id_number": n}, st.from_regex(r"[0-9]{12}", fullmatch=True)))
fees = st.fixed_dictionaries({"name": phrase, "amount": st.integers(0, 10**12)})
documents = st.fixed_dictionaries(
    {"name": phrase},
    optional={"copies": st.integers(1, 1000), "path": st.from_regex(r"[a-z]{1,8}/[a-z]{1,8}\.pdf",
                                                                    fullmatch=True)},
)
intake_dossiers = st.fixed_dictionaries(
    {
        "procedure_code": st.from_regex(r"[123]\.[0-9]{6}", fullmatch=True),
        "procedure_name": phrase,
        "applicant": applicants,
        "received_at": timestamps,
    },
    optional={
        "field": phrase,
        "channel": st.sampled_from(sorted(CHANNELS)),
        "summary": st.lists(phrase, min_size=1, max_size=3).map("\n".join),
        "submitted_at": timestamps,
        "due_at": timestamps,
        "fees": st.lists(fees, max_size=3),
        "documents": st.lists(documents, max_size=3),
        "processing_unit": phrase,
        "status": st.sampled_from(STATUSES),
        "notes": phrase,
    },
)
recorded_dossiers = st.builds(
    lambda d, i, c: validate_dossier({**d, "id": str(i), "code": c}, require_identity=True),
    intake_dossiers, st.uuids(), st.from_regex(r"[A-Z]{2,8}-[0-9]{6}-[0-9]{4}", fullmatch=True),
)


def _nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value


@PROPS
@given(dossier=intake_dossiers)
def test_generated_dossiers_validate_and_validation_is_idempotent(dossier: dict[str, Any]) -> None:
    out = validate_dossier(dossier)
    assert out["status"] == dossier.get("status", "received")
    assert out["channel"] == dossier.get("channel", "direct")
    assert validate_dossier(out) == out


@PROPS
@given(dossier=intake_dossiers)
def test_nfd_input_validates_like_nfc_input(dossier: dict[str, Any]) -> None:
    assert validate_dossier(_map_strings(dossier, _nfd)) == validate_dossier(dossier)


@PROPS
@given(dossier=recorded_dossiers, status=st.sampled_from(STATUSES),
       by=_optional(phrase), note=_optional(phrase), at=timestamps)
def test_generated_events_round_trip(
    dossier: dict[str, Any], status: str, by: str | None, note: str | None, at: str,
) -> None:
    dossier_id = dossier["id"]
    events = [
        DossierCreated(dossier),
        StatusChanged(dossier_id, status, at, by, note),
        FieldsChanged(dossier_id, {"procedure_name": dossier["procedure_name"],
                                   "applicant": dossier["applicant"]}, at, by),
        DocumentAdded(dossier_id, {"name": dossier["applicant"]["name"], "copies": 1,
                                   "path": None}, at, by),
    ]
    for event in events:
        data = encode_event(event)
        assert decode_event(data) == event
        assert encode_event(decode_event(data)) == data
        wire = msgpack.unpackb(data, raw=False)
        assert None not in wire.values()  # nil values are left out
        if event is events[0]:
            assert None not in wire["dossier"].values()


@PROPS
@given(dossier=recorded_dossiers, epoch=st.integers(1, 2**63 - 1),
       seq=st.integers(1, 2**63 - 1))
def test_generated_created_events_without_id_round_trip_with_the_derived_id(
    dossier: dict[str, Any], epoch: int, seq: int,
) -> None:
    derived = derive_dossier_id(AGENT, epoch, seq)
    event = DossierCreated({**dossier, "id": derived}, derived_id=True)
    data = encode_event(event)
    assert "id" not in msgpack.unpackb(data, raw=False)["dossier"]
    assert decode_event(data, derived_id=derived) == event
    assert encode_event(decode_event(data, derived_id=derived)) == data
    with pytest.raises(ValidationError):
        decode_event(data)


@PROPS
@given(before=recorded_dossiers, other=intake_dossiers, data=st.data())
def test_fields_changed_sets_exactly_the_changed_fields(
    before: dict[str, Any], other: dict[str, Any], data: st.DataObject,
) -> None:
    source = validate_dossier(other)
    keys = data.draw(st.sets(st.sampled_from(sorted(MUTABLE_FIELDS)), min_size=1))
    changes = {key: source[key] for key in keys}
    event = FieldsChanged(before["id"], changes, source["received_at"])
    wire_event = decode_event(encode_event(event))
    assert wire_event == event
    after = apply_event(before, wire_event)
    for key in before:
        assert after[key] == (changes[key] if key in changes else before[key]), key


def test_every_status_has_words_in_both_languages() -> None:
    from protocol.dossier import STATUS_CODES, STATUS_LABELS
    assert set(STATUS_LABELS) == set(STATUS_CODES)
    assert all(vi and en and vi != en for vi, en in STATUS_LABELS.values())
