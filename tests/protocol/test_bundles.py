"""The sneakernet containers and refusals: round trips, and hostile bytes raise
DecodeError."""

from __future__ import annotations

import contextlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from protocol import DecodeError, ProtocolError
from protocol.bundles import (
    AckItem,
    Acks,
    Bundle,
    BundleItem,
    Refusal,
    acks_name,
    agent_of_bundle_name,
    bundle_head,
    bundle_item,
    bundle_name,
    decode_acks,
    decode_bundle,
    decode_refusal,
    encode_acks,
    encode_bundle,
    encode_refusal,
    refusal_name,
)
from protocol.codec import pack
from protocol.sealing import open_reply, seal_reply
from protocol.signing import public_key_bytes

paths = st.sampled_from(["/v1/batches", "/v1/documents/chunk"])
agents = st.from_regex(r"ag-[0-9a-f]{16}", fullmatch=True)


@given(agents, st.lists(st.builds(BundleItem, paths, st.binary(max_size=200)), max_size=5))
def test_bundle_round_trip(agent: str, items: list[BundleItem]) -> None:
    bundle = Bundle(agent, tuple(items))
    assert decode_bundle(encode_bundle(bundle)) == bundle


@given(agents, st.binary(min_size=32, max_size=32),
       st.lists(st.builds(AckItem, paths, st.integers(100, 599), st.binary(max_size=100),
                          st.none() | st.binary(max_size=100)), max_size=5))
def test_acks_round_trip(agent: str, digest: bytes, items: list[AckItem]) -> None:
    acks = Acks(agent, digest, tuple(items))
    assert decode_acks(encode_acks(acks)) == acks


@given(st.binary(max_size=300))
def test_random_bytes_decode_or_raise(data: bytes) -> None:
    for decode in (decode_bundle, decode_acks, decode_refusal):
        with contextlib.suppress(DecodeError):
            decode(data)


def test_refuses_other_paths_kinds_and_versions() -> None:
    good = {"v": 1, "kind": "bundle", "agent": "ag-1", "items": []}
    assert decode_bundle(pack(good)) == Bundle("ag-1", ())
    for bad in ({**good, "v": 2}, {**good, "kind": "bundle_acks"}, {**good, "extra": 1},
                {**good, "items": [{"path": "/v1/enroll", "body": b""}]},
                {**good, "items": [{"path": "/v1/batches", "body": "text"}]}):
        with pytest.raises(DecodeError):
            decode_bundle(pack(bad))


def test_names_start_with_the_agent() -> None:
    name = bundle_name("ag-0123456789abcdef", "20261126093000", 2)
    assert name == "ag-0123456789abcdef-20261126093000-002.csbundle"
    assert acks_name(name) == "ag-0123456789abcdef-20261126093000-002.csacks"
    assert refusal_name(name) == "ag-0123456789abcdef-20261126093000-002.csrefused"
    assert agent_of_bundle_name(name) == "ag-0123456789abcdef"
    for other in ("notes.csbundle", "ag-1.csbundle", name + ".tmp", "-x-001.csbundle"):
        assert agent_of_bundle_name(other) is None


@given(agents, st.lists(st.builds(BundleItem, paths, st.binary(max_size=50)), max_size=40))
def test_a_bundle_written_item_by_item_is_the_same_bytes(agent: str,
                                                         items: list[BundleItem]) -> None:
    pieces = [bundle_head(agent, len(items))] + [bundle_item(i.path, i.body) for i in items]
    whole = b"".join(pieces)  # what the exporter streams to the stick
    assert whole == pack({"v": 1, "kind": "bundle", "agent": agent,  # the map, packed at once
                          "items": [{"path": i.path, "body": i.body} for i in items]})
    assert decode_bundle(whole) == Bundle(agent, tuple(items))


@pytest.mark.parametrize("count", [15, 16, 65535, 65536])
def test_bundle_head_across_msgpack_array_sizes(count: int) -> None:
    item = BundleItem("/v1/batches", b"")
    whole = encode_bundle(Bundle("ag-1", (item,) * count))
    packed = pack({"v": 1, "kind": "bundle", "agent": "ag-1",
                   "items": [{"path": item.path, "body": b""}] * count})
    assert whole == packed


texts = st.text(min_size=1, max_size=200)
refusals = st.builds(Refusal, agents, st.binary(min_size=32, max_size=32),
                     st.sampled_from(["revoked", "unknown_agent", "bad_signature"]), texts, texts)


@given(refusals)
def test_refusal_round_trip(refusal: Refusal) -> None:
    assert decode_refusal(encode_refusal(refusal)) == refusal


def test_a_signed_refusal_verifies_and_a_flipped_bit_does_not() -> None:
    server = Ed25519PrivateKey.generate()
    refusal = Refusal("ag-0123456789abcdef", bytes(range(32)), "revoked",
                      "máy trạm này đã bị thu hồi", "this PC has been revoked")
    signed = seal_reply(server, encode_refusal(refusal))
    assert decode_refusal(open_reply(signed, public_key_bytes(server))) == refusal
    assert refusal.message("vi") == "máy trạm này đã bị thu hồi"
    assert refusal.message("en") == "this PC has been revoked"
    other = public_key_bytes(Ed25519PrivateKey.generate())
    with pytest.raises(ProtocolError):
        open_reply(signed, other)
    for index in range(len(signed)):
        flipped = bytearray(signed)
        flipped[index] ^= 0x01
        with pytest.raises(ProtocolError):
            decode_refusal(open_reply(bytes(flipped), public_key_bytes(server)))


def test_refusals_must_be_complete_and_in_both_languages() -> None:
    good = {"v": 1, "kind": "bundle_refused", "agent": "ag-1", "bundle": bytes(32),
            "code": "revoked", "message": {"vi": "đã thu hồi", "en": "revoked"}}
    assert decode_refusal(pack(good)).code == "revoked"
    for bad in ({**good, "v": 2}, {**good, "kind": "bundle_acks"}, {**good, "extra": 1},
                {**good, "bundle": bytes(31)}, {**good, "code": ""},
                {**good, "message": {"en": "revoked"}}, {**good, "message": "revoked"},
                {**good, "message": {"vi": "", "en": "revoked"}}, {**good, "agent": 7}):
        with pytest.raises(DecodeError):
            decode_refusal(pack(bad))
