"""The central server at scale, through real `syncd serve` processes.

* two processes on one PostgreSQL database, racing the same batches;
* a gap and a conflict on PostgreSQL end to end;
* a saturated process answering 503 ``busy`` with a Retry-After, before the body;
* SIGTERM with a batch in flight: the batch is acknowledged, nothing is lost
  (SQLite and PostgreSQL).
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.config import AgentConfig, AgentPaths
from protocol import MEDIA_TYPE, BatchBody, DossierCreated, StatusChanged, encode_event
from protocol.batches import encode_batch_body
from protocol.messages import Ack, ErrorReply, decode_ack, decode_error, encode_envelope
from protocol.sealing import open_reply
from protocol.signing import sign_envelope
from tests.support.dossiers import make_dossiers
from tests.support.pg import fresh_database_sync, pg_query
from tests.support.procs import (
    AGENT,
    SYNCD,
    Server,
    agent,
    agent_status,
    cli_env,
    communicate_within,
    syncd,
    wait_until,
)

T = TypeVar("T")


# Servers and agents -------------------------------------------------------------------------


class DbServer(Server):
    """A `syncd serve` on SQLite (``db=None``) or on the PostgreSQL database ``db``."""

    def __init__(self, data_dir: Path, db: str | None, port: int | None = None) -> None:
        super().__init__(data_dir, port)
        self.db = db

    def _args(self, *args: str) -> list[str]:
        return [*args, "--data-dir", str(self.data_dir), *(["--db", self.db] if self.db else [])]

    def init(self) -> DbServer:
        syncd(*self._args("init"))
        return self

    def configure(self, **settings: Any) -> DbServer:
        path = self.data_dir / "syncd.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | settings), encoding="utf-8")
        return self

    def launch(self) -> DbServer:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([SYNCD, *self._args("serve"), "--port", str(self.port)],
                                         stdout=log, stderr=log, env=cli_env())
        return self

    def ready(self) -> DbServer:
        proc = self.proc
        assert proc is not None
        wait_until(lambda: self.healthy() or proc.poll() is not None,
                   what=f"syncd on port {self.port} to answer /healthz")
        if proc.poll() is not None:
            raise AssertionError(f"syncd exited: {self.log.read_text()}")
        return self

    def start(self) -> DbServer:
        return self.launch().ready()

    def enroll(self, commune: str = "01234", name: str | None = None) -> str:
        return syncd(*self._args("enroll"), "--commune", commune).stdout.strip()

    def dossiers(self, commune: str | None = None) -> list[dict[str, Any]]:
        return list(json.loads(syncd(*self._args("dossiers"), "--json").stdout))

    def agents(self) -> list[dict[str, Any]]:
        return list(json.loads(syncd(*self._args("agents"), "--json").stdout))

    def alerts(self) -> list[dict[str, Any]]:
        return list(json.loads(syncd(*self._args("alerts"), "--json").stdout))

    def records(self) -> list[tuple[str, int, int]]:
        """(agent, epoch, seq) of every record held, straight from the database."""
        sql = "SELECT agent_id, epoch, seq FROM records ORDER BY agent_id, epoch, seq"
        if self.db:
            return [(str(a), int(e), int(s)) for a, e, s in pg_query(self.db, sql)]
        with closing(sqlite3.connect(self.data_dir / "syncd.db", timeout=10)) as db:
            return [(str(a), int(e), int(s)) for a, e, s in db.execute(sql)]

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def parallel(*calls: Callable[[], T]) -> list[T]:
    """Run CLI calls side by side (each is a Python start-up); results in order."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


def new_agent(server: DbServer, data_dir: Path, *, token_from: DbServer | None = None,
              commune: str = "01234") -> Path:
    token = (token_from or server).enroll(commune)
    agent("init", "--data-dir", str(data_dir), "--server", server.url, "--token", token)
    return data_dir


def agent_id(data_dir: Path) -> str:
    return str(json.loads((data_dir / "agent.json").read_text())["agent_id"])


def add(data_dir: Path, dossiers: list[dict[str, Any]]) -> list[str]:
    path = data_dir.parent / f"{data_dir.name}-input.json"
    path.write_text(json.dumps(dossiers, ensure_ascii=False), encoding="utf-8")
    return agent("add", "--data-dir", str(data_dir), str(path)).stdout.split()


def sync_now(data_dir: Path, timeout_s: float = 30) -> None:
    agent("sync-now", "--data-dir", str(data_dir), "--timeout", str(timeout_s))


def start_sync_now(data_dir: Path, timeout_s: float = 40) -> subprocess.Popen[str]:
    return subprocess.Popen([AGENT, "sync-now", "--data-dir", str(data_dir), "--timeout",
                             str(timeout_s)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=cli_env())


def finish(proc: subprocess.Popen[str], timeout_s: float = 45) -> None:
    code, out, err = communicate_within(proc, timeout_s)
    assert code == 0, f"{proc.args!r} exited {code}\nstdout: {out}\nstderr: {err}"


# Batches made by hand -----------------------------------------------------------------------


def dossier_id(n: int) -> str:
    return str(uuid.UUID(int=n))


def created(n: int) -> bytes:
    [dossier] = make_dossiers(1, seed=n)
    dossier |= {"id": dossier_id(n), "code": f"01234-261126-{n % 10000:04d}",
                "status": "received"}
    return encode_event(DossierCreated(dossier))


def status(n: int, value: str) -> bytes:
    return encode_event(StatusChanged(dossier_id(n), value, "2026-11-26T10:00:00+07:00"))


def signed_batch(agent_dir: Path, body: BatchBody) -> bytes:
    """The bytes of a batch envelope, signed with this agent's key (as its engine would)."""
    config = AgentConfig.load(AgentPaths(agent_dir))
    key = Ed25519PrivateKey.from_private_bytes((agent_dir / "agent.key").read_bytes())
    return encode_envelope(sign_envelope(key, "batch", config.agent_id,
                                         encode_batch_body(body, config.seal_to())))


def server_key(agent_dir: Path) -> bytes:
    return AgentConfig.load(AgentPaths(agent_dir)).server_key_bytes


def post(url: str, data: bytes, path: str = "/v1/batches",
         timeout_s: float = 20) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url + path, data=data, method="POST",
                                     headers={"Content-Type": MEDIA_TYPE})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def ack_of(agent_dir: Path, status_code: int, body: bytes) -> Ack:
    assert status_code == 200, (status_code, body[:200])
    return decode_ack(open_reply(body, server_key(agent_dir)))


def error_of(agent_dir: Path, body: bytes) -> ErrorReply:
    return decode_error(open_reply(body, server_key(agent_dir)))


class RawPost:
    """A POST on a plain socket whose body goes out in parts, when the test says.

    It asks ``Expect: 100-continue`` (unless ``expect=False``): the server's
    ``100 Continue`` shows the request was parsed and routed, so its handler is
    about to wait for the body.
    """

    def __init__(self, port: int, body: bytes, path: str = "/v1/batches", *,
                 expect: bool = True) -> None:
        self.body, self.sent = body, 0
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: {MEDIA_TYPE}\r\nContent-Length: {len(body)}\r\n")
        if expect:
            head += "Expect: 100-continue\r\n"
        self.sock.sendall((head + "\r\n").encode())

    def __enter__(self) -> RawPost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def wait_continue(self) -> None:
        head = b""
        while not head.endswith(b"\r\n\r\n"):  # byte by byte: nothing else is read
            byte = self.sock.recv(1)
            assert byte, f"connection closed after {head!r}"
            head += byte
        assert head.startswith(b"HTTP/1.1 100 "), head

    def send(self, size: int | None = None) -> None:
        end = len(self.body) if size is None else self.sent + size
        self.sock.sendall(self.body[self.sent:end])
        self.sent = min(end, len(self.body))

    def response(self, timeout_s: float = 10) -> tuple[int, bytes] | None:
        """The status and body of the answer, or None if none came within ``timeout_s``."""
        self.sock.settimeout(timeout_s)
        resp = http.client.HTTPResponse(self.sock)
        try:
            resp.begin()
            return resp.status, resp.read()
        except TimeoutError:
            return None
        finally:
            resp.close()


# Fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DbServer, DbServer]]:
    """`syncd serve` twice (data directories A and B, same keys) on one fresh database."""
    root = tmp_path_factory.mktemp("pair")
    with fresh_database_sync() as url:
        a = DbServer(root / "A", url).init()
        shutil.copytree(a.data_dir, root / "B")
        b = DbServer(root / "B", url)
        assert "already initialised" in syncd(*b._args("init")).stderr  # migrates only
        try:
            a.launch()
            b.launch()  # both start (and open their pools) at once
            a.ready()
            b.ready()
            yield a, b
        finally:
            a.stop()
            b.stop()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database_sync() as url:
        yield url


# 1. Two processes racing --------------------------------------------------------------------


def test_two_processes_racing_the_same_batches_apply_each_once(
        pg_pair: tuple[DbServer, DbServer], tmp_path: Path) -> None:
    a, b = pg_pair
    racer, walker = parallel(lambda: new_agent(a, tmp_path / "racer"),
                             lambda: new_agent(a, tmp_path / "walker", token_from=b))
    racer_id = agent_id(racer)
    barrier = threading.Barrier(2)

    def at_once(url: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
        barrier.wait(timeout=10)
        return post(url, data)

    seq, expected = 1, {}
    for round_ in range(20):
        base = 1000 + 2 * round_
        third = status(base, "processing") if round_ % 4 else status(999_999, "finished")
        records = (created(base), created(base + 1), third)
        data = signed_batch(racer, BatchBody(1, seq, records))
        with ThreadPoolExecutor(max_workers=2) as pool:
            answers = list(pool.map(at_once, (a.url, b.url), (data, data)))
        acks = [ack_of(racer, status_code, body) for status_code, _, body in answers]
        assert [ack.acked_seq for ack in acks] == [seq + 2, seq + 2], round_
        assert acks[0].verdicts == acks[1].verdicts, round_
        if round_ % 4 == 0:
            assert [(v.seq, v.code) for v in acks[0].verdicts] == [(seq + 2, "unknown_dossier")]
        else:
            assert acks[0].verdicts == ()
        expected[dossier_id(base)] = "processing" if round_ % 4 else "received"
        expected[dossier_id(base + 1)] = "received"
        seq += 3
    last = seq - 1

    held = [d for d in a.dossiers() if d["agent_id"] == racer_id]
    assert len(held) == len(expected)  # each exactly once, in its state
    assert {d["id"]: d["status"] for d in held} == expected
    assert [r for r in a.records() if r[0] == racer_id] == [(racer_id, 1, s)
                                                           for s in range(1, last + 1)]
    [row] = [r for r in b.agents() if r["agent_id"] == racer_id]
    assert (row["epoch"], row["acked_seq"]) == (1, last)
    assert [al for al in a.alerts() if al["agent_id"] == racer_id] == []

    # A normal agent: enrolled with a token from B, syncing through A, then through B.
    first = add(walker, make_dossiers(5, seed=21))
    sync_now(walker)
    config = json.loads((walker / "agent.json").read_text())
    (walker / "agent.json").write_text(json.dumps(config | {"server_url": b.url}))
    second = add(walker, make_dossiers(5, seed=22))
    agent("update", "--data-dir", str(walker), first[0], "--status", "processing")
    sync_now(walker)
    walker_id = agent_id(walker)
    held = {d["id"]: d for d in b.dossiers() if d["agent_id"] == walker_id}
    assert sorted(held) == sorted(first + second)
    assert held[first[0]]["status"] == "processing"
    st = agent_status(walker)
    assert st["pending"] == 0 and st["acked_seq"] == st["last_seq"] == 11
    [row] = [r for r in a.agents() if r["agent_id"] == walker_id]
    assert row["acked_seq"] == 11
    assert len([r for r in a.records() if r[0] == walker_id]) == 11


# 2. A gap and a conflict on PostgreSQL ------------------------------------------------------


def test_gap_and_conflict_on_postgresql(pg_pair: tuple[DbServer, DbServer],
                                        tmp_path: Path) -> None:
    a, _ = pg_pair
    agent_dir = new_agent(a, tmp_path / "agent")
    me = agent_id(agent_dir)
    ids = add(agent_dir, make_dossiers(3, seed=31))
    sync_now(agent_dir)
    before = sorted((d for d in a.dossiers() if d["agent_id"] == me), key=lambda d: d["id"])
    assert len(before) == 3
    epoch = agent_status(agent_dir)["epoch"]

    status_code, _, body = post(a.url, signed_batch(agent_dir, BatchBody(epoch, 10,
                                                                         (created(5000),))))
    assert status_code == 409
    err = error_of(agent_dir, body)
    assert (err.code, err.epoch, err.acked_seq) == ("gap", epoch, 3)

    other = encode_event(StatusChanged(ids[0], "withdrawn", "2026-11-26T10:00:00+07:00"))
    records = (other, created(5001), created(5002))  # seqs 2 (other bytes), 3 (idem), 4 (new)
    data = signed_batch(agent_dir, BatchBody(epoch, 2, records))
    for _ in range(2):  # the same conflicting batch twice: the same answer, one alert
        status_code, _, body = post(a.url, data)
        ack = ack_of(agent_dir, status_code, body)
        assert ack.acked_seq == 3
        assert [(v.seq, v.code) for v in ack.verdicts] == [(2, "conflict")]
    mine = [al for al in a.alerts() if al["agent_id"] == me]
    assert [(al["kind"], al["epoch"], al["seq"]) for al in mine] == [("conflict", epoch, 2)]
    after = sorted((d for d in a.dossiers() if d["agent_id"] == me), key=lambda d: d["id"])
    assert after == before  # nothing changed, seq 4 not applied
    assert [r[2] for r in a.records() if r[0] == me] == [1, 2, 3]


# 3. 503 busy with Retry-After ---------------------------------------------------------------


def test_a_saturated_server_answers_503_busy_before_the_body(pg_url: str,
                                                            tmp_path: Path) -> None:
    server = DbServer(tmp_path / "server", pg_url).init().configure(
        max_inflight_ingests=1).start()
    proc: subprocess.Popen[str] | None = None
    try:
        agent_dir, holder = parallel(lambda: new_agent(server, tmp_path / "agent"),
                                     lambda: new_agent(server, tmp_path / "holder"))
        ids = add(agent_dir, make_dossiers(25, seed=41))
        held = signed_batch(holder, BatchBody(1, 1, (created(6000),)))
        with RawPost(server.port, held) as hold:
            hold.wait_continue()
            hold.send(len(held) // 2)  # its handler now waits for the rest: the one place

            def refused_probe() -> bool:  # garbage on the other ingest path: busy, or a 400
                return post(server.url, b"\x90", "/v1/documents/chunk")[0] == 503
            wait_until(refused_probe, timeout_s=10, what="the one ingest place to be taken")

            batch = signed_batch(agent_dir, BatchBody(1, 1, (created(6001),)))
            started = time.monotonic()
            status_code, headers, body = post(server.url, batch)
            elapsed = time.monotonic() - started
            assert status_code == 503
            assert elapsed < 5, elapsed  # the body timeout is 30 s: answered before the body
            assert headers.get("Retry-After", "").isdigit(), headers
            assert int(headers["Retry-After"]) >= 1
            assert error_of(agent_dir, body).code == "busy"
            with RawPost(server.port, batch, expect=False) as headers_only:  # no body at all
                answer = headers_only.response(timeout_s=5)
            assert answer is not None, "no answer without the body: it waited for the body"
            assert answer[0] == 503 and error_of(agent_dir, answer[1]).code == "busy"

            # The agent, meanwhile, is turned away too and waits.
            proc = start_sync_now(agent_dir)
            wait_until(lambda: "busy" in (agent_status(agent_dir)["last_error"] or ""),
                       timeout_s=20, what="the agent to be told the server is busy")
            assert server.dossiers() == []
            assert server.records() == []

            hold.send()  # release: the held batch completes normally
            answer = hold.response()
        assert answer is not None, "the held batch got no answer once its body was complete"
        assert ack_of(holder, *answer).acked_seq == 1
        finish(proc)  # the agent came back after its Retry-After and drained everything
        st = agent_status(agent_dir)
        assert st["pending"] == 0 and st["acked_seq"] == st["last_seq"] == 25
        mine = {d["id"] for d in server.dossiers() if d["agent_id"] == agent_id(agent_dir)}
        assert sorted(mine) == sorted(ids)
        assert len(server.records()) == 25 + 1
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()
        server.stop()


# 4. SIGTERM with batches in flight ----------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigterm_finishes_batches_in_flight_and_loses_nothing(backend: str,
                                                              tmp_path: Path) -> None:
    with fresh_database_sync() if backend == "postgresql" else nullcontext() as url:
        _graceful_shutdown(DbServer(tmp_path / "server", url).init().start(), tmp_path)


def _graceful_shutdown(server: DbServer, tmp_path: Path) -> None:
    procs: list[subprocess.Popen[str]] = []
    try:
        dirs = parallel(*(lambda n=n: new_agent(server, tmp_path / f"agent{n}")
                          for n in range(3)))
        slow, agents = dirs[0], dirs[1:]
        added = dict(zip(agents, parallel(*(lambda d=d, n=n: add(d, make_dossiers(40, seed=n))
                                            for n, d in enumerate(agents))), strict=True))
        records = tuple(created(7000 + n) for n in range(5))
        data = signed_batch(slow, BatchBody(1, 1, records))
        with RawPost(server.port, data) as upload:
            upload.wait_continue()
            upload.send(len(data) // 3)  # a 2G upload, a third of the way
            procs = [start_sync_now(d) for d in agents]
            wait_until(lambda: "records 1-" in server.log_text(), timeout_s=20,
                       what="an agent's first batch to reach the server")
            proc = server.proc
            assert proc is not None
            proc.send_signal(signal.SIGTERM)
            wait_until(lambda: "finishing requests in flight" in server.log_text(),
                       what="syncd to start shutting down")
            assert proc.poll() is None  # still waiting for the upload
            upload.send()
            answer = upload.response(timeout_s=5)
        # What the upload in flight got; asserted at the end, after checking the rest.
        problem = None
        if answer is None:
            problem = "no answer within 5 s after its body was complete"
        elif answer[0] != 200:
            err = error_of(slow, answer[1])
            problem = f"HTTP {answer[0]} {err.code}: {err.message}"
        else:
            ack = ack_of(slow, *answer)
            assert (ack.epoch, ack.acked_seq, ack.verdicts) == (1, 5, ())
        if problem is None:
            code = exit_code_within(proc, 20)
            assert code == 0, f"syncd exited {code} after SIGTERM"
            server.proc = None
        else:
            server.stop(signal.SIGKILL)

        server.start()  # same port, same store
        for sync in procs:
            finish(sync)
        if problem is not None:  # as its agent would: send the batch again
            status_code, _, body = post(server.url, data)
            assert ack_of(slow, status_code, body).acked_seq == 5
        parallel(*(lambda d=d: sync_now(d) for d in agents))

        held = server.dossiers()
        assert len(held) == len({d["id"] for d in held}) == 5 + 80
        by_agent = {agent_id(d): sorted(ids) for d, ids in added.items()}
        by_agent[agent_id(slow)] = sorted(dossier_id(7000 + n) for n in range(5))
        assert {k: sorted(d["id"] for d in held if d["agent_id"] == k) for k in by_agent} == \
            by_agent
        positions = {r["agent_id"]: (r["epoch"], r["acked_seq"]) for r in server.agents()}
        assert positions[agent_id(slow)] == (1, 5)
        statuses = parallel(*(lambda d=d: agent_status(d) for d in agents))
        for agent_dir, st in zip(agents, statuses, strict=True):
            assert st["pending"] == 0 and st["acked_seq"] == st["last_seq"] == 40
            assert positions[agent_id(agent_dir)] == (st["epoch"], 40)
        assert len(server.records()) == 5 + 80
        assert server.alerts() == []
        assert problem is None, ("the batch whose body was still arriving at SIGTERM was not "
                                 f"acknowledged: {problem} (nothing else was lost)")
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    finally:
        for sync in procs:
            if sync.poll() is None:
                sync.kill()
            sync.communicate()
        server.stop()


def exit_code_within(proc: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None
