"""Property and strictness tests of the wire codec and the protocol v1 messages.

What a peer relies on:

* every message survives ``decode(encode(x)) == x``;
* hostile bytes only ever produce the typed errors of :mod:`protocol.errors`
  (never ``KeyError``, ``TypeError``, ``ZstdError``, ``RecursionError`` ...);
* damaged encodings are refused, and a signed envelope never verifies once a
  bit of what it signs, or of its signature, has changed;
* the decoder is strict (one object, no trailing bytes, no ext types, string
  keys only) and bounded (sizes, item counts, decompressed size);
* a batch's payload is exactly one zstd frame that declares its size and its
  dictionary, holding exactly ``count`` concatenated records, sealed (HPKE) to a
  server key: it is opened with that key (``decode_sealed_batch`` then
  ``open_batch``), and a frame that omits or exceeds its size is refused before
  anything is inflated (a bomb has to be sealed properly to get that far);
* document messages (status, sealed chunk, state) obey the same rules.

Sealing itself, signed replies, the pin and rotation proofs: test_sealing.py.
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
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import zstd_dictionaries
from protocol.batches import (
    BatchBody,
    SealTo,
    decode_sealed_batch,
    encode_batch_body,
    open_batch,
)
from protocol.codec import MAX_DEPTH, pack, split_concatenated, unpack
from protocol.compression import (
    CURRENT_DICTIONARY_ID,
    DICTIONARIES,
    compress,
    decompress,
    level_for_rate,
)
from protocol.documents import (
    MAX_DOCUMENT_BYTES,
    DocChunk,
    DocState,
    DocStatusRequest,
    decode_doc_chunk,
    decode_doc_state,
    decode_doc_status,
    encode_doc_chunk,
    encode_doc_state,
    encode_doc_status,
    open_doc_chunk,
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
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    Ack,
    CursorRequest,
    EnrollReply,
    EnrollRequest,
    Envelope,
    ErrorReply,
    Limits,
    Verdict,
    decode_ack,
    decode_cursor_request,
    decode_enroll_reply,
    decode_enroll_request,
    decode_envelope,
    decode_error,
    encode_ack,
    encode_cursor_request,
    encode_enroll_reply,
    encode_enroll_request,
    encode_envelope,
    encode_error,
)
from protocol.sealing import (
    batch_info,
    chunk_info,
    fingerprint,
    open_payload,
    open_reply,
    seal_payload,
    seal_reply,
)
from protocol.signing import public_key_bytes, sign_envelope, verify_envelope
from tests.protocol.test_sealing import rfc9180_seal

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


# The server's sealing keys by id, as syncd holds them (a batch names the one it is sealed to).
SERVER_KEYS = {1: X25519PrivateKey.generate(), 2: X25519PrivateKey.generate()}
SERVER_PUBLIC = {key_id: key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
                 for key_id, key in SERVER_KEYS.items()}
SEAL = SealTo("agent-7f3a", "02809", 1, SERVER_PUBLIC[1])
IDENTITY = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
IDENTITY_PUBLIC = public_key_bytes(IDENTITY)


@dataclass(frozen=True)
class Batch:
    """What a batch message carries: who sealed it to which server key, and its records."""

    seal: SealTo
    body: BatchBody


def _server_key(key_id: int) -> X25519PrivateKey:
    key = SERVER_KEYS.get(key_id)
    if key is None:  # syncd answers this 400 unknown_key
        raise DecodeError(f"no server sealing key {key_id}", code=ErrorCode.UNKNOWN_KEY)
    return key


def encode_batch(batch: Batch) -> bytes:
    return encode_batch_body(batch.body, batch.seal)


def decode_batch(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Batch:
    """What the server does with a batch body: decode what it claims, then open it."""
    sealed = decode_sealed_batch(data, limits)
    body = open_batch(sealed, _server_key(sealed.key_id), limits)
    return Batch(SealTo(sealed.agent_id, sealed.commune_code, sealed.key_id,
                        SERVER_PUBLIC[sealed.key_id]), body)


def open_batch_bytes(data: bytes, limits: Limits = DEFAULT_LIMITS) -> BatchBody:
    return decode_batch(data, limits).body


def _batch_fields(frame: bytes = b"", count: int = 1, first_seq: int = 1,
                  **changes: Any) -> dict[str, Any]:
    """The map of a batch of epoch 1 from SEAL's agent whose sealed payload is ``frame``
    (any bytes, sealed properly to server key 1), then ``changes`` applied."""
    info = batch_info(SEAL.agent_id, 1, first_seq, count)
    return {"v": PROTOCOL_VERSION, "kind": "batch", "agent": SEAL.agent_id,
            "commune": SEAL.commune_code, "epoch": 1, "first_seq": first_seq, "count": count,
            "codec": "zstd", "key_id": 1, "sealed": seal_payload(frame, SERVER_PUBLIC[1], info),
            "agent_clock": None, **changes}


def _batch_with_payload(payload: bytes, count: int = 1, first_seq: int = 1) -> bytes:
    """A batch whose (properly sealed) frame is ``payload``: what a faulty or hostile
    enrolled agent could send. A bomb has to get this far to reach the decompressor."""
    return pack(_batch_fields(payload, count, first_seq))


def encode_chunk(chunk: DocChunk) -> bytes:
    return encode_doc_chunk(chunk, SEAL)


def decode_chunk(data: bytes, limits: Limits = DEFAULT_LIMITS) -> DocChunk:
    """A chunk from agent SEAL.agent_id (the server knows the sender from the envelope)."""
    sealed = decode_doc_chunk(data, limits)
    return open_doc_chunk(sealed, _server_key(sealed.key_id), SEAL.agent_id)


seals = st.builds(lambda agent, commune, key_id: SealTo(agent, commune, key_id,
                                                        SERVER_PUBLIC[key_id]),
                  short_text, short_text, st.sampled_from(sorted(SERVER_KEYS)))
batches = st.builds(Batch, seals, batch_bodies())
verdicts = st.builds(Verdict, MSGPACK_INT, short_text, short_text)
key_ids = st.integers(0, MAX_SEQ)
keys32 = st.binary(min_size=32, max_size=32)
sealing_keys = st.tuples(st.none(), st.none()) | st.tuples(key_ids, keys32)
acks = st.builds(
    lambda agent, epoch, acked, vs, digest, time, sealing: Ack(agent, epoch, acked, vs, digest,
                                                               time, *sealing),
    short_text, st.integers(1, MAX_SEQ), st.integers(0, MAX_SEQ),
    st.lists(verdicts, max_size=4).map(tuple), st.none() | st.binary(max_size=40), opt_text,
    sealing_keys,
)
error_replies = st.builds(ErrorReply, short_text, st.text(max_size=80),
                          st.none() | MSGPACK_INT, st.none() | MSGPACK_INT)
cursor_requests = st.builds(CursorRequest, st.integers(1, MAX_SEQ), opt_text)
enroll_requests = st.builds(
    EnrollRequest, st.text(min_size=1, max_size=128), st.binary(min_size=32, max_size=32),
    st.none() | st.text(max_size=200), st.binary(min_size=64, max_size=64),
)
enroll_replies = st.builds(EnrollReply, st.text(max_size=64), st.text(max_size=16),
                           st.none() | st.text(max_size=200), st.integers(0, 9), keys32,
                           key_ids, keys32)
envelopes = st.builds(Envelope, short_text, st.text(min_size=1, max_size=64),
                      st.binary(max_size=300), st.binary(min_size=64, max_size=64))
sha256s = st.text("0123456789abcdef", min_size=64, max_size=64)
doc_sizes = st.integers(0, MAX_DOCUMENT_BYTES)
doc_statuses = st.builds(DocStatusRequest, sha256s, doc_sizes)


@st.composite
def doc_states(draw: st.DrawFn) -> DocState:
    size = draw(doc_sizes)
    return DocState(draw(sha256s), size, draw(st.integers(0, size)), draw(st.booleans()))


@st.composite
def doc_chunks(draw: st.DrawFn) -> DocChunk:
    data = draw(st.binary(min_size=1, max_size=300))
    size = draw(st.integers(len(data), MAX_DOCUMENT_BYTES))
    return DocChunk(draw(sha256s), size, draw(st.integers(0, size - len(data))), data)


@dataclass(frozen=True)
class Codec:
    name: str
    kind: str  # "kind" field of the map, or "envelope" for the array form
    values: st.SearchStrategy[Any]
    encode: Callable[[Any], bytes]
    decode: Callable[..., Any]

    def __str__(self) -> str:
        return self.name


def _with_limits(decode: Callable[[bytes, Limits], Any]) -> Callable[..., Any]:
    """Document decoders take their limits positionally; give them the default."""
    return lambda data, limits=DEFAULT_LIMITS: decode(data, limits)


CODECS = [
    Codec("batch", "batch", batches, encode_batch, decode_batch),
    Codec("ack", "ack", acks, encode_ack, decode_ack),
    Codec("error", "error", error_replies, encode_error, decode_error),
    Codec("cursor", "cursor", cursor_requests, encode_cursor_request, decode_cursor_request),
    Codec("enroll", "enroll", enroll_requests, encode_enroll_request, decode_enroll_request),
    Codec("enrolled", "enrolled", enroll_replies, encode_enroll_reply, decode_enroll_reply),
    Codec("envelope", "envelope", envelopes, encode_envelope, decode_envelope),
    Codec("doc_status", "doc_status", doc_statuses, encode_doc_status,
          _with_limits(decode_doc_status)),
    Codec("doc_chunk", "doc_chunk", doc_chunks(), encode_chunk, decode_chunk),
    Codec("doc_state", "doc_state", doc_states(), encode_doc_state,
          _with_limits(decode_doc_state)),
]
by_codec = pytest.mark.parametrize("codec", CODECS, ids=str)

EXAMPLE_BODY = BatchBody(3, 41, (b"\x81\xa1t\xa6status", pack(["record", 2]), b"\xc0"),
                         "2026-11-26T09:30:00+07:00")
EXAMPLE_SHA256 = hashlib.sha256(b"scan of a birth certificate").hexdigest()
# One fixed, valid example of each message (for the non-property tests).
EXAMPLES: dict[str, Any] = {
    "batch": Batch(SEAL, EXAMPLE_BODY),
    "ack": Ack("agent-7f3a", 3, 43, (Verdict(42, "invalid_record", "Thiếu họ tên"),),
               b"\x11" * 32, "2026-11-26T02:30:01.120+00:00", 2, SERVER_PUBLIC[2]),
    "error": ErrorReply("gap", "batch starts at 50; server holds up to 43", 3, 43),
    "cursor": CursorRequest(3, "2026-11-26T09:30:00+07:00"),
    "enroll": EnrollRequest("cs1.xlqgtznxg4zbmdk3.8d1eQm2xEXAMPLE0EXAMPLE1EXAMPLE2", b"\x01" * 32,
                            "Máy một cửa xã Bản Hồ", b"\x02" * 64),
    "enrolled": EnrollReply("agent-7f3a", "02809", "Máy một cửa xã Bản Hồ", 4, IDENTITY_PUBLIC,
                            1, SERVER_PUBLIC[1]),
    "envelope": Envelope("batch", "agent-7f3a", b"\x81\xa1v\x01", b"\x03" * 64),
    "doc_status": DocStatusRequest(EXAMPLE_SHA256, 27),
    "doc_chunk": DocChunk(EXAMPLE_SHA256, 27, 4, b"of a birth"),
    "doc_state": DocState(EXAMPLE_SHA256, 27, 14, False),
}


def _codec(name: str) -> Codec:
    return next(c for c in CODECS if c.name == name)


# -- valid messages with damaged fields -----------------------------------------------------

FIELDS = {
    "batch": ["agent", "commune", "epoch", "first_seq", "count", "codec", "key_id", "sealed",
              "agent_clock"],
    "ack": ["agent", "epoch", "acked_seq", "verdicts", "batch", "server_time", "sealing_key_id",
            "sealing_key"],
    "error": ["code", "message", "epoch", "acked_seq"],
    "cursor": ["epoch", "agent_clock"],
    "enroll": ["token", "public_key", "name", "proof"],
    "enrolled": ["agent", "commune_code", "name", "counter_block", "server_key",
                 "sealing_key_id", "sealing_key"],
    "doc_status": ["sha256", "size"],
    "doc_chunk": ["sha256", "size", "offset", "key_id", "sealed"],
    "doc_state": ["sha256", "size", "offset", "complete"],
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
    | st.sampled_from([SEAL.agent_id, SEAL.commune_code]) | sha256s
    # Sealed payloads: properly sealed frames of records, for small batch contexts.
    | st.builds(lambda rs, agent, epoch, first: seal_payload(
        compress(b"".join(rs)), SERVER_PUBLIC[1], batch_info(agent, epoch, first, len(rs))),
        st.lists(records, min_size=1, max_size=3), st.sampled_from([SEAL.agent_id, ""]),
        st.integers(1, 3), st.integers(1, 3))
    | st.builds(lambda data, offset: seal_payload(data, SERVER_PUBLIC[1], chunk_info(
        SEAL.agent_id, EXAMPLE_SHA256, 27, offset)), st.binary(max_size=30), st.integers(0, 27))
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
    body = open_batch_bytes(encode_batch(EXAMPLES["batch"]))
    assert (body.first_seq, body.last_seq) == (41, 43)
    assert body.records[2] == b"\xc0"  # a one-byte record keeps its bytes


@PROPS
@given(body=batch_bodies(), level=st.integers(1, 22))
def test_batch_round_trips_at_every_level_the_sender_may_choose(body: BatchBody,
                                                                level: int) -> None:
    assert open_batch_bytes(encode_batch_body(body, SEAL, level=level)) == body


def _payload_of(encoded: bytes) -> bytes:
    """The zstd frame sealed inside an encoded batch (opened with the server's key)."""
    fields = msgpack.unpackb(encoded, raw=False)
    info = batch_info(fields["agent"], fields["epoch"], fields["first_seq"], fields["count"])
    return open_payload(fields["sealed"], SERVER_KEYS[fields["key_id"]], info)


@PROPS
@given(recs=st.lists(records, min_size=1, max_size=20))
def test_batch_payload_is_one_sealed_frame_of_the_concatenated_records(recs: list[bytes]) -> None:
    body = BatchBody(1, 1, tuple(recs))
    encoded = encode_batch_body(body, SEAL)
    fields = msgpack.unpackb(encoded, raw=False)
    assert list(fields) == ["v", "kind", "agent", "commune", "epoch", "first_seq", "count",
                            "codec", "key_id", "sealed", "agent_clock"]
    assert (fields["agent"], fields["commune"], fields["key_id"]) == ("agent-7f3a", "02809", 1)
    assert (fields["codec"], fields["count"]) == ("zstd", len(recs))
    payload = _payload_of(encoded)
    assert len(fields["sealed"]) == 32 + len(payload) + 16  # enc, ciphertext, tag
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
        encode_batch_body(body, SEAL)


@pytest.mark.parametrize("level", [0, 23, -1])
def test_encoder_refuses_levels_zstd_does_not_have(level: int) -> None:
    with pytest.raises(LocalProtocolError):
        encode_batch_body(EXAMPLE_BODY, SEAL, level=level)


def test_last_seq_at_the_maximum_is_allowed() -> None:
    body = BatchBody(MAX_SEQ, MAX_SEQ - 1, (b"\xc0", b"\xc0"))
    assert open_batch_bytes(encode_batch_body(body, SEAL)) == body


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
        encoded = encode_batch_body(body, SEAL)
    except LocalProtocolError:
        return  # refusing to encode is fine
    assert open_batch_bytes(encoded) == body


def test_reference_enrollment_tokens_fit_the_enroll_request() -> None:
    """syncd makes tokens as "cs1." + the fingerprint of its identity key + "." +
    secrets.token_urlsafe(24): 53 characters (SPEC.md §8.1)."""
    import secrets

    token = f"cs1.{fingerprint(IDENTITY_PUBLIC)}.{secrets.token_urlsafe(24)}"
    assert len(token) == 53 and not token.startswith("-")
    assert token.split(".")[1] == fingerprint(IDENTITY_PUBLIC)
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
    ("decode_sealed_batch", decode_sealed_batch, (DecodeError,)),
    ("decode_doc_chunk", lambda b: decode_doc_chunk(b, DEFAULT_LIMITS), (DecodeError,)),
    ("open_payload", lambda b: open_payload(b, SERVER_KEYS[1], b"info"), (DecodeError,)),
    ("open_reply", lambda b: open_reply(b, IDENTITY_PUBLIC), (DecodeError, SignatureError)),
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
    body = _decodes_or_raises(open_batch_bytes, _batch_with_payload(frame, count))
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
    """Even sealed properly (by an agent with a broken encoder), a cut frame is refused."""
    body = EXAMPLE_BODY
    payload = _payload_of(encode_batch(EXAMPLES["batch"]))
    for cut in range(len(payload)):
        with pytest.raises(DecodeError):
            decompress(payload[:cut], max_bytes=4096)
        with pytest.raises(DecodeError):
            open_batch_bytes(_batch_with_payload(payload[:cut], len(body.records)))


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


def _refused_or_changed(codec: Codec, value: Any, encoded: bytes, bit: int) -> None:
    """No exception for batches any more: their frame is sealed, so even a flip the zstd
    decoder would ignore (the descriptor's unused bit, a bit inside a block that still
    decodes the same) breaks the AEAD tag."""
    decoded = _decodes_or_raises(codec.decode, _flip(encoded, bit))
    assert decoded != value, f"bit {bit} flipped and the message decoded unchanged"


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
    """What the seal protects against on the wire, the frame decoder still checks for a
    frame sealed properly by a faulty agent; only the unused bit passes (and not sealed:
    see test_every_bit_flip_of_an_example_is_refused_or_changes_it)."""
    body = EXAMPLE_BODY
    payload = _payload_of(encode_batch(EXAMPLES["batch"]))
    header = _frame_header_size(payload)
    assert header == 4 + 1 + 2 + 1  # magic, descriptor, 2-byte dictionary id, 1-byte size
    for bit in range(header * 8):
        if bit == 4 * 8 + 4:
            assert decompress(_flip(payload, bit), max_bytes=4096) == b"".join(body.records)
            continue
        decoded = _decodes_or_raises(open_batch_bytes,
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
    env = sign_envelope(KEY, "batch", "agent-7f3a", encode_batch(EXAMPLES["batch"]))
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
    (decode_batch, msgpack.packb(_batch_fields(compress(b"\xc0"), agent_clock=TIMESTAMP))),
    (decode_sealed_batch, msgpack.packb(_batch_fields(compress(b"\xc0"),
                                                      agent_clock=TIMESTAMP))),
    (decode_doc_chunk, msgpack.packb({**msgpack.unpackb(encode_chunk(DocChunk(
        EXAMPLE_SHA256, 27, 0, b"x"))), "key_id": msgpack.ExtType(1, b"\x01")})),
    (decode_event, msgpack.packb({"t": "status", "id": "0b7f1f0e-3a51-4f5e-9c57-1b1f0e3a514f",
                                  "status": "finished", "at": TIMESTAMP})),
], ids=["cursor", "ack", "envelope", "batch-clock", "sealed-batch-clock", "chunk-key-id",
        "event"])
def test_ext_types_inside_messages_are_refused(decode: Callable[..., Any], raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(raw, DEFAULT_LIMITS) if decode is decode_doc_chunk else decode(raw)


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
    decoded = open_batch_bytes(encode_batch_body(body, SEAL))
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
    "cursor-epoch-0": (decode_cursor_request, encode_cursor_request(CursorRequest(0))),
    "cursor-epoch-2^63": (decode_cursor_request, encode_cursor_request(CursorRequest(2**63))),
    "ack-acked-seq-negative": (decode_ack, encode_ack(Ack("agent", 1, -1))),
    "ack-verdict-not-triple": (decode_ack, pack({"v": 1, "kind": "ack", "agent": "a", "epoch": 1,
                                                 "acked_seq": 0, "verdicts": [[1, "x"]]})),
    "ack-sealing-key-31": (decode_ack, encode_ack(Ack("a", 1, 0, (), None, None, 1, b"k" * 31))),
    "ack-sealing-key-33": (decode_ack, encode_ack(Ack("a", 1, 0, (), None, None, 1, b"k" * 33))),
    "ack-sealing-key-without-id": (decode_ack, encode_ack(
        Ack("a", 1, 0, (), None, None, None, b"k" * 32))),
    "ack-sealing-id-without-key": (decode_ack, encode_ack(Ack("a", 1, 0, (), None, None, 1))),
    "ack-sealing-id-bool": (decode_ack, encode_ack(
        Ack("a", 1, 0, (), None, None, True, b"k" * 32))),
    "ack-sealing-key-str": (decode_ack, pack({
        "v": 1, "kind": "ack", "agent": "a", "epoch": 1, "acked_seq": 0, "verdicts": [],
        "sealing_key_id": 1, "sealing_key": "k" * 32})),
    "enrolled-block-10": (decode_enroll_reply, encode_enroll_reply(
        EnrollReply("agent", "02809", None, 10, b"i" * 32, 1, b"k" * 32))),
    "enrolled-server-key-31": (decode_enroll_reply, encode_enroll_reply(
        EnrollReply("agent", "02809", None, 0, b"i" * 31, 1, b"k" * 32))),
    "enrolled-server-key-missing": (decode_enroll_reply, encode_enroll_reply(
        EnrollReply("agent", "02809", None, 0, None, 1, b"k" * 32))),
    "enrolled-sealing-key-33": (decode_enroll_reply, encode_enroll_reply(
        EnrollReply("agent", "02809", None, 0, b"i" * 32, 1, b"k" * 33))),
    "enrolled-sealing-key-missing": (decode_enroll_reply, encode_enroll_reply(
        EnrollReply("agent", "02809", None, 0, b"i" * 32, None, None))),
    "enrolled-sealing-id-missing": (decode_enroll_reply, encode_enroll_reply(
        EnrollReply("agent", "02809", None, 0, b"i" * 32, None, b"k" * 32))),
    "batch-former-layout": (decode_sealed_batch, pack({  # v1 before sealing: "payload"
        "v": 1, "kind": "batch", "epoch": 1, "first_seq": 1, "count": 1, "codec": "zstd",
        "payload": compress(b"\xc0"), "agent_clock": None})),
    "batch-payload-beside-sealed": (decode_sealed_batch, pack(
        _batch_fields(compress(b"\xc0"), payload=compress(b"\xc0")))),
    "batch-codec-zlib": (decode_sealed_batch, pack(_batch_fields(  # the former codec is gone
        zlib.compress(pack([b"\xc0"]), 9), codec="zlib"))),
    "batch-codec-zlib-zstd-payload": (decode_sealed_batch, pack(_batch_fields(
        compress(b"\xc0"), codec="zlib"))),
    "batch-codec-zstd-zlib-payload": (decode_batch, pack(_batch_fields(
        zlib.compress(b"\xc0", 9)))),
    "batch-codec-missing": (decode_sealed_batch, pack(
        {k: v for k, v in _batch_fields(compress(b"\xc0")).items() if k != "codec"})),
    "batch-sealed-str": (decode_sealed_batch, pack(_batch_fields(sealed="\xc0"))),
    "batch-sealed-missing": (decode_sealed_batch, pack(
        {k: v for k, v in _batch_fields(compress(b"\xc0")).items() if k != "sealed"})),
    "batch-sealed-unsealed-frame": (decode_batch, pack(_batch_fields(
        sealed=compress(b"\xc0")))),  # a frame not sealed at all
    "batch-key-id-negative": (decode_sealed_batch, pack(_batch_fields(compress(b"\xc0"),
                                                                      key_id=-1))),
    "batch-key-id-2^63": (decode_sealed_batch, pack(_batch_fields(compress(b"\xc0"),
                                                                  key_id=2**63))),
    "batch-key-id-bool": (decode_sealed_batch, pack(_batch_fields(compress(b"\xc0"),
                                                                  key_id=True))),
    "batch-key-id-missing": (decode_sealed_batch, pack(
        {k: v for k, v in _batch_fields(compress(b"\xc0")).items() if k != "key_id"})),
    "batch-key-id-unknown": (decode_batch, pack(_batch_fields(compress(b"\xc0"), key_id=3))),
    "batch-agent-missing": (decode_sealed_batch, pack(
        {k: v for k, v in _batch_fields(compress(b"\xc0")).items() if k != "agent"})),
    "batch-agent-bin": (decode_sealed_batch, pack(_batch_fields(compress(b"\xc0"),
                                                                agent=b"agent-7f3a"))),
    "batch-commune-int": (decode_sealed_batch, pack(_batch_fields(compress(b"\xc0"),
                                                                  commune=2809))),
    "batch-commune-missing": (decode_sealed_batch, pack(
        {k: v for k, v in _batch_fields(compress(b"\xc0")).items() if k != "commune"})),
    "chunk-data-instead-of-sealed": (decode_chunk, pack({  # the chunk before sealing
        "v": 1, "kind": "doc_chunk", "sha256": EXAMPLE_SHA256, "size": 27, "offset": 0,
        "data": b"x"})),
    "chunk-key-id-negative": (decode_chunk, pack({
        **msgpack.unpackb(encode_chunk(DocChunk(EXAMPLE_SHA256, 27, 0, b"x"))), "key_id": -1})),
    "chunk-size-beyond-200MiB": (decode_chunk, pack({
        **msgpack.unpackb(encode_chunk(DocChunk(EXAMPLE_SHA256, 27, 0, b"x"))),
        "size": MAX_DOCUMENT_BYTES + 1})),
    "chunk-sha256-upper": (decode_chunk, pack({
        **msgpack.unpackb(encode_chunk(DocChunk(EXAMPLE_SHA256, 27, 0, b"x"))),
        "sha256": EXAMPLE_SHA256.upper()})),
    "state-offset-beyond-size": (_with_limits(decode_doc_state), encode_doc_state(
        DocState(EXAMPLE_SHA256, 27, 28, False))),
    "status-sha256-63": (_with_limits(decode_doc_status), encode_doc_status(
        DocStatusRequest(EXAMPLE_SHA256[:63], 27))),
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
    # The limit counts levels, whatever sits at the bottom: a value or an empty container.
    for bottom in (b"\xc0", b"\x90", b"\x80"):
        assert unpack(b"\x91" * MAX_DEPTH + bottom, max_bytes=1000) is not None
        assert unpack(b"\x81\xa1k" * MAX_DEPTH + bottom, max_bytes=1000) is not None
        with pytest.raises(DecodeError):
            unpack(b"\x91" * (MAX_DEPTH + 1) + bottom, max_bytes=1000)
        with pytest.raises(DecodeError):
            unpack(b"\x81\xa1k" * (MAX_DEPTH + 1) + bottom, max_bytes=1000)
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
    "batch": Batch(SEAL, BatchBody(1, 1, (b"\xc0",), LARGE)),
    "ack": Ack("agent", 1, 1, (), b"\x00" * 5000),
    "doc_chunk": DocChunk(EXAMPLE_SHA256, 10_000, 0, b"\x00" * 5000),
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
    (_codec("enrolled"), EnrollReply("agent", "c" * 5000, None, 0, b"i" * 32, 1, b"k" * 32)),
], ids=["enroll", "enrolled"])
def test_enrollment_messages_beyond_4_kib_are_too_large(codec: Codec, value: Any) -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode(codec.encode(value))
    assert info.value.code is ErrorCode.TOO_LARGE


@pytest.mark.parametrize("name", ["doc_status", "doc_state"])
def test_document_status_and_state_beyond_1_kib_are_too_large(name: str) -> None:
    codec = _codec(name)
    fields = msgpack.unpackb(codec.encode(EXAMPLES[name]), raw=False)
    with pytest.raises(DecodeError) as info:
        codec.decode(pack({**fields, "pad": "x" * 1024}))
    assert info.value.code is ErrorCode.TOO_LARGE


def test_batch_with_more_records_than_the_limit_is_too_large() -> None:
    body = BatchBody(1, 1, tuple(b"\x01" for _ in range(11)))
    encoded = encode_batch_body(body, SEAL)
    assert open_batch_bytes(encoded, Limits(max_records=11)) == body
    with pytest.raises(DecodeError) as info:
        decode_sealed_batch(encoded, Limits(max_records=10))  # refused before opening
    assert info.value.code is ErrorCode.TOO_LARGE


def test_batch_inflating_beyond_the_limit_is_too_large() -> None:
    body = BatchBody(1, 1, (pack(b"a" * 3000), pack(b"b" * 3000)))
    inflated = sum(map(len, body.records))
    encoded = encode_batch_body(body, SEAL)
    assert len(encoded) < 1000  # it compresses well: only the inflated size is too large
    assert open_batch_bytes(encoded, Limits(max_inflated_bytes=inflated)) == body
    with pytest.raises(DecodeError) as info:
        open_batch_bytes(encoded, Limits(max_inflated_bytes=inflated - 1))
    assert info.value.code is ErrorCode.TOO_LARGE


def test_batch_record_beyond_the_record_limit_is_too_large() -> None:
    big = pack(b"x" * 2000)  # 2003 bytes
    encoded = encode_batch_body(BatchBody(1, 1, (pack("ok"), big)), SEAL)
    open_batch_bytes(encoded, Limits(max_record_bytes=len(big)))
    with pytest.raises(DecodeError) as info:
        open_batch_bytes(encoded, Limits(max_record_bytes=len(big) - 1))
    assert info.value.code is ErrorCode.TOO_LARGE


def test_batch_whose_last_seq_overflows_is_refused() -> None:
    payload = compress(b"\x01\x02")
    assert open_batch_bytes(_batch_with_payload(payload, 2, MAX_SEQ - 1)).last_seq == MAX_SEQ
    with pytest.raises(DecodeError):
        open_batch_bytes(_batch_with_payload(payload, 2, MAX_SEQ))


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
        open_batch_bytes(_batch_with_payload(payload, count))
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
        open_batch_bytes(_batch_with_payload(frame, 2))


def test_frames_without_a_dictionary_or_with_a_checksum_are_accepted() -> None:
    """The decoder picks the dictionary by the frame's id, 0 meaning none; a checksum
    is optional; the level is the sender's choice."""
    body = EXAMPLE_BODY
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
        assert open_batch_bytes(_batch_with_payload(frame, 3)).records == body.records


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
        open_batch_bytes(raw)
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


def test_a_sealed_bomb_reaches_the_decompressor_and_is_refused_there(
    zstd_bomb: bytes, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """open_batch opens the seal, then refuses the frame from its header (TOO_LARGE)."""
    import protocol.batches

    seen: list[int] = []

    def spy(data: bytes, *, max_bytes: int) -> bytes:
        seen.append(len(data))
        return decompress(data, max_bytes=max_bytes)

    monkeypatch.setattr(protocol.batches, "decompress", spy)
    sealed = decode_sealed_batch(_batch_with_payload(zstd_bomb))
    assert open_payload(sealed.sealed, SERVER_KEYS[1], batch_info(
        sealed.agent_id, sealed.epoch, sealed.first_seq, sealed.count)) == zstd_bomb
    with pytest.raises(DecodeError) as info:
        open_batch(sealed, SERVER_KEYS[1])
    assert info.value.code is ErrorCode.TOO_LARGE
    assert seen == [len(zstd_bomb)]


@pytest.mark.parametrize("how", ["not-sealed", "sealed-to-another-key", "sealed-for-another-batch"])
def test_a_bomb_not_sealed_to_the_server_never_reaches_the_decompressor(
    zstd_bomb: bytes, monkeypatch: pytest.MonkeyPatch, how: str,
) -> None:
    import protocol.batches

    def never(data: bytes, *, max_bytes: int) -> bytes:
        raise AssertionError("decompress was called")

    monkeypatch.setattr(protocol.batches, "decompress", never)
    if how == "not-sealed":
        sealed = zstd_bomb
    elif how == "sealed-to-another-key":
        sealed = seal_payload(zstd_bomb, SERVER_PUBLIC[2], batch_info(SEAL.agent_id, 1, 1, 1))
    else:
        sealed = seal_payload(zstd_bomb, SERVER_PUBLIC[1], batch_info(SEAL.agent_id, 1, 2, 1))
    raw = pack(_batch_fields(sealed=sealed))
    error = _refused_quickly(raw)
    assert error.code is ErrorCode.MALFORMED


def _peak_memory_of_refusing(raw: bytes, limits: Limits) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError):
            open_batch_bytes(raw, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def test_compression_bomb_memory_is_bounded_by_the_declared_size(zstd_bomb: bytes,
                                                                 sizeless_bomb: bytes) -> None:
    limit = 1024 * 1024
    limits = Limits(max_inflated_bytes=limit)
    # What refusing any batch costs (msgpack's packer buffer for the HPKE info is 256 KiB).
    baseline = _peak_memory_of_refusing(_batch_with_payload(b"\x00" * 3000), limits)
    assert baseline < 512 * 1024
    # Refused from the frame header alone: nothing near the 100 MB is allocated.
    assert _peak_memory_of_refusing(_batch_with_payload(zstd_bomb), limits) < baseline + 64 * 1024
    assert _peak_memory_of_refusing(_batch_with_payload(sizeless_bomb),
                                    limits) < baseline + 64 * 1024
    # A frame that lies gets at most the size it claims, which is within the limit.
    lying = _batch_with_payload(_declaring(zstd_bomb, limit))
    assert _peak_memory_of_refusing(lying, limits) < 2 * limit


def test_declared_size_is_checked_against_the_limit_exactly() -> None:
    joined = b"".join(EXAMPLE_BODY.records)
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
# Ed25519 is deterministic, so an independent implementation can check itself against these:
# keys, the pin, signing inputs, proofs, signatures, signed replies, derived ids, records and
# every message map. HPKE is not: every sealing draws a fresh ephemeral key, so the reference
# never writes SPEC_SEALED again. SPEC.md gives that sealing (and the batch body, signature,
# digest and ack that follow from it) as one possible one, made with the ephemeral key
# 03 × 32 by the independent RFC 9180 implementation of test_sealing.py; the reference must
# open it, and its own sealings must open to the same payload.

SPEC_KEY = Ed25519PrivateKey.from_private_bytes(bytes(32))
SPEC_AGENT = "ag-0123456789abcdef"
SPEC_PUBLIC = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
SPEC_IDENTITY = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)  # the server's
SPEC_SEALING = X25519PrivateKey.from_private_bytes(b"\x02" * 32)  # the server's key 1
SPEC_EPHEMERAL = X25519PrivateKey.from_private_bytes(b"\x03" * 32)  # of the example sealing
SPEC_NEW_KEY = Ed25519PrivateKey.from_private_bytes(b"\x04" * 32)  # the agent's, after rotation
SPEC_IDENTITY_PUBLIC = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
SPEC_FINGERPRINT = "xlqgtznxg4zbmdk3"
SPEC_SEALING_PUBLIC = "ce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59"
SPEC_NEW_PUBLIC = "ca93ac1705187071d67b83c7ff0efe8108e8ec4530575d7726879333dbdabe7c"
SPEC_TOKEN = "cs1.xlqgtznxg4zbmdk3.EXAMPLE0EXAMPLE1EXAMPLE2EXAMPLE3"
SPEC_PROOF = (
    "397916c36f677d8b63fc30afea1956978fcb3d01114e9fef2d03c4d19cf7d898ba83254bb1fb1361ba9f3bb2"
    "196be6eb7aa31dc66d45929a421fa600018bb60a")
SPEC_ENROLL = (
    "86a17601a46b696e64a6656e726f6c6ca5746f6b656ed9356373312e786c7167747a6e7867347a626d646b33"
    "2e4558414d504c45304558414d504c45314558414d504c45324558414d504c4533aa7075626c69635f6b6579"
    "c4203b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29a46e616d65a450432031"
    "a570726f6f66c440397916c36f677d8b63fc30afea1956978fcb3d01114e9fef2d03c4d19cf7d898ba83254b"
    "b1fb1361ba9f3bb2196be6eb7aa31dc66d45929a421fa600018bb60a")
SPEC_ENROLLED = (
    "89a17601a46b696e64a8656e726f6c6c6564a56167656e74b361672d30313233343536373839616263646566"
    "ac636f6d6d756e655f636f6465a53031323334a46e616d65a450432031ad636f756e7465725f626c6f636b00"
    "aa7365727665725f6b6579c4208a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f"
    "5cae7365616c696e675f6b65795f696401ab7365616c696e675f6b6579c420ce8d3ad1ccb633ec7b70c17814"
    "a5c76ecd029685050d344745ba05870e587d59")
SPEC_ENROLLED_SIGNATURE = (
    "5a5292381bb8ca3f968c4ea6b826578446b752d8e5cb806c4fc014d1e779760fbb2e31f94f9450e713b24183"
    "3fad73cea972c9b49d28c7390f31ba5db4cc1109")
SPEC_DOSSIER_ID = "dee7ca1e-40ad-564e-8d99-959072f07525"  # derived from (SPEC_AGENT, 1, 1)
SPEC_RECORD_SHA256 = ("3716d09538f4bce644ed9527287d9edae23165192d4f5ae22002501fac4132cb",
                      "f47ddfe7f7adbaeb5fb7b7a53a947c3628d150a02e98a80d2c2990960f14944e")
SPEC_CLOCK = "2026-11-26T10:05:00+07:00"
SPEC_PAYLOAD = (
    "28b52ffd6201804b00cd0200c3030b375898982b48288e10c304114797be507a6fcd6e458dc5f04c45623396"
    "4b2869b154ee5091b51d6ab86d70080ff07b6a36f635911a308c9b89af2da60650fa17954fb454304f170d23"
    "489230aa0ca880ccf06ea21f33"
)
SPEC_BATCH_INFO = (
    "636f6d6d756e652d73796e63206261746368009501b361672d30313233343536373839616263646566010102")
SPEC_SEALED = (
    "5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef22ead3470de6797ebc67cb7992"
    "02ac72ebd96f8c97273c1d6b67078013615b7ecd9ae6fe08f6d8ea9f2d2377d44d4306726ce564db86ab4abc"
    "ad42a3b9c903c3a0992adfa4fdf032e08132e02b08555589f7a11df67213186ee77d300df04a79fd80b989fe"
    "20546a00e6014890775341da50fda124f9")
SPEC_BODY = (
    "8ba17601a46b696e64a56261746368a56167656e74b361672d30313233343536373839616263646566a7636f"
    "6d6d756e65a53031323334a565706f636801a966697273745f73657101a5636f756e7402a5636f646563a47a"
    "737464a66b65795f696401a67365616c6564c4955dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9"
    "df1c6e0124b3ef22ead3470de6797ebc67cb799202ac72ebd96f8c97273c1d6b67078013615b7ecd9ae6fe08"
    "f6d8ea9f2d2377d44d4306726ce564db86ab4abcad42a3b9c903c3a0992adfa4fdf032e08132e02b08555589"
    "f7a11df67213186ee77d300df04a79fd80b989fe20546a00e6014890775341da50fda124f9ab6167656e745f"
    "636c6f636bb9323032362d31312d32365431303a30353a30302b30373a3030")
SPEC_BATCH_SIGNATURE = (
    "9fb0a4a8b9a4b12c260f965de0527d93737dd6874e10e2bbc7f2b87438fed4494219fabf3f707eac8398cd53"
    "adad77c271da71bc9555125a634c21d7f28a0909")
SPEC_BATCH_DIGEST = "d187703ab1bac0512f76a3cd8fc1b73713f47e85119bf42e718e77151746930e"
SPEC_ACK = (
    "8aa17601a46b696e64a361636ba56167656e74b361672d30313233343536373839616263646566a565706f63"
    "6801a961636b65645f73657102a8766572646963747390a56261746368c420d187703ab1bac0512f76a3cd8f"
    "c1b73713f47e85119bf42e718e77151746930eab7365727665725f74696d65bd323032362d31312d32365430"
    "333a30353a30312e3132332b30303a3030ae7365616c696e675f6b65795f696401ab7365616c696e675f6b65"
    "79c420ce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59")
SPEC_ACK_SIGNATURE = (
    "a82d6bc8eba1698e73108595d55245289e61afdd13c2463ff26cffea19599c23cf4ca46a2fa16d3581443927"
    "7ced34f8da582008c4868eb0a7c258345b400c02")
SPEC_CURSOR_ENVELOPE = (
    "9501a6637572736f72b361672d30313233343536373839616263646566c43d84a17601a46b696e64a663757273"
    "6f72a565706f636801ab6167656e745f636c6f636bb9323032362d31312d32365431303a30363a30302b30373a"
    "3030c440f2679f0e5ce7b07d2873bd43687bf2859234d3386ccb03ac5d6113e8852880cb35771db4ded63ac80d"
    "5fc25aefc9d85ae7d23aa26cf1bfdaf6b1be9e6f69af0d")
SPEC_GAP_ERROR = (
    "86a17601a46b696e64a56572726f72a4636f6465a3676170a76d657373616765d92762617463682073746172"
    "747320617420373b2073657276657220686f6c647320757020746f2032a565706f636801a961636b65645f73"
    "657102")
SPEC_GAP_SIGNATURE = (
    "33ae09279cd233c8ce1c6aa9ec892fbd49854744f407c7f225b25e85d6ac8b486d9dfea08ac69680891e1902"
    "302ff96ced421e811a6cdbddcf265df167114b02")
SPEC_ROTATION_PROOF = (
    "175d5b2abac6d4d9a6ea3c863666457d464f8eb07d7b096a717229f32ecc337090bdd09f52b724e0f1c11fd2"
    "36d16d6ff82e5ce1f3c85dc37ed3b676aca74d03")
SPEC_ROTATE_ENVELOPE = (
    "9501a6726f74617465b361672d30313233343536373839616263646566c48284a17601a46b696e64a6726f74"
    "617465a76e65775f6b6579c420ca93ac1705187071d67b83c7ff0efe8108e8ec4530575d7726879333dbdabe"
    "7ca570726f6f66c440175d5b2abac6d4d9a6ea3c863666457d464f8eb07d7b096a717229f32ecc337090bdd0"
    "9f52b724e0f1c11fd236d16d6ff82e5ce1f3c85dc37ed3b676aca74d03c44091f0b97be9a127ef6bea757913"
    "f932f1ce3bd01fe25293a0ef54f195f0762aba58c12f344c38c25490ddb5501aff5b9e3a459072cfbe3410a9"
    "da41080c138f0a")
SPEC_DOCUMENT = b"%PDF-1.4 example"
SPEC_CHUNK_INFO = (
    "636f6d6d756e652d73796e63206368756e6b009501b361672d30313233343536373839616263646566d94039"
    "3837396135346232336134323766303537326633373931313461346132343139613933616362646138376637"
    "373535363832623531343931373465333765621000")


def _reply_envelope(message_hex: str, signature_hex: str) -> str:
    """A signed reply as SPEC.md §4.6 lays it out: [1, "reply", "syncd", message, signature]."""
    return encode_envelope(Envelope("reply", "syncd", bytes.fromhex(message_hex),
                                    bytes.fromhex(signature_hex))).hex()


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


def _x25519_public(key: X25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def test_known_answer_keys_and_pin() -> None:
    assert public_key_bytes(SPEC_KEY).hex() == SPEC_PUBLIC
    assert public_key_bytes(SPEC_IDENTITY).hex() == SPEC_IDENTITY_PUBLIC
    assert _x25519_public(SPEC_SEALING) == SPEC_SEALING_PUBLIC
    assert public_key_bytes(SPEC_NEW_KEY).hex() == SPEC_NEW_PUBLIC
    digest = hashlib.sha256(b"commune-sync identity\x00" + bytes.fromhex(SPEC_IDENTITY_PUBLIC))
    assert digest.hexdigest()[:20] == "bae069e5b73732160d5b"
    assert fingerprint(bytes.fromhex(SPEC_IDENTITY_PUBLIC)) == SPEC_FINGERPRINT
    assert SPEC_TOKEN.split(".") == ["cs1", SPEC_FINGERPRINT, "EXAMPLE0EXAMPLE1EXAMPLE2EXAMPLE3"]


def test_known_answer_enrollment() -> None:
    from protocol.signing import sign_enrollment, verify_enrollment

    proof = sign_enrollment(SPEC_KEY, SPEC_TOKEN)
    assert proof.hex() == SPEC_PROOF
    verify_enrollment(bytes.fromhex(SPEC_PUBLIC), SPEC_TOKEN, proof)
    with pytest.raises(SignatureError):
        verify_enrollment(bytes.fromhex(SPEC_PUBLIC), SPEC_TOKEN[:-1] + "4", proof)
    request = EnrollRequest(SPEC_TOKEN, bytes.fromhex(SPEC_PUBLIC), "PC 1", proof)
    assert encode_enroll_request(request).hex() == SPEC_ENROLL
    assert len(bytes.fromhex(SPEC_ENROLL)) == 204
    assert decode_enroll_request(bytes.fromhex(SPEC_ENROLL)) == request
    reply = EnrollReply(SPEC_AGENT, "01234", "PC 1", 0, bytes.fromhex(SPEC_IDENTITY_PUBLIC), 1,
                        bytes.fromhex(SPEC_SEALING_PUBLIC))
    assert encode_enroll_reply(reply).hex() == SPEC_ENROLLED
    assert len(bytes.fromhex(SPEC_ENROLLED)) == 195
    # The body of the 200 answer: the enrolled map in a reply signed by the identity key.
    signed = seal_reply(SPEC_IDENTITY, bytes.fromhex(SPEC_ENROLLED))
    assert signed.hex() == _reply_envelope(SPEC_ENROLLED, SPEC_ENROLLED_SIGNATURE)
    assert len(signed) == 277
    # The agent's checks (SPEC.md §8.2): decode, match the pin, verify.
    enrolled = decode_enroll_reply(decode_envelope(signed).signed)
    assert enrolled == reply
    assert fingerprint(enrolled.server_key) == SPEC_TOKEN.split(".")[1]
    assert open_reply(signed, enrolled.server_key) == bytes.fromhex(SPEC_ENROLLED)


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


def test_known_answer_sealing() -> None:
    records = _spec_records()
    payload = bytes.fromhex(SPEC_PAYLOAD)
    assert len(payload) == 101
    params = zstandard.get_frame_parameters(payload)
    assert (params.content_size, params.dict_id, params.has_checksum) == (331, 0x8001, False)
    assert decompress(payload, max_bytes=10_000) == records[0] + records[1]
    info = batch_info(SPEC_AGENT, 1, 1, 2)
    assert info.hex() == SPEC_BATCH_INFO and len(info) == 44
    # The example sealing: deterministic only because the ephemeral key is given.
    sealing_public = bytes.fromhex(SPEC_SEALING_PUBLIC)
    sealed = rfc9180_seal(sealing_public, info, payload, SPEC_EPHEMERAL)
    assert sealed.hex() == SPEC_SEALED
    assert sealed[:32].hex() == _x25519_public(SPEC_EPHEMERAL)  # enc
    assert len(sealed) == 32 + 101 + 16
    assert open_payload(sealed, SPEC_SEALING, info) == payload
    # The reference seals with a fresh ephemeral key each time: other bytes, same payload.
    mine = seal_payload(payload, sealing_public, info)
    assert len(mine) == len(sealed) and mine != sealed
    assert open_payload(mine, SPEC_SEALING, info) == payload
    chunk = chunk_info(SPEC_AGENT, hashlib.sha256(SPEC_DOCUMENT).hexdigest(), 16, 0)
    assert chunk.hex() == SPEC_CHUNK_INFO and len(chunk) == 109


def test_known_answer_batch() -> None:
    from protocol.messages import batch_digest

    records = _spec_records()
    # The body as SPEC.md gives it, around the example sealing.
    body = pack({"v": 1, "kind": "batch", "agent": SPEC_AGENT, "commune": "01234", "epoch": 1,
                 "first_seq": 1, "count": 2, "codec": "zstd", "key_id": 1,
                 "sealed": bytes.fromhex(SPEC_SEALED), "agent_clock": SPEC_CLOCK})
    assert body.hex() == SPEC_BODY
    assert len(body) == 295
    sealed = decode_sealed_batch(body)
    assert (sealed.agent_id, sealed.commune_code, sealed.key_id) == (SPEC_AGENT, "01234", 1)
    assert open_batch(sealed, SPEC_SEALING) == BatchBody(1, 1, records, SPEC_CLOCK)
    env = sign_envelope(SPEC_KEY, "batch", SPEC_AGENT, body)
    assert len(env.signing_input()) == 13 + 28 + 295
    assert env.signature.hex() == SPEC_BATCH_SIGNATURE
    assert batch_digest(env).hex() == SPEC_BATCH_DIGEST
    assert len(encode_envelope(env)) == 392
    verify_envelope(decode_envelope(encode_envelope(env)), bytes.fromhex(SPEC_PUBLIC))
    ack = Ack(SPEC_AGENT, 1, 2, (), bytes.fromhex(SPEC_BATCH_DIGEST),
              "2026-11-26T03:05:01.123+00:00", 1, bytes.fromhex(SPEC_SEALING_PUBLIC))
    assert encode_ack(ack).hex() == SPEC_ACK
    assert len(bytes.fromhex(SPEC_ACK)) == 211
    assert decode_ack(bytes.fromhex(SPEC_ACK)) == ack
    signed = seal_reply(SPEC_IDENTITY, bytes.fromhex(SPEC_ACK))
    assert signed.hex() == _reply_envelope(SPEC_ACK, SPEC_ACK_SIGNATURE)
    assert len(signed) == 293
    assert decode_ack(open_reply(signed, bytes.fromhex(SPEC_IDENTITY_PUBLIC))) == ack


def test_known_answer_payload_is_what_the_reference_encoder_writes() -> None:
    # Compressed bytes depend on the libzstd version, so what is pinned here is what
    # every version must agree on: the clear fields and what the frames inflate to.
    body = BatchBody(1, 1, _spec_records(), SPEC_CLOCK)
    seal = SealTo(SPEC_AGENT, "01234", 1, bytes.fromhex(SPEC_SEALING_PUBLIC))
    encoded = encode_batch_body(body, seal)  # default level 9, dictionary 0x8001
    fields = msgpack.unpackb(encoded, raw=False)
    expected = msgpack.unpackb(bytes.fromhex(SPEC_BODY), raw=False)
    # Everything but the (randomised) sealing is the SPEC's body.
    assert {**fields, "sealed": None} == {**expected, "sealed": None}
    info = batch_info(SPEC_AGENT, 1, 1, 2)
    joined = b"".join(body.records)
    assert decompress(open_payload(fields["sealed"], SPEC_SEALING, info), max_bytes=4096) == joined
    assert decompress(bytes.fromhex(SPEC_PAYLOAD), max_bytes=4096) == joined  # SPEC.md §12.4
    assert decompress(compress(joined, level=9, dict_id=0), max_bytes=4096) == joined


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
    signed = seal_reply(SPEC_IDENTITY, bytes.fromhex(SPEC_GAP_ERROR))
    assert signed.hex() == _reply_envelope(SPEC_GAP_ERROR, SPEC_GAP_SIGNATURE)
    assert len(signed) == 173
    assert decode_error(open_reply(signed, bytes.fromhex(SPEC_IDENTITY_PUBLIC))) == gap


def test_known_answer_rotation() -> None:
    from protocol.signing import rotation_proof_input, sign_rotation, verify_rotation

    new_public = bytes.fromhex(SPEC_NEW_PUBLIC)
    proof_input = rotation_proof_input(SPEC_AGENT, new_public)
    assert proof_input == (b"commune-sync\x00rotate\x00\x93\x01\xb3" + SPEC_AGENT.encode()
                           + b"\xc4\x20" + new_public)
    assert len(proof_input) == 76
    proof = sign_rotation(SPEC_NEW_KEY, SPEC_AGENT)
    assert proof.hex() == SPEC_ROTATION_PROOF
    verify_rotation(SPEC_AGENT, new_public, proof)
    # What the reference agent posts to /v1/rotate, signed by its current key.
    signed = pack({"v": 1, "kind": "rotate", "new_key": new_public, "proof": proof})
    assert len(signed) == 130
    env = sign_envelope(SPEC_KEY, "rotate", SPEC_AGENT, signed)
    assert encode_envelope(env).hex() == SPEC_ROTATE_ENVELOPE
    assert len(bytes.fromhex(SPEC_ROTATE_ENVELOPE)) == 227
    verify_envelope(decode_envelope(bytes.fromhex(SPEC_ROTATE_ENVELOPE)),
                    bytes.fromhex(SPEC_PUBLIC))


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
    dumps = (SPEC_ENROLL, SPEC_ENROLLED, _reply_envelope(SPEC_ENROLLED, SPEC_ENROLLED_SIGNATURE),
             records[0].hex(), payload_blocks, SPEC_BATCH_INFO, SPEC_SEALED, SPEC_BODY, SPEC_ACK,
             _reply_envelope(SPEC_ACK, SPEC_ACK_SIGNATURE), SPEC_GAP_ERROR,
             _reply_envelope(SPEC_GAP_ERROR, SPEC_GAP_SIGNATURE), SPEC_CURSOR_ENVELOPE,
             SPEC_ROTATE_ENVELOPE, SPEC_CHUNK_INFO)
    for dump in dumps:
        assert any(_spaced(dump) in block for block in blocks), dump[:40]
    flat = " ".join(section.split()).replace("` `", "").replace("`", "")
    for value in (SPEC_DOSSIER_ID, *SPEC_RECORD_SHA256, SPEC_BATCH_SIGNATURE, SPEC_BATCH_DIGEST,
                  SPEC_PUBLIC, SPEC_PROOF, SPEC_IDENTITY_PUBLIC, SPEC_FINGERPRINT, SPEC_TOKEN,
                  SPEC_SEALING_PUBLIC, SPEC_NEW_PUBLIC, SPEC_ROTATION_PROOF,
                  SPEC_ENROLLED_SIGNATURE, SPEC_ACK_SIGNATURE, SPEC_GAP_SIGNATURE):
        assert value in flat, value


def test_heartbeat_travels_with_batches_and_cursors_and_is_checked() -> None:
    from protocol import BatchBody, Heartbeat, SealTo
    from protocol.batches import decode_sealed_batch, encode_batch_body
    from protocol.messages import CursorRequest, decode_cursor_request, encode_cursor_request

    hb = Heartbeat(12, 3600, 1, 5 * 10**9, "commune-sync 0.1.0")
    server_key = X25519PrivateKey.generate()
    seal = SealTo("ag-1", "01234", 1,
                  server_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    body = BatchBody(1, 1, (pack({"t": "x"}),), "2026-11-26T10:00:00+07:00", hb)
    assert decode_sealed_batch(encode_batch_body(body, seal)).heartbeat == hb
    # Without one, the message is what it always was: no key at all.
    plain = unpack(encode_batch_body(BatchBody(1, 1, (pack(1),)), seal), max_bytes=1 << 16)
    assert "heartbeat" not in plain
    assert decode_cursor_request(encode_cursor_request(CursorRequest(2, None, hb))).heartbeat == hb
    for bad in ({"depth": -1}, {"depth": "3"}, {"secret": 1}, {"version": "x" * 41}):
        message = pack({"v": 1, "kind": "cursor", "epoch": 1, "heartbeat": bad})
        with pytest.raises(DecodeError):
            decode_cursor_request(message)
