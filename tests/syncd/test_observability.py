"""Request ids, JSON logs and /metrics, on the real app over loopback."""

from __future__ import annotations

import io
import json
import logging
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from protocol import Ack, BatchBody, Verdict, pack
from protocol.messages import decode_enroll_reply
from syncd.app import ADMISSION, KEYS, make_app
from syncd.config import ServerConfig
from syncd.enrollment import create_token
from syncd.keys import ServerKeys
from syncd.observability import (
    JsonFormatter,
    json_log_handler,
    record_outcomes,
    summarize_fleet,
)
from syncd.store import SqliteStore
from tests.support.dossiers import make_dossiers
from tests.support.procs import Server
from tests.syncd.test_app import created, enroll, send

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
NOT_A_RECORD = pack({"t": "created", "dossier": {"id": "x"}})


@pytest.fixture
async def client(store: SqliteStore, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    config = ServerConfig(max_body_bytes=64 * 1024, max_inflated_bytes=256 * 1024)
    app = make_app(config, store, ServerKeys.create(tmp_path))
    async with TestClient(TestServer(app)) as client:
        yield client


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """What the ``syncd`` loggers write at INFO, as JSON lines."""
    stream = io.StringIO()
    handler, logger = json_log_handler(stream), logging.getLogger("syncd")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def scrape(client: TestClient[Any, Any]) -> tuple[str, Samples]:
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    return text, samples


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def enrolled(client: TestClient[Any, Any], store: SqliteStore
                   ) -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    status, reply = await enroll(client, store, key)
    assert status == 200
    return key, decode_enroll_reply(reply).agent_id


async def test_batches_and_their_records_are_counted_by_outcome(
        client: TestClient[Any, Any], store: SqliteStore) -> None:
    key, agent_id = await enrolled(client, store)
    _, before = await scrape(client)
    status, _ = await send(client, key, agent_id,
                           BatchBody(1, 1, (created(1), NOT_A_RECORD, created(2))))
    assert status == 200
    _, after = await scrape(client)
    assert moved(before, after, "syncd_ingest_batches_total", outcome="ok") == 1
    assert moved(before, after, "syncd_ingest_records_total", outcome="ok") == 2
    assert moved(before, after, "syncd_ingest_records_total", outcome="refused") == 1
    assert moved(before, after, "syncd_ingest_duration_seconds_count", route="/v1/batches") == 1
    assert moved(before, after, "syncd_ingest_duration_seconds_sum", route="/v1/batches") > 0
    assert moved(before, after, "syncd_http_responses_total", route="/v1/batches",
                 status_class="2xx") == 1

    before = after
    assert (await send(client, key, agent_id, BatchBody(1, 10, (created(3),))))[0] == 409
    assert (await send(client, key, agent_id, BatchBody(1, 2, (created(9), created(4)))))[0] \
        == 200  # seq 2 is held with other content
    assert (await send(client, key, "ag-nobody", BatchBody(1, 4, (created(5),))))[0] == 401
    admission = client.server.app[ADMISSION]
    admission.in_flight = admission.limit  # every place taken: the next one is turned away
    try:
        assert (await send(client, key, agent_id, BatchBody(1, 4, (created(5),))))[0] == 503
    finally:
        admission.in_flight = 0
    _, after = await scrape(client)
    batches = {o: moved(before, after, "syncd_ingest_batches_total", outcome=o)
               for o in ("ok", "gap", "conflict", "refused", "busy", "error")}
    assert batches == {"ok": 0, "gap": 1, "conflict": 1, "refused": 1, "busy": 1, "error": 0}
    records = {o: moved(before, after, "syncd_ingest_records_total", outcome=o)
               for o in ("ok", "gap", "conflict", "refused")}
    assert records == {"ok": 0, "gap": 1, "conflict": 2, "refused": 0}
    assert after[("syncd_alerts", frozenset({("kind", "conflict")}))] == 1
    assert moved(before, after, "syncd_http_responses_total", route="/v1/batches",
                 status_class="4xx") == 2


async def test_metrics_hold_counts_never_dossier_contents_or_secrets(
        client: TestClient[Any, Any], store: SqliteStore) -> None:
    keys: ServerKeys = client.server.app[KEYS]
    key = Ed25519PrivateKey.generate()
    token = await create_token(store, "01234", "Xã Bản Hồ", 72, keys.fingerprint)
    status, reply = await enroll(client, store, key, token)
    assert status == 200
    agent_id = decode_enroll_reply(reply).agent_id
    assert (await send(client, key, agent_id, BatchBody(1, 1, (created(7),))))[0] == 200
    [dossier] = make_dossiers(1, seed=7)
    await client.get(f"/ui/dossiers/{uuid.UUID(int=7)}")  # a path naming a dossier
    text, samples = await scrape(client)
    assert samples[("syncd_ingest_records_total", frozenset({("outcome", "ok")}))] == 1
    applicant = dossier["applicant"]
    for secret in (applicant["name"], applicant["id_number"], applicant["phone"],
                   dossier["procedure_name"], str(uuid.UUID(int=7)), agent_id, token,
                   "Bản Hồ", keys.fingerprint, keys.sealing_public().hex()):
        assert secret not in text


async def test_a_request_id_is_returned_and_on_every_log_line_of_the_request(
        client: TestClient[Any, Any], store: SqliteStore, json_log: io.StringIO) -> None:
    key, agent_id = await enrolled(client, store)
    resp = await client.get("/healthz")
    request_id = resp.headers["X-Request-Id"]
    [line] = [x for x in lines(json_log) if x.get("request_id") == request_id]
    assert line["logger"] == "syncd.access" and line["level"] == "INFO"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/healthz", 200)
    assert isinstance(line["ms"], float) and line["ms"] >= 0
    assert {"ts", "msg"} <= set(line) and "/healthz" in line["msg"]

    resp = await client.post("/v1/batches", data=b"", headers={"X-Request-Id": "edge-42.a"})
    assert resp.headers["X-Request-Id"] == "edge-42.a"  # a plain id from a proxy is kept
    resp = await client.get("/nowhere", headers={"X-Request-Id": "bad id\t{}"})
    assert resp.status == 404 and resp.headers["X-Request-Id"] != "bad id\t{}"
    assert len(resp.headers["X-Request-Id"]) == 12

    status, _ = await send(client, key, agent_id, BatchBody(1, 1, (created(1),)))
    assert status == 200
    mine = [x for x in lines(json_log) if x["msg"].startswith(f"agent {agent_id} epoch 1")]
    [access] = [x for x in lines(json_log)
                if x.get("path") == "/v1/batches" and x.get("status") == 200]
    assert [x["request_id"] for x in mine] == [access["request_id"]]  # the app's own line too
    assert all("request_id" in x for x in lines(json_log) if x["logger"] == "syncd.access")


async def test_agents_by_staleness_queues_and_revocations(
        client: TestClient[Any, Any], store: SqliteStore) -> None:
    agents = [(await enrolled(client, store))[1] for _ in range(5)]
    now = datetime.now(UTC)
    seen = [now - timedelta(days=2), now - timedelta(hours=2), now - timedelta(minutes=5), None,
            now]
    async with store.write() as txn:
        for agent_id, when, depth in zip(agents, seen, (5, 7, 0, None, 100), strict=True):
            await txn.run("UPDATE agents SET last_seen = ?, queue_depth = ?, oldest_unsent_s = ?"
                          " WHERE agent_id = ?", when and when.isoformat(), depth, depth,
                          agent_id)
        await txn.run("UPDATE agents SET revoked_at = ? WHERE agent_id = ?", now.isoformat(),
                      agents[4])
    _, samples = await scrape(client)
    staleness = {b: samples[("syncd_agents", frozenset({("staleness", b)}))]
                 for b in ("<1h", "1h-24h", ">24h", "never")}
    assert staleness == {"<1h": 1, "1h-24h": 1, ">24h": 1, "never": 1}
    assert samples[("syncd_agents_revoked", frozenset())] == 1
    assert samples[("syncd_agent_queued_records", frozenset())] == 12  # the revoked 100 left out
    assert samples[("syncd_agent_queued_records_max", frozenset())] == 7
    assert samples[("syncd_agent_oldest_unsent_seconds_max", frozenset())] == 7


def test_staleness_edges_on_the_server_clock() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)

    def agent(age: timedelta | None, revoked: bool = False) -> dict[str, Any]:
        return {"last_seen": None if age is None else (now - age).isoformat(),
                "revoked": revoked, "queue_depth": None, "oldest_unsent_s": None}

    ages = [timedelta(minutes=59), timedelta(hours=1), timedelta(hours=23, minutes=59),
            timedelta(hours=24), timedelta(days=400), timedelta(minutes=-5), None]
    fleet = summarize_fleet([agent(a) for a in ages] + [agent(None, revoked=True)],
                            [{"kind": "conflict"}, {"kind": "conflict"}, {"kind": "x"}], now)
    assert dict(fleet.staleness) == {"<1h": 2, "1h-24h": 2, ">24h": 2, "never": 1}
    assert fleet.revoked == 1 and dict(fleet.alerts) == {"conflict": 2, "x": 1}
    assert (fleet.queued_records, fleet.queued_records_max) == (0, 0)
    naive = summarize_fleet([{"last_seen": "2026-11-26T11:30:00", "revoked": False}], [], now)
    assert naive.staleness["<1h"] == 1  # a stamp without offset is UTC, as the server writes


def test_record_outcomes() -> None:
    def ack(*verdicts: tuple[int, str]) -> Ack:
        return Ack("ag", 1, 10, tuple(Verdict(s, c, "") for s, c in verdicts))

    assert record_outcomes("ok", 1, 4, ack((2, "invalid_record"))) == {"ok": 3, "refused": 1}
    assert record_outcomes("conflict", 5, 4, ack((4, "x"), (6, "conflict"))) == {
        "ok": 1, "refused": 0, "conflict": 3}
    assert record_outcomes("conflict", 5, 2, ack((5, "conflict"))) == {
        "ok": 0, "refused": 0, "conflict": 2}
    assert record_outcomes("gap", 9, 3, None) == {"gap": 3}
    assert record_outcomes("refused", 1, 3, None) == {}


def test_json_lines_keep_messages_verbatim_and_carry_extras() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("syncd", logging.INFO, __file__, 1,
                               "shutting down; finishing requests in flight (%d)", (3,), None)
    line = formatter.format(record)
    assert "shutting down; finishing requests in flight (3)" in line  # what e2e tests grep
    message = "agent %s epoch %d: records %d-%d, acked %d, %d verdicts"
    record = logging.LogRecord("syncd.app", logging.INFO, __file__, 1, message,
                               ("ag-1", 1, 2, 51, 51, 0), None)
    assert "records 2-51" in formatter.format(record)
    record = logging.LogRecord("syncd.web", logging.ERROR, __file__, 1, "xã %s", ("Bản Hồ",),
                               None)
    record.agent = "ag-1"  # as extra={"agent": ...} does
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    parsed = json.loads(formatter.format(record))
    assert parsed["msg"] == "xã Bản Hồ" and "xã Bản Hồ" in formatter.format(record)
    assert parsed["agent"] == "ag-1" and "ValueError: boom" in parsed["exc"]
    assert list(parsed)[:4] == ["ts", "level", "logger", "msg"]
    assert datetime.fromisoformat(parsed["ts"]).tzinfo is not None


def test_syncd_serve_logs_json_lines(tmp_path: Path) -> None:
    server = Server(tmp_path / "server").init().start()
    try:
        with urllib.request.urlopen(server.url + "/metrics", timeout=5) as resp:
            request_id = resp.headers["X-Request-Id"]
            assert b"syncd_agents" in resp.read()
    finally:
        assert server.stop() == 0
    logged = [line for line in server.log.read_text(encoding="utf-8").splitlines()
              if not line.startswith("syncd listening on")]  # printed for scripts, not logged
    parsed = [json.loads(line) for line in logged]
    assert any(x.get("request_id") == request_id and x["path"] == "/metrics" for x in parsed)
    assert any("shutting down" in x["msg"] for x in parsed)
