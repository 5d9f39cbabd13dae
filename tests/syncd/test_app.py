"""The server application in process, on a real loopback socket and SQLite file."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import (
    MEDIA_TYPE,
    BatchBody,
    DossierCreated,
    SealTo,
    StatusChanged,
    encode_event,
    pack,
)
from protocol.batches import encode_batch_body
from protocol.messages import (
    CursorRequest,
    EnrollRequest,
    decode_ack,
    decode_enroll_reply,
    decode_error,
    encode_cursor_request,
    encode_enroll_request,
    encode_envelope,
)
from protocol.sealing import open_reply
from protocol.signing import public_key_bytes, sign_enrollment, sign_envelope
from syncd.app import KEYS, make_app
from syncd.config import ServerConfig
from syncd.enrollment import create_token
from syncd.keys import ServerKeys
from syncd.store import SqliteStore
from tests.support.dossiers import make_dossiers


@pytest.fixture
async def client(store: SqliteStore, keys: ServerKeys) -> AsyncIterator[TestClient[Any, Any]]:
    config = ServerConfig(max_body_bytes=64 * 1024, max_inflated_bytes=256 * 1024)
    async with TestClient(TestServer(make_app(config, store, keys))) as client:
        yield client


async def post(client: TestClient[Any, Any], path: str, body: bytes) -> tuple[int, bytes]:
    """POST; return the status and the message inside the server's signed reply."""
    resp = await client.post(path, data=body, headers={"Content-Type": MEDIA_TYPE})
    keys: ServerKeys = client.server.app[KEYS]
    return resp.status, open_reply(await resp.read(), keys.identity_public)


def seal_for(client: TestClient[Any, Any], agent_id: str) -> SealTo:
    keys: ServerKeys = client.server.app[KEYS]
    return SealTo(agent_id, "01234", keys.current_id, keys.sealing_public())


async def enroll(client: TestClient[Any, Any], store: SqliteStore, key: Ed25519PrivateKey,
                 token: str | None = None) -> tuple[int, bytes]:
    fp = client.server.app[KEYS].fingerprint
    token = token or await create_token(store, "01234", None, 72, fp)
    request = EnrollRequest(token, public_key_bytes(key), "PC 1", sign_enrollment(key, token))
    return await post(client, "/v1/enroll", encode_enroll_request(request))


def created(seed: int) -> bytes:
    [dossier] = make_dossiers(1, seed=seed)
    dossier |= {"id": str(uuid.UUID(int=seed)), "code": f"01234-261126-{seed:04d}",
                "status": "received"}
    return encode_event(DossierCreated(dossier))


async def send(client: TestClient[Any, Any], key: Ed25519PrivateKey, agent_id: str,
               body: BatchBody) -> tuple[int, bytes]:
    env = sign_envelope(key, "batch", agent_id, encode_batch_body(body, seal_for(client, agent_id)))
    return await post(client, "/v1/batches", encode_envelope(env))


async def test_enrollment_is_idempotent_per_key_and_single_use(
        client: TestClient[Any, Any], store: SqliteStore) -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    token = await create_token(store, "01234", "Xã A", 72, "fp")
    status, first = await enroll(client, store, key, token)
    assert status == 200
    status, again = await enroll(client, store, key, token)  # the answer was lost
    assert status == 200 and decode_enroll_reply(again) == decode_enroll_reply(first)
    status, reply = await enroll(client, store, other, token)
    assert status == 403 and decode_error(reply).code == "invalid_token"
    status, reply = await enroll(client, store, other, "no-such-token")
    assert status == 403
    assert [a["agent_id"] for a in await store.agents()] == [decode_enroll_reply(first).agent_id]


async def test_expired_token_and_bad_proof_are_refused(client: TestClient[Any, Any],
                                                       store: SqliteStore) -> None:
    key = Ed25519PrivateKey.generate()
    expired = await create_token(store, "01234", None, -1, "fp")
    status, _ = await enroll(client, store, key, expired)
    assert status == 403
    token = await create_token(store, "01234", None, 72, "fp")
    bad = EnrollRequest(token, public_key_bytes(key), None, bytes(64))
    status, reply = await post(client, "/v1/enroll", encode_enroll_request(bad))
    assert status == 401 and decode_error(reply).code == "bad_signature"
    assert await store.agents() == []


@pytest.mark.parametrize("body", [b"", b"\xc1", b"<html>OK</html>", os.urandom(300),
                                  pack([1, "batch", "ag-x", b"", b"x" * 64]), pack({"v": 1})])
async def test_garbage_gets_a_clear_4xx(client: TestClient[Any, Any], body: bytes) -> None:
    for path in ("/v1/batches", "/v1/cursor", "/v1/enroll"):
        status, reply = await post(client, path, body)
        assert 400 <= status < 500, (path, status)
        assert decode_error(reply).code


async def test_oversized_body_is_413(client: TestClient[Any, Any]) -> None:
    status, reply = await post(client, "/v1/batches", os.urandom(65 * 1024))
    assert status == 413 and decode_error(reply).code == "too_large"


async def test_records_that_do_not_fit_are_quarantined_not_blocking(
        client: TestClient[Any, Any], store: SqliteStore) -> None:
    key = Ed25519PrivateKey.generate()
    agent_id = decode_enroll_reply((await enroll(client, store, key))[1]).agent_id
    stray = StatusChanged(str(uuid.UUID(int=999)), "finished", "2026-11-26T10:00:00+07:00")
    records = (created(1), pack({"t": "created", "dossier": {"id": "x"}}),
               encode_event(stray), created(2))
    status, reply = await send(client, key, agent_id, BatchBody(1, 1, records))
    assert status == 200
    ack = decode_ack(reply)
    assert ack.acked_seq == 4
    assert [(v.seq, v.code) for v in ack.verdicts] == [(2, "invalid_record"),
                                                       (3, "unknown_dossier")]
    assert len(await store.dossiers()) == 2
    # The same batch again: the same answer, nothing new.
    status, again = await send(client, key, agent_id, BatchBody(1, 1, records))
    assert decode_ack(again).verdicts == ack.verdicts
    assert decode_ack(again).acked_seq == 4
    # The cursor tells the position.
    env = sign_envelope(key, "cursor", agent_id, encode_cursor_request(CursorRequest(1)))
    status, reply = await post(client, "/v1/cursor", encode_envelope(env))
    assert status == 200 and decode_ack(reply).acked_seq == 4


async def test_unknown_agent_and_foreign_signature_are_401(client: TestClient[Any, Any],
                                                           store: SqliteStore) -> None:
    key = Ed25519PrivateKey.generate()
    agent_id = decode_enroll_reply((await enroll(client, store, key))[1]).agent_id
    status, _ = await send(client, key, "ag-nobody", BatchBody(1, 1, (created(1),)))
    assert status == 401
    status, _ = await send(client, Ed25519PrivateKey.generate(), agent_id,
                           BatchBody(1, 1, (created(1),)))
    assert status == 401
    assert await store.dossiers() == []


async def test_a_batch_claiming_another_commune_or_agent_is_403(
        client: TestClient[Any, Any], store: SqliteStore) -> None:
    key = Ed25519PrivateKey.generate()
    agent_id = decode_enroll_reply((await enroll(client, store, key))[1]).agent_id
    keys: ServerKeys = client.server.app[KEYS]
    body = encode_batch_body(BatchBody(1, 1, (created(1),)),
                             SealTo(agent_id, "09999", keys.current_id, keys.sealing_public()))
    env = sign_envelope(key, "batch", agent_id, body)
    status, reply = await post(client, "/v1/batches", encode_envelope(env))
    assert status == 403 and decode_error(reply).code == "forbidden"
    body = encode_batch_body(BatchBody(1, 1, (created(1),)),
                             SealTo("ag-someone", "01234", keys.current_id,
                                    keys.sealing_public()))
    env = sign_envelope(key, "batch", agent_id, body)
    status, reply = await post(client, "/v1/batches", encode_envelope(env))
    assert status == 403
    assert await store.dossiers() == []


async def test_sealed_compression_bomb_and_deep_msgpack_are_4xx(
        client: TestClient[Any, Any], store: SqliteStore) -> None:
    import zstandard

    from protocol.sealing import batch_info, seal_payload

    key = Ed25519PrivateKey.generate()
    agent_id = decode_enroll_reply((await enroll(client, store, key))[1]).agent_id
    keys: ServerKeys = client.server.app[KEYS]
    bomb = zstandard.ZstdCompressor(level=3).compress(bytes(100 * 1024 * 1024))
    sealed = seal_payload(bomb, keys.sealing_public(), batch_info(agent_id, 1, 1, 1))
    body = pack({"v": 1, "kind": "batch", "agent": agent_id, "commune": "01234", "epoch": 1,
                 "first_seq": 1, "count": 1, "codec": "zstd", "key_id": keys.current_id,
                 "sealed": sealed, "agent_clock": None})
    status, reply = await post(client, "/v1/batches",
                               encode_envelope(sign_envelope(key, "batch", agent_id, body)))
    assert status in (400, 413) and decode_error(reply).code == "too_large"
    deep = b"\x91" * 5000 + b"\xc0"
    status, reply = await post(client, "/v1/batches", deep)
    assert status == 400
    huge_map = b"\xdf\xff\xff\xff\xff"  # a map announcing 4 billion entries
    status, reply = await post(client, "/v1/enroll", huge_map)
    assert status == 400
    assert await store.dossiers() == []


async def test_rate_limit_and_slow_clients_get_their_own_4xx(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "limits.db")
    keys = ServerKeys.create(tmp_path)
    config = ServerConfig(rate_limit_per_s=0.5, rate_limit_burst=2, body_timeout_s=0.5,
                          min_client_bytes_per_s=1_000_000)
    async with TestClient(TestServer(make_app(config, store, keys))) as client:
        key = Ed25519PrivateKey.generate()
        agent_id = decode_enroll_reply((await enroll(client, store, key))[1]).agent_id
        statuses = []
        for _ in range(4):
            env = sign_envelope(key, "cursor", agent_id, encode_cursor_request(CursorRequest(1)))
            resp = await client.post("/v1/cursor", data=encode_envelope(env))
            statuses.append(resp.status)
            if resp.status == 429:
                assert float(resp.headers["Retry-After"]) >= 1
            await resp.read()
        assert statuses[:2] == [200, 200] and 429 in statuses[2:]

        async def trickle():  # type: ignore[no-untyped-def]
            yield b"\x95"
            await asyncio.sleep(3)
            yield b"\x01"

        resp = await client.post("/v1/enroll", data=trickle(),
                                 headers={"Content-Length": "200"})
        assert resp.status == 408
        await resp.read()
    await store.close()
