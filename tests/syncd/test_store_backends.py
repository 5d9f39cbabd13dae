"""The same store suite on both backends: SQLite (a file) and PostgreSQL (a fresh database).

Everything goes through the real functions (``open_store``, ``ingest_batch``,
``read_cursor``, ``create_token``/``consume_token``); only a few assertions
look at the tables underneath.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import BatchBody, DossierCreated, EnrollRequest, StatusChanged, encode_event
from protocol.signing import public_key_bytes, sign_enrollment
from syncd.enrollment import consume_token, create_token
from syncd.errors import RequestError
from syncd.ingest import ingest_batch, read_cursor
from syncd.keys import ServerKeys
from syncd.store import (
    _MIGRATIONS,
    _PG_MIGRATIONS,
    AgentRow,
    PostgresStore,
    SqliteStore,
    Store,
    Txn,
    open_store,
)
from tests.support.dossiers import make_dossiers
from tests.support.pg import create_database, drop_database, fresh_database

BACKENDS = ["sqlite", "postgresql"]
MAX = 2**63 - 1
DIGEST = bytes(range(32))  # the batch digest ingest_batch echoes in its ack


@dataclass
class Backend:
    """Where a store lives; :meth:`open` opens (another) store on it."""

    name: str
    database: Path
    url: str | None

    async def open(self) -> Store:
        return await open_store(self.database, self.url)


async def _backend(name: str, tmp_path: Path) -> tuple[Backend, str | None]:
    if name == "sqlite":
        return Backend(name, tmp_path / "syncd.db", None), None
    url = await create_database()
    return Backend(name, tmp_path / "unused.db", url), url


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    where, url = await _backend(request.param, tmp_path)
    try:
        yield where
    finally:
        if url is not None:
            await drop_database(url)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    store = await backend.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> ServerKeys:
    return ServerKeys.create(tmp_path_factory.mktemp("keys"))


async def enroll(store: Store, keys: ServerKeys, commune: str = "01234",
                 key: Ed25519PrivateKey | None = None) -> AgentRow:
    key = key or Ed25519PrivateKey.generate()
    token = await create_token(store, commune, "PC", 72, keys.fingerprint)
    reply = await consume_token(store, keys, EnrollRequest(
        token, public_key_bytes(key), "PC 1", sign_enrollment(key, token)))
    agent = await store.agent(reply.agent_id)
    assert agent is not None
    return agent


def dossier_id(n: int) -> str:
    return str(uuid.UUID(int=n))


def created(n: int, commune: str = "01234") -> bytes:
    [dossier] = make_dossiers(1, seed=n)
    dossier |= {"id": dossier_id(n), "code": f"{commune}-261126-{n:04d}", "status": "received"}
    return encode_event(DossierCreated(dossier))


def status(n: int, value: str) -> bytes:
    return encode_event(StatusChanged(dossier_id(n), value, "2026-11-26T10:00:00+07:00"))


async def count(store: Store, table: str) -> int:
    return int((await store.read(f"SELECT count(*) FROM {table}"))[0][0])


# Migrations ---------------------------------------------------------------------------------


async def test_migrations_run_once_and_reopening_is_idempotent(backend: Backend,
                                                               store: Store,
                                                               keys: ServerKeys) -> None:
    if backend.name == "sqlite":
        assert isinstance(store, SqliteStore) and store.path == backend.database
        assert (await store.read("PRAGMA user_version")) == [(len(_MIGRATIONS),)]
    else:
        assert isinstance(store, PostgresStore) and store.path is None
        rows = await store.read("SELECT version FROM schema_migrations ORDER BY version")
        assert rows == [(n,) for n in range(1, len(_PG_MIGRATIONS) + 1)]
    agent = await enroll(store, keys)
    await ingest_batch(store, agent, BatchBody(1, 1, (created(1),)), DIGEST)

    for _ in range(2):  # reopening (while the first store is still open) changes nothing
        again = await backend.open()
        try:
            assert await again.agents() == await store.agents()
            assert [d["id"] for d in await again.dossiers()] == [dossier_id(1)]
        finally:
            await again.close()
    if backend.name == "postgresql":
        rows = await store.read("SELECT version, count(*) FROM schema_migrations "
                                "GROUP BY version ORDER BY version")
        assert rows == [(n, 1) for n in range(1, len(_PG_MIGRATIONS) + 1)]
    else:
        assert (await store.read("PRAGMA user_version")) == [(len(_MIGRATIONS),)]


async def test_postgres_stores_opening_at_once_migrate_once() -> None:
    """Two processes starting on an empty database: one migrates, the other waits."""
    async with fresh_database() as url:
        stores = await asyncio.gather(*(PostgresStore.open(url) for _ in range(4)))
        try:
            rows = await stores[0].read("SELECT version FROM schema_migrations ORDER BY version")
            assert rows == [(n,) for n in range(1, len(_PG_MIGRATIONS) + 1)]
        finally:
            for store in stores:
                await store.close()


# Ingest -------------------------------------------------------------------------------------


async def test_a_batch_is_applied_and_a_replay_gets_the_same_ack(store: Store,
                                                                 keys: ServerKeys) -> None:
    agent = await enroll(store, keys)
    records = (created(1), created(2), status(1, "processing"), status(99, "finished"),
               created(3))
    ack = await ingest_batch(store, agent, BatchBody(1, 1, records), DIGEST)
    assert (ack.agent_id, ack.epoch, ack.acked_seq, ack.batch) == (agent.agent_id, 1, 5, DIGEST)
    assert [(v.seq, v.code) for v in ack.verdicts] == [(4, "unknown_dossier")]
    held = await store.dossiers()
    assert {d["id"]: d["status"] for d in held} == {
        dossier_id(1): "processing", dossier_id(2): "received", dossier_id(3): "received"}
    assert all(d["agent_id"] == agent.agent_id and d["commune_code"] == "01234" for d in held)

    again = await ingest_batch(store, agent, BatchBody(1, 1, records), DIGEST)
    assert (again.acked_seq, again.verdicts, again.batch) == (ack.acked_seq, ack.verdicts,
                                                              DIGEST)
    # A replay of part of it, too.
    part = await ingest_batch(store, agent, BatchBody(1, 3, records[2:4]), DIGEST)
    assert (part.acked_seq, part.verdicts) == (5, ack.verdicts)
    assert await store.dossiers() == held
    assert await count(store, "records") == 5
    assert await store.alerts() == []
    [row] = await store.agents()
    assert (row["epoch"], row["acked_seq"]) == (1, 5)


async def test_a_batch_is_one_transaction(store: Store, keys: ServerKeys,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after the records and dossiers were written leaves none of them,
    nor the position."""
    agent = await enroll(store, keys)
    original = Txn.put_dossiers

    async def failing(self: Txn, *args: Any, **kw: Any) -> None:
        await original(self, *args, **kw)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Txn, "put_dossiers", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        await ingest_batch(store, agent, BatchBody(1, 1, (created(1), created(2), created(3))),
                           DIGEST)
    assert await store.dossiers() == []
    assert await count(store, "records") == 0
    assert (await read_cursor(store, agent, 1)).acked_seq == 0
    monkeypatch.setattr(Txn, "put_dossiers", original)
    ack = await ingest_batch(store, agent, BatchBody(1, 1, (created(1), created(2), created(3))),
                             DIGEST)
    assert ack.acked_seq == 3 and len(await store.dossiers()) == 3


async def test_a_gap_is_refused_with_the_position(store: Store, keys: ServerKeys) -> None:
    agent = await enroll(store, keys)
    with pytest.raises(RequestError) as refused:
        await ingest_batch(store, agent, BatchBody(1, 2, (created(1),)), DIGEST)
    assert (refused.value.status, refused.value.code) == (409, "gap")
    assert (refused.value.epoch, refused.value.acked_seq) == (1, 0)

    await ingest_batch(store, agent, BatchBody(1, 1, (created(1), created(2))), DIGEST)
    with pytest.raises(RequestError) as refused:
        await ingest_batch(store, agent, BatchBody(1, 4, (created(4),)), DIGEST)
    assert (refused.value.status, refused.value.code, refused.value.acked_seq) == (409, "gap", 2)
    # Another epoch has its own position.
    with pytest.raises(RequestError) as refused:
        await ingest_batch(store, agent, BatchBody(2, 3, (created(3),)), DIGEST)
    assert (refused.value.epoch, refused.value.acked_seq) == (2, 0)
    assert [d["id"] for d in await store.dossiers()] == [dossier_id(1), dossier_id(2)]
    assert await count(store, "records") == 2


async def test_a_conflict_is_refused_raised_once_and_stops_the_batch(store: Store,
                                                                     keys: ServerKeys) -> None:
    agent = await enroll(store, keys)
    await ingest_batch(store, agent, BatchBody(1, 1, (created(1), created(2), created(3))),
                       DIGEST)
    before = await store.dossiers()
    # seq 2 with other bytes, seq 3 other bytes too, seq 4 new: none of them may apply.
    records = (status(1, "withdrawn"), status(1, "finished"), created(4))
    for _ in range(2):  # the same conflicting batch twice: the same answer, one alert
        ack = await ingest_batch(store, agent, BatchBody(1, 2, records), DIGEST)
        assert ack.acked_seq == 3
        assert [(v.seq, v.code) for v in ack.verdicts] == [(2, "conflict")]
    assert await store.dossiers() == before
    assert await count(store, "records") == 3
    [alert] = await store.alerts()
    assert (alert["kind"], alert["agent_id"], alert["epoch"], alert["seq"]) == (
        "conflict", agent.agent_id, 1, 2)
    # The agent goes on from the server's position with its real seq 4.
    ack = await ingest_batch(store, agent, BatchBody(1, 4, (created(4),)), DIGEST)
    assert (ack.acked_seq, ack.verdicts) == (4, ())
    assert len(await store.alerts()) == 1


async def test_the_same_batch_at_two_stores_at_once_is_applied_once(backend: Backend,
                                                                    store: Store,
                                                                    keys: ServerKeys) -> None:
    """Two stores on one database (as two ``syncd`` processes): each batch lands once."""
    agent = await enroll(store, keys)
    other = await backend.open()
    try:
        for round_ in range(10):
            first = 1 + 3 * round_
            body = BatchBody(1, first, (created(first), created(first + 1),
                                        status(first, "processing")))
            acks = await asyncio.gather(ingest_batch(store, agent, body, DIGEST),
                                        ingest_batch(other, agent, body, DIGEST))
            assert [a.acked_seq for a in acks] == [first + 2, first + 2]
            assert acks[0].verdicts == acks[1].verdicts == ()
    finally:
        await other.close()
    assert await count(store, "records") == 30
    assert len(await store.dossiers()) == 20
    assert (await store.agents())[0]["acked_seq"] == 30


async def test_read_cursor_tells_the_position_and_touches_the_agent(store: Store,
                                                                    keys: ServerKeys) -> None:
    agent = await enroll(store, keys)
    assert (await store.agents())[0]["last_seen"] is None
    ack = await read_cursor(store, agent, 1)
    assert (ack.agent_id, ack.epoch, ack.acked_seq, ack.verdicts, ack.batch) == (
        agent.agent_id, 1, 0, (), None)
    await ingest_batch(store, agent, BatchBody(1, 1, (created(1), created(2))), DIGEST)
    assert (await read_cursor(store, agent, 1)).acked_seq == 2
    assert (await read_cursor(store, agent, 7)).acked_seq == 0
    assert (await store.agents())[0]["last_seen"] is not None


# Enrollment ---------------------------------------------------------------------------------


async def test_a_token_enrolls_one_key_only(store: Store, keys: ServerKeys) -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    token = await create_token(store, "01234", "Xã A", 72, keys.fingerprint)
    assert token.startswith(f"cs1.{keys.fingerprint}.")

    def request(k: Ed25519PrivateKey, t: str = token) -> EnrollRequest:
        return EnrollRequest(t, public_key_bytes(k), None, sign_enrollment(k, t))

    first = await consume_token(store, keys, request(key))
    assert (first.commune_code, first.name, first.counter_block) == ("01234", "Xã A", 0)
    assert await consume_token(store, keys, request(key)) == first  # a lost answer
    for refused in (request(other), request(other, "cs1.x.no-such-token")):
        with pytest.raises(RequestError) as exc:
            await consume_token(store, keys, refused)
        assert (exc.value.status, exc.value.code) == (403, "invalid_token")
    expired = await create_token(store, "01234", None, -1, keys.fingerprint)
    with pytest.raises(RequestError) as exc:
        await consume_token(store, keys, request(other, expired))
    assert exc.value.status == 403
    agent = await store.agent(first.agent_id)
    assert agent == AgentRow(first.agent_id, "01234", "Xã A", public_key_bytes(key), 0, False)
    assert [a["agent_id"] for a in await store.agents()] == [first.agent_id]


async def test_two_keys_racing_for_one_token(backend: Backend, store: Store,
                                             keys: ServerKeys) -> None:
    token = await create_token(store, "01234", None, 72, keys.fingerprint)
    other = await backend.open()
    try:
        pcs = [Ed25519PrivateKey.generate() for _ in range(4)]
        results = await asyncio.gather(
            *(consume_token(s, keys, EnrollRequest(token, public_key_bytes(k), None,
                                                   sign_enrollment(k, token)))
              for s, k in zip([store, other] * 2, pcs, strict=True)),
            return_exceptions=True)
    finally:
        await other.close()
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1, results
    assert all(isinstance(r, RequestError) and r.status == 403 for r in lost), lost
    assert [a["agent_id"] for a in await store.agents()] == [won[0].agent_id]


async def test_counter_blocks_are_counted_per_commune(store: Store, keys: ServerKeys) -> None:
    blocks = [(await enroll(store, keys, commune)).counter_block
              for commune in ("01234", "01234", "05678", "01234")]
    assert blocks == [0, 1, 0, 2]


# Shapes -------------------------------------------------------------------------------------


async def _scenario(store: Store, keys: ServerKeys) -> dict[str, Any]:
    """Two agents, some dossiers, a verdict, a conflict; the listings, made comparable."""
    a = await enroll(store, keys, "01234")
    b = await enroll(store, keys, "05678")
    await ingest_batch(store, a, BatchBody(1, 1, (created(1), created(2),
                                                  status(1, "processing"), status(77, "x"))),
                       DIGEST)
    await ingest_batch(store, b, BatchBody(1, 1, (created(3, "05678"),)), DIGEST)
    await ingest_batch(store, a, BatchBody(1, 2, (created(9),)), DIGEST)  # conflict
    names = {a.agent_id: "A", b.agent_id: "B"}

    def scrub(row: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in row.items():
            if key in ("last_seen", "created_at"):
                value = type(value).__name__
            elif key == "agent_id":
                value = names.get(value, value)
            out[key] = value
        return out

    return {"agents": [scrub(r) for r in await store.agents()],
            "dossiers": [scrub(r) for r in await store.dossiers()],
            "commune": [d["id"] for d in await store.dossiers("05678")],
            "alerts": [scrub(r) for r in await store.alerts()]}


async def test_listings_have_the_same_shape_on_both_backends(tmp_path: Path,
                                                             keys: ServerKeys) -> None:
    seen = {}
    for name in BACKENDS:
        where, url = await _backend(name, tmp_path)
        try:
            store = await where.open()
            try:
                seen[name] = await _scenario(store, keys)
            finally:
                await store.close()
        finally:
            if url is not None:
                await drop_database(url)
    sqlite, pg = seen["sqlite"], seen["postgresql"]
    assert sqlite == pg
    for listing in ("agents", "dossiers", "alerts"):  # and the same Python types
        assert [{k: type(v) for k, v in r.items()} for r in sqlite[listing]] == \
            [{k: type(v) for k, v in r.items()} for r in pg[listing]], listing
    assert [(r["agent_id"], r["epoch"], r["acked_seq"], r["last_seen"], r["revoked"])
            for r in pg["agents"]] == [("A", 1, 4, "str", False), ("B", 1, 1, "str", False)]
    assert pg["commune"] == [dossier_id(3)]
    assert [(r["id"], r["kind"], r["agent_id"], r["epoch"], r["seq"]) for r in pg["alerts"]] == \
        [(1, "conflict", "A", 1, 2)]


# Transactions and ranges --------------------------------------------------------------------


async def test_a_failing_transaction_leaves_nothing_behind(store: Store,
                                                           keys: ServerKeys) -> None:
    agent = await enroll(store, keys)
    state = {"id": dossier_id(5), "code": "01234-261126-0005", "status": "received"}
    with pytest.raises(RuntimeError, match="boom"):
        async with store.write() as txn:
            await txn.put_dossier(state, agent.agent_id, "01234", "now")
            await txn.set_position(agent.agent_id, 1, 7, "now")
            await txn.add_alert("test", None, None, None, "x", b"fp", "now")
            raise RuntimeError("boom")
    # A statement the database refuses (a duplicate key) rolls back the earlier ones too.
    with pytest.raises(Exception):  # noqa: B017 - each backend has its own error type
        async with store.write() as txn:
            await txn.put_dossier(state, agent.agent_id, "01234", "now")
            await txn.run("INSERT INTO agents (agent_id, commune_code, public_key, "
                          "counter_block, enrolled_at) VALUES (?, ?, ?, ?, ?)",
                          agent.agent_id, "01234", b"k" * 32, 0, "now")
    assert await store.dossiers() == []
    assert await store.alerts() == []
    assert (await read_cursor(store, agent, 1)).acked_seq == 0
    # And the store still works (the lock, the connection went back to the pool).
    for _ in range(20):
        with pytest.raises(RuntimeError):
            async with store.write() as txn:
                raise RuntimeError("again")
    ack = await ingest_batch(store, agent, BatchBody(1, 1, (created(5),)), DIGEST)
    assert ack.acked_seq == 1 and len(await store.dossiers()) == 1


async def test_the_largest_epoch_and_seq_round_trip(store: Store, keys: ServerKeys) -> None:
    agent = await enroll(store, keys)
    async with store.write() as txn:  # an agent that got there (an old, busy epoch)
        await txn.set_position(agent.agent_id, MAX, MAX - 2, "now")
        for seq in (MAX - 2, MAX - 3):
            await txn.insert_record(agent.agent_id, MAX, seq, b"h" * 32, b"d", "now", None,
                                    None)
    body = BatchBody(MAX, MAX - 1, (created(1), created(2)))
    ack = await ingest_batch(store, agent, body, DIGEST)
    assert (ack.epoch, ack.acked_seq, ack.verdicts) == (MAX, MAX, ())
    assert (await ingest_batch(store, agent, body, DIGEST)).acked_seq == MAX  # replay
    ack = await ingest_batch(store, agent, BatchBody(MAX, MAX, (created(3),)), DIGEST)
    assert [(v.seq, v.code) for v in ack.verdicts] == [(MAX, "conflict")]
    assert (await read_cursor(store, agent, MAX)).acked_seq == MAX
    [row] = await store.agents()
    assert (row["epoch"], row["acked_seq"]) == (MAX, MAX)
    [alert] = await store.alerts()
    assert (alert["epoch"], alert["seq"]) == (MAX, MAX)
    rows = await store.read("SELECT seq FROM records WHERE epoch = ? ORDER BY seq", MAX)
    assert rows == [(MAX - 3,), (MAX - 2,), (MAX - 1,), (MAX,)]
    assert {d["id"] for d in await store.dossiers()} == {dossier_id(1), dossier_id(2)}


async def test_a_documents_folder_missing_acknowledged_bytes_refuses_instead_of_a_hole(
        store: Store, tmp_path: Path) -> None:
    """Two processes on one store, each with its own documents folder: the
    second must not write a file with a hole where the first took a chunk."""
    import hashlib

    from protocol.documents import DocChunk
    from syncd.documents import DocumentStore
    from syncd.errors import StoreError

    data = bytes(range(256)) * 64
    sha = hashlib.sha256(data).hexdigest()
    first, second = DocumentStore(tmp_path / "a", store), DocumentStore(tmp_path / "b", store)
    status, state = await first.put_chunk(DocChunk(sha, len(data), 0, data[:4096]))
    assert (status, state.offset) == (200, 4096)
    with pytest.raises(StoreError, match="shared"):
        await second.put_chunk(DocChunk(sha, len(data), 4096, data[4096:]))
    assert (await second.state(sha, len(data))).offset == 4096  # nothing counted
    status, state = await first.put_chunk(DocChunk(sha, len(data), 4096, data[4096:]))
    assert (status, state.complete) == (200, True)
    assert (tmp_path / "a" / sha).read_bytes() == data
