"""Statuses set at the province or district, and how they flow down (SPEC §18).

Real parts throughout: the store on SQLite and PostgreSQL, the application on a
loopback socket, an agent enrolled and syncing over HTTP with its own queue
file, the `syncd` command as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.agent import Agent, enroll
from client.config import AgentPaths
from client.errors import RefusedError, TransportError
from client.intake import dossier_states
from client.transport import HttpTransport, Reply
from client.updates import pull_updates
from protocol import STATUSES, BatchBody, DecodeError, pack
from protocol.messages import CursorRequest, decode_error, encode_cursor_request, encode_envelope
from protocol.signing import sign_envelope
from protocol.updates import (
    CentralChange,
    UpdatesPage,
    UpdatesRequest,
    decode_updates_page,
    decode_updates_request,
    encode_updates_page,
    encode_updates_request,
)
from syncd.accounts import add_user
from syncd.app import make_app
from syncd.central import change_status, changes_after, updates_page
from syncd.config import ServerConfig, ServerPaths
from syncd.enrollment import create_token, revoke_agent
from syncd.errors import RequestError
from syncd.history import StatusPoint, status_history
from syncd.ingest import ingest_batch
from syncd.keys import ServerKeys
from syncd.report import on_time_report
from syncd.store import AgentRow, Store, open_store
from tests.support.dossiers import make_dossiers
from tests.support.procs import syncd
from tests.syncd.test_app import post
from tests.syncd.test_pages import PASSWORD, login
from tests.syncd.test_report import BIRTH, created, dossier_id, enroll_pc, status, vn

A, B = "01111", "02222"
UTC_DAY = datetime(2026, 12, 1, tzinfo=UTC)


# Fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture
def store(backend_store: Store) -> Store:
    """Every test here runs on SQLite and on PostgreSQL."""
    return backend_store


@pytest.fixture
async def client(store: Store, keys: ServerKeys, tmp_path: Path
                 ) -> AsyncIterator[TestClient[Any, Any]]:
    app = make_app(ServerConfig(), store, keys, tmp_path / "documents")
    async with TestClient(TestServer(app)) as client:
        yield client


class Pc:
    """One enrolled PC of a commune: its key, and batches through the real ingest."""

    def __init__(self, store: Store, agent: AgentRow, key: Ed25519PrivateKey) -> None:
        self.store, self.agent, self.key, self.next_seq = store, agent, key, 1

    @classmethod
    async def enroll(cls, store: Store, keys: ServerKeys, commune: str) -> Pc:
        return cls(store, *await enroll_pc(store, keys, commune))

    @property
    def agent_id(self) -> str:
        return self.agent.agent_id

    async def send(self, *records: bytes, now: datetime) -> None:
        ack = await ingest_batch(self.store, self.agent, BatchBody(1, self.next_seq, records),
                                 bytes(32), now.isoformat(timespec="milliseconds"))
        self.next_seq += len(records)
        assert ack.acked_seq == self.next_seq - 1 and not ack.verdicts

    async def ask(self, client: TestClient[Any, Any], after: int, *, kind: str = "updates",
                  signed: bytes | None = None) -> tuple[int, bytes]:
        """POST /v1/updates signed by this PC; the status and the signed reply's message."""
        body = signed if signed is not None else encode_updates_request(UpdatesRequest(after))
        env = sign_envelope(self.key, kind, self.agent_id, body)
        return await post(client, "/v1/updates", encode_envelope(env))


async def dossiers_of(store: Store, commune: str) -> dict[str, str]:
    return {d["id"]: d["status"] for d in await store.dossiers(commune)}


async def central_rows(store: Store) -> list[tuple[Any, ...]]:
    return await store.read("SELECT id, dossier_id, status FROM central_changes ORDER BY id")


# The wire: strict, round-tripping codecs ------------------------------------------------------

_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
_ITEM = st.builds(
    CentralChange, id=st.integers(1, 2**63 - 1), dossier_id=st.uuids().map(str),
    status=st.sampled_from(STATUSES), note=st.none() | _TEXT, by=st.none() | _TEXT,
    at=st.just("2026-12-01T08:00:00.000+07:00"))


@given(st.lists(_ITEM, max_size=30, unique_by=lambda i: i.id), st.booleans(),
       st.integers(0, 2**40))
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
def test_an_updates_page_round_trips(items: list[CentralChange], more: bool, extra: int
                                     ) -> None:
    items.sort(key=lambda i: i.id)
    following = (items[-1].id if items else 0) + extra
    following = min(following, 2**63 - 1)
    page = UpdatesPage(tuple(items), following, more)
    assert decode_updates_page(encode_updates_page(page)) == page


@given(st.integers(0, 2**63 - 1))
def test_an_updates_request_round_trips(after: int) -> None:
    assert decode_updates_request(encode_updates_request(UpdatesRequest(after))).after == after


@given(st.binary(max_size=300))
def test_random_bytes_decode_or_raise_the_typed_error(data: bytes) -> None:
    for decode in (decode_updates_page, decode_updates_request):
        with contextlib.suppress(DecodeError):
            decode(data)


def _item(n: int, **overrides: Any) -> dict[str, Any]:
    return {"id": n, "dossier_id": str(uuid.UUID(int=n)), "status": "finished", "note": None,
            "by": None, "at": "2026-12-01T08:00:00+07:00", **overrides}


@pytest.mark.parametrize("message", [
    {"items": [_item(1)], "next": 1, "more": False, "extra": 1},
    {"items": [_item(1, colour="red")], "next": 1, "more": False},
    {"items": [_item(1, status="done")], "next": 1, "more": False},
    {"items": [_item(1, dossier_id="not-a-uuid")], "next": 1, "more": False},
    {"items": [_item(1, dossier_id=str(uuid.UUID(int=2**127 - 1)).upper())], "next": 1,
     "more": False},
    {"items": [_item(1, at="yesterday")], "next": 1, "more": False},
    {"items": [_item(1, at="2026-12-01T08:00:00")], "next": 1, "more": False},  # no offset
    {"items": [_item(1, note="x" * 2001)], "next": 1, "more": False},
    {"items": [_item(1, by="x" * 201)], "next": 1, "more": False},
    {"items": [_item(0)], "next": 1, "more": False},
    {"items": [_item(2), _item(1)], "next": 2, "more": False},
    {"items": [_item(1), _item(1)], "next": 1, "more": False},
    {"items": [_item(5)], "next": 4, "more": False},
    {"items": [_item(n) for n in range(1, 202)], "next": 201, "more": False},
    {"items": [], "next": -1, "more": False},
    {"items": [], "next": 0, "more": 1},
    {"items": {}, "next": 0, "more": False},
])
def test_a_page_that_breaks_the_rules_is_refused(message: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        decode_updates_page(pack({"v": 1, "kind": "updates", **message}))


@pytest.mark.parametrize("message", [
    {"v": 1, "kind": "updates", "after": -1},
    {"v": 1, "kind": "updates", "after": True},
    {"v": 1, "kind": "updates", "after": 2**63},
    {"v": 1, "kind": "updates"},
    {"v": 1, "kind": "updates", "after": 0, "commune": A},
    {"v": 1, "kind": "cursor", "after": 0},
    {"v": 2, "kind": "updates", "after": 0},
])
def test_a_request_that_breaks_the_rules_is_refused(message: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        decode_updates_request(pack(message))


# Setting a status centrally --------------------------------------------------------------------


async def test_a_status_set_centrally_changes_the_dossier_and_is_numbered(
        store: Store, keys: ServerKeys) -> None:
    pc = await Pc.enroll(store, keys, A)
    await pc.send(created(1, A, BIRTH, vn("11-30"), vn("12-02", "17:00")),
                  status(1, "processing", vn("11-30", "09:00")), now=UTC_DAY)
    moment = UTC_DAY + timedelta(hours=2)
    done = await change_status(store, f"{A}-261101-0001", "finished", "  Đã ký  ",
                               "huyen.ops", now=moment)
    assert (done.code, done.commune_code, done.previous) == (f"{A}-261101-0001", A,
                                                              "processing")
    assert done.change == CentralChange(done.change.id, dossier_id(1), "finished", "Đã ký",
                                        "huyen.ops", "2026-12-01T09:00:00.000+07:00",
                                        "finished")
    assert await dossiers_of(store, A) == {dossier_id(1): "finished"}
    [(updated_at,)] = await store.read("SELECT updated_at FROM dossiers")
    assert updated_at == "2026-12-01T02:00:00.000+00:00"

    # By id too, upper case or not; an empty note is no note.
    again = await change_status(store, dossier_id(1).upper(), "returned", "  ", None,
                                now=moment + timedelta(minutes=1))
    assert again.change.id > done.change.id and again.change.note is None
    items, more = await changes_after(store, A, 0, 10)
    assert [(i.id, i.status) for i in items] == [(done.change.id, "finished"),
                                                 (again.change.id, "returned")]
    assert not more
    assert await changes_after(store, B, 0, 10) == ([], False)
    assert (await changes_after(store, A, done.change.id, 1)) == ([again.change], False)
    # Each change comes with what the dossier is now: returned, by the later one.
    assert (await changes_after(store, A, 0, 1)) == ([replace(done.change, now="returned")],
                                                     True)


@pytest.mark.parametrize(("target", "new_status", "note", "by", "code", "words"), [
    ("01111-261101-9999", "finished", None, None, 404, "không tìm thấy hồ sơ"),
    (str(uuid.UUID(int=77)), "finished", None, None, 404, "no dossier"),
    ("", "finished", None, None, 404, "no dossier"),
    ("x" * 5000, "finished", None, None, 404, "no dossier"),
    ("01111-261101-0001", "done", None, None, 400, "phải là một trong"),
    ("01111-261101-0001", "", None, None, 400, "must be one of"),
    ("01111-261101-0001", "finished", "x" * 2001, None, 400, "2000"),
    ("01111-261101-0001", "finished", None, "y" * 201, 400, "200"),
])
async def test_a_bad_change_is_refused_in_both_languages_and_changes_nothing(
        store: Store, keys: ServerKeys, target: str, new_status: str, note: str | None,
        by: str | None, code: int, words: str) -> None:
    pc = await Pc.enroll(store, keys, A)
    await pc.send(created(1, A, BIRTH, vn("11-30")), now=UTC_DAY)
    with pytest.raises(RequestError) as refused:
        await change_status(store, target, new_status, note, by)
    assert refused.value.status == code and words in refused.value.message
    assert " / " in refused.value.message  # Vietnamese, then English
    assert await dossiers_of(store, A) == {dossier_id(1): "received"}
    assert await central_rows(store) == []


async def test_changes_at_once_on_one_dossier_end_with_the_last_numbered(
        store: Store, keys: ServerKeys) -> None:
    """The dossier is locked before the change is numbered: whatever order the
    transactions run in, the dossier's status is the highest id's."""
    pc = await Pc.enroll(store, keys, A)
    await pc.send(created(1, A, BIRTH, vn("11-30")), created(2, A, BIRTH, vn("11-30")),
                  now=UTC_DAY)
    wanted = [STATUSES[i % len(STATUSES)] for i in range(16)]
    await asyncio.gather(*(change_status(store, dossier_id(1 + i % 2), s, None, f"op{i}")
                           for i, s in enumerate(wanted)))
    rows = await central_rows(store)
    assert len(rows) == 16 and sorted(rows) == rows
    last = {row[1]: row[2] for row in rows}
    assert await dossiers_of(store, A) == last


# The history and the on-time report ------------------------------------------------------------


async def test_central_changes_join_the_history_by_server_time(
        store: Store, keys: ServerKeys) -> None:
    pc = await Pc.enroll(store, keys, A)
    await pc.send(created(1, A, BIRTH, vn("11-30")), now=UTC_DAY)
    await pc.send(status(1, "processing", vn("11-30", "09:00")),
                  now=UTC_DAY + timedelta(hours=1))
    await change_status(store, dossier_id(1), "finished", None, "huyen",
                        now=UTC_DAY + timedelta(hours=2))
    # A PC whose clock is days behind records "returned" after the central finish:
    # the server received it later, so it comes later.
    await pc.send(status(1, "returned", vn("11-20")), now=UTC_DAY + timedelta(hours=3))
    history = await status_history(store)
    assert history == await status_history(store, [dossier_id(1)])
    assert history[dossier_id(1)] == [
        StatusPoint("received", vn("11-30")),
        StatusPoint("processing", vn("11-30", "09:00")),
        StatusPoint("finished", "2026-12-01T09:00:00.000+07:00"),
        StatusPoint("returned", vn("11-20")),
    ]
    assert await dossiers_of(store, A) == {dossier_id(1): "returned"}


async def test_a_central_finish_makes_a_dossier_on_time(store: Store, keys: ServerKeys) -> None:
    pc = await Pc.enroll(store, keys, A)
    # Both due 12-01 09:00 Vietnam time and processing at the commune.
    await pc.send(created(1, A, BIRTH, vn("11-28"), vn("12-01", "09:00")),
                  created(2, A, BIRTH, vn("11-28"), vn("12-01", "09:00")),
                  status(1, "processing", vn("11-28", "09:00")),
                  status(2, "processing", vn("11-28", "09:00")), now=UTC_DAY)
    now = datetime(2026, 12, 1, 10, 0, tzinfo=UTC) + timedelta(hours=-7)  # 10:00 in Vietnam
    [before] = await on_time_report(store, now=now)
    assert (before["processing_late"], before["finished_on_time"]) == (2, 0)
    # The district finishes dossier 1 at 08:00 Vietnam time, before it is due.
    await change_status(store, dossier_id(1), "finished", None, "huyen",
                        now=datetime(2026, 12, 1, 1, 0, tzinfo=UTC))
    [after] = await on_time_report(store, now=now)
    assert (after["received"], after["finished_on_time"], after["finished_late"],
            after["processing_late"], after["on_time_rate"]) == (2, 1, 0, 1, 1.0)
    # Finished centrally after the due time: late.
    await change_status(store, dossier_id(2), "finished", None, "huyen",
                        now=datetime(2026, 12, 1, 2, 30, tzinfo=UTC))
    [last] = await on_time_report(store, now=now)
    assert (last["finished_on_time"], last["finished_late"]) == (1, 1)


# /v1/updates --------------------------------------------------------------------------------


async def test_updates_come_in_pages_of_200_for_the_agents_own_commune_only(
        client: TestClient[Any, Any], store: Store, keys: ServerKeys) -> None:
    a1, a2, b = (await Pc.enroll(store, keys, A), await Pc.enroll(store, keys, A),
                 await Pc.enroll(store, keys, B))
    await a1.send(created(1, A, BIRTH, vn("11-30")), now=UTC_DAY)
    await b.send(created(2, B, BIRTH, vn("11-30")), now=UTC_DAY)
    for i in range(205):
        await change_status(store, dossier_id(1), STATUSES[i % len(STATUSES)], f"lần {i}",
                            "tinh")
        if i % 100 == 0:
            await change_status(store, dossier_id(2), "finished", None, "tinh")
    status_code, message = await a1.ask(client, 0)
    assert status_code == 200
    first = decode_updates_page(message)
    assert len(first.items) == 200 and first.more and first.next == first.items[-1].id
    assert {i.dossier_id for i in first.items} == {dossier_id(1)}
    assert first.items[0].note == "lần 0" and first.items[0].by == "tinh"
    _, message = await a1.ask(client, first.next)
    second = decode_updates_page(message)
    assert len(second.items) == 5 and not second.more
    assert second.items[-1].note == "lần 204" and second.next == second.items[-1].id
    _, message = await a1.ask(client, second.next)  # nothing new: the same cursor back
    assert decode_updates_page(message) == UpdatesPage((), second.next, False)
    # Another PC of commune A sees the same; commune B only its own three.
    _, message = await a2.ask(client, 0)
    assert decode_updates_page(message) == first
    _, message = await b.ask(client, 0)
    theirs = decode_updates_page(message)
    assert [i.dossier_id for i in theirs.items] == [dossier_id(2)] * 3 and not theirs.more
    # A cursor from far ahead finds nothing and is answered as it is.
    _, message = await b.ask(client, 2**63 - 1)
    assert decode_updates_page(message) == UpdatesPage((), 2**63 - 1, False)


async def test_a_page_stays_within_its_byte_budget(store: Store, keys: ServerKeys) -> None:
    pc = await Pc.enroll(store, keys, A)
    await pc.send(created(1, A, BIRTH, vn("11-30")), now=UTC_DAY)
    for _ in range(5):
        await change_status(store, dossier_id(1), "processing", "ễ" * 2000, "tinh")
    page = await updates_page(store, A, 0, max_bytes=13_000)  # two notes of 6 kB each
    assert len(page.items) == 2 and page.more and page.next == page.items[-1].id
    alone = await updates_page(store, A, 0, max_bytes=100)  # one always goes
    assert len(alone.items) == 1 and alone.more
    whole = await updates_page(store, A, 0)
    assert len(whole.items) == 5 and not whole.more
    assert len(encode_updates_page(whole)) < 64 * 1024


async def test_updates_refuse_revoked_unknown_forged_and_malformed_requests(
        client: TestClient[Any, Any], store: Store, keys: ServerKeys) -> None:
    pc, other = await Pc.enroll(store, keys, A), await Pc.enroll(store, keys, A)
    await pc.send(created(1, A, BIRTH, vn("11-30")), now=UTC_DAY)
    await change_status(store, dossier_id(1), "finished", "ghi chú", "tinh")

    def refused(reply: tuple[int, bytes], status_code: int, code: str) -> None:
        assert reply[0] == status_code and decode_error(reply[1]).code == code, reply

    stranger = Pc(store, AgentRow("ag-0000000000000000", A, None, bytes(32), 0, False),
                  Ed25519PrivateKey.generate())
    refused(await stranger.ask(client, 0), 401, "unknown_agent")
    forged = Pc(store, pc.agent, Ed25519PrivateKey.generate())  # pc's name, another key
    refused(await forged.ask(client, 0), 401, "bad_signature")
    for signed in (b"", b"\xc1", os.urandom(64), pack({"v": 1, "kind": "updates"}),
                   pack({"v": 1, "kind": "updates", "after": -5}),
                   pack({"v": 1, "kind": "updates", "after": "0"}),
                   pack({"v": 1, "kind": "updates", "after": 0, "commune": B}),
                   encode_cursor_request(CursorRequest(1))):
        refused(await pc.ask(client, 0, signed=signed), 400, "malformed")
    refused(await pc.ask(client, 0, signed=pack({"v": 9, "kind": "updates", "after": 0})), 400,
            "unsupported_version")
    refused(await pc.ask(client, 0, kind="cursor"), 400, "malformed")  # kind of another path
    for body in (b"", b"<html>OK</html>", os.urandom(500), pack([1, "updates", "ag-x", b"", b""])):
        status_code, message = await post(client, "/v1/updates", body)
        assert 400 <= status_code < 500 and decode_error(message).code
    await revoke_agent(store, pc.agent_id)
    refused(await pc.ask(client, 0), 403, "revoked")
    status_code, message = await other.ask(client, 0)  # the commune's other PC still reads
    assert status_code == 200 and len(decode_updates_page(message).items) == 1


# The agent's side, over HTTP ----------------------------------------------------------------


class FailingAfter(HttpTransport):
    """The real transport, whose link drops after ``posts`` requests (a 2G link)."""

    def __init__(self, base_url: str, posts: int) -> None:
        super().__init__(base_url)
        self.left = posts

    async def post(self, path: str, body: bytes, *, timeout_s: float | None = None) -> Reply:
        if self.left <= 0:
            raise TransportError("the link dropped")
        self.left -= 1
        return await super().post(path, body, timeout_s=timeout_s)


@pytest.fixture
async def agent(client: TestClient[Any, Any], store: Store, keys: ServerKeys, tmp_path: Path
                ) -> AsyncIterator[Agent]:
    """A real agent data directory enrolled with the server in commune A."""
    token = await create_token(store, A, None, 72, keys.fingerprint)
    paths = AgentPaths(tmp_path / "agent")
    await enroll(paths, str(client.make_url("")), token, "PC 1")
    opened = await Agent.open(paths)
    try:
        yield opened
    finally:
        await opened.close()


async def _record_and_push(agent: Agent) -> str:
    [dossier] = make_dossiers(1, seed=5)
    [new_id] = await agent.add([dossier])
    transport = agent.transport()
    try:
        await agent.engine(transport).push_until_done(timeout_s=30)
    finally:
        await transport.close()
    return new_id


async def _states(agent: Agent, dossier: str) -> tuple[str, dict[str, Any] | None]:
    entry = (await dossier_states(agent))[dossier]
    assert entry["dossier"]["central"] == entry["central"]
    return entry["dossier"]["status"], entry["central"]


async def test_the_agent_pulls_resumably_and_the_newest_word_wins_by_queue_order(
        client: TestClient[Any, Any], store: Store, agent: Agent) -> None:
    mine = await _record_and_push(agent)
    for i in range(204):
        await change_status(store, mine, "processing", f"bước {i}", "tinh")
    await change_status(store, mine, "finished", "Đã ký, mời dân đến nhận", "huyen.ops")

    # The link drops after the first page: that page is kept, with its cursor.
    flaky = FailingAfter(str(client.make_url("")), posts=1)
    try:
        with pytest.raises(TransportError):
            await pull_updates(agent, flaky)
    finally:
        await flaky.close()
    assert await agent.queue.central_cursor() == 200
    # The page's items say what the dossier is at the server now: finished,
    # by a change the next page brings.
    assert await _states(agent, mine) == ("finished", None)

    transport = agent.transport()
    try:
        assert await pull_updates(agent, transport) == 5  # resumes after 200
        assert await agent.queue.central_cursor() == 205
        shown, central = await _states(agent, mine)
        assert shown == "finished" and central is not None
        assert (central["by"], central["note"]) == ("huyen.ops", "Đã ký, mời dân đến nhận")
        assert central["at"].endswith("+07:00")

        # Pulling again, or storing the same page again, changes nothing.
        rows = await agent.queue._db.execute_fetchall("SELECT * FROM central_updates")
        assert await pull_updates(agent, transport) == 0
        page = decode_updates_page(encode_updates_page(await updates_page(store, A, 200)))
        assert await agent.queue.store_central_updates(page.items, page.next) == 0
        assert await agent.queue.central_cursor() == 205
        assert await agent.queue._db.execute_fetchall("SELECT * FROM central_updates") == rows
        # Nothing of the dossier in clear in the queue file: the note is sealed, the id hashed.
        raw = b"".join(path.read_bytes() for path in agent.paths.root.glob("queue.db*"))
        assert b"huyen.ops" not in raw and "mời dân".encode() not in raw
        assert mine.encode() not in raw

        # A status the officer records afterwards wins on this PC, and at the
        # province once pushed...
        await agent.update_status(mine, "returned", None, "Cán bộ A")
        assert await _states(agent, mine) == ("returned", None)
        await agent.engine(transport).push_until_done(timeout_s=30)
        assert await dossiers_of(store, A) == {mine: "returned"}
        # ...until the province changes it again after that.
        await change_status(store, mine, "supplement_requested", "Thiếu giấy tờ", "tinh")
        assert await pull_updates(agent, transport) == 1
        shown, central = await _states(agent, mine)
        assert shown == "supplement_requested" and central and central["note"] == "Thiếu giấy tờ"
    finally:
        await transport.close()


async def test_a_status_recorded_offline_and_pushed_after_a_central_one_agrees_everywhere(
        client: TestClient[Any, Any], store: Store, agent: Agent) -> None:
    """The officer marks a dossier while the link is down; meanwhile the district
    finishes it. When the link is back the agent pushes, then pulls: the server
    applied the officer's record after the district's change, so both the
    server and the PC show the officer's status."""
    mine = await _record_and_push(agent)
    await agent.update_status(mine, "processing", None, "Cán bộ A")  # offline, not pushed
    await change_status(store, mine, "finished", None, "huyen.ops")
    transport = agent.transport()
    try:
        await agent.engine(transport).push_until_done(timeout_s=30)
        assert await pull_updates(agent, transport) == 1
    finally:
        await transport.close()
    assert await dossiers_of(store, A) == {mine: "processing"}
    assert await _states(agent, mine) == ("processing", None)


async def test_a_status_pulled_before_the_local_one_is_pushed_agrees_everywhere(
        client: TestClient[Any, Any], store: Store, agent: Agent) -> None:
    """The same, but the pull comes before the push (the catalogue timer): the PC
    keeps its own status, which the server then applies last."""
    mine = await _record_and_push(agent)
    await agent.update_status(mine, "processing", None, "Cán bộ A")
    await change_status(store, mine, "finished", None, "huyen.ops")
    transport = agent.transport()
    try:
        assert await pull_updates(agent, transport) == 1
        assert await _states(agent, mine) == ("processing", None)
        await agent.engine(transport).push_until_done(timeout_s=30)
    finally:
        await transport.close()
    assert await dossiers_of(store, A) == {mine: "processing"}
    assert await _states(agent, mine) == ("processing", None)


async def test_the_agent_believes_only_its_pinned_server(
        store: Store, agent: Agent, tmp_path: Path) -> None:
    """Another server (another identity key) answering for the same store: refused."""
    mine = await _record_and_push(agent)
    await change_status(store, mine, "finished", None, "tinh")
    (tmp_path / "other").mkdir()
    impostor = make_app(ServerConfig(), store, ServerKeys.create(tmp_path / "other"),
                        tmp_path / "other-documents")
    async with TestClient(TestServer(impostor)) as other:
        transport = HttpTransport(str(other.make_url("")))
        try:
            with pytest.raises(TransportError, match="signed"):
                await pull_updates(agent, transport)
        finally:
            await transport.close()
    assert await agent.queue.central_cursor() == 0
    assert await _states(agent, mine) == ("received", None)


async def test_a_revoked_agent_is_refused_and_keeps_what_it_had(
        client: TestClient[Any, Any], store: Store, agent: Agent) -> None:
    mine = await _record_and_push(agent)
    await change_status(store, mine, "finished", None, "tinh")
    transport = agent.transport()
    try:
        assert await pull_updates(agent, transport) == 1
        await change_status(store, mine, "returned", None, "tinh")
        await revoke_agent(store, agent.config.agent_id)
        with pytest.raises(RefusedError) as refused:
            await pull_updates(agent, transport)
        assert refused.value.code == "revoked"
    finally:
        await transport.close()
    assert await _states(agent, mine) == ("finished", {"status": "finished", "by": "tinh",
                                                       "at": (await agent.queue.latest_central(
                                                           [mine]))[mine].at, "note": None})


# The operator's page -------------------------------------------------------------------------


async def test_an_admin_sets_the_status_on_the_dossier_page(
        client: TestClient[Any, Any], store: Store, keys: ServerKeys) -> None:
    await add_user(store, "admin", PASSWORD, "admin")
    await add_user(store, "viewer", PASSWORD, "viewer")
    pc = await Pc.enroll(store, keys, A)
    await pc.send(created(1, A, BIRTH, vn("11-30")), now=UTC_DAY)
    page = f"/ui/dossiers/{dossier_id(1)}"

    csrf = await login(client, "admin")
    html = await (await client.get(page)).text()
    assert 'id="set-status"' in html and "Đã giải quyết / Finished" in html
    resp = await client.post(f"{page}/status", data={"csrf": csrf, "status": "finished",
                                                      "note": "Đã ký <b>xong</b>"})
    assert resp.status == 200 and resp.url.path == page
    html = await resp.text()
    assert "Thay đổi tại tỉnh/huyện" in html and "Đã ký &lt;b&gt;xong&lt;/b&gt;" in html
    assert re.search(r"<h1>[^<]*Đã giải quyết</h1>", html)
    assert "(admin)" in html  # who set it
    english = await (await client.get(page + "?lang=en")).text()
    assert "Changed at the province/district" in english
    assert await dossiers_of(store, A) == {dossier_id(1): "finished"}

    # Refused before anything changes: no token, a forged one, a bad status, no dossier.
    for data, code in (({"status": "returned"}, 403),
                       ({"status": "returned", "csrf": "forged"}, 403),
                       ({"status": "done", "csrf": csrf}, 400),
                       ({"status": "returned", "csrf": csrf, "note": "n" * 2001}, 400)):
        resp = await client.post(f"{page}/status", data=data)
        assert resp.status == code, data
        assert "Traceback" not in await resp.text()
    resp = await client.post(f"/ui/dossiers/{uuid.UUID(int=9)}/status",
                             data={"status": "returned", "csrf": csrf})
    assert resp.status == 404
    assert len(await central_rows(store)) == 1

    await client.post("/ui/logout", data={"csrf": csrf})
    csrf = await login(client, "viewer")
    html = await (await client.get(page + "?lang=vi")).text()
    assert 'id="set-status"' not in html and "Thay đổi tại tỉnh/huyện" in html
    resp = await client.post(f"{page}/status", data={"csrf": csrf, "status": "returned"})
    assert resp.status == 403 and "Chỉ quản trị viên" in await resp.text()
    assert await dossiers_of(store, A) == {dossier_id(1): "finished"}
    assert len(await central_rows(store)) == 1


# The command ---------------------------------------------------------------------------------


async def _cli_data_dir(tmp_path: Path, keys: ServerKeys) -> str:
    data_dir = tmp_path / "server"
    syncd("init", "--data-dir", str(data_dir))
    store = await open_store(ServerPaths(data_dir).database)
    try:
        pc = await Pc.enroll(store, keys, A)
        await pc.send(created(1, A, BIRTH, vn("11-30")), created(2, A, BIRTH, vn("11-30")),
                      now=UTC_DAY)
    finally:
        await store.close()
    return str(data_dir)


async def test_set_status_from_the_command_line(tmp_path: Path, keys: ServerKeys) -> None:
    data_dir = await _cli_data_dir(tmp_path, keys)
    done = syncd("set-status", "--data-dir", data_dir, f"{A}-261101-0001", "finished",
                 "--note", "Đã ký", "--by", "huyen.ops")
    assert "received -> finished" in done.stderr and A in done.stderr
    syncd("set-status", "--data-dir", data_dir, dossier_id(2), "processing")
    held = {d["id"]: d["status"] for d in json.loads(
        syncd("dossiers", "--data-dir", data_dir, "--json").stdout)}
    assert held == {dossier_id(1): "finished", dossier_id(2): "processing"}
    store = await open_store(ServerPaths(Path(data_dir)).database)
    try:
        items, _ = await changes_after(store, A, 0, 10)
    finally:
        await store.close()
    assert [(i.status, i.note, i.by) for i in items] == [
        ("finished", "Đã ký", "huyen.ops"), ("processing", None, items[1].by)]

    for args, words in (([f"{A}-261101-0009", "finished"], "no dossier"),
                        (["not-a-code", "finished"], "không tìm thấy"),
                        ([dossier_id(1), "done"], "must be one of"),
                        ([dossier_id(1), "finished", "--note", "x" * 2001], "2000"),
                        ([dossier_id(1), "finished", "--by", "x" * 201], "200")):
        proc = syncd("set-status", "--data-dir", data_dir, *args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert words in proc.stderr and "nothing changed" in proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("syncd: ")
    missing = syncd("set-status", "--data-dir", data_dir, dossier_id(1), check=False)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    held = {d["id"]: d["status"] for d in json.loads(
        syncd("dossiers", "--data-dir", data_dir, "--json").stdout)}
    assert held == {dossier_id(1): "finished", dossier_id(2): "processing"}
