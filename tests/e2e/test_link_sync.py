"""Records and documents through the link emulator, with real processes.

Every test puts a :class:`~tests.support.link.ThreadedLink` between the agent
and a real ``syncd serve`` (the agent is enrolled *through* the link, so its
configured server URL is the emulator), drives the ``sync-agent`` CLI or
daemon as subprocesses, and breaks the link on purpose:

1. outages forced in the middle of record batches, then in the middle of
   document chunks: every dossier and every document arrives exactly once;
2. 100 responses lost in a row: the server stores no record twice, and the
   agent converges as soon as answers flow again;
3. one document upload cut 20 times at seeded random offsets (link cuts,
   half of them with the uploading process SIGKILLed too): the stored file is
   the original, no byte range is stored twice, and only the bytes in flight
   at each cut are ever sent again;
4. a 5 MB document queued before 50 dossiers on a slow link: the dossiers
   overtake it (records always go first, one chunk at a time).

Waiting is always on a condition with a deadline (``wait_until``). The only
deliberate sleeps are the seeded outage lengths: they *are* the fault.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.dossiers import make_dossiers
from tests.support.link import PROFILES, LinkProfile, ThreadedLink
from tests.support.procs import (
    AGENT,
    SYNCD,
    Server,
    agent,
    agent_status,
    cli_env,
    communicate_within,
    enroll_agent,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

REQUEST_OVERHEAD = 1024
"""Generous upper bound of the bytes one request adds to its payload: HTTP
headers, the signed envelope and the msgpack framing (200 to 450 measured)."""


FAST_MOBILE = LinkProfile("hspa", 2_000_000, 8_000_000, 0.040)
"""A good mobile link: 100 resent batches take seconds of airtime, not minutes."""


# --------------------------------------------------------------------------- processes


class Procs:
    """Every subprocess a test starts, so none is left behind."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def start(self, *args: str, log: Path | None = None) -> subprocess.Popen[str]:
        if log is None:
            proc = subprocess.Popen([AGENT, *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=cli_env())
        else:
            with open(log, "a", encoding="utf-8") as out:
                proc = subprocess.Popen([AGENT, *args], stdout=out, stderr=out, text=True,
                                        env=cli_env())
        self.started.append(proc)
        return proc

    def reap(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


@pytest.fixture
def procs() -> Iterator[Procs]:
    started = Procs()
    try:
        yield started
    finally:
        started.reap()


def finish(proc: subprocess.Popen[str], timeout_s: float) -> tuple[int, str, str]:
    return communicate_within(proc, timeout_s)


def sigkill(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    return proc.returncode


def sigterm(proc: subprocess.Popen[str], log: Path, timeout_s: float = 15.0) -> float:
    """Stop a daemon gracefully; how long it took. It must exit 0."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"daemon ignored SIGTERM for {timeout_s} s:\n"
                             f"{log.read_text()[-3000:]}") from None
    assert code == 0, f"daemon exited {code} on SIGTERM:\n{log.read_text()[-3000:]}"
    return time.monotonic() - started


# --------------------------------------------------------------------------- state


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """One read-only statement against a live SQLite file (cheap enough to poll)."""
    with closing(sqlite3.connect(db, timeout=10, isolation_level=None)) as conn:
        return conn.execute(sql, args).fetchall()


def queue_position(data_dir: Path) -> tuple[int, int]:
    """(last_seq, acked_seq) of the agent's current epoch, straight from queue.db."""
    [(last, acked)] = query(
        data_dir / "queue.db",
        "SELECT (SELECT coalesce(max(seq), 0) FROM records WHERE epoch = m.value), "
        "(SELECT acked_seq FROM sync_state WHERE epoch = m.value) "
        "FROM meta m WHERE m.key = 'epoch'")
    return int(last), int(acked)


def queue_documents(data_dir: Path) -> tuple[int, int]:
    """(documents not complete, their bytes not acknowledged), as `status` computes them."""
    [(count, left)] = query(data_dir / "queue.db",
                            "SELECT count(*), coalesce(sum(size - sent_offset), 0) "
                            "FROM documents WHERE complete = 0")
    return int(count), int(left)


def server_db(server: Server) -> Path:
    return server.data_dir / "syncd.db"


def server_position(server: Server) -> int:
    [(acked,)] = query(server_db(server), "SELECT coalesce(max(acked_seq), 0) FROM positions")
    return int(acked)


def server_documents(server: Server) -> dict[str, tuple[int, int, bool]]:
    """sha256 -> (size, received, complete) for every document the server knows."""
    return {sha: (size, received, bool(complete)) for sha, size, received, complete in
            query(server_db(server), "SELECT sha256, size, received, complete FROM documents")}


def server_received(server: Server) -> int:
    """Document bytes the server has committed, all documents together."""
    [(total,)] = query(server_db(server), "SELECT coalesce(sum(received), 0) FROM documents")
    return int(total)


def fetch_document(server: Server, sha256: str) -> bytes:
    proc = subprocess.run([SYNCD, "document", "--data-dir", str(server.data_dir), sha256],
                          capture_output=True, timeout=60, env=cli_env(), check=False)
    assert proc.returncode == 0, f"syncd document {sha256[:12]}: {proc.stderr!r}"
    return proc.stdout


CHUNK_LINE = re.compile(r"document ([0-9a-f]{12}): (\d+)/(\d+) bytes( complete)?")


def stored_offsets_in(log: str, sha256: str) -> list[tuple[int, bool]]:
    """(offset after the chunk, complete) for every chunk of ``sha256`` logged in ``log``."""
    return [(int(m[2]), bool(m[4])) for m in CHUNK_LINE.finditer(log) if m[1] == sha256[:12]]


def stored_offsets(server: Server, sha256: str) -> list[tuple[int, bool]]:
    """The chunks the server stored, in order, from its log ("document …: X/Y bytes")."""
    return stored_offsets_in(server.log.read_text(), sha256)


class InFlight:
    """Uplink bytes sent since the server last committed progress.

    ``progress`` reads a server-side counter (its records position, or the
    document bytes it holds). Polled often, :meth:`poll` tells how many bytes
    crossed the link since that counter last moved (or since :meth:`restart`):
    the part of the request in flight. It also checks that the counter never
    goes backwards.
    """

    def __init__(self, link: ThreadedLink, progress: Callable[[], int]) -> None:
        self.link = link
        self.progress = progress
        self.value = progress()
        self.mark = link.bytes_up

    def poll(self) -> int:
        value, up = self.progress(), self.link.bytes_up
        assert value >= self.value, f"server progress went backwards: {self.value} -> {value}"
        if value != self.value:
            self.value, self.mark = value, up
        return up - self.mark

    def restart(self) -> None:
        self.mark = self.link.bytes_up


# --------------------------------------------------------------------------- setup


@contextmanager
def linked_agent(server: Server, tmp_path: Path, profile: LinkProfile,
                 seed: int = 0) -> Iterator[tuple[ThreadedLink, Path]]:
    """A link emulator in front of ``server`` and an agent enrolled through it."""
    with ThreadedLink("127.0.0.1", server.port, profile, seed=seed) as link:
        data_dir = enroll_agent(server, tmp_path / "agent", server_url=link.url)
        link.reset_counters()
        yield link, data_dir


def add(data_dir: Path, path: Path, items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``sync-agent add`` the dossiers from a JSON file at ``path``; id -> input."""
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    ids = agent("add", "--data-dir", str(data_dir), str(path)).stdout.split()
    assert len(ids) == len(set(ids)) == len(items), ids
    return dict(zip(ids, items, strict=True))


def write_scan(path: Path, rng: random.Random, size: int) -> tuple[str, bytes]:
    data = rng.randbytes(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest(), data


def assert_exactly_once(server: Server, data_dir: Path,
                        expected: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The server holds each dossier of ``expected`` once and nothing else; no
    record is stored twice; the agent and the server agree on the position."""
    status = agent_status(data_dir)
    assert status["pending"] == 0 and status["refused"] == 0, status
    assert status["acked_seq"] == status["last_seq"] == len(expected), status
    held = server.dossiers()
    doubled = [i for i, n in Counter(d["id"] for d in held).items() if n > 1]
    assert not doubled, f"dossiers held twice: {doubled[:5]}"
    by_id = {d["id"]: d for d in held}
    assert set(by_id) == set(expected), (
        f"missing {sorted(set(expected) - set(by_id))[:5]}, "
        f"extra {sorted(set(by_id) - set(expected))[:5]}")
    for dossier_id, given in expected.items():
        stored = by_id[dossier_id]
        assert stored["applicant"] == given["applicant"], dossier_id
        for key in ("procedure_code", "received_at", "due_at"):
            assert stored[key] == given[key], (dossier_id, key)
        assert stored["status"] == "received", (dossier_id, stored["status"])
    assert len({d["code"] for d in held}) == len(held), "dossier codes held twice"
    [(rows, seqs, low, high)] = query(server_db(server),
                                      "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) "
                                      "FROM records")
    assert rows == seqs == status["last_seq"], (
        f"records table holds {rows} rows ({seqs} distinct seqs) for {status['last_seq']}")
    assert (low, high) == (1, status["last_seq"]), (low, high)
    assert server.alerts() == []
    [row] = server.agents()
    assert row["acked_seq"] == status["last_seq"] and row["epoch"] == status["epoch"], row
    return by_id


def assert_documents_complete(server: Server, scans: dict[str, bytes]) -> None:
    """Every document is complete on the server once, byte for byte, nothing else."""
    held = server_documents(server)
    assert set(held) == set(scans), (sorted(held), sorted(scans))
    for sha256, data in scans.items():
        assert held[sha256] == (len(data), len(data), True), (sha256[:12], held[sha256])
        stored = fetch_document(server, sha256)
        assert hashlib.sha256(stored).hexdigest() == sha256, f"{sha256[:12]} differs"
        assert stored == data
        offsets = stored_offsets(server, sha256)
        assert offsets, f"no chunk of {sha256[:12]} was logged"
        ends = [offset for offset, _ in offsets]
        assert ends == sorted(set(ends)), f"{sha256[:12]}: a byte range stored twice: {ends}"
        assert offsets[-1] == (len(data), True), offsets[-1]
        assert sum(complete for _, complete in offsets) == 1, "completed more than once"
    files = sorted(p.name for p in (server.data_dir / "documents").iterdir())
    assert files == sorted(scans), f"the server's documents folder holds {files}"


# --------------------------------------------------------------------------- 1. outages


def test_outages_during_record_batches_deliver_every_dossier_once(
        server: Server, tmp_path: Path, procs: Procs) -> None:
    """1200 dossiers (three batches of compressed records over EDGE); six
    outages, each forced while a batch is crossing the link, two in each batch
    (acked_seq moves between them); sync-now rides them out; each dossier
    arrives exactly once."""
    rng = random.Random(20261201)
    with linked_agent(server, tmp_path, PROFILES["edge"]) as (link, data_dir):
        expected = add(data_dir, tmp_path / "dossiers.json", make_dossiers(1200, seed=1201))
        total = len(expected)
        sync = procs.start("sync-now", "--data-dir", str(data_dir), "--timeout", "50")
        flight = InFlight(link, lambda: server_position(server))
        cuts: list[tuple[int, int, int]] = []  # (server position, bytes in flight, acked)
        for k in range(6):
            wait_for_commit = k in (2, 4)
            held_before = flight.value
            target = rng.randint(1_000, 6_000)

            def mid_batch(wait_for_commit: bool = wait_for_commit, held_before: int = held_before,
                          target: int = target) -> str | None:
                in_flight = flight.poll()
                if flight.value >= total or sync.poll() is not None:
                    return "finished"
                if wait_for_commit and flight.value == held_before:
                    return None
                return "mid-batch" if in_flight >= target else None

            when = wait_until(mid_batch, timeout_s=30, interval_s=0.002,
                              what=f"a batch in flight for cut {k}")
            assert when == "mid-batch", (
                f"the sync finished after only {k} cuts {cuts}: {sync.communicate()}")
            link.go_down()
            cuts.append((flight.value, link.bytes_up - flight.mark, queue_position(data_dir)[1]))
            time.sleep(rng.uniform(0.2, 1.2))  # the outage (seeded)
            link.go_up()
            flight.restart()

        code, out, err = finish(sync, timeout_s=60)
        assert code == 0, f"sync-now exited {code}\nstdout: {out}\nstderr: {err}"
        stats = link.stats()
    print(f"cuts (server position, bytes in flight, agent acked): {cuts}; {stats}")
    assert stats.outages == 6
    assert all(0 <= held < total and in_flight > 0 for held, in_flight, _ in cuts), cuts
    assert len({held for held, _, _ in cuts}) >= 3, f"acked_seq did not move between cuts: {cuts}"
    assert_exactly_once(server, data_dir, expected)


def test_outages_during_document_chunks_complete_every_document_once(
        server: Server, tmp_path: Path, procs: Procs) -> None:
    """Records first, then three documents (one shared by two dossiers) through
    a 3G link; five outages forced while chunks are crossing (a chunk must
    get through before the third and the fifth); the daemon
    finishes every document exactly once, byte for byte."""
    rng = random.Random(20261202)
    scans_dir = tmp_path / "scans"
    scans_dir.mkdir()
    sha_a, data_a = write_scan(scans_dir / "cccd.pdf", rng, 240_000)
    sha_b, data_b = write_scan(scans_dir / "to-khai.pdf", rng, 160_000)
    sha_c, data_c = write_scan(scans_dir / "anh.jpg", rng, 1_000)
    scans = {sha_a: data_a, sha_b: data_b, sha_c: data_c}
    items = make_dossiers(12, seed=1202)
    items[0]["documents"] = [{"name": "Tờ khai", "copies": 1},
                             {"name": "Bản sao CCCD", "path": "cccd.pdf"}]
    items[1]["documents"] = [{"name": "Bản sao CCCD", "path": "cccd.pdf"}]  # the same scan
    items[5]["documents"] = [{"name": "Tờ khai", "path": "to-khai.pdf"},
                             {"name": "Ảnh", "path": "anh.jpg"}]
    log = tmp_path / "daemon.log"
    with linked_agent(server, tmp_path, PROFILES["3g"]) as (link, data_dir):
        expected = add(data_dir, scans_dir / "dossiers.json", items)
        assert queue_documents(data_dir) == (3, len(data_a) + len(data_b) + len(data_c))
        daemon = procs.start("run", "--data-dir", str(data_dir), log=log)
        wait_until(lambda: queue_position(data_dir) == (12, 12), timeout_s=30,
                   what="the records to be acknowledged first")
        assert server_received(server) == 0, "a document went before the records"
        flight = InFlight(link, lambda: server_received(server))
        cuts: list[tuple[int, int]] = []  # (document bytes held, bytes in flight)
        for k in range(5):
            wait_for_commit = k in (2, 4)
            held_before = flight.value
            target = rng.randint(3_000, 40_000)

            def mid_chunk(wait_for_commit: bool = wait_for_commit, held_before: int = held_before,
                          target: int = target) -> str | None:
                in_flight = flight.poll()
                assert daemon.poll() is None, f"daemon exited:\n{log.read_text()}"
                if queue_documents(data_dir)[0] == 0:
                    return "finished"
                if wait_for_commit and flight.value == held_before:
                    return None
                return "mid-chunk" if in_flight >= target else None

            when = wait_until(mid_chunk, timeout_s=30, interval_s=0.002,
                              what=f"a chunk in flight for cut {k}")
            assert when == "mid-chunk", f"documents completed after only {k} cuts: {cuts}"
            link.go_down()
            cuts.append((flight.value, link.bytes_up - flight.mark))
            time.sleep(rng.uniform(0.3, 1.5))  # the outage (seeded)
            link.go_up()
            flight.restart()

        def drained() -> bool:
            flight.poll()
            assert daemon.poll() is None, f"daemon exited:\n{log.read_text()}"
            return queue_documents(data_dir) == (0, 0) and queue_position(data_dir) == (12, 12)

        wait_until(drained, timeout_s=45, interval_s=0.02, what="every document to complete")
        sigterm(daemon, log)
        stats = link.stats()
    print(f"cuts (document bytes held, bytes in flight): {cuts}; {stats}")
    assert stats.outages == 5
    assert len({held for held, _ in cuts}) >= 3, f"no chunk got through between cuts: {cuts}"
    by_id = assert_exactly_once(server, data_dir, expected)
    assert_documents_complete(server, scans)
    attached = [doc for d in by_id.values() for doc in d["documents"] if "sha256" in doc]
    assert sorted(doc["sha256"] for doc in attached) == sorted([sha_a, sha_a, sha_b, sha_c])
    assert all(doc["complete"] and doc["size"] == len(scans[doc["sha256"]])
               for doc in attached), attached
    assert agent("verify", "--data-dir", str(data_dir)).returncode == 0


# --------------------------------------------------------------------------- 2. lost answers


def test_hundred_lost_responses_in_a_row_store_no_record_twice(
        server: Server, tmp_path: Path, procs: Procs) -> None:
    """The link loses the next 100 responses, whoever asked: every request
    reaches the server, no answer comes back. A patient sync-now (generous
    timeout) and an impatient officer (short sync-nows, four at a time, each
    waking the others) keep resending while more dossiers are added; the
    server must store every record once, and the patient sync-now must exit
    0 soon after answers flow again."""
    rng = random.Random(20261203)
    with linked_agent(server, tmp_path, FAST_MOBILE) as (link, data_dir):
        expected = add(data_dir, tmp_path / "first.json", make_dossiers(300, seed=1203))
        link.lose_responses(100)
        started = time.monotonic()
        patient = procs.start("sync-now", "--data-dir", str(data_dir), "--timeout", "100")
        impatient: list[subprocess.Popen[str]] = []
        outcomes: Counter[int] = Counter()
        refusals: list[str] = []
        adds = [20, 50, 80]  # add 50 dossiers once this many responses were lost

        def reap_impatient() -> None:
            for proc in [p for p in impatient if p.poll() is not None]:
                impatient.remove(proc)
                code, _, err = finish(proc, timeout_s=10)
                outcomes[code] += 1
                if "server refused" in err.lower() or code not in (0, 3):
                    refusals.append(f"exit {code}: {err.strip()}")

        def losses_consumed() -> bool:
            reap_impatient()
            lost = link.lost_responses
            if adds and lost >= adds[0]:
                expected.update(add(data_dir, tmp_path / f"more-{adds[0]}.json",
                                    make_dossiers(50, seed=1300 + adds.pop(0))))
            if link.call(lambda emulator: emulator.responses_to_lose) == 0:
                return True
            assert patient.poll() is None, f"sync-now gave up: {patient.communicate()}"
            while len(impatient) < 4:
                impatient.append(procs.start("sync-now", "--data-dir", str(data_dir),
                                             "--timeout", f"{rng.uniform(1.5, 3.5):.2f}"))
            return False

        wait_until(losses_consumed, timeout_s=90, interval_s=0.05,
                   what="100 responses to be lost")
        flowing = time.monotonic()
        for proc in impatient:
            finish(proc, timeout_s=15)
        reap_impatient()
        code, out, err = finish(patient, timeout_s=max(5.0, 105 - (time.monotonic() - started)))
        converged = time.monotonic() - flowing
        assert code == 0, f"sync-now exited {code}\nstdout: {out}\nstderr: {err}"
        stats = link.stats()
    ranges = [(int(a), int(b)) for a, b in
              re.findall(r"epoch \d+: records (\d+)-(\d+)", server.log.read_text())]
    received = sum(b - a + 1 for a, b in ranges)
    print(f"losses consumed after {flowing - started:.1f} s; patient sync-now done "
          f"{converged:.1f} s later; impatient exits {dict(outcomes)}; {len(ranges)} batches "
          f"({received} records) reached the server for {len(expected)} dossiers; {stats}")
    assert not refusals, refusals
    assert stats.lost_responses == 100
    assert converged < 20, f"sync-now took {converged:.1f} s to converge once answers flowed"
    # Most lost answers were answers to batches: the server got the same records
    # again and again, in batches cut differently as dossiers were added.
    assert len(ranges) >= 50 and received >= 10 * len(expected), (len(ranges), received)
    assert_exactly_once(server, data_dir, expected)


# --------------------------------------------------------------------------- 3. resumable


def test_document_upload_cut_twenty_times_stores_no_chunk_twice(
        server: Server, tmp_path: Path, procs: Procs) -> None:
    """A 448 KB scan through a 3G link, cut 20 times when the byte crossing
    the link reaches a seeded random offset: the link goes down each time,
    and every other time the uploading sync-now is SIGKILLed as well (a new
    one resumes). The stored file must be the original; the server's offset
    only grows and no byte range is stored twice; apart from what was in
    flight at each cut, nothing is sent twice."""
    rng = random.Random(20261204)
    size = 448 * 1024
    sha256, data = write_scan(tmp_path / "scan.pdf", rng, size)
    item = make_dossiers(1, seed=1204)[0]
    item["documents"] = [{"name": "Hồ sơ scan", "path": "scan.pdf"}]
    targets = sorted(rng.randrange(size // 50, size - size // 50) for _ in range(20))

    def sync_now() -> subprocess.Popen[str]:
        return procs.start("sync-now", "--data-dir", str(data_dir), "--timeout", "50")

    with linked_agent(server, tmp_path, PROFILES["3g"]) as (link, data_dir):
        expected = add(data_dir, tmp_path / "dossier.json", [item])
        proc = sync_now()
        wait_until(lambda: server_position(server) == 1 or proc.poll() is not None,
                   timeout_s=30, interval_s=0.002, what="the record to be acknowledged")
        base = link.bytes_up  # the record batch; the document starts now

        def held() -> int:
            state = server_documents(server).get(sha256)
            return 0 if state is None else state[1]

        flight = InFlight(link, held)
        flight.mark = base
        cuts: list[tuple[int, int, int, str]] = []  # (target, held, wasted, how)
        for k, target in enumerate(targets):
            def at_offset(target: int = target,
                          proc: subprocess.Popen[str] = proc) -> str | None:
                in_flight = flight.poll()
                if flight.value >= size or proc.poll() is not None:
                    return "finished"
                return "cut" if in_flight >= 2048 and flight.value + in_flight >= target else None

            when = wait_until(at_offset, timeout_s=30, interval_s=0.002,
                              what=f"offset {target} to cross the link (cut {k})")
            assert when == "cut", (f"the upload ended after only {k} cuts {cuts}: "
                                   f"{proc.communicate() if proc.poll() is not None else ''}")
            link.go_down()
            wasted = link.bytes_up - flight.mark
            how = "link"
            if k % 2:
                assert sigkill(proc) == -signal.SIGKILL
                how = "link+kill"
            cuts.append((target, flight.value, wasted, how))
            time.sleep(rng.uniform(0.05, 0.3))  # the outage (seeded)
            link.go_up()
            flight.restart()
            if proc.poll() is not None:
                proc = sync_now()

        def complete() -> bool:
            flight.poll()
            return proc.poll() is not None

        wait_until(complete, timeout_s=45, interval_s=0.01, what="the upload to finish")
        code, out, err = finish(proc, timeout_s=5)
        assert code == 0, f"sync-now exited {code}\nstdout: {out}\nstderr: {err}"
        total = link.bytes_up - base
        stats = link.stats()

    offsets = stored_offsets(server, sha256)
    chunks = [b - a for a, b in zip([0, *[o for o, _ in offsets]], [o for o, _ in offsets],
                                    strict=False)]
    wasted_total = sum(w for _, _, w, _ in cuts)
    requests = len(offsets) + 2 * len(cuts) + 2  # chunks, cut chunks and status asks, first ask
    resent = total - size - wasted_total
    print(f"cuts (target offset, bytes held, bytes wasted, how): {cuts}")
    print(f"{len(offsets)} chunks stored (largest {max(chunks)} B); uplink {total} B for a "
          f"{size} B document ({total / size:.2f}x); {wasted_total} B lost in flight at the "
          f"cuts; {resent} B of protocol overhead over {requests} requests; {stats}")
    assert stats.outages == 20
    assert_exactly_once(server, data_dir, expected)
    assert_documents_complete(server, {sha256: data})
    assert not list((server.data_dir / "documents").glob("*.part"))
    # Each cut loses at most the chunk in flight ...
    assert all(w <= max(chunks) * 1.5 + REQUEST_OVERHEAD for _, _, w, _ in cuts), cuts
    # ... and everything else crossed the link once: the document and request overhead.
    assert resent <= requests * REQUEST_OVERHEAD, (
        f"{resent} B beyond the document and the bytes lost at the cuts: acknowledged "
        "bytes were sent again")


# --------------------------------------------------------------------------- 4. records first


def test_dossiers_overtake_a_large_document_on_a_slow_link(
        server: Server, tmp_path: Path, procs: Procs) -> None:
    """A 5 MB scan is queued first; while the daemon uploads it over EDGE
    (about 7 minutes of airtime), 50 dossiers are added: they are
    acknowledged within seconds, while the document is still uploading."""
    rng = random.Random(20261205)
    size = 5 * 1024 * 1024
    sha256, _ = write_scan(tmp_path / "ban-ve.pdf", rng, size)
    item = make_dossiers(1, seed=1205)[0]
    item["documents"] = [{"name": "Bản vẽ", "path": "ban-ve.pdf"}]
    log = tmp_path / "daemon.log"
    with linked_agent(server, tmp_path, PROFILES["edge"]) as (link, data_dir):
        expected = add(data_dir, tmp_path / "first.json", [item])
        daemon = procs.start("run", "--data-dir", str(data_dir), log=log)

        def uploading() -> bool:
            assert daemon.poll() is None, f"daemon exited:\n{log.read_text()}"
            return len(stored_offsets(server, sha256)) >= 3

        # Well into the upload: the agent has measured the link, chunks are full size.
        wait_until(uploading, timeout_s=30, interval_s=0.02,
                   what="three chunks of the document to be stored")
        chunks_before = len(stored_offsets(server, sha256))
        expected.update(add(data_dir, tmp_path / "later.json", make_dossiers(50, seed=1206)))
        added = time.monotonic()
        wait_until(lambda: queue_position(data_dir) == (51, 51), timeout_s=30, interval_s=0.02,
                   what="the 50 dossiers to be acknowledged")
        overtook = time.monotonic() - added
        status = agent_status(data_dir)
        held = server_documents(server)[sha256]
        stopped = sigterm(daemon, log)
        stats = link.stats()
    print(f"50 dossiers acknowledged {overtook:.1f} s after add; the server then held "
          f"{held[1]}/{size} B of the document; daemon stopped in {stopped:.1f} s; {stats}")
    assert status["acked_seq"] == status["last_seq"] == 51, status
    assert status["documents_pending"] == 1, status
    assert 0 < status["document_bytes_pending"] < size, status
    assert held[2] is False and 0 < held[1] < size, held
    assert overtook < 15, f"the dossiers waited {overtook:.1f} s behind the document"
    assert stopped < 10, f"the daemon took {stopped:.1f} s to stop"
    # Between the add and the batch, at most the chunk in flight and, if the
    # add committed just as it ended, the one after it.
    before_batch = server.log.read_text().split("records 2-51")[0]
    chunks_between = len(stored_offsets_in(before_batch, sha256)) - chunks_before
    assert chunks_between <= 2, f"{chunks_between} chunks went before the new dossiers"
    assert_exactly_once(server, data_dir, expected)
    final = server_documents(server)[sha256]
    part = server.data_dir / "documents" / f"{sha256}.part"
    assert not final[2] and part.stat().st_size == final[1], (final, part.stat().st_size)
    assert subprocess.run([SYNCD, "document", "--data-dir", str(server.data_dir), sha256],
                          capture_output=True, env=cli_env(), check=False).returncode == 1
