"""Sealing to the server (HPKE), signed replies, the server's pin and key rotation.

What a peer relies on (SPEC.md §4.4-§4.7):

* ``seal_payload``/``open_payload`` are RFC 9180 base mode with DHKEM(X25519,
  HKDF-SHA256), HKDF-SHA256 and ChaCha20-Poly1305, single-shot, empty aad, the
  sealed bytes being ``enc (32) || ciphertext || tag (16)``: an independent
  implementation of RFC 9180 (below, checked against the RFC's own test vector)
  opens what the reference seals and the other way round;
* a sealed payload opens only with the right private key and the exact ``info``:
  any flipped bit, a truncation, another key, or a batch or chunk moved to another
  agent, epoch, seq range or document position is a :class:`DecodeError`;
* a server reply is believed only if it is an envelope of kind ``"reply"`` from
  agent ``"syncd"`` signed by the pinned identity key; a captive portal's page, a
  forgery or a damaged reply is refused;
* the pin is a 16-character lowercase base32 fingerprint of the identity key;
* a rotation proof shows possession of the new agent key, for one agent only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.batches import (
    BatchBody,
    SealedBatch,
    SealTo,
    decode_sealed_batch,
    encode_batch_body,
    open_batch,
)
from protocol.codec import pack
from protocol.documents import DocChunk, decode_doc_chunk, encode_doc_chunk, open_doc_chunk
from protocol.errors import DecodeError, ErrorCode, LocalProtocolError, SignatureError
from protocol.messages import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    Ack,
    EnrollReply,
    decode_ack,
    decode_enroll_reply,
    decode_envelope,
    encode_ack,
    encode_enroll_reply,
    encode_envelope,
    enroll_proof_input,
    signing_input,
)
from protocol.sealing import (
    SERVER_NAME,
    batch_info,
    chunk_info,
    fingerprint,
    open_payload,
    open_reply,
    seal_payload,
    seal_reply,
)
from protocol.signing import (
    public_key_bytes,
    rotation_proof_input,
    sign_enrollment,
    sign_envelope,
    sign_rotation,
    verify_enrollment,
    verify_envelope,
    verify_rotation,
)

PROPS = settings(max_examples=60, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow])
MAX_SEQ = 2**63 - 1

# -- an independent RFC 9180 implementation (base mode, one message, empty aad) ----------------
# Built from the RFC's text on HMAC-SHA256, X25519 and ChaCha20-Poly1305 only, so that the
# reference (cryptography's HPKE) is checked against the standard, not against itself.

_KEM = b"KEM" + (0x0020).to_bytes(2, "big")  # DHKEM(X25519, HKDF-SHA256)
_HPKE = b"HPKE" + (0x0020).to_bytes(2, "big") + (0x0001).to_bytes(2, "big") + (
    0x0003).to_bytes(2, "big")  # HKDF-SHA256, ChaCha20-Poly1305


def _labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    # HKDF-Extract with an empty salt is HMAC under HashLen zero bytes (RFC 5869 §2.2).
    return hmac.new(salt or bytes(32), b"HPKE-v1" + suite + label + ikm, hashlib.sha256).digest()


def _labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled = length.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + labeled + bytes([counter]), hashlib.sha256).digest()
        out, counter = out + block, counter + 1
    return out[:length]


def _raw(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _key_and_nonce(dh: bytes, enc: bytes, recipient: bytes, info: bytes) -> tuple[bytes, bytes]:
    eae_prk = _labeled_extract(_KEM, b"", b"eae_prk", dh)
    shared = _labeled_expand(_KEM, eae_prk, b"shared_secret", enc + recipient, 32)
    context = (b"\x00" + _labeled_extract(_HPKE, b"", b"psk_id_hash", b"")
               + _labeled_extract(_HPKE, b"", b"info_hash", info))
    secret = _labeled_extract(_HPKE, shared, b"secret", b"")
    return (_labeled_expand(_HPKE, secret, b"key", context, 32),
            _labeled_expand(_HPKE, secret, b"base_nonce", context, 12))


def rfc9180_seal(recipient: bytes, info: bytes, plaintext: bytes,
                 ephemeral: X25519PrivateKey, aad: bytes = b"") -> bytes:
    """``enc || ct`` of SealBase (RFC 9180 §6.1) with a chosen ephemeral key."""
    enc = _raw(ephemeral)
    dh = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    key, nonce = _key_and_nonce(dh, enc, recipient, info)
    return enc + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def rfc9180_open(key: X25519PrivateKey, info: bytes, sealed: bytes, aad: bytes = b"") -> bytes:
    enc, ciphertext = sealed[:32], sealed[32:]
    dh = key.exchange(X25519PublicKey.from_public_bytes(enc))
    aead_key, nonce = _key_and_nonce(dh, enc, _raw(key), info)
    return ChaCha20Poly1305(aead_key).decrypt(nonce, ciphertext, aad)


def test_the_independent_implementation_reproduces_rfc_9180_appendix_a_2_1() -> None:
    """RFC 9180 A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, base mode,
    sequence number 0 (the RFC's vector has an aad; commune-sync seals with an empty one)."""
    recipient = X25519PrivateKey.from_private_bytes(bytes.fromhex(
        "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb"))
    ephemeral = X25519PrivateKey.from_private_bytes(bytes.fromhex(
        "f4ec9b33b792c372c1d2c2063507b684ef925b8c75a42dbcbf57d63ccd381600"))
    info = bytes.fromhex("4f6465206f6e2061204772656369616e2055726e")  # "Ode on a Grecian Urn"
    sealed = rfc9180_seal(_raw(recipient), info, b"Beauty is truth, truth beauty", ephemeral,
                          b"Count-0")
    assert _raw(recipient).hex() == (
        "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a")
    assert sealed.hex() == (
        "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a"  # enc
        "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28")
    assert rfc9180_open(recipient, info, sealed, b"Count-0") == b"Beauty is truth, truth beauty"


# -- keys and helpers ---------------------------------------------------------------------------

SERVER = X25519PrivateKey.generate()
SERVER_PUBLIC = _raw(SERVER)
OTHER_SERVER = X25519PrivateKey.generate()
IDENTITY = Ed25519PrivateKey.generate()
IDENTITY_PUBLIC = public_key_bytes(IDENTITY)
AGENT_KEY = Ed25519PrivateKey.generate()
AGENT = "ag-0123456789abcdef"
SEAL = SealTo(AGENT, "01234", 1, SERVER_PUBLIC)
SHA = hashlib.sha256(b"%PDF-1.4 example").hexdigest()


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _fields(encoded: bytes) -> dict[str, object]:
    return dict(msgpack.unpackb(encoded, raw=False))


agents = st.text(min_size=1, max_size=64)
seqs = st.integers(1, MAX_SEQ)
infos = st.binary(max_size=200)


# -- seal and open ---------------------------------------------------------------------------------


@PROPS
@given(payload=st.binary(max_size=2000), info=infos)
def test_seal_open_round_trip(payload: bytes, info: bytes) -> None:
    sealed = seal_payload(payload, SERVER_PUBLIC, info)
    assert open_payload(sealed, SERVER, info) == payload
    # enc (the ephemeral X25519 public key), then the ChaCha20-Poly1305 ciphertext and tag.
    assert len(sealed) == 32 + len(payload) + 16


@PROPS
@given(payload=st.binary(max_size=500), info=infos)
def test_the_reference_and_an_independent_rfc_9180_implementation_interoperate(
    payload: bytes, info: bytes,
) -> None:
    assert rfc9180_open(SERVER, info, seal_payload(payload, SERVER_PUBLIC, info)) == payload
    sealed = rfc9180_seal(SERVER_PUBLIC, info, payload, X25519PrivateKey.generate())
    assert open_payload(sealed, SERVER, info) == payload


def test_sealing_is_randomised_by_a_fresh_ephemeral_key() -> None:
    first, second = (seal_payload(b"the same records", SERVER_PUBLIC, b"info") for _ in "ab")
    assert first != second and first[:32] != second[:32]
    assert open_payload(first, SERVER, b"info") == open_payload(second, SERVER, b"info")


@PROPS
@given(payload=st.binary(max_size=300), info=infos, data=st.data())
def test_any_flipped_bit_of_a_sealed_payload_is_refused(payload: bytes, info: bytes,
                                                        data: st.DataObject) -> None:
    sealed = seal_payload(payload, SERVER_PUBLIC, info)
    bit = data.draw(st.integers(0, len(sealed) * 8 - 1))
    with pytest.raises(DecodeError) as exc:
        open_payload(_flip(sealed, bit), SERVER, info)
    assert exc.value.code is ErrorCode.MALFORMED


def test_every_flipped_bit_of_a_sealed_example_is_refused() -> None:
    info = batch_info(AGENT, 1, 1, 2)
    sealed = seal_payload(b"\x01\x02", SERVER_PUBLIC, info)
    for bit in range(len(sealed) * 8):
        with pytest.raises(DecodeError):
            open_payload(_flip(sealed, bit), SERVER, info)


def test_truncated_or_extended_sealed_payloads_are_refused() -> None:
    info = b"info"
    sealed = seal_payload(b"records", SERVER_PUBLIC, info)
    for cut in range(len(sealed)):
        with pytest.raises(DecodeError):
            open_payload(sealed[:cut], SERVER, info)
    for extra in (b"\x00", b"x" * 16, sealed):
        with pytest.raises(DecodeError):
            open_payload(sealed + extra, SERVER, info)


@PROPS
@given(payload=st.binary(max_size=200), info=infos)
def test_a_payload_sealed_to_another_key_is_refused(payload: bytes, info: bytes) -> None:
    sealed = seal_payload(payload, _raw(OTHER_SERVER), info)
    with pytest.raises(DecodeError):
        open_payload(sealed, SERVER, info)
    assert open_payload(sealed, OTHER_SERVER, info) == payload


@PROPS
@given(info=infos, data=st.data())
def test_a_payload_opened_with_another_info_is_refused(info: bytes, data: st.DataObject) -> None:
    sealed = seal_payload(b"records", SERVER_PUBLIC, info)
    other = data.draw(infos.filter(lambda i: i != info))
    with pytest.raises(DecodeError):
        open_payload(sealed, SERVER, other)
    if info:
        bit = data.draw(st.integers(0, len(info) * 8 - 1))
        with pytest.raises(DecodeError):
            open_payload(sealed, SERVER, _flip(info, bit))


@pytest.mark.parametrize("key", [b"", b"\x09" * 31, b"\x09" * 33], ids=["empty", "31", "33"])
def test_sealing_to_a_key_that_is_not_32_bytes_is_a_local_error(key: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        seal_payload(b"records", key, b"info")
    with pytest.raises(LocalProtocolError):
        encode_batch_body(BatchBody(1, 1, (b"\xc0",)), SealTo(AGENT, "01234", 1, key))


# X25519 points of small order (RFC 7748 §7; the list of Bernstein's "cr.yp.to/ecdh.html").
LOW_ORDER_POINTS = {
    "zero": bytes(32),
    "one": b"\x01" + bytes(31),
    "order-8": bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
}


@pytest.mark.parametrize("key", LOW_ORDER_POINTS.values(), ids=LOW_ORDER_POINTS.keys())
def test_sealing_to_a_low_order_point_is_a_typed_local_error(key: bytes) -> None:
    reply = decode_enroll_reply(encode_enroll_reply(
        EnrollReply(AGENT, "01234", None, 0, IDENTITY_PUBLIC, 1, key)))
    assert reply.sealing_key == key  # accepted: it is 32 bytes
    with pytest.raises(LocalProtocolError):
        encode_batch_body(BatchBody(1, 1, (b"\xc0",)),
                          SealTo(AGENT, "01234", reply.sealing_key_id, reply.sealing_key))


# -- info: what a sealed payload is bound to ------------------------------------------------------


def test_batch_and_chunk_info_are_these_bytes() -> None:
    """SPEC.md §4.7: a 19-byte ASCII label with its zero byte, then a msgpack array of 5."""
    assert batch_info(AGENT, 1, 1, 2) == (
        b"commune-sync batch\x00" + b"\x95\x01\xb3" + AGENT.encode() + b"\x01\x01\x02")
    assert batch_info("a", 2**32, 1, 300) == (
        b"commune-sync batch\x00\x95\x01\xa1a\xcf" + (2**32).to_bytes(8, "big")
        + b"\x01\xcd\x01\x2c")
    assert chunk_info(AGENT, SHA, 16, 0) == (
        b"commune-sync chunk\x00\x95\x01\xb3" + AGENT.encode() + b"\xd9\x40" + SHA.encode()
        + b"\x10\x00")


@PROPS
@given(a=st.tuples(agents, seqs, seqs, seqs), b=st.tuples(agents, seqs, seqs, seqs))
def test_distinct_batch_contexts_have_distinct_infos(a: tuple[str, int, int, int],
                                                     b: tuple[str, int, int, int]) -> None:
    assert (batch_info(*a) == batch_info(*b)) == (a == b)
    assert batch_info(*a) != chunk_info(a[0], SHA, a[2], a[3])


# -- sealed batches -----------------------------------------------------------------------------


def _seal_batch(records: tuple[bytes, ...] = (b"\x01", b"\xc0"), epoch: int = 3,
                first_seq: int = 41) -> bytes:
    return encode_batch_body(BatchBody(epoch, first_seq, records, "2026-11-26T09:30:00+07:00"),
                             SEAL)


def test_a_sealed_batch_opens_to_its_records() -> None:
    encoded = _seal_batch()
    sealed = decode_sealed_batch(encoded)
    assert sealed == SealedBatch(AGENT, "01234", 3, 41, 2, 1, _fields(encoded)["sealed"],
                                 "2026-11-26T09:30:00+07:00")
    assert open_batch(sealed, SERVER) == BatchBody(3, 41, (b"\x01", b"\xc0"),
                                                   "2026-11-26T09:30:00+07:00")
    assert b"\x01\xc0" not in sealed.sealed[32:]  # nothing of the records is in clear


MOVES = st.one_of(
    st.tuples(st.just("agent"), agents),
    st.tuples(st.just("epoch"), seqs),
    st.tuples(st.just("first_seq"), st.integers(1, MAX_SEQ - 10)),
    st.tuples(st.just("count"), st.integers(1, 10)),
)


@PROPS
@given(move=MOVES)
def test_a_sealed_batch_moved_to_another_context_does_not_open(move: tuple[str, object]) -> None:
    """The agent's envelope signature would not cover a moved batch either; the seal alone
    already refuses it: ``info`` binds agent, epoch, first_seq and count."""
    encoded = _seal_batch()
    fields = _fields(encoded)
    name, value = move
    if fields[name] == value:
        return
    moved = decode_sealed_batch(pack({**fields, name: value}))
    with pytest.raises(DecodeError) as exc:
        open_batch(moved, SERVER)
    assert exc.value.code is ErrorCode.MALFORMED


def test_the_sealed_payload_of_one_batch_does_not_open_in_another() -> None:
    first, second = _seal_batch(first_seq=41), _seal_batch(first_seq=43)
    swapped = pack({**_fields(second), "sealed": _fields(first)["sealed"]})
    with pytest.raises(DecodeError):
        open_batch(decode_sealed_batch(swapped), SERVER)


def test_a_batch_sealed_to_another_server_key_does_not_open() -> None:
    encoded = encode_batch_body(BatchBody(1, 1, (b"\xc0",)),
                                SealTo(AGENT, "01234", 2, _raw(OTHER_SERVER)))
    sealed = decode_sealed_batch(encoded)
    assert sealed.key_id == 2
    with pytest.raises(DecodeError):
        open_batch(sealed, SERVER)
    assert open_batch(sealed, OTHER_SERVER).records == (b"\xc0",)


@PROPS
@given(data=st.data())
def test_any_flipped_bit_of_the_sealed_field_of_a_batch_is_refused(data: st.DataObject) -> None:
    fields = _fields(_seal_batch())
    sealed = fields["sealed"]
    assert isinstance(sealed, bytes)
    bit = data.draw(st.integers(0, len(sealed) * 8 - 1))
    damaged = decode_sealed_batch(pack({**fields, "sealed": _flip(sealed, bit)}))
    with pytest.raises(DecodeError):
        open_batch(damaged, SERVER)


# -- sealed document chunks ---------------------------------------------------------------------

CHUNK = DocChunk(SHA, 16, 0, b"%PDF-1.4 example")


def test_a_sealed_chunk_opens_to_its_bytes_and_hides_them() -> None:
    encoded = encode_doc_chunk(CHUNK, SEAL)
    assert b"%PDF" not in encoded
    sealed = decode_doc_chunk(encoded, DEFAULT_LIMITS)
    assert (sealed.sha256, sealed.size, sealed.offset, sealed.key_id) == (SHA, 16, 0, 1)
    assert open_doc_chunk(sealed, SERVER, AGENT) == CHUNK


CHUNK_MOVES = st.one_of(
    st.tuples(st.just("offset"), st.integers(1, 15)),
    st.tuples(st.just("size"), st.integers(17, 10**6)),
    st.tuples(st.just("sha256"), st.text("0123456789abcdef", min_size=64, max_size=64)),
)


@PROPS
@given(move=CHUNK_MOVES)
def test_a_sealed_chunk_moved_to_another_document_or_offset_does_not_open(
    move: tuple[str, object],
) -> None:
    fields = _fields(encode_doc_chunk(CHUNK, SEAL))
    name, value = move
    if fields[name] == value:
        return
    moved = decode_doc_chunk(pack({**fields, name: value}), DEFAULT_LIMITS)
    with pytest.raises(DecodeError):
        open_doc_chunk(moved, SERVER, AGENT)


@PROPS
@given(agent=agents.filter(lambda a: a != AGENT))
def test_a_sealed_chunk_sent_by_another_agent_does_not_open(agent: str) -> None:
    sealed = decode_doc_chunk(encode_doc_chunk(CHUNK, SEAL), DEFAULT_LIMITS)
    with pytest.raises(DecodeError):
        open_doc_chunk(sealed, SERVER, agent)


def test_a_chunk_sealed_to_another_key_does_not_open() -> None:
    encoded = encode_doc_chunk(CHUNK, SealTo(AGENT, "01234", 2, _raw(OTHER_SERVER)))
    with pytest.raises(DecodeError):
        open_doc_chunk(decode_doc_chunk(encoded, DEFAULT_LIMITS), SERVER, AGENT)


def test_sealed_batches_and_chunks_cannot_stand_in_for_each_other() -> None:
    """Their ``info`` labels differ ("batch" / "chunk"), whatever the numbers."""
    chunk_fields = _fields(encode_doc_chunk(DocChunk(SHA, 16, 1, b"\x01"), SEAL))
    batch_fields = _fields(encode_batch_body(BatchBody(16, 1, (b"\x01",)), SEAL))
    as_batch = decode_sealed_batch(pack({**batch_fields, "sealed": chunk_fields["sealed"]}))
    with pytest.raises(DecodeError):
        open_batch(as_batch, SERVER)
    as_chunk = decode_doc_chunk(pack({**chunk_fields, "sealed": batch_fields["sealed"]}),
                                DEFAULT_LIMITS)
    with pytest.raises(DecodeError):
        open_doc_chunk(as_chunk, SERVER, AGENT)


def test_a_chunk_whose_opened_bytes_run_past_the_document_is_refused() -> None:
    """An agent that seals more bytes than fit (its encoder refuses; another might not)."""
    fields = _fields(encode_doc_chunk(DocChunk(SHA, 16, 0, b"x"), SEAL))
    too_long = seal_payload(b"y" * 17, SERVER_PUBLIC, chunk_info(AGENT, SHA, 16, 0))
    empty = seal_payload(b"", SERVER_PUBLIC, chunk_info(AGENT, SHA, 16, 0))
    for sealed in (too_long, empty):
        chunk = decode_doc_chunk(pack({**fields, "sealed": sealed}), DEFAULT_LIMITS)
        with pytest.raises(DecodeError):
            open_doc_chunk(chunk, SERVER, AGENT)


@pytest.mark.parametrize("chunk", [DocChunk(SHA, 16, 0, b""), DocChunk(SHA, 16, 10, b"x" * 7)],
                         ids=["empty", "past-the-end"])
def test_the_chunk_encoder_refuses_chunks_outside_the_document(chunk: DocChunk) -> None:
    with pytest.raises(LocalProtocolError):
        encode_doc_chunk(chunk, SEAL)


# -- key ids -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key_id", [-1, 2**63], ids=["-1", "2^63"])
def test_the_encoders_refuse_key_ids_the_decoders_refuse(key_id: int) -> None:
    seal = SealTo(AGENT, "01234", key_id, SERVER_PUBLIC)
    with pytest.raises(LocalProtocolError):
        encode_batch_body(BatchBody(1, 1, (b"\xc0",)), seal)
    with pytest.raises(LocalProtocolError):
        encode_doc_chunk(CHUNK, seal)


@pytest.mark.parametrize("key_id", [-1, 2**63, 2**64 - 1], ids=["-1", "2^63", "2^64-1"])
def test_acks_and_enrolled_replies_refuse_key_ids_no_batch_can_carry(key_id: int) -> None:
    ack = encode_ack(Ack(AGENT, 1, 0, (), None, None, key_id, SERVER_PUBLIC))
    with pytest.raises(DecodeError):
        decode_ack(ack)
    reply = encode_enroll_reply(EnrollReply(AGENT, "01234", None, 0, IDENTITY_PUBLIC, key_id,
                                            SERVER_PUBLIC))
    with pytest.raises(DecodeError):
        decode_enroll_reply(reply)


# -- signed replies -----------------------------------------------------------------------------

ACK = encode_ack(Ack(AGENT, 1, 2, (), b"\x11" * 32, "2026-11-26T03:05:01.123+00:00", 1,
                     SERVER_PUBLIC))


@PROPS
@given(message=st.binary(max_size=500))
def test_a_signed_reply_opens_to_its_message(message: bytes) -> None:
    reply = seal_reply(IDENTITY, message)
    assert open_reply(reply, IDENTITY_PUBLIC) == message
    env = decode_envelope(reply)
    assert (env.kind, env.agent_id, env.signed) == ("reply", SERVER_NAME, message)
    assert env.signing_input() == signing_input("reply", "syncd", message)
    verify_envelope(env, IDENTITY_PUBLIC)


def test_a_reply_signed_by_another_key_is_a_signature_error() -> None:
    forged = seal_reply(Ed25519PrivateKey.generate(), ACK)
    with pytest.raises(SignatureError) as exc:
        open_reply(forged, IDENTITY_PUBLIC)
    assert exc.value.code is ErrorCode.BAD_SIGNATURE


@pytest.mark.parametrize("kind,agent", [("ack", "syncd"), ("batch", "syncd"), ("reply", AGENT),
                                        ("reply", "Syncd"), ("Reply", "syncd")],
                         ids=["kind-ack", "kind-batch", "agent-id", "agent-case", "kind-case"])
def test_a_signed_envelope_of_another_kind_or_sender_is_not_a_reply(kind: str,
                                                                     agent: str) -> None:
    """Even correctly signed by the server's key: only kind "reply" from "syncd" is a reply."""
    env = encode_envelope(sign_envelope(IDENTITY, kind, agent, ACK))
    with pytest.raises(DecodeError):
        open_reply(env, IDENTITY_PUBLIC)


def test_an_agent_cannot_pass_its_own_envelope_off_as_a_reply() -> None:
    env = encode_envelope(sign_envelope(AGENT_KEY, "reply", "syncd", ACK))
    with pytest.raises(SignatureError):
        open_reply(env, IDENTITY_PUBLIC)


def test_every_flipped_bit_of_a_signed_reply_is_refused() -> None:
    reply = seal_reply(IDENTITY, ACK)
    for bit in range(len(reply) * 8):
        with pytest.raises((DecodeError, SignatureError)):
            open_reply(_flip(reply, bit), IDENTITY_PUBLIC)


def test_every_truncation_of_a_signed_reply_is_refused() -> None:
    reply = seal_reply(IDENTITY, ACK)
    for cut in range(len(reply)):
        with pytest.raises(DecodeError):
            open_reply(reply[:cut], IDENTITY_PUBLIC)
    with pytest.raises(DecodeError):
        open_reply(reply + b"\x00", IDENTITY_PUBLIC)


NOT_REPLIES = {
    "captive-portal-html": (b"<!DOCTYPE html><html><head><title>Wi-Fi login</title></head>"
                            b"<body>Please log in</body></html>"),
    "json": b'{"status": "ok"}',
    "empty": b"",
    "plain-ack-map": ACK,  # the message unsigned, as v1 before signed replies sent it
    "proxy-error": b"502 Bad Gateway",
    "unsigned-envelope": encode_envelope(sign_envelope(IDENTITY, "reply", "syncd", ACK))[:-66]
                         + b"\xc4\x00",
}


@pytest.mark.parametrize("body", NOT_REPLIES.values(), ids=NOT_REPLIES.keys())
def test_anything_but_a_signed_reply_is_refused(body: bytes) -> None:
    with pytest.raises(DecodeError):
        open_reply(body, IDENTITY_PUBLIC)


def test_a_reply_checked_against_a_garbage_pin_is_a_signature_error() -> None:
    reply = seal_reply(IDENTITY, ACK)
    for pin in (b"", IDENTITY_PUBLIC[:31], IDENTITY_PUBLIC + b"\x00"):
        with pytest.raises(SignatureError):
            open_reply(reply, pin)


# -- the pin ------------------------------------------------------------------------------------

_BASE32_LOWER = re.compile(r"[a-z2-7]{16}")


@PROPS
@given(key=st.binary(min_size=32, max_size=32))
def test_a_fingerprint_is_16_lowercase_base32_characters_of_80_bits_of_sha256(key: bytes) -> None:
    pin = fingerprint(key)
    assert _BASE32_LOWER.fullmatch(pin)
    digest = hashlib.sha256(b"commune-sync identity\x00" + key).digest()
    assert base64.b32decode(pin.upper()) == digest[:10]
    assert fingerprint(key) == pin  # stable


def test_fingerprint_known_answer() -> None:
    """SPEC.md §12: the example server's identity key (Ed25519 seed 01 × 32)."""
    identity = public_key_bytes(Ed25519PrivateKey.from_private_bytes(b"\x01" * 32))
    assert identity.hex() == "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
    assert fingerprint(identity) == "xlqgtznxg4zbmdk3"


def test_fingerprints_of_different_keys_differ() -> None:
    keys = [public_key_bytes(Ed25519PrivateKey.generate()) for _ in range(200)]
    assert len({fingerprint(k) for k in keys}) == 200


def _agent_accepts_enrollment(body: bytes, pin: str) -> EnrollReply:
    """The agent's checks of a 200 answer to /v1/enroll (SPEC.md §8.2), in order."""
    env = decode_envelope(body)
    if env.kind != "reply":
        raise DecodeError("not a server reply")
    enrolled = decode_enroll_reply(env.signed)
    if fingerprint(enrolled.server_key) != pin:
        raise SignatureError("the server's key is not the one the token names")
    open_reply(body, enrolled.server_key)
    return enrolled


def test_an_enrollment_reply_is_accepted_only_from_the_pinned_server() -> None:
    pin = fingerprint(IDENTITY_PUBLIC)
    token = f"cs1.{pin}.{'A' * 32}"
    assert token.split(".")[1] == pin
    reply = EnrollReply(AGENT, "01234", "PC 1", 0, IDENTITY_PUBLIC, 1, SERVER_PUBLIC)
    assert _agent_accepts_enrollment(seal_reply(IDENTITY, encode_enroll_reply(reply)),
                                     pin) == reply
    # An impostor with its own identity key: its key does not match the pin.
    impostor = Ed25519PrivateKey.generate()
    own = EnrollReply(AGENT, "01234", "PC 1", 0, public_key_bytes(impostor), 1, SERVER_PUBLIC)
    with pytest.raises(SignatureError):
        _agent_accepts_enrollment(seal_reply(impostor, encode_enroll_reply(own)), pin)
    # An impostor naming the real server's key (and its own sealing key): cannot sign for it.
    claimed = EnrollReply(AGENT, "01234", "PC 1", 0, IDENTITY_PUBLIC, 1, b"\x09" * 32)
    with pytest.raises(SignatureError):
        _agent_accepts_enrollment(seal_reply(impostor, encode_enroll_reply(claimed)), pin)


# -- key rotation --------------------------------------------------------------------------------

NEW_KEY = Ed25519PrivateKey.generate()
NEW_PUBLIC = public_key_bytes(NEW_KEY)


def test_a_rotation_proof_verifies_for_its_agent_and_key() -> None:
    proof = sign_rotation(NEW_KEY, AGENT)
    verify_rotation(AGENT, NEW_PUBLIC, proof)
    assert len(proof) == 64
    assert rotation_proof_input(AGENT, NEW_PUBLIC) == (
        b"commune-sync\x00rotate\x00" + pack([PROTOCOL_VERSION, AGENT, NEW_PUBLIC]))


@pytest.mark.parametrize("case", ["other-agent", "other-key", "signed-by-old-key", "garbage-key"])
def test_a_rotation_proof_is_refused_for_anything_else(case: str) -> None:
    proof = sign_rotation(NEW_KEY, AGENT)
    agent, key = AGENT, NEW_PUBLIC
    if case == "other-agent":
        agent = "ag-fedcba9876543210"
    elif case == "other-key":
        key = public_key_bytes(Ed25519PrivateKey.generate())
    elif case == "signed-by-old-key":  # the compromised key cannot vouch for a new one
        proof = AGENT_KEY.sign(rotation_proof_input(AGENT, NEW_PUBLIC))
    else:
        key = NEW_PUBLIC[:31]
    with pytest.raises(SignatureError):
        verify_rotation(agent, key, proof)


@settings(max_examples=10, deadline=None, database=None)
@given(agent=agents)
def test_any_flipped_bit_of_a_rotation_proof_is_refused(agent: str) -> None:
    proof = sign_rotation(NEW_KEY, agent)
    verify_rotation(agent, NEW_PUBLIC, proof)
    for bit in range(0, 512, 7):
        with pytest.raises(SignatureError):
            verify_rotation(agent, NEW_PUBLIC, _flip(proof, bit))


def test_rotation_and_enrollment_proofs_and_envelope_signatures_never_stand_in_for_each_other(
) -> None:
    """Three labels: "commune-sync\\0" (envelopes), "…\\0enroll\\0", "…\\0rotate\\0"."""
    token = "cs1.xlqgtznxg4zbmdk3." + "A" * 32
    rotation = sign_rotation(NEW_KEY, AGENT)
    enrollment = sign_enrollment(NEW_KEY, AGENT)  # the agent id used as a "token"
    with pytest.raises(SignatureError):
        verify_enrollment(NEW_PUBLIC, AGENT, rotation)
    with pytest.raises(SignatureError):
        verify_rotation(AGENT, NEW_PUBLIC, enrollment)
    with pytest.raises(SignatureError):
        verify_rotation(AGENT, NEW_PUBLIC, sign_enrollment(NEW_KEY, token))
    assert len({rotation_proof_input(AGENT, NEW_PUBLIC), enroll_proof_input(AGENT, NEW_PUBLIC),
                signing_input("rotate", AGENT, NEW_PUBLIC)}) == 3
