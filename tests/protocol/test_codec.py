"""Property and strictness tests of the wire codec and the protocol v1 messages.

What a peer relies on:

* every message survives ``decode(encode(x)) == x``;
* hostile bytes only ever produce the typed errors of :mod:`protocol.errors`
  (never ``KeyError``, ``TypeError``, ``ZstdError``, ``RecursionError`` ...);
* damaged encodings are refused, and a signed envelope never verifies once a
  bit of what it signs, or of its signature, has changed;
* the decoder is strict (one object, no trailing bytes, no ext types, string
  keys only) and bounded (sizes, item counts, decompressed size);
* a batch payload is exactly one zstd frame that declares its size and its
  dictionary, holding exactly ``count`` concatenated records: a frame that
  omits or exceeds its size is refused before anything is inflated.
"""

from __future__ import annotations

import base64
import hashlib
import time
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgpack
import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import zstd_dictionaries
from protocol.codec import MAX_DEPTH, pack, split_concatenated, unpack
from protocol.compression import (
    CURRENT_DICTIONARY_ID,
    DICTIONARIES,
    compress,
    decompress,
    level_for_rate,
)
from protocol.errors import (
    DecodeError,
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    SignatureError,
    ValidationError,
)
from protocol.events import decode_event, derive_dossier_id
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
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

PROPS = settings(max_examples=60, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


# -- arbitrary plain msgpack values ---------------------------------------------------------

plain_leaf = (st.none() | st.booleans() | MSGPACK_INT | st.floats() | st.text(max_size=12)
              | st.binary(max_size=12))
plain = st.recursive(
    plain_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
# A record is exactly one msgpack object (its bytes are otherwise opaque to a batch).
records = plain.map(pack)


# -- strategies of valid messages ---------------------------------------------

short_text = st.text(max_size=24)
opt_text = st.none() | short_text


@st.composite
def batch_bodies(draw: st.DrawFn) -> BatchBody:
    recs = tuple(draw(st.lists(records, min_size=1, max_size=12)))
    first_seq = draw(st.integers(1, MAX_SEQ - len(recs) + 1))
    return BatchBody(draw(st.integers(1, MAX_SEQ)), first_seq, recs, draw(opt_text))


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
    "batch": BatchBody(3, 41, (b"\x81\xa1t\xa6status", pack(["record", 2]), b"\xc0"),
                       "2026-11-26T09:30:00+07:00"),
    "ack": Ack("agent-7f3a", 3, 43, (Verdict(42, "invalid_record", "Thiếu họ tên"),),
               b"\x11" * 32, "2026-11-26T02:30:01.120+00:00"),
    "error": ErrorReply("gap", "batch starts at 50; server holds up to 43", 3, 43),
    "cursor": CursorRequest(3, "2026-11-26T09:30:00+07:00"),
    "enroll": EnrollRequest("cs1.8d1eQm2x", b"\x01" * 32, "Máy một cửa xã Bản Hồ", b"\x02" * 64),
    "enrolled": EnrollReply("agent-7f3a", "02809", "Máy một cửa xã Bản Hồ", 4),
    "envelope": Envelope("batch", "agent-7f3a", b"\x81\xa1v\x01", b"\x03" * 64),
}


def _codec(name: str) -> Codec:
    return next(c for c in CODECS if c.name == name)


# -- valid messages with damaged fields -----------------------------------------------------

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
    plain | st.integers(-2, 12) | st.just(MAX_SEQ) | st.just(MAX_SEQ + 1)
    | st.sampled_from(["zstd", "zlib"])
    | st.binary(min_size=32, max_size=32) | st.binary(min_size=64, max_size=64)
    | st.lists(st.tuples(st.integers(0, 5), st.text(max_size=4), st.text(max_size=4))
               .map(list), max_size=3)
    | st.lists(records, min_size=1, max_size=4).map(lambda rs: compress(b"".join(rs)))
    | st.lists(records, min_size=1, max_size=4).map(
        lambda rs: compress(b"".join(rs), level=1, dict_id=0))
    | plain.map(lambda v: compress(pack(v)))
    | plain.map(lambda v: zlib.compress(pack([pack(v)]), 9))  # the former codec's payload
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
    assert body.records[2] == b"\xc0"  # a one-byte record keeps its bytes


@PROPS
@given(body=batch_bodies(), level=st.integers(1, 22))
def test_batch_round_trips_at_every_level_the_sender_may_choose(body: BatchBody,
                                                                level: int) -> None:
    assert decode_batch_body(encode_batch_body(body, level=level)) == body


@PROPS
@given(recs=st.lists(records, min_size=1, max_size=20))
def test_batch_payload_is_one_frame_of_the_concatenated_records(recs: list[bytes]) -> None:
    body = BatchBody(1, 1, tuple(recs))
    fields = msgpack.unpackb(encode_batch_body(body), raw=False)
    assert (fields["codec"], fields["count"]) == ("zstd", len(recs))
    payload = fields["payload"]
    assert payload.startswith(ZSTD_MAGIC)
    params = zstandard.get_frame_parameters(payload)
    assert params.content_size == sum(map(len, recs))  # declared, and no framing added
    assert params.dict_id == CURRENT_DICTIONARY_ID
    assert decompress(payload, max_bytes=1 << 20) == b"".join(recs)
    assert split_concatenated(b"".join(recs), len(recs), max_bytes=1 << 20) == tuple(recs)


@pytest.mark.parametrize("body", [
    BatchBody(1, 1, ()),
    BatchBody(0, 1, (b"\xc0",)),
    BatchBody(1, 0, (b"\xc0",)),
    BatchBody(2**63, 1, (b"\xc0",)),
    BatchBody(1, MAX_SEQ, (b"\xc0", b"\xc0")),
], ids=["empty", "epoch-0", "seq-0", "epoch-2^63", "last-seq-2^63"])
def test_encoder_refuses_batches_the_protocol_forbids(body: BatchBody) -> None:
    with pytest.raises(LocalProtocolError):
        encode_batch_body(body)


def test_last_seq_at_the_maximum_is_allowed() -> None:
    body = BatchBody(MAX_SEQ, MAX_SEQ - 1, (b"\xc0", b"\xc0"))
    assert decode_batch_body(encode_batch_body(body)) == body


@pytest.mark.parametrize("recs", [
    (b"",),
    (b"\x92\x01",),  # truncated: an array of 2 holding one item
    (b"\x01\x02",),  # two objects in one record
    (b"\x01\x02", b""),  # the same number of objects, other boundaries
    (b"\xc1",),  # the reserved byte
], ids=["empty", "truncated", "two-objects", "re-split", "reserved-byte"])
def test_encoder_never_builds_a_batch_that_decodes_differently(recs: tuple[bytes, ...]) -> None:
    body = BatchBody(1, 1, recs)
    try:
        encoded = encode_batch_body(body)
    except LocalProtocolError:
        return  # refusing to encode is fine
    assert decode_batch_body(encoded) == body


def test_reference_enrollment_tokens_fit_the_enroll_request() -> None:
    """syncd makes tokens as "cs1." + secrets.token_urlsafe(24): 36 characters (SPEC.md §8)."""
    import secrets

    token = "cs1." + secrets.token_urlsafe(24)
    assert len(token) == 36 and not token.startswith("-")
    request = EnrollRequest(token, b"\x01" * 32, None, b"\x02" * 64)
    assert decode_enroll_request(encode_enroll_request(request)) == request


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
    ("decode_event-derived",
     lambda b: decode_event(b, derived_id="dee7ca1e-40ad-564e-8d99-959072f07525"),
     (DecodeError, ValidationError)),
    ("decompress", lambda b: decompress(b, max_bytes=4096), (DecodeError,)),
    ("decompress-after-magic", lambda b: decompress(ZSTD_MAGIC + b, max_bytes=4096),
     (DecodeError,)),
    ("split_concatenated", lambda b: split_concatenated(b, 3, max_bytes=4096), (DecodeError,)),
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


@st.composite
def damaged_frames(draw: st.DrawFn) -> tuple[bytes, int]:
    """A valid payload frame of some records, then one to four byte-level damages."""
    recs = draw(st.lists(records, min_size=1, max_size=6))
    frame = bytearray(compress(b"".join(recs), level=draw(st.sampled_from([1, 9, 19])),
                               dict_id=draw(st.sampled_from([CURRENT_DICTIONARY_ID, 0]))))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut", "append"]))
        pos = draw(st.integers(0, max(len(frame) - 1, 0)))
        if action == "flip" and frame:
            frame[pos] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and frame:
            frame[pos] = draw(st.integers(0, 255))
        elif action == "insert":
            frame[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif action == "delete" and frame:
            del frame[pos]
        elif action == "cut":
            del frame[pos:]
        else:
            frame += draw(st.binary(min_size=1, max_size=8))
    return bytes(frame), len(recs)


@FUZZ
@given(damaged=damaged_frames())
def test_damaged_payload_frames_raise_only_decode_error(damaged: tuple[bytes, int]) -> None:
    frame, count = damaged
    out = _decodes_or_raises(lambda b: decompress(b, max_bytes=4096), frame)
    assert out is None or len(out) <= 4096
    body = _decodes_or_raises(decode_batch_body, _batch_with_payload(frame, count))
    assert body is None or len(body.records) == count


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


def test_every_truncation_of_a_payload_frame_is_refused() -> None:
    body = EXAMPLES["batch"]
    payload = msgpack.unpackb(encode_batch_body(body), raw=False)["payload"]
    for cut in range(len(payload)):
        with pytest.raises(DecodeError):
            decompress(payload[:cut], max_bytes=4096)
        with pytest.raises(DecodeError):
            decode_batch_body(_batch_with_payload(payload[:cut], len(body.records)))


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _frame_header_size(frame: bytes) -> int:
    """Bytes of a zstd frame header (RFC 8878 §3.1.1.1): magic, descriptor, window
    descriptor, dictionary id and content size fields."""
    descriptor = frame[4]
    single_segment = descriptor >> 5 & 1
    content_size_bytes = (single_segment, 2, 4, 8)[descriptor >> 6]
    dict_id_bytes = (0, 1, 2, 4)[descriptor & 3]
    return 5 + (1 - single_segment) + dict_id_bytes + content_size_bytes


def _flip_may_leave_the_payload_unchanged(encoded: bytes, bit: int) -> bool:
    """Whether ``bit`` of an encoded batch may be flipped without changing its records.

    A decoder ignores the frame descriptor's unused bit (RFC 8878 §3.1.1.1.1.4),
    and the frame carries no checksum, so a few flips inside compressed blocks
    still decode to the same bytes (the envelope signature covers them). Every
    other header bit (magic, flags, dictionary id, content size) is checked.
    """
    payload = msgpack.unpackb(encoded, raw=False)["payload"]
    offset = bit // 8 - encoded.index(payload)
    if offset == 4 and bit % 8 == 4:
        return True
    return _frame_header_size(payload) <= offset < len(payload)


def _refused_or_changed(codec: Codec, value: Any, encoded: bytes, bit: int) -> None:
    decoded = _decodes_or_raises(codec.decode, _flip(encoded, bit))
    if decoded == value:
        assert codec.name == "batch" and _flip_may_leave_the_payload_unchanged(encoded, bit), (
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


def test_every_bit_flip_of_a_frame_header_except_the_unused_bit_is_refused() -> None:
    body = EXAMPLES["batch"]
    payload = msgpack.unpackb(encode_batch_body(body), raw=False)["payload"]
    header = _frame_header_size(payload)
    assert header == 4 + 1 + 2 + 1  # magic, descriptor, 2-byte dictionary id, 1-byte size
    for bit in range(header * 8):
        if bit == 4 * 8 + 4:
            assert decompress(_flip(payload, bit), max_bytes=4096) == b"".join(body.records)
            continue
        decoded = _decodes_or_raises(decode_batch_body,
                                     _batch_with_payload(_flip(payload, bit), 3))
        assert decoded is None, f"header bit {bit} flipped and the batch still decoded"


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
    (decode_batch_body, msgpack.packb({"v": 1, "kind": "batch", "epoch": 1, "first_seq": 1,
                                       "count": 1, "codec": "zstd", "agent_clock": TIMESTAMP,
                                       "payload": compress(b"\xc0")})),
    (decode_event, msgpack.packb({"t": "status", "id": "0b7f1f0e-3a51-4f5e-9c57-1b1f0e3a514f",
                                  "status": "finished", "at": TIMESTAMP})),
], ids=["cursor", "ack", "envelope", "batch-clock", "event"])
def test_ext_types_inside_messages_are_refused(decode: Callable[[bytes], Any], raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(raw)


NON_STRICT_RECORDS = {
    "ext": msgpack.packb(msgpack.ExtType(5, b"abc")),
    "timestamp": msgpack.packb({"t": "status", "at": TIMESTAMP}),
    "int-key": msgpack.packb({1: "x"}),
    "duplicate-key": b"\x82\xa1t\x01\xa1t\x02",
    "invalid-utf8": b"\x81\xa1t\xa2\xff\xfe",
    "too-deep": b"\x91" * (MAX_DEPTH + 1) + b"\xc0",
}


@pytest.mark.parametrize("record", NON_STRICT_RECORDS.values(), ids=NON_STRICT_RECORDS.keys())
def test_batch_carries_records_as_opaque_bytes_and_decode_event_refuses_bad_ones(
    record: bytes,
) -> None:
    """The batch finds record boundaries only; each record's strictness is checked when
    it is decoded, so one bad record is quarantined on its own, not the whole batch."""
    body = BatchBody(1, 1, (b"\xc0", record, b"\x01"))
    decoded = decode_batch_body(encode_batch_body(body))
    assert decoded == body
    with pytest.raises(DecodeError):
        decode_event(decoded.records[1])


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
    "batch-codec-zlib": (decode_batch_body, pack({  # the former codec is gone
        "v": 1, "kind": "batch", "epoch": 1, "first_seq": 1, "count": 1, "codec": "zlib",
        "payload": zlib.compress(pack([b"\xc0"]), 9)})),
    "batch-codec-zlib-zstd-payload": (decode_batch_body, pack({
        "v": 1, "kind": "batch", "epoch": 1, "first_seq": 1, "count": 1, "codec": "zlib",
        "payload": compress(b"\xc0")})),
    "batch-codec-zstd-zlib-payload": (decode_batch_body, pack({
        "v": 1, "kind": "batch", "epoch": 1, "first_seq": 1, "count": 1, "codec": "zstd",
        "payload": zlib.compress(b"\xc0", 9)})),
    "batch-codec-missing": (decode_batch_body, pack({
        "v": 1, "kind": "batch", "epoch": 1, "first_seq": 1, "count": 1,
        "payload": compress(b"\xc0")})),
    "batch-payload-str": (decode_batch_body, pack({
        "v": 1, "kind": "batch", "epoch": 1, "first_seq": 1, "count": 1, "codec": "zstd",
        "payload": "\xc0"})),
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
    "batch": BatchBody(1, 1, (b"\xc0",), LARGE),
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
                 "count": count, "codec": "zstd", "payload": payload, "agent_clock": None})


def test_batch_with_more_records_than_the_limit_is_too_large() -> None:
    body = BatchBody(1, 1, tuple(b"\x01" for _ in range(11)))
    encoded = encode_batch_body(body)
    assert decode_batch_body(encoded, Limits(max_records=11)) == body
    with pytest.raises(DecodeError) as info:
        decode_batch_body(encoded, Limits(max_records=10))
    assert info.value.code is ErrorCode.TOO_LARGE


def test_batch_inflating_beyond_the_limit_is_too_large() -> None:
    body = BatchBody(1, 1, (pack(b"a" * 3000), pack(b"b" * 3000)))
    inflated = sum(map(len, body.records))
    encoded = encode_batch_body(body)
    assert len(encoded) < 1000  # it compresses well: only the inflated size is too large
    assert decode_batch_body(encoded, Limits(max_inflated_bytes=inflated)) == body
    with pytest.raises(DecodeError) as info:
        decode_batch_body(encoded, Limits(max_inflated_bytes=inflated - 1))
    assert info.value.code is ErrorCode.TOO_LARGE


def test_batch_record_beyond_the_record_limit_is_too_large() -> None:
    big = pack(b"x" * 2000)  # 2003 bytes
    encoded = encode_batch_body(BatchBody(1, 1, (pack("ok"), big)))
    decode_batch_body(encoded, Limits(max_record_bytes=len(big)))
    with pytest.raises(DecodeError) as info:
        decode_batch_body(encoded, Limits(max_record_bytes=len(big) - 1))
    assert info.value.code is ErrorCode.TOO_LARGE


def test_batch_whose_last_seq_overflows_is_refused() -> None:
    payload = compress(b"\x01\x02")
    assert decode_batch_body(_batch_with_payload(payload, 2, MAX_SEQ - 1)).last_seq == MAX_SEQ
    with pytest.raises(DecodeError):
        decode_batch_body(_batch_with_payload(payload, 2, MAX_SEQ))


def _frame_fields(frame: bytes) -> tuple[int, int, int, int]:
    """(dictionary id offset, its size, content size offset, its size) of a frame header."""
    descriptor = frame[4]
    single_segment = descriptor >> 5 & 1
    dict_at, dict_size = 5 + (1 - single_segment), (0, 1, 2, 4)[descriptor & 3]
    return dict_at, dict_size, dict_at + dict_size, (single_segment, 2, 4, 8)[descriptor >> 6]


def _declaring(frame: bytes, size: int) -> bytes:
    """``frame`` with its content size field rewritten to claim ``size`` bytes."""
    _, _, at, width = _frame_fields(frame)
    stored = size - 256 if width == 2 else size  # the 2-byte field is offset by 256
    patched = frame[:at] + stored.to_bytes(width, "little") + frame[at + width:]
    assert zstandard.get_frame_parameters(patched).content_size == size
    return patched


def _with_dictionary_id(frame: bytes, dict_id: int) -> bytes:
    at, width, _, _ = _frame_fields(frame)
    patched = frame[:at] + dict_id.to_bytes(width, "little") + frame[at + width:]
    assert zstandard.get_frame_parameters(patched).dict_id == dict_id
    return patched


TWO = b"\x01" + pack({"t": "x"})  # two records
# A record that matches the shipped dictionary, so its frame refers to it.
CREATED = pack({"t": "created", "dossier": {
    "procedure_code": "1.001193", "procedure_name": "Đăng ký khai sinh", "channel": "direct",
    "received_at": "2026-11-26T09:30:00+07:00", "fees": [], "documents": [],
    "status": "received"}})
SKIPPABLE = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"skip"
MALFORMED_PAYLOADS = {
    "fewer-records": (compress(TWO), 3),
    "more-records": (compress(TWO + b"\xc0"), 2),
    "record-cut-short": (compress(TWO[:-1]), 2),
    "trailing-bytes-inside": (compress(TWO + b"\x92"), 2),  # a third, unfinished object
    "reserved-byte": (compress(b"\x01\xc1"), 2),
    "nested-beyond-the-framer": (compress(b"\x91" * 2000 + b"\xc0"), 1),
    "frame-truncated": (compress(TWO)[:-1], 2),
    "trailing-zero-byte": (compress(TWO) + b"\x00", 2),
    "trailing-garbage": (compress(TWO) + b"garbage", 2),
    "trailing-skippable-frame": (compress(TWO) + SKIPPABLE, 2),
    "leading-skippable-frame": (SKIPPABLE + compress(TWO), 2),
    "two-frames": (compress(TWO[:1]) + compress(TWO[1:]), 2),
    "no-content-size": (zstandard.ZstdCompressor(write_content_size=False).compress(TWO), 2),
    "size-too-small": (_declaring(compress(TWO + bytes(300)), 300), 302),
    "size-too-large": (_declaring(compress(TWO + bytes(300)), 400), 302),
    "unknown-dictionary": (_with_dictionary_id(compress(TWO), CURRENT_DICTIONARY_ID + 1), 2),
    "dictionary-not-named": (zstandard.ZstdCompressor(
        dict_data=zstandard.ZstdCompressionDict(DICTIONARIES[CURRENT_DICTIONARY_ID]),
        write_dict_id=False).compress(CREATED), 1),
    "bad-checksum": (_flip(zstandard.ZstdCompressor(write_checksum=True).compress(TWO), -1),
                     2),  # the last bit of the checksum
    "empty-frame": (compress(b""), 1),
    "empty-frame-then-records": (compress(b"") + compress(TWO), 2),
    "zlib-stream": (zlib.compress(TWO, 9), 2),
    "uncompressed": (TWO, 2),
    "magic-only": (ZSTD_MAGIC, 2),
    "empty": (b"", 1),
}


@pytest.mark.parametrize("payload,count", MALFORMED_PAYLOADS.values(),
                         ids=MALFORMED_PAYLOADS.keys())
def test_malformed_batch_payloads_are_refused(payload: bytes, count: int) -> None:
    with pytest.raises(DecodeError) as info:
        decode_batch_body(_batch_with_payload(payload, count))
    assert info.value.code is ErrorCode.MALFORMED


@pytest.mark.parametrize("name", [
    "trailing-zero-byte", "trailing-garbage", "trailing-skippable-frame", "two-frames",
    "frame-truncated", "no-content-size", "size-too-small", "size-too-large",
    "unknown-dictionary", "bad-checksum", "zlib-stream", "uncompressed", "magic-only", "empty",
])
def test_decompress_refuses_anything_but_one_whole_frame_with_its_size(name: str) -> None:
    with pytest.raises(DecodeError):
        decompress(MALFORMED_PAYLOADS[name][0], max_bytes=4096)


@pytest.mark.parametrize("payload", [
    compress(b"") + b"garbage",
    compress(b"") + compress(TWO),
    compress(b"")[:-1],
    b"\x50\x2a\x4d\x18" + bytes(4),  # an empty skippable frame, no data frame at all
    b"\x50\x2a\x4d\x18" + bytes(4) + compress(TWO),
], ids=["empty-then-garbage", "empty-then-frame", "empty-truncated", "skippable-only",
        "skippable-then-frame"])
def test_decompress_refuses_frames_of_size_zero_with_anything_after_them(
    payload: bytes,
) -> None:
    with pytest.raises(DecodeError):
        decompress(payload, max_bytes=4096)


def test_a_frame_that_really_uses_another_dictionary_is_refused() -> None:
    samples = [pack({"t": "status", "n": i, "by": "cán bộ " * (i % 7)}) for i in range(300)]
    other = zstandard.train_dictionary(1024, samples, dict_id=CURRENT_DICTIONARY_ID + 1)
    assert other.dict_id() not in DICTIONARIES
    frame = zstandard.ZstdCompressor(dict_data=other).compress(b"".join(samples[:2]))
    with pytest.raises(DecodeError, match="unknown dictionary"):
        decode_batch_body(_batch_with_payload(frame, 2))


def test_frames_without_a_dictionary_or_with_a_checksum_are_accepted() -> None:
    """The decoder picks the dictionary by the frame's id, 0 meaning none; a checksum
    is optional; the level is the sender's choice."""
    body = EXAMPLES["batch"]
    joined = b"".join(body.records)
    frames = [
        compress(joined, dict_id=0),
        zstandard.ZstdCompressor(write_checksum=True).compress(joined),
        zstandard.ZstdCompressor(
            level=3, write_checksum=True,
            dict_data=zstandard.ZstdCompressionDict(DICTIONARIES[CURRENT_DICTIONARY_ID]),
        ).compress(joined),
        *(compress(joined, level=level) for level in (1, 6, 12, 19, 22)),
    ]
    for frame in frames:
        assert decode_batch_body(_batch_with_payload(frame, 3)).records == body.records


# -- compression bombs ----------------------------------------------------------------------

BOMB_BYTES = 100 * 1024 * 1024


def _zeros_frame(*, declare_size: bool) -> bytes:
    """100 MB of zeros as one frame (about 3 kB), built without holding 100 MB."""
    cctx = zstandard.ZstdCompressor(level=3, write_content_size=declare_size)
    writer = cctx.compressobj(size=BOMB_BYTES if declare_size else -1)
    chunk = bytes(1024 * 1024)
    return b"".join([*(writer.compress(chunk) for _ in range(100)), writer.flush()])


@pytest.fixture(scope="module")
def zstd_bomb() -> bytes:
    bomb = _zeros_frame(declare_size=True)
    assert zstandard.get_frame_parameters(bomb).content_size == BOMB_BYTES
    return bomb


@pytest.fixture(scope="module")
def sizeless_bomb() -> bytes:
    bomb = _zeros_frame(declare_size=False)
    assert zstandard.get_frame_parameters(bomb).content_size == zstandard.CONTENTSIZE_UNKNOWN
    return bomb


def _refused_quickly(raw: bytes) -> DecodeError:
    assert len(raw) < 10_000  # tiny on the wire
    started = time.perf_counter()
    with pytest.raises(DecodeError) as info:
        decode_batch_body(raw)
    assert time.perf_counter() - started < 1.0
    return info.value


def test_compression_bomb_is_too_large_before_inflating(zstd_bomb: bytes) -> None:
    error = _refused_quickly(_batch_with_payload(zstd_bomb))
    assert error.code is ErrorCode.TOO_LARGE


def test_compression_bomb_without_a_declared_size_is_refused(sizeless_bomb: bytes) -> None:
    error = _refused_quickly(_batch_with_payload(sizeless_bomb))
    assert error.code is ErrorCode.MALFORMED


@pytest.mark.parametrize("claim", [1, 1000, 1024 * 1024, 32 * 1024 * 1024],
                         ids=["1", "1000", "1MiB", "32MiB-the-limit"])
def test_compression_bomb_that_understates_its_size_is_refused(zstd_bomb: bytes,
                                                               claim: int) -> None:
    error = _refused_quickly(_batch_with_payload(_declaring(zstd_bomb, claim)))
    assert error.code is ErrorCode.MALFORMED


def _peak_memory_of_refusing(raw: bytes, limits: Limits) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError):
            decode_batch_body(raw, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def test_compression_bomb_memory_is_bounded_by_the_declared_size(zstd_bomb: bytes,
                                                                 sizeless_bomb: bytes) -> None:
    limit = 1024 * 1024
    limits = Limits(max_inflated_bytes=limit)
    # Refused from the frame header alone: nothing near the 100 MB is allocated.
    assert _peak_memory_of_refusing(_batch_with_payload(zstd_bomb), limits) < 64 * 1024
    assert _peak_memory_of_refusing(_batch_with_payload(sizeless_bomb), limits) < 64 * 1024
    # A frame that lies gets at most the size it claims, which is within the limit.
    lying = _batch_with_payload(_declaring(zstd_bomb, limit))
    assert _peak_memory_of_refusing(lying, limits) < 2 * limit


def test_declared_size_is_checked_against_the_limit_exactly() -> None:
    joined = b"".join(EXAMPLES["batch"].records)
    frame = compress(joined)
    assert decompress(frame, max_bytes=len(joined)) == joined
    with pytest.raises(DecodeError) as info:
        decompress(frame, max_bytes=len(joined) - 1)
    assert info.value.code is ErrorCode.TOO_LARGE


# -- record framing ----------------------------------------------------------------------------


@PROPS
@given(recs=st.lists(records, min_size=1, max_size=10), data=st.data())
def test_split_finds_exactly_the_concatenated_records(recs: list[bytes],
                                                      data: st.DataObject) -> None:
    joined = b"".join(recs)
    assert split_concatenated(joined, len(recs), max_bytes=1 << 20) == tuple(recs)
    with pytest.raises(DecodeError):
        split_concatenated(joined, len(recs) + 1, max_bytes=1 << 20)
    if len(recs) > 1:
        with pytest.raises(DecodeError):
            split_concatenated(joined, len(recs) - 1, max_bytes=1 << 20)
    cut = data.draw(st.integers(0, len(joined) - 1))
    with pytest.raises(DecodeError):
        split_concatenated(joined[:cut], len(recs), max_bytes=1 << 20)


# -- shipped dictionaries ---------------------------------------------------------------------

# SHA-256 of each shipped dictionary's bytes: an entry is never edited (SPEC.md §5.2.1).
DICTIONARY_SHA256 = {
    0x8001: "8881cad3ce89a9f690623823d0f986ec9021fa64b57db79856784e020035ddc9",
}


def test_every_shipped_dictionary_is_kept_unchanged() -> None:
    assert set(DICTIONARIES) == set(zstd_dictionaries.ENCODED)
    assert set(DICTIONARY_SHA256) <= set(DICTIONARIES), "a dictionary was removed"
    for dict_id, digest in DICTIONARY_SHA256.items():
        assert hashlib.sha256(DICTIONARIES[dict_id]).hexdigest() == digest, hex(dict_id)
    assert CURRENT_DICTIONARY_ID == max(DICTIONARIES) == 0x8001


@pytest.mark.parametrize("dict_id", sorted(zstd_dictionaries.ENCODED), ids=hex)
def test_shipped_dictionary_is_base85_of_a_zstd_frame_of_a_zstd_dictionary(dict_id: int) -> None:
    packed = base64.b85decode(zstd_dictionaries.ENCODED[dict_id])
    raw = zstandard.ZstdDecompressor().decompress(packed)
    assert raw == DICTIONARIES[dict_id]
    # A zstd-format dictionary: magic 0xEC30A437, then its id, both little-endian.
    assert raw[:4] == (0xEC30A437).to_bytes(4, "little")
    assert int.from_bytes(raw[4:8], "little") == dict_id
    assert zstandard.ZstdCompressionDict(raw).dict_id() == dict_id
    # Private-use range: not reserved for registration (RFC 8878 §5), 2 bytes per frame.
    assert 32768 <= dict_id <= 65535


@pytest.mark.parametrize("rate,level", [
    (0, 19), (6_000, 19), (24_999, 19), (25_000, 12), (249_999, 12), (250_000, 6),
    (10**9, 6),
])
def test_level_for_rate_spends_cpu_only_where_it_saves_airtime(rate: float, level: int) -> None:
    assert level_for_rate(rate) == level


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
SPEC_DOSSIER_ID = "dee7ca1e-40ad-564e-8d99-959072f07525"  # derived from (SPEC_AGENT, 1, 1)
SPEC_RECORD_SHA256 = ("3716d09538f4bce644ed9527287d9edae23165192d4f5ae22002501fac4132cb",
                      "f47ddfe7f7adbaeb5fb7b7a53a947c3628d150a02e98a80d2c2990960f14944e")
SPEC_CLOCK = "2026-11-26T10:05:00+07:00"
SPEC_PAYLOAD = (
    "28b52ffd6201804b00cd0200c3030b375898982b48288e10c304114797be507a6fcd6e458dc5f04c45623396"
    "4b2869b154ee5091b51d6ab86d70080ff07b6a36f635911a308c9b89af2da60650fa17954fb454304f170d23"
    "489230aa0ca880ccf06ea21f33"
)
SPEC_BODY = (
    "88a17601a46b696e64a56261746368a565706f636801a966697273745f73657101a5636f756e7402a5636f64"
    "6563a47a737464a77061796c6f6164c465" + SPEC_PAYLOAD + "ab6167656e745f636c6f636bb932"
    "3032362d31312d32365431303a30353a30302b30373a3030"
)
SPEC_BATCH_SIGNATURE = ("e23479a511944d4b7007cbaaebd684ddace40b56fa0990afd51e92b9f6f8d165"
                        "2c1cf3080e119bd8c272818e3851f6e71f46c79f68c5268ce915f245ad4f700a")
SPEC_BATCH_DIGEST = "78ee2d9f0064d904e3406925ef62f234a0d1192999c4c3d4f4022469c80c1f2f"
SPEC_ACK = (
    "88a17601a46b696e64a361636ba56167656e74b361672d30313233343536373839616263646566a565706f63"
    "6801a961636b65645f73657102a8766572646963747390a56261746368c420" + SPEC_BATCH_DIGEST
    + "ab7365727665725f74696d65bd323032362d31312d32365430333a30353a30312e3132332b30303a3030"
)
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
    """Seq 1 creates the dossier without an id (it is derived); seq 2 changes its status."""
    from protocol.dossier import validate_dossier
    from protocol.events import DossierCreated, StatusChanged, encode_event

    dossier = validate_dossier({
        "code": "01234-261126-0001", "procedure_code": "1.001193",
        "procedure_name": "Đăng ký khai sinh", "applicant": {"name": "Giàng Seo Páo"},
        "received_at": "2026-11-26T09:30:00+07:00",
    })
    dossier["id"] = derive_dossier_id(SPEC_AGENT, 1, 1)
    return (encode_event(DossierCreated(dossier, derived_id=True)),
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


def test_known_answer_records() -> None:
    from protocol.events import DossierCreated, StatusChanged

    records = _spec_records()
    assert tuple(hashlib.sha256(r).hexdigest() for r in records) == SPEC_RECORD_SHA256
    assert tuple(map(len, records)) == (221, 110)
    created = msgpack.unpackb(records[0], raw=False)
    assert "id" not in created["dossier"] and None not in created["dossier"].values()
    assert "note" not in msgpack.unpackb(records[1], raw=False)  # nil is left out
    derived = derive_dossier_id(SPEC_AGENT, 1, 1)
    assert derived == SPEC_DOSSIER_ID
    event = decode_event(records[0], derived_id=derived)
    assert isinstance(event, DossierCreated) and event.derived_id
    assert event.dossier_id == SPEC_DOSSIER_ID
    with pytest.raises(ValidationError):
        decode_event(records[0])  # the id is known only from the record's position
    assert decode_event(records[1]) == StatusChanged(
        SPEC_DOSSIER_ID, "processing", "2026-11-26T10:00:00+07:00", "can-bo-1")


def test_known_answer_batch() -> None:
    from protocol.messages import batch_digest

    records = _spec_records()
    payload = bytes.fromhex(SPEC_PAYLOAD)
    assert len(payload) == 101
    params = zstandard.get_frame_parameters(payload)
    assert (params.content_size, params.dict_id, params.has_checksum) == (331, 0x8001, False)
    assert decompress(payload, max_bytes=10_000) == records[0] + records[1]
    # The body as SPEC.md gives it (its payload, whatever zstd this machine has).
    body = pack({"v": 1, "kind": "batch", "epoch": 1, "first_seq": 1, "count": 2,
                 "codec": "zstd", "payload": payload, "agent_clock": SPEC_CLOCK})
    assert body.hex() == SPEC_BODY
    assert len(body) == 200
    assert decode_batch_body(body) == BatchBody(1, 1, records, SPEC_CLOCK)
    env = sign_envelope(SPEC_KEY, "batch", SPEC_AGENT, body)
    assert len(env.signing_input()) == 241
    assert env.signature.hex() == SPEC_BATCH_SIGNATURE
    assert batch_digest(env).hex() == SPEC_BATCH_DIGEST
    assert len(encode_envelope(env)) == 296
    verify_envelope(decode_envelope(encode_envelope(env)), bytes.fromhex(SPEC_PUBLIC))
    ack = Ack(SPEC_AGENT, 1, 2, (), bytes.fromhex(SPEC_BATCH_DIGEST),
              "2026-11-26T03:05:01.123+00:00")
    assert encode_ack(ack).hex() == SPEC_ACK
    assert decode_ack(bytes.fromhex(SPEC_ACK)) == ack


@pytest.mark.skipif(zstandard.ZSTD_VERSION != (1, 5, 7),
                    reason="compressed bytes are those of libzstd 1.5.7; others may differ")
def test_known_answer_payload_is_what_the_reference_encoder_writes() -> None:
    body = BatchBody(1, 1, _spec_records(), SPEC_CLOCK)
    assert encode_batch_body(body).hex() == SPEC_BODY  # default level 9, dictionary 0x8001
    assert len(compress(b"".join(body.records), level=9, dict_id=0)) == 276  # SPEC.md §12.3


def _spaced(hex_digits: str) -> str:
    return " ".join(hex_digits[i:i + 2] for i in range(0, len(hex_digits), 2))


def test_spec_md_shows_these_known_answers() -> None:
    """SPEC.md §12 prints the same bytes these tests check (hex dumps 32 bytes a line)."""
    from pathlib import Path

    import protocol

    text = (Path(protocol.__file__).parent / "SPEC.md").read_text(encoding="utf-8")
    section = text[text.index("## 12. Worked example"):text.index("## 13. ")]
    blocks = [" ".join(block.split()) for block in section.split("```")[1::2]]
    records = _spec_records()
    payload_blocks = bytes.fromhex(SPEC_PAYLOAD)[12:].hex()  # after the annotated headers
    for dump in (SPEC_BODY, SPEC_ACK, SPEC_GAP_ERROR, SPEC_CURSOR_ENVELOPE, SPEC_ENROLL,
                 SPEC_ENROLLED, records[0].hex(), payload_blocks):
        assert any(_spaced(dump) in block for block in blocks), dump[:40]
    flat = " ".join(section.split()).replace("` `", "").replace("`", "")
    for value in (SPEC_DOSSIER_ID, *SPEC_RECORD_SHA256, SPEC_BATCH_SIGNATURE, SPEC_BATCH_DIGEST,
                  SPEC_PUBLIC, SPEC_PROOF):
        assert value in flat, value


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
