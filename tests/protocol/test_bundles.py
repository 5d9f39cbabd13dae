"""The sneakernet containers: round trips, and hostile bytes raise DecodeError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import DecodeError
from protocol.bundles import (
    AckItem,
    Acks,
    Bundle,
    BundleItem,
    acks_name,
    bundle_name,
    decode_acks,
    decode_bundle,
    encode_acks,
    encode_bundle,
)
from protocol.codec import pack

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
    for decode in (decode_bundle, decode_acks):
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
