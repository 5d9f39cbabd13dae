"""Property and strictness tests of the wire codec and the protocol v1 messages.

What a peer relies on:

* every message survives ``decode(encode(x)) == x``;
* hostile bytes only ever produce the typed errors of :mod:`protocol.errors`
  (never ``KeyError``, ``TypeError``, ``RecursionError`` ...);
* damaged encodings are refused, and a signed envelope never verifies once a
  bit of what it signs, or of its signature, has changed;
* the decoder is strict (one object, no trailing bytes, no ext types, string
  keys only) and bounded (sizes, item counts, decompressed size).
"""

from __future__ import annotations

import time
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.codec import MAX_DEPTH, compress, pack, unpack
from protocol.errors import (
    DecodeError,
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    SignatureError,
    ValidationError,
)
from protocol.events import decode_event
from protocol.messages import (
    PROTOCOL_VERSION,
    Ack,
    BatchBody,
    CursorRequest,
    EnrollReply,
    EnrollRequest,
    Envelope,
    ErrorReply,
    Limits,
    Verdict,
    decode_ack,
    decode_batch_body,
    decode_cursor_request,
    decode_enroll_reply,
    decode_enroll_request,
    decode_envelope,
    decode_error,
    encode_ack,
    encode_batch_body,
    encode_cursor_request,
    encode_enroll_reply,
    encode_enroll_request,
    encode_envelope,
    encode_error,
)
from protocol.signing import public_key_bytes, sign_envelope, verify_envelope

MAX_SEQ = 2**63 - 1
MSGPACK_INT = st.integers(min_value=-(2**63), max_value=2**64 - 1)

PROPS = settings(max_examples=60, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


# -- strategies of valid messages ---------------------------------------------

short_text = st.text(max_size=24)
opt_text = st.none() | short_text


@st.composite
def batch_bodies(draw: st.DrawFn) -> BatchBody:
    records = tuple(draw(st.lists(st.binary(max_size=120), min_size=1, max_size=12)))
    first_seq = draw(st.integers(1, MAX_SEQ - len(records) + 1))
    return BatchBody(draw(st.integers(1, MAX_SEQ)), first_seq, records, draw(opt_text))


verdicts = st.builds(Verdict, MSGPACK_INT, short_text, short_text)
acks = st.builds(
    Ack, short_text, st.integers(1, MAX_SEQ), st.integers(0, MAX_SEQ),
    st.lists(verdicts, max_size=4).map(tuple), st.none() | st.binary(max_size=40), opt_text,
)
error_replies = st.builds(ErrorReply, short_text, st.text(max_size=80),
                          st.none() | MSGPACK_INT, st.none() | MSGPACK_INT)
cursor_requests = st.builds(CursorRequest, st.integers(1, MAX_SEQ), opt_text)
enroll_requests = st.builds(
    EnrollRequest, st.text(min_size=1, max_size=128), st.binary(min_size=32, max_size=32),
    st.none() | st.text(max_size=200), st.binary(min_size=64, max_size=64),
)
enroll_replies = st.builds(EnrollReply, st.text(max_size=64), st.text(max_size=16),
                           st.none() | st.text(max_size=200), st.integers(0, 9))
envelopes = st.builds(Envelope, short_text, st.text(min_size=1, max_size=64),
                      st.binary(max_size=300), st.binary(min_size=64, max_size=64))


@dataclass(frozen=True)
class Codec:
    name: str
    kind: str  # "kind" field of the map, or "envelope" for the array form
    values: st.SearchStrategy[Any]
    encode: Callable[[Any], bytes]
    decode: Callable[..., Any]

    def __str__(self) -> str:
        return self.name


CODECS = [
    Codec("batch", "batch", batch_bodies(), encode_batch_body, decode_batch_body),
    Codec("ack", "ack", acks, encode_ack, decode_ack),
    Codec("error", "error", error_replies, encode_error, decode_error),
    Codec("cursor", "cursor", cursor_requests, encode_cursor_request, decode_cursor_request),
    Codec("enroll", "enroll", enroll_requests, encode_enroll_request, decode_enroll_request),
    Codec("enrolled", "enrolled", enroll_replies, encode_enroll_reply, decode_enroll_reply),
    Codec("envelope", "envelope", envelopes, encode_envelope, decode_envelope),
]
by_codec = pytest.mark.parametrize("codec", CODECS, ids=str)

# One fixed, valid example of each message (for the non-property tests).
EXAMPLES: dict[str, Any] = {
    "batch": BatchBody(3, 41, (b"\x82\xa1t\xa6status", b"record-2", b""),
                       "2026-11-26T09:30:00+07:00"),
    "ack": Ack("agent-7f3a", 3, 43, (Verdict(42, "invalid_record", "Thiếu họ tên"),),
               b"\x11" * 32, "2026-11-26T02:30:01.120+00:00"),
    "error": ErrorReply("gap", "batch starts at 50; server holds up to 43", 3, 43),
    "cursor": CursorRequest(3, "2026-11-26T09:30:00+07:00"),
    "enroll": EnrollRequest("tok-8d1e", b"\x01" * 32, "Máy một cửa xã Bản Hồ", b"\x02" * 64),
    "enrolled": EnrollReply("agent-7f3a", "02809", "Máy một cửa xã Bản Hồ", 4),
    "envelope": Envelope("batch", "agent-7f3a", b"\x81\xa1v\x01", b"\x03" * 64),
}


def _codec(name: str) -> Codec:
    return next(c for c in CODECS if c.name == name)


# -- arbitrary plain msgpack values, and valid messages with damaged fields ----------

plain_leaf = (st.none() | st.booleans() | MSGPACK_INT | st.floats() | st.text(max_size=12)
              | st.binary(max_size=12))
plain = st.recursive(
    plain_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)

FIELDS = {
    "batch": ["epoch", "first_seq", "count", "codec", "payload", "agent_clock"],
    "ack": ["agent", "epoch", "acked_seq", "verdicts", "batch", "server_time"],
    "error": ["code", "message", "epoch", "acked_seq"],
    "cursor": ["epoch", "agent_clock"],
    "enroll": ["token", "public_key", "name", "proof"],
    "enrolled": ["agent", "commune_code", "name", "counter_block"],
}
# Values that are often *almost* right, so fuzzing reaches past the first check.
near_values = (
    plain | st.integers(-2, 12) | st.just(MAX_SEQ) | st.just(MAX_SEQ + 1) | st.just("zlib")
    | st.binary(min_size=32, max_size=32) | st.binary(min_size=64, max_size=64)
    | st.lists(st.tuples(st.integers(0, 5), st.text(max_size=4), st.text(max_size=4))
               .map(list), max_size=3)
    | st.lists(st.binary(max_size=8), max_size=4).map(lambda rs: compress(pack(rs)))
    | plain.map(lambda v: compress(pack(v)))
)


@st.composite
def mutated_bytes(draw: st.DrawFn, codec: Codec) -> bytes:
    """A valid message of ``codec`` with one to three fields replaced, dropped or added."""
    obj = msgpack.unpackb(codec.encode(draw(codec.values)), raw=False)
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["replace", "replace", "replace", "drop", "add"]))
        if isinstance(obj, list):  # the envelope
            if action == "replace":
                obj[draw(st.integers(0, len(obj) - 1))] = draw(
                    near_values | st.sampled_from([0, 2, True, 1.0]))
            elif action == "drop" and obj:
                del obj[draw(st.integers(0, len(obj) - 1))]
            else:
                obj.append(draw(plain))
            continue
        name = draw(st.sampled_from([*FIELDS[codec.kind], *FIELDS[codec.kind], "v", "kind"]))
        if action == "replace":
            obj[name] = draw(near_values | st.sampled_from([0, 2, True, 1.0, "ack"]))
        elif action == "drop":
            obj.pop(name, None)
        else:
            obj[draw(st.text(max_size=6))] = draw(plain)
    return pack(obj)


def _decodes_or_raises(decode: Callable[[bytes], Any], data: bytes,
                       allowed: tuple[type[ProtocolError], ...] = (DecodeError,)) -> Any:
    """Decode ``data``; only the ``allowed`` typed errors may escape, and they are swallowed.

    Any other exception propagates and fails the calling test with its traceback.
    """
    try:
        return decode(data)
    except allowed as exc:
        assert isinstance(exc.code, ErrorCode)
        assert str(exc)
        return None


# -- round trips ----------------------------------------------------------------------


@by_codec
@PROPS
@given(data=st.data())
def test_round_trip(codec: Codec, data: st.DataObject) -> None:
    value = data.draw(codec.values)
    encoded = codec.encode(value)
    assert isinstance(encoded, bytes)
    assert codec.decode(encoded) == value


@by_codec
def test_round_trip_of_a_realistic_example(codec: Codec) -> None:
    value = EXAMPLES[codec.name]
    assert codec.decode(codec.encode(value)) == value


def test_batch_body_properties_survive_round_trip() -> None:
    body = decode_batch_body(encode_batch_body(EXAMPLES["batch"]))
    assert (body.first_seq, body.last_seq) == (41, 43)
    assert body.records[2] == b""


@pytest.mark.parametrize("body", [
    BatchBody(1, 1, ()),
    BatchBody(0, 1, (b"r",)),
    BatchBody(1, 0, (b"r",)),
])
def test_encoder_refuses_batches_the_protocol_forbids(body: BatchBody) -> None:
    with pytest.raises(LocalProtocolError):
        encode_batch_body(body)


def test_plain_values_round_trip_through_pack_and_unpack() -> None:
    value = {"a": [None, True, False, -1, 2**64 - 1, -(2**63), 1.5, "Hoà", b"\x00\xff"],
             "nested": {"x": {"y": []}}, "": {}}
    assert unpack(pack(value), max_bytes=1000) == value


@PROPS
@given(value=plain)
def test_unpack_round_trips_every_plain_value(value: Any) -> None:
    decoded = unpack(pack(value), max_bytes=10_000)
    # NaN is the only plain value not equal to itself; compare encodings instead.
    assert pack(decoded) == pack(value)


# -- hostile bytes -----------------------------------------------------------------------

ALL_DECODERS: list[tuple[str, Callable[[bytes], Any], tuple[type[ProtocolError], ...]]] = [
    *[(c.name, c.decode, (DecodeError,)) for c in CODECS],
    ("unpack", lambda b: unpack(b, max_bytes=4096), (DecodeError,)),
    ("decode_event", decode_event, (DecodeError, ValidationError)),
]
by_decoder = pytest.mark.parametrize("name,decode,allowed", ALL_DECODERS,
                                     ids=[d[0] for d in ALL_DECODERS])


@by_decoder
@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes_decode_or_raise_typed_error(
    name: str, decode: Callable[[bytes], Any], allowed: tuple[type[ProtocolError], ...],
    data: bytes,
) -> None:
    _decodes_or_raises(decode, data, allowed)


@by_decoder
@FUZZ
@given(value=plain)
def test_arbitrary_msgpack_values_decode_or_raise_typed_error(
    name: str, decode: Callable[[bytes], Any], allowed: tuple[type[ProtocolError], ...],
    value: Any,
) -> None:
    _decodes_or_raises(decode, pack(value), allowed)


@by_codec
@FUZZ
@given(data=st.data())
def test_mutated_messages_decode_or_raise_typed_error(
    codec: Codec, data: st.DataObject,
) -> None:
    raw = data.draw(mutated_bytes(codec))
    decoded = _decodes_or_raises(codec.decode, raw)
    if decoded is not None:
        # Whatever a decoder accepts is a well-formed message that encodes again.
        assert codec.decode(codec.encode(decoded)) == decoded


@by_codec
@PROPS
@given(data=st.data())
def test_every_truncation_is_refused(codec: Codec, data: st.DataObject) -> None:
    encoded = codec.encode(data.draw(codec.values))
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(DecodeError):
        codec.decode(encoded[:cut])


@by_codec
def test_every_truncation_of_an_example_is_refused(codec: Codec) -> None:
    encoded = codec.encode(EXAMPLES[codec.name])
    for cut in range(len(encoded)):
        with pytest.raises(DecodeError):
            codec.decode(encoded[:cut])


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _inside_deflate_data(encoded: bytes, bit: int) -> bool:
    """Whether ``bit`` of an encoded batch lies in the deflate data of its payload.

    Inflate ignores the padding bits after the final block, so a flip there
    legitimately leaves the records unchanged (the zlib header and the
    Adler-32 trailer are still fully checked).
    """
    payload = msgpack.unpackb(encoded, raw=False)["payload"]
    start = encoded.index(payload)
    return start + 2 <= bit // 8 < start + len(payload) - 4


def _refused_or_changed(codec: Codec, value: Any, encoded: bytes, bit: int) -> None:
    decoded = _decodes_or_raises(codec.decode, _flip(encoded, bit))
    if decoded == value:
        assert codec.name == "batch" and _inside_deflate_data(encoded, bit), (
            f"bit {bit} flipped and the message decoded unchanged")


@by_codec
@PROPS
@given(data=st.data())
def test_single_bit_flip_is_refused_or_changes_the_message(
    codec: Codec, data: st.DataObject,
) -> None:
    value = data.draw(codec.values)
    encoded = codec.encode(value)
    bit = data.draw(st.integers(0, len(encoded) * 8 - 1))
    _refused_or_changed(codec, value, encoded, bit)


@by_codec
def test_every_bit_flip_of_an_example_is_refused_or_changes_it(codec: Codec) -> None:
    value = EXAMPLES[codec.name]
    encoded = codec.encode(value)
    for bit in range(len(encoded) * 8):
        _refused_or_changed(codec, value, encoded, bit)


@pytest.mark.parametrize("source", CODECS, ids=str)
@pytest.mark.parametrize("target", CODECS, ids=str)
def test_a_message_is_not_accepted_as_another_kind(source: Codec, target: Codec) -> None:
    if source is target:
        return
    with pytest.raises(DecodeError):
        target.decode(source.encode(EXAMPLES[source.name]))


# -- signatures ------------------------------------------------------------------------------

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = public_key_bytes(KEY)
OTHER_PUBLIC = public_key_bytes(Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))))


def test_signed_envelope_verifies_after_round_trip() -> None:
    env = sign_envelope(KEY, "batch", "agent-7f3a", encode_batch_body(EXAMPLES["batch"]))
    decoded = decode_envelope(encode_envelope(env))
    assert decoded == env
    verify_envelope(decoded, PUBLIC)  # does not raise
    with pytest.raises(SignatureError) as info:
        verify_envelope(decoded, OTHER_PUBLIC)
    assert info.value.code is ErrorCode.BAD_SIGNATURE


def test_signature_covers_kind_and_agent() -> None:
    env = sign_envelope(KEY, "batch", "agent-7f3a", b"body")
    for forged in (Envelope("cursor", env.agent_id, env.signed, env.signature),
                   Envelope(env.kind, "agent-7f3b", env.signed, env.signature)):
        with pytest.raises(SignatureError):
            verify_envelope(forged, PUBLIC)


def test_garbage_public_key_is_a_signature_error() -> None:
    env = sign_envelope(KEY, "batch", "agent-7f3a", b"body")
    for key in (b"", b"\x00" * 31, b"\x00" * 33):
        with pytest.raises(SignatureError):
            verify_envelope(env, key)


@settings(max_examples=15, deadline=None, database=None)
@given(kind=st.sampled_from(["batch", "cursor"]), agent=st.text(min_size=1, max_size=20),
       signed=st.binary(max_size=48))
def test_any_flipped_bit_in_signed_bytes_or_signature_fails_verification(
    kind: str, agent: str, signed: bytes,
) -> None:
    env = sign_envelope(KEY, kind, agent, signed)
    verify_envelope(env, PUBLIC)
    for bit in range(len(signed) * 8):
        with pytest.raises(SignatureError):
            verify_envelope(Envelope(kind, agent, _flip(signed, bit), env.signature), PUBLIC)
    for bit in range(64 * 8):
        with pytest.raises(SignatureError):
            verify_envelope(Envelope(kind, agent, signed, _flip(env.signature, bit)), PUBLIC)


def test_any_flipped_bit_of_an_encoded_signed_envelope_is_refused() -> None:
    signed = encode_cursor_request(EXAMPLES["cursor"])
    env = sign_envelope(KEY, "cursor", "agent-7f3a", signed)
    encoded = encode_envelope(env)
    for bit in range(len(encoded) * 8):
        try:
            damaged = decode_envelope(_flip(encoded, bit))
        except DecodeError:
            continue
        with pytest.raises(SignatureError):
            verify_envelope(damaged, PUBLIC)


# -- strictness ----------------------------------------------------------------------------------


@by_codec
@pytest.mark.parametrize("trailer", [b"\x00", b"\xc0", b"\x90", None], ids=repr)
def test_trailing_bytes_are_refused(codec: Codec, trailer: bytes | None) -> None:
    encoded = codec.encode(EXAMPLES[codec.name])
    trailer = encoded if trailer is None else trailer  # a whole second message
    with pytest.raises(DecodeError):
        codec.decode(encoded + trailer)


def test_unpack_refuses_trailing_bytes() -> None:
    with pytest.raises(DecodeError):
        unpack(pack({"a": 1}) + b"\x01", max_bytes=100)


def test_unpack_refuses_empty_input() -> None:
    with pytest.raises(DecodeError):
        unpack(b"", max_bytes=100)


EXT_ENCODINGS = {
    "ext0-empty": pack(msgpack.ExtType(0, b"")),
    "ext5": msgpack.packb(msgpack.ExtType(5, b"abc")),
    "ext127-long": msgpack.packb(msgpack.ExtType(127, b"x" * 300)),
    "fixext1-type-128": b"\xd4\x80\x00",
    "ext8-len0-type-1": b"\xc7\x00\xff",
    "timestamp32": msgpack.packb(msgpack.Timestamp(1_764_123_000, 0)),
    "timestamp64": msgpack.packb(msgpack.Timestamp(1_764_123_000, 500)),
    "timestamp96": msgpack.packb(msgpack.Timestamp(-1, 0)),
    "datetime": msgpack.packb(datetime(2026, 11, 26, 2, 30, tzinfo=UTC), datetime=True),
}


@pytest.mark.parametrize("raw", EXT_ENCODINGS.values(), ids=EXT_ENCODINGS.keys())
def test_unpack_refuses_ext_types_and_timestamps(raw: bytes) -> None:
    for wrapped in (raw, b"\x91" + raw, b"\x81\xa1k" + raw):  # alone, in an array, in a map
        with pytest.raises(DecodeError):
            unpack(wrapped, max_bytes=4096)


TIMESTAMP = msgpack.Timestamp(1_764_123_000, 0)


@pytest.mark.parametrize("decode,raw", [
    (decode_cursor_request, msgpack.packb({"v": 1, "kind": "cursor", "epoch": 1,
                                           "agent_clock": TIMESTAMP})),
    (decode_ack, msgpack.packb({"v": 1, "kind": "ack", "agent": "a", "epoch": 1, "acked_seq": 0,
                                "verdicts": [], "batch": None, "server_time": TIMESTAMP})),
    (decode_envelope, msgpack.packb([1, "batch", "a", msgpack.ExtType(1, b"x"), b"s" * 64])),
    (decode_batch_body, pack({"v": 1, "kind": "batch", "epoch": 1, "first_seq": 1, "count": 1,
                              "codec": "zlib", "agent_clock": None,
                              "payload": compress(msgpack.packb([TIMESTAMP]))})),
    (decode_event, msgpack.packb({"t": "status", "id": "0b7f1f0e-3a51-4f5e-9c57-1b1f0e3a514f",
                                  "status": "finished", "at": TIMESTAMP})),
], ids=["cursor", "ack", "envelope", "batch-record", "event"])
def test_ext_types_inside_messages_are_refused(decode: Callable[[bytes], Any], raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(raw)


NON_STRING_KEYS = {
    "int": msgpack.packb({1: "x"}),
    "negative-int": msgpack.packb({-1: "x"}),
    "nil": b"\x81\xc0\x01",
    "bool": b"\x81\xc3\x01",
    "float": msgpack.packb({1.5: "x"}),
    "bin": msgpack.packb({b"k": "x"}, use_bin_type=True),
    "array": b"\x81\x90\x01",
    "map": b"\x81\x80\x01",
    "nested-int": msgpack.packb({"a": [{"b": {2: 0}}]}),
    "nested-bin": msgpack.packb({"a": {b"b": 0}}, use_bin_type=True),
}


@pytest.mark.parametrize("raw", NON_STRING_KEYS.values(), ids=NON_STRING_KEYS.keys())
def test_unpack_refuses_non_string_map_keys(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        unpack(raw, max_bytes=100)


@pytest.mark.parametrize("raw", [
    b"\x82\xa1a\x01\xa1a\x02",  # {"a": 1, "a": 2}
    b"\x91\x82\xa1a\x01\xa1a\x01",  # [{"a": 1, "a": 1}]: even with equal values
], ids=["top", "nested"])
def test_unpack_refuses_duplicate_map_keys(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        unpack(raw, max_bytes=100)


def test_message_with_a_duplicated_field_is_refused() -> None:
    # {"v": 1, "kind": "cursor", "epoch": 1, "epoch": 2}: which epoch would the peer use?
    pairs = pack("v") + pack(1) + pack("kind") + pack("cursor") + pack("epoch") + pack(1)
    assert decode_cursor_request(b"\x83" + pairs) == CursorRequest(1)
    with pytest.raises(DecodeError):
        decode_cursor_request(b"\x84" + pairs + pack("epoch") + pack(2))


@pytest.mark.parametrize("codec", [c for c in CODECS if c.kind != "envelope"], ids=str)
def test_messages_refuse_non_string_keys(codec: Codec) -> None:
    obj = msgpack.unpackb(codec.encode(EXAMPLES[codec.name]), raw=False)
    for key in (7, b"epoch"):
        with pytest.raises(DecodeError):
            codec.decode(msgpack.packb({**obj, key: 1}, use_bin_type=True))


@pytest.mark.parametrize("codec", [c for c in CODECS if c.kind != "envelope"], ids=str)
def test_messages_refuse_unknown_fields(codec: Codec) -> None:
    obj = msgpack.unpackb(codec.encode(EXAMPLES[codec.name]), raw=False)
    with pytest.raises(DecodeError):
        codec.decode(pack({**obj, "admin": True}))


@pytest.mark.parametrize("codec", [c for c in CODECS if c.kind != "envelope"], ids=str)
def test_other_protocol_versions_are_unsupported(codec: Codec) -> None:
    obj = msgpack.unpackb(codec.encode(EXAMPLES[codec.name]), raw=False)
    for version in (0, 2, None):
        with pytest.raises(DecodeError) as info:
            codec.decode(pack({**obj, "v": version}))
        assert info.value.code is ErrorCode.UNSUPPORTED_VERSION


def test_envelope_of_another_version_is_unsupported() -> None:
    env = EXAMPLES["envelope"]
    with pytest.raises(DecodeError) as info:
        decode_envelope(pack([2, env.kind, env.agent_id, env.signed, env.signature]))
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION


@pytest.mark.parametrize("version", [True, 1.0], ids=["true", "float"])
def test_protocol_version_must_be_the_integer_one(version: Any) -> None:
    """Decoders refuse ``True`` where they want an int (``_get``); the version too."""
    env = EXAMPLES["envelope"]
    with pytest.raises(DecodeError):
        decode_envelope(pack([version, env.kind, env.agent_id, env.signed, env.signature]))
    with pytest.raises(DecodeError):
        decode_cursor_request(pack({"v": version, "kind": "cursor", "epoch": 1,
                                    "agent_clock": None}))


FIELD_LIMITS = {
    "envelope-signature-63": (decode_envelope, encode_envelope(
        Envelope("batch", "agent", b"body", b"s" * 63))),
    "envelope-signature-65": (decode_envelope, encode_envelope(
        Envelope("batch", "agent", b"body", b"s" * 65))),
    "envelope-agent-empty": (decode_envelope, encode_envelope(
        Envelope("batch", "", b"body", b"s" * 64))),
    "envelope-agent-65": (decode_envelope, encode_envelope(
        Envelope("batch", "a" * 65, b"body", b"s" * 64))),
    "envelope-signed-str": (decode_envelope, pack([1, "batch", "agent", "body", b"s" * 64])),
    "enroll-token-empty": (decode_enroll_request, encode_enroll_request(
        EnrollRequest("", b"k" * 32, None, b"p" * 64))),
    "enroll-token-129": (decode_enroll_request, encode_enroll_request(
        EnrollRequest("t" * 129, b"k" * 32, None, b"p" * 64))),
    "enroll-key-31": (decode_enroll_request, encode_enroll_request(
        EnrollRequest("tok", b"k" * 31, None, b"p" * 64))),
    "enroll-proof-63": (decode_enroll_request, encode_enroll_request(
        EnrollRequest("tok", b"k" * 32, None, b"p" * 63))),
    "enroll-name-201": (decode_enroll_request, encode_enroll_request(
        EnrollRequest("tok", b"k" * 32, "n" * 201, b"p" * 64))),
    "enrolled-block-10": (decode_enroll_reply, encode_enroll_reply(
        EnrollReply("agent", "02809", None, 10))),
    "cursor-epoch-0": (decode_cursor_request, encode_cursor_request(CursorRequest(0))),
    "cursor-epoch-2^63": (decode_cursor_request, encode_cursor_request(CursorRequest(2**63))),
    "ack-acked-seq-negative": (decode_ack, encode_ack(Ack("agent", 1, -1))),
    "ack-verdict-not-triple": (decode_ack, pack({"v": 1, "kind": "ack", "agent": "a", "epoch": 1,
                                                 "acked_seq": 0, "verdicts": [[1, "x"]]})),
    "batch-codec-zstd": (decode_batch_body, pack({
        "v": 1, "kind": "batch", "epoch": 1, "first_seq": 1, "count": 1, "codec": "zstd",
        "payload": compress(pack([b"r"]))})),
}


@pytest.mark.parametrize("decode,raw", FIELD_LIMITS.values(), ids=FIELD_LIMITS.keys())
def test_fields_outside_their_bounds_are_refused(decode: Callable[[bytes], Any],
                                                 raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(raw)


def test_bool_is_not_accepted_as_an_integer_field() -> None:
    with pytest.raises(DecodeError):
        decode_cursor_request(pack({"v": 1, "kind": "cursor", "epoch": True}))
    with pytest.raises(DecodeError):
        decode_ack(pack({"v": 1, "kind": "ack", "agent": "a", "epoch": 1, "acked_seq": False,
                         "verdicts": []}))


def test_unpack_refuses_deep_nesting_without_recursion_error() -> None:
    shallow: Any = []
    for _ in range(MAX_DEPTH):
        shallow = [shallow]
    assert unpack(pack(shallow), max_bytes=1000) == shallow
    with pytest.raises(DecodeError):
        unpack(pack([shallow]), max_bytes=1000)
    for depth in (100, 5000, 200_000):
        with pytest.raises(DecodeError):
            unpack(b"\x91" * depth + b"\xc0", max_bytes=10**6)
        with pytest.raises(DecodeError):
            unpack(b"\x81\xa1k" * depth + b"\xc0", max_bytes=10**6)


# -- size limits -------------------------------------------------------------------------------


def test_unpack_refuses_input_beyond_max_bytes() -> None:
    data = pack("x" * 200)
    assert unpack(data, max_bytes=len(data)) == "x" * 200
    with pytest.raises(DecodeError) as info:
        unpack(data, max_bytes=len(data) - 1)
    assert info.value.code is ErrorCode.TOO_LARGE


def test_unpack_refuses_containers_beyond_max_items() -> None:
    assert unpack(pack(list(range(10))), max_bytes=1000, max_items=10) == list(range(10))
    with pytest.raises(DecodeError):
        unpack(pack(list(range(11))), max_bytes=1000, max_items=10)
    with pytest.raises(DecodeError):
        unpack(pack({str(i): i for i in range(11)}), max_bytes=1000, max_items=10)


def test_unpack_refuses_lengths_that_claim_more_than_the_input() -> None:
    for raw in (b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xffabc", b"\xdd\xff\xff\xff\xff\xc0",
                b"\xdf\xff\xff\xff\xff"):
        with pytest.raises(DecodeError):
            unpack(raw, max_bytes=10**6)


LARGE = "x" * 5000
OVERSIZE_EXAMPLES = {
    "batch": BatchBody(1, 1, (b"r",), LARGE),
    "ack": Ack("agent", 1, 1, (), b"\x00" * 5000),
    "error": ErrorReply("internal", LARGE),
    "cursor": CursorRequest(1, LARGE),
    "envelope": Envelope("batch", "agent", b"\x00" * 5000, b"\x00" * 64),
}


@pytest.mark.parametrize("name", OVERSIZE_EXAMPLES)
def test_messages_beyond_max_body_bytes_are_too_large(name: str) -> None:
    codec = _codec(name)
    encoded = codec.encode(OVERSIZE_EXAMPLES[name])
    assert codec.decode(encoded, Limits(max_body_bytes=len(encoded))) == OVERSIZE_EXAMPLES[name]
    with pytest.raises(DecodeError) as info:
        codec.decode(encoded, Limits(max_body_bytes=len(encoded) - 1))
    assert info.value.code is ErrorCode.TOO_LARGE


@by_codec
def test_inputs_beyond_the_default_body_limit_are_too_large(codec: Codec) -> None:
    data = b"\x00" * (Limits().max_body_bytes + 1)
    with pytest.raises(DecodeError) as info:
        codec.decode(data)
    assert info.value.code is ErrorCode.TOO_LARGE


@pytest.mark.parametrize("codec,value", [
    (_codec("enroll"), EnrollRequest("t", b"\x01" * 32, "n" * 5000, b"\x02" * 64)),
    (_codec("enrolled"), EnrollReply("agent", "c" * 5000, None, 0)),
], ids=["enroll", "enrolled"])
def test_enrollment_messages_beyond_4_kib_are_too_large(codec: Codec, value: Any) -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode(codec.encode(value))
    assert info.value.code is ErrorCode.TOO_LARGE


def _batch_with_payload(payload: bytes, count: int = 1, first_seq: int = 1) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "kind": "batch", "epoch": 1, "first_seq": first_seq,
                 "count": count, "codec": "zlib", "payload": payload, "agent_clock": None})


def test_batch_with_more_records_than_the_limit_is_too_large() -> None:
    body = BatchBody(1, 1, tuple(b"r" for _ in range(11)))
    encoded = encode_batch_body(body)
    assert decode_batch_body(encoded, Limits(max_records=11)) == body
    with pytest.raises(DecodeError) as info:
        decode_batch_body(encoded, Limits(max_records=10))
    assert info.value.code is ErrorCode.TOO_LARGE


def test_batch_inflating_beyond_the_limit_is_too_large() -> None:
    body = BatchBody(1, 1, (b"a" * 3000, b"b" * 3000))
    encoded = encode_batch_body(body)
    assert len(encoded) < 1000  # it compresses well: only the inflated size is too large
    assert decode_batch_body(encoded, Limits(max_inflated_bytes=7000)) == body
    with pytest.raises(DecodeError) as info:
        decode_batch_body(encoded, Limits(max_inflated_bytes=5000))
    assert info.value.code is ErrorCode.TOO_LARGE


def test_batch_record_beyond_the_record_limit_is_refused() -> None:
    encoded = encode_batch_body(BatchBody(1, 1, (b"ok", b"x" * 2000)))
    decode_batch_body(encoded, Limits(max_record_bytes=2000))
    with pytest.raises(DecodeError):
        decode_batch_body(encoded, Limits(max_record_bytes=1999))


def test_batch_whose_last_seq_overflows_is_refused() -> None:
    payload = compress(pack([b"a", b"b"]))
    assert decode_batch_body(_batch_with_payload(payload, 2, MAX_SEQ - 1)).last_seq == MAX_SEQ
    with pytest.raises(DecodeError):
        decode_batch_body(_batch_with_payload(payload, 2, MAX_SEQ))


@pytest.mark.parametrize("payload,count", [
    (compress(pack([b"a", b"b"])), 3),  # fewer records than announced
    (compress(pack([b"a", b"b", b"c"])), 2),  # more records than announced
    (compress(pack(["a"])), 1),  # a record that is not bytes
    (compress(pack({"0": b"a"})), 1),  # not a list
    (compress(pack([b"a"]))[:-1], 1),  # truncated stream
    (compress(pack([b"a"])) + b"\x00", 1),  # trailing garbage after the stream
    (compress(pack([b"a"])) + compress(pack([b"a"])), 1),  # two streams
    (pack([b"a"]), 1),  # not compressed at all
    (b"", 1),
], ids=["fewer", "more", "str-record", "map", "truncated", "trailing", "two-streams",
        "uncompressed", "empty"])
def test_malformed_batch_payloads_are_refused(payload: bytes, count: int) -> None:
    with pytest.raises(DecodeError):
        decode_batch_body(_batch_with_payload(payload, count))


@pytest.fixture(scope="module")
def zlib_bomb() -> bytes:
    """100 MB of zeros, compressed (about 100 kB), built without holding 100 MB."""
    deflater = zlib.compressobj(9)
    chunk = bytes(1024 * 1024)
    parts = [deflater.compress(chunk) for _ in range(100)]
    parts.append(deflater.flush())
    return b"".join(parts)


def test_compression_bomb_is_too_large_and_stops_early(zlib_bomb: bytes) -> None:
    raw = _batch_with_payload(zlib_bomb)
    assert len(raw) < Limits().max_body_bytes  # small on the wire
    started = time.perf_counter()
    with pytest.raises(DecodeError) as info:
        decode_batch_body(raw)
    assert info.value.code is ErrorCode.TOO_LARGE
    assert time.perf_counter() - started < 2.0


def test_compression_bomb_memory_is_bounded_by_the_limit(zlib_bomb: bytes) -> None:
    raw = _batch_with_payload(zlib_bomb)
    limit = 1024 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError) as info:
            decode_batch_body(raw, Limits(max_inflated_bytes=limit))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code is ErrorCode.TOO_LARGE
    # Inflating everything would need 100 MB; stopping at the limit needs about 1 MB.
    assert peak < 8 * limit


# -- known answers (protocol/SPEC.md §12, worked example) --------------------------------------
# Ed25519 is deterministic, so an independent implementation can check itself against these.

SPEC_KEY = Ed25519PrivateKey.from_private_bytes(bytes(32))
SPEC_AGENT = "ag-0123456789abcdef"
SPEC_PUBLIC = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
SPEC_PROOF = ("918c85b44b71332afa8a6988008e6df579056811a9a103ae78dd63886e9dc120"
              "26c0412f8776ed37797b153f5c28c559bd093ed3705ab93e3588e109db7e6709")
SPEC_ENROLL = (
    "86a17601a46b696e64a6656e726f6c6ca5746f6b656eb0746f6b2d4558414d504c452d30303030aa7075626c"
    "69635f6b6579c4203b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29a46e616d"
    "65a450432031a570726f6f66c440" + SPEC_PROOF)
SPEC_ENROLLED = (
    "86a17601a46b696e64a8656e726f6c6c6564a56167656e74b361672d30313233343536373839616263646566"
    "ac636f6d6d756e655f636f6465a53031323334a46e616d65a450432031ad636f756e7465725f626c6f636b00")
SPEC_RECORD_SHA256 = ("45100ec51151951534324446424f0f83fcf9c32b679b8e56d3d56648daf9ed60",
                      "351db17bba780f403d7b86531ffc1bea61042aafc547334d0f099eb876e21731")
SPEC_PAYLOAD = (
    "78da8d904d4ec3301085e1061c210b76c8c84e4a4b7b00d822c13e72ec4963b5b1abd846ea129058579c8056"
    "69d302a24262c3022952ca21d870169caafcedd88ce4e7f766be999bb7eda3cbb1295806d4002fb8d25a40f6"
    "b1b53311fc7d3788fde89011402ddea0a80107116ab326479892c86701774a9c33c5e109133f6820bf4988df"
    "441863f238c814036e33086bc39cec3b91b4835fbaa4293caf46ab2bd9f57ad5abd74ba8f0b490c93416d0e7"
    "65c1122a25f4675c64c0cc820e067dc1a83417791d5d1e8bead6454f417927d55815daa629cd86e583b6512a"
    "8cdb27a4a6bc775910e7ebc78b8f1d1e210ef40cb73b01ee60bc875baeceb885da9dc7007ab4e08ad914a4d1"
    "a3e59ad75d4576432b852967da5063f5fcabed542a03ba5c99ebb1d9fcfdfb761bffddcf8cc95f4852137e43"
    "4ea2e1dced8f2285485e8f2d3f017c4aad48")
SPEC_BATCH_SIGNATURE = ("953aefa47a9b400ade4955407abdcb20051796a0ad4f00f546e45d6679141186"
                        "8199e5d564584808bb2556453c1d11e2d9125c9786ecd46366d16b5151d58804")
SPEC_BATCH_DIGEST = "3befdc72aae7eadba05c527ce168ca8fad4405612a678b4fbf4312b26098b46e"
SPEC_CURSOR_ENVELOPE = (
    "9501a6637572736f72b361672d30313233343536373839616263646566c43d84a17601a46b696e64a663757273"
    "6f72a565706f636801ab6167656e745f636c6f636bb9323032362d31312d32365431303a30363a30302b30373a"
    "3030c440f2679f0e5ce7b07d2873bd43687bf2859234d3386ccb03ac5d6113e8852880cb35771db4ded63ac80d"
    "5fc25aefc9d85ae7d23aa26cf1bfdaf6b1be9e6f69af0d")
SPEC_GAP_ERROR = (
    "86a17601a46b696e64a56572726f72a4636f6465a3676170a76d657373616765d92762617463682073746172"
    "747320617420373b2073657276657220686f6c647320757020746f2032a565706f636801a961636b65645f73"
    "657102")


def _spec_records() -> tuple[bytes, bytes]:
    from protocol.dossier import validate_dossier
    from protocol.events import DossierCreated, StatusChanged, encode_event

    dossier = validate_dossier({
        "id": "3f2b8c1e-7d4a-4e5b-9c6d-0a1b2c3d4e5f", "code": "01234-261126-0001",
        "procedure_code": "1.001193", "procedure_name": "Đăng ký khai sinh",
        "applicant": {"name": "Giàng Seo Páo"}, "received_at": "2026-11-26T09:30:00+07:00",
    }, require_identity=True)
    return (encode_event(DossierCreated(dossier)),
            encode_event(StatusChanged(dossier["id"], "processing", "2026-11-26T10:00:00+07:00",
                                       "can-bo-1", None)))


def test_known_answer_enrollment() -> None:
    from protocol.signing import sign_enrollment, verify_enrollment

    assert public_key_bytes(SPEC_KEY).hex() == SPEC_PUBLIC
    proof = sign_enrollment(SPEC_KEY, "tok-EXAMPLE-0000")
    assert proof.hex() == SPEC_PROOF
    verify_enrollment(bytes.fromhex(SPEC_PUBLIC), "tok-EXAMPLE-0000", proof)
    with pytest.raises(SignatureError):
        verify_enrollment(bytes.fromhex(SPEC_PUBLIC), "tok-EXAMPLE-0001", proof)
    request = EnrollRequest("tok-EXAMPLE-0000", bytes.fromhex(SPEC_PUBLIC), "PC 1", proof)
    assert encode_enroll_request(request).hex() == SPEC_ENROLL
    assert decode_enroll_request(bytes.fromhex(SPEC_ENROLL)) == request
    reply = EnrollReply(SPEC_AGENT, "01234", "PC 1", 0)
    assert encode_enroll_reply(reply).hex() == SPEC_ENROLLED
    assert decode_enroll_reply(bytes.fromhex(SPEC_ENROLLED)) == reply


def test_known_answer_records_and_batch() -> None:
    import hashlib

    from protocol.codec import decompress
    from protocol.messages import batch_digest

    records = _spec_records()
    assert tuple(hashlib.sha256(r).hexdigest() for r in records) == SPEC_RECORD_SHA256
    payload = bytes.fromhex(SPEC_PAYLOAD)
    assert decompress(payload, max_bytes=10_000) == pack(list(records))
    # The body as SPEC.md gives it (its payload, whatever zlib this machine has).
    body = pack({"v": 1, "kind": "batch", "epoch": 1, "first_seq": 1, "count": 2,
                 "codec": "zlib", "payload": payload, "agent_clock": "2026-11-26T10:05:00+07:00"})
    assert len(body) == 426
    assert decode_batch_body(body) == BatchBody(1, 1, records, "2026-11-26T10:05:00+07:00")
    env = sign_envelope(SPEC_KEY, "batch", SPEC_AGENT, body)
    assert env.signature.hex() == SPEC_BATCH_SIGNATURE
    assert batch_digest(env).hex() == SPEC_BATCH_DIGEST
    assert len(encode_envelope(env)) == 523
    verify_envelope(decode_envelope(encode_envelope(env)), bytes.fromhex(SPEC_PUBLIC))


def test_known_answer_cursor_envelope_and_gap_error() -> None:
    raw = bytes.fromhex(SPEC_CURSOR_ENVELOPE)
    env = decode_envelope(raw)
    verify_envelope(env, bytes.fromhex(SPEC_PUBLIC))
    assert (env.kind, env.agent_id) == ("cursor", SPEC_AGENT)
    assert decode_cursor_request(env.signed) == CursorRequest(1, "2026-11-26T10:06:00+07:00")
    again = sign_envelope(SPEC_KEY, "cursor", SPEC_AGENT,
                          encode_cursor_request(CursorRequest(1, "2026-11-26T10:06:00+07:00")))
    assert encode_envelope(again) == raw
    gap = ErrorReply("gap", "batch starts at 7; server holds up to 2", 1, 2)
    assert encode_error(gap).hex() == SPEC_GAP_ERROR
    assert decode_error(bytes.fromhex(SPEC_GAP_ERROR)) == gap
