"""Crash tests with real processes and real SQLite files.

The agent CLI, the daemon and the server are SIGKILLed (and SIGTERMed) at
seeded random moments; afterwards the queue must verify, and the server must
hold every saved dossier exactly once, with the fields that were entered.

The last test keeps a desk busy (one dossier committed every millisecond or
so) while the daemon or a sync-now pushes: concurrent adds must never turn a
push into a refusal.

Waiting is always on a condition with a deadline. The only deliberate sleeps
are the seeded random delays that choose *when* a process is killed.
"""

from __future__ import annotations

import json
import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.support.dossiers import make_dossiers
from tests.support.procs import (
    AGENT,
    Server,
    agent,
    agent_status,
    cli_env,
    communicate_within,
    wait_until,
)

pytestmark = pytest.mark.slow

SERVER_ADDED = ("agent_id", "commune_code")
IDENTITY = ("id", "code")
CODE = re.compile(r"01234-\d{6}-\d{4,6}")


# --------------------------------------------------------------------------- helpers


def write_items(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    return path


def project(held: Any, given: Any, path: str = "") -> Any:
    """``held`` cut down to the shape of ``given``: the keys the input gave, recursively.

    Keys the server holds beyond the input must be empty defaults (None), so
    nothing is invented; the caller compares the result with the input.
    """
    if isinstance(given, dict) and isinstance(held, dict):
        for key, value in held.items():
            if key == "channel" and key not in given:
                assert value == "direct", f"{path}channel defaults to direct, not {value!r}"
                continue
            if key not in given and key not in SERVER_ADDED + IDENTITY + ("status",):
                assert value in (None, [], {}), f"{path}{key} = {value!r} was never entered"
        return {key: project(held.get(key), value, f"{path}{key}.")
                for key, value in given.items()}
    if isinstance(given, list) and isinstance(held, list) and len(given) == len(held):
        return [project(h, g, f"{path}[{i}].")
                for i, (h, g) in enumerate(zip(held, given, strict=True))]
    return held


def assert_same_dossier(held: dict[str, Any], given: dict[str, Any], status: str) -> None:
    """The server's dossier carries exactly what was entered, field by field."""
    assert project(held, given) == given, f"dossier {held['id']} differs on the server"
    assert held["status"] == status, (held["id"], held["status"], status)


def intake_key(dossier: dict[str, Any]) -> tuple[str, ...]:
    """Fields that single out one generated dossier (random 12-digit id and phone)."""
    applicant = dossier["applicant"]
    return (applicant["id_number"], applicant["phone"], applicant["name"],
            dossier["received_at"])


def queue_position(data_dir: Path) -> tuple[int, int]:
    """(last_seq, acked_seq) of the current epoch, read straight from queue.db.

    Cheap enough to poll every few milliseconds (a `status` CLI costs ~0.3 s),
    which the tests need to catch a sync in the middle. One SELECT, so one
    snapshot; the test only reads, the agent processes own the writes.
    """
    with closing(sqlite3.connect(data_dir / "queue.db", timeout=10,
                                 isolation_level=None)) as db:
        row = db.execute(
            "SELECT (SELECT coalesce(max(seq), 0) FROM records WHERE epoch = m.value), "
            "(SELECT acked_seq FROM sync_state WHERE epoch = m.value) "
            "FROM meta m WHERE m.key = 'epoch'").fetchone()
    return int(row[0]), int(row[1])


def queue_last_error(data_dir: Path) -> str | None:
    with closing(sqlite3.connect(data_dir / "queue.db", timeout=10,
                                 isolation_level=None)) as db:
        row = db.execute("SELECT last_error FROM sync_state WHERE epoch = "
                         "(SELECT value FROM meta WHERE key = 'epoch')").fetchone()
    return None if row is None else row[0]


def queue_epoch(data_dir: Path) -> int:
    with closing(sqlite3.connect(data_dir / "queue.db", timeout=10,
                                 isolation_level=None)) as db:
        return int(db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0])


# A desk that records dossiers one at a time, each its own durable transaction,
# through the same Agent.add the `add` command uses (a CLI process per dossier
# would cost ~0.3 s each; this commits one every millisecond or so).
WRITER = textwrap.dedent("""
    import asyncio, json, sys
    from pathlib import Path
    from client.agent import Agent
    from client.config import AgentPaths

    async def main():
        items = json.loads(Path(sys.argv[2]).read_text(encoding="utf-8"))
        agent = await Agent.open(AgentPaths(Path(sys.argv[1])))
        try:
            for item in items:
                for dossier_id in await agent.add([item]):
                    print(dossier_id, flush=True)
        finally:
            await agent.close()

    asyncio.run(main())
""")


def start_writer(data_dir: Path, path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(data_dir), str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env())


def server_position(server: Server) -> int:
    """The server's acked_seq for its only agent, read straight from syncd.db (cheap)."""
    with closing(sqlite3.connect(server.data_dir / "syncd.db", timeout=10,
                                 isolation_level=None)) as db:
        row = db.execute("SELECT coalesce(max(acked_seq), 0) FROM positions").fetchone()
    return int(row[0])


def start_agent(*args: str, log: Path | None = None) -> subprocess.Popen[str]:
    if log is None:
        return subprocess.Popen([AGENT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=cli_env())
    with open(log, "a", encoding="utf-8") as out:
        return subprocess.Popen([AGENT, *args], stdout=out, stderr=out, text=True,
                                env=cli_env())


def kill_and_reap(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    """SIGKILL ``proc`` (if still running) and collect its exit code and output."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out or "", err or ""


def reap(procs: Iterable[subprocess.Popen[str]]) -> None:
    """Never leave a child behind, even when an assertion failed."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        if any(s is not None and not s.closed for s in (proc.stdout, proc.stderr)):
            proc.communicate(timeout=30)
        else:
            proc.wait(timeout=30)


def finish(proc: subprocess.Popen[str], *, timeout_s: float = 120.0) -> tuple[str, str]:
    code, out, err = communicate_within(proc, timeout_s)
    assert code == 0, f"{proc.args!r} exited {code}\nstdout: {out}\nstderr: {err}"
    return out, err


def add_file(data_dir: Path, path: Path) -> list[str]:
    return agent("add", "--data-dir", str(data_dir), str(path)).stdout.split()


def sync_now(data_dir: Path, timeout_s: float = 60) -> None:
    agent("sync-now", "--data-dir", str(data_dir), "--timeout", str(timeout_s),
          timeout_s=timeout_s + 30)


def assert_verifies(data_dir: Path, records: int) -> None:
    proc = agent("verify", "--data-dir", str(data_dir), check=False)
    assert proc.returncode == 0, f"verify failed ({proc.returncode}): {proc.stderr}"
    assert re.search(rf"\b{records}\b", proc.stdout), \
        f"verify should report {records} records: {proc.stdout!r}"


def assert_server_holds_exactly(server: Server, agent_id: str,
                                expected: dict[str, dict[str, Any]],
                                statuses: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The server holds exactly the dossiers in ``expected`` (id -> input), field by field.

    ``statuses`` gives the latest status of updated dossiers; the others must
    still be at their intake status.
    """
    held = server.dossiers()
    ids = [d["id"] for d in held]
    codes = [d["code"] for d in held]
    doubled_ids = [i for i, n in Counter(ids).items() if n > 1]
    doubled_codes = [c for c, n in Counter(codes).items() if n > 1]
    assert not doubled_ids, f"dossier ids held twice: {doubled_ids[:5]}"
    assert not doubled_codes, f"dossier codes held twice: {doubled_codes[:5]}"
    missing = sorted(set(expected) - set(ids))
    extra = sorted(set(ids) - set(expected))
    assert not missing, f"{len(missing)} saved dossiers missing on the server: {missing[:5]}"
    assert not extra, f"{len(extra)} dossiers on the server were never saved: {extra[:5]}"
    statuses = statuses or {}
    for dossier in held:
        assert dossier["agent_id"] == agent_id
        assert dossier["commune_code"] == "01234"
        assert CODE.fullmatch(dossier["code"]), dossier["code"]
        assert_same_dossier(dossier, expected[dossier["id"]],
                            statuses.get(dossier["id"], "received"))
    return held


def assert_positions_agree(server: Server, data_dir: Path, records: int) -> dict[str, Any]:
    status = agent_status(data_dir)
    assert status["pending"] == 0, status
    assert status["refused"] == 0, status
    assert status["last_seq"] == status["acked_seq"] == records, status
    rows = [a for a in server.agents() if a["agent_id"] == status["agent_id"]]
    assert len(rows) == 1, rows
    assert rows[0]["epoch"] == status["epoch"]
    assert rows[0]["acked_seq"] == records, (rows[0], status)
    assert server.alerts() == []
    return status


# --------------------------------------------------------------------------- 1. add


def test_sigkill_during_add_is_all_or_nothing(server: Server, agent_dir: Path,
                                              tmp_path: Path) -> None:
    rng = random.Random(20261101)
    batch, iterations = 50, 15
    inputs: list[list[dict[str, Any]]] = []
    outcomes: list[tuple[int, list[str]]] = []  # (exit code, ids printed)
    for i in range(iterations):
        items = make_dossiers(batch, seed=1000 + i)
        inputs.append(items)
        path = write_items(tmp_path / f"add-{i}.json", items)
        proc = start_agent("add", "--data-dir", str(agent_dir), str(path))
        try:
            time.sleep(rng.uniform(0.0, 0.6))  # when to pull the plug (seeded)
            code, out, err = kill_and_reap(proc)
        finally:
            reap([proc])
        assert code in (0, -signal.SIGKILL), f"add exited {code}: {err}"
        printed = [line for line in out.splitlines() if line.strip()]
        if code == 0:
            assert len(printed) == batch, out
        outcomes.append((code, printed))

    killed = sum(1 for code, _ in outcomes if code != 0)
    assert killed > 0, "no add was killed: the test did not test anything"

    assert_verifies(agent_dir, queue_position(agent_dir)[0])
    status = agent_status(agent_dir)
    completed = sum(1 for code, _ in outcomes if code == 0)
    saved_any = sum(1 for _, printed in outcomes if printed)
    last_seq = status["last_seq"]
    assert last_seq % batch == 0, f"a killed add left part of its batch: last_seq={last_seq}"
    assert batch * saved_any <= last_seq <= batch * iterations, (last_seq, outcomes)
    assert status["acked_seq"] == 0

    sync_now(agent_dir)
    held = server.dossiers()
    assert len(held) == last_seq
    by_intake = {intake_key(d): d for d in held}
    assert len(by_intake) == len(held)

    # Each add is on the server entirely or not at all; a printed id is saved.
    expected: dict[str, dict[str, Any]] = {}
    for i, (items, (code, printed)) in enumerate(zip(inputs, outcomes, strict=True)):
        on_server = [by_intake.get(intake_key(d)) for d in items]
        present = sum(1 for d in on_server if d is not None)
        assert present in (0, batch), f"add #{i} (exit {code}) is half on the server: {present}"
        if printed or code == 0:
            assert present == batch, f"add #{i} printed ids but is not on the server"
            server_ids = [d["id"] for d in on_server if d is not None]
            assert printed == server_ids[:len(printed)], f"add #{i}: printed ids differ"
        if present:
            expected.update({d["id"]: item for d, item in zip(on_server, items, strict=True)
                             if d is not None})
    assert len(expected) == last_seq
    assert_server_holds_exactly(server, status["agent_id"], expected)
    assert_positions_agree(server, agent_dir, last_seq)
    print(f"adds: {completed} completed, {killed} killed, {last_seq // batch} batches saved")


# --------------------------------------------------------------------------- 2. sync-now


def test_sigkill_during_sync_now_delivers_exactly_once(server: Server, agent_dir: Path,
                                                       tmp_path: Path) -> None:
    rng = random.Random(20261102)
    expected: dict[str, dict[str, Any]] = {}

    def add(items: list[dict[str, Any]], name: str) -> None:
        ids = add_file(agent_dir, write_items(tmp_path / name, items))
        assert len(ids) == len(items)
        expected.update(zip(ids, items, strict=True))

    add(make_dossiers(300, seed=2000), "first.json")
    outcomes: list[str] = []
    for i in range(10):
        acked_before = queue_position(agent_dir)[1]
        proc = start_agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "60")
        try:
            if i % 2 == 0:
                time.sleep(rng.uniform(0.05, 0.35))  # when to pull the plug (seeded)
            else:
                # Aim for the worst moment: the server has committed a batch, the
                # agent has not recorded the ack yet (the ack is lost).
                def ack_in_flight(proc: subprocess.Popen[str] = proc) -> bool:
                    return (proc.poll() is not None
                            or server_position(server) > queue_position(agent_dir)[1])

                wait_until(ack_in_flight, timeout_s=60, interval_s=0.001,
                           what="the server to commit")
            code, _, err = kill_and_reap(proc)
        finally:
            reap([proc])
        assert code in (0, -signal.SIGKILL), f"sync-now exited {code}: {err}"
        last, acked = queue_position(agent_dir)
        held = server_position(server)
        assert acked_before <= acked <= held <= last, (acked_before, acked, held, last)
        outcomes.append("completed" if code == 0 else "ack lost" if held > acked
                        else "between batches" if acked_before < acked < last
                        else "after last ack" if acked == last else "before any ack")
        add(make_dossiers(rng.randint(20, 120), seed=2100 + i), f"more-{i}.json")
    assert "ack lost" in outcomes, f"no kill landed between commit and ack: {outcomes}"

    sync_now(agent_dir)
    total = len(expected)
    assert_verifies(agent_dir, total)
    status = assert_positions_agree(server, agent_dir, total)
    assert_server_holds_exactly(server, status["agent_id"], expected)
    print(f"sync-now kills: {outcomes}; {total} dossiers")


# --------------------------------------------------------------------------- 3. server


def _stop_server_mid_sync(server: Server, agent_dir: Path, sig: int, low: int,
                          high: int) -> None:
    """Run sync-now; when the agent's acked_seq is strictly between low and high,
    stop the server with ``sig`` and start it again on the same port."""
    proc = start_agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "120")
    try:
        def moment() -> str | None:
            if low < queue_position(agent_dir)[1] < high:
                return "mid-sync"
            return "finished" if proc.poll() is not None else None

        when = wait_until(moment, timeout_s=60, interval_s=0.002,
                          what="the server to hold some but not all records")
        assert when == "mid-sync", ("sync-now finished before the server could be stopped "
                                    f"in the middle: {proc.communicate()}")
        server.stop(sig)
        assert not server.healthy()
        server.start()
        finish(proc, timeout_s=150)
    finally:
        reap([proc])


def test_server_restarts_mid_sync(server: Server, agent_dir: Path, tmp_path: Path) -> None:
    expected: dict[str, dict[str, Any]] = {}
    n = 2000
    for round_, sig in enumerate((signal.SIGKILL, signal.SIGTERM)):
        items = make_dossiers(n, seed=3000 + round_)
        ids = add_file(agent_dir, write_items(tmp_path / f"big-{round_}.json", items))
        expected.update(zip(ids, items, strict=True))
        _stop_server_mid_sync(server, agent_dir, sig, low=n * round_, high=n * (round_ + 1))
        assert queue_position(agent_dir) == (n * (round_ + 1), n * (round_ + 1))

    assert_verifies(agent_dir, 2 * n)
    status = assert_positions_agree(server, agent_dir, 2 * n)
    assert_server_holds_exactly(server, status["agent_id"], expected)


# --------------------------------------------------------------------------- 4. daemon


def _wait_drained(data_dir: Path, records: int, daemon: subprocess.Popen[str],
                  log: Path, timeout_s: float = 60) -> None:
    def drained() -> bool:
        assert daemon.poll() is None, f"daemon exited {daemon.returncode}:\n{log.read_text()}"
        assert queue_epoch(data_dir) == 1, (
            f"the daemon took its own records for another copy's (see "
            f"test_sync_while_dossiers_are_being_added):\n{log.read_text()}")
        return queue_position(data_dir) == (records, records)

    wait_until(drained, timeout_s=timeout_s, interval_s=0.05,
               what=f"the daemon to push all {records} records")


def _sigterm(daemon: subprocess.Popen[str], log: Path) -> float:
    started = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    try:
        code = daemon.wait(timeout=15)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"daemon ignored SIGTERM for 15 s:\n{log.read_text()}") from None
    elapsed = time.monotonic() - started
    assert code == 0, f"daemon exited {code} on SIGTERM:\n{log.read_text()}"
    return elapsed


def test_daemon_concurrent_cli_and_crash(server: Server, agent_dir: Path,
                                         tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    expected: dict[str, dict[str, Any]] = {}
    statuses: dict[str, str] = {}
    procs: list[subprocess.Popen[str]] = []

    def run_all(cmds: list[list[str]]) -> list[str]:
        """Run agent CLI commands at the same time; return their stdouts."""
        started = [start_agent(*cmd) for cmd in cmds]
        procs.extend(started)
        return [finish(p, timeout_s=60)[0] for p in started]

    def add_cmd(count: int, seed: int) -> tuple[list[str], list[dict[str, Any]]]:
        items = make_dossiers(count, seed=seed)
        path = write_items(tmp_path / f"d-{seed}.json", items)
        return ["add", "--data-dir", str(agent_dir), str(path)], items

    def update_cmd(dossier_id: str, status: str) -> list[str]:
        statuses[dossier_id] = status
        return ["update", "--data-dir", str(agent_dir), dossier_id, "--status", status]

    daemon = start_agent("run", "--data-dir", str(agent_dir), log=log)
    procs.append(daemon)
    try:
        # Two adds at once while the daemon runs.
        (cmd_a, items_a), (cmd_b, items_b) = add_cmd(30, 4000), add_cmd(30, 4001)
        out_a, out_b = run_all([cmd_a, cmd_b])
        ids_a, ids_b = out_a.split(), out_b.split()
        expected.update(zip(ids_a, items_a, strict=True))
        expected.update(zip(ids_b, items_b, strict=True))
        records = 60
        # Status changes (several dossiers at once) alongside another add.
        cmd_c, items_c = add_cmd(20, 4002)
        outs = run_all([update_cmd(ids_a[0], "processing"), update_cmd(ids_b[0], "processing"),
                        update_cmd(ids_a[1], "rejected"), cmd_c])
        expected.update(zip(outs[3].split(), items_c, strict=True))
        records += 3 + 20
        run_all([update_cmd(ids_a[0], "finished"), update_cmd(ids_b[0], "awaiting_fees")])
        records += 2
        run_all([update_cmd(ids_a[0], "returned")])
        records += 1

        _wait_drained(agent_dir, records, daemon, log)
        status = assert_positions_agree(server, agent_dir, records)
        assert_server_holds_exactly(server, status["agent_id"], expected, statuses)
        assert _sigterm(daemon, log) < 5.0, "daemon took too long to stop on SIGTERM"

        def add_big(seed: int) -> None:
            nonlocal records
            cmd_big, items_big = add_cmd(1500, seed)
            expected.update(zip(run_all([cmd_big])[0].split(), items_big, strict=True))
            records += 1500

        def wait_mid_push(after: int) -> None:
            def moment() -> str | None:
                acked = queue_position(agent_dir)[1]
                return "mid-push" if after < acked < records else \
                    "finished" if acked >= records else None

            when = wait_until(moment, timeout_s=60, interval_s=0.002,
                              what="the daemon to be in the middle of a push")
            assert when == "mid-push", "the daemon finished before it could be stopped mid-push"

        # SIGKILL the daemon in the middle of a long push, then restart it.
        before = records
        add_big(4100)
        daemon = start_agent("run", "--data-dir", str(agent_dir), log=log)
        procs.append(daemon)
        wait_mid_push(before)
        code, _, _ = kill_and_reap(daemon)
        assert code == -signal.SIGKILL
        killed_at = queue_position(agent_dir)[1]

        # Restarted, it resumes; SIGTERM in the middle of that push finishes the
        # batch in flight, records its ack and exits 0.
        add_big(4101)
        daemon = start_agent("run", "--data-dir", str(agent_dir), log=log)
        procs.append(daemon)
        wait_mid_push(killed_at)
        assert _sigterm(daemon, log) < 5.0, "daemon took too long to stop on SIGTERM mid-push"
        last, acked = queue_position(agent_dir)
        assert acked == server_position(server), \
            "a graceful stop lost the ack of the batch in flight"
        assert last == records

        # And once more, with a status change made while it catches up.
        daemon = start_agent("run", "--data-dir", str(agent_dir), log=log)
        procs.append(daemon)
        run_all([update_cmd(ids_b[1], "processing")])
        records += 1
        _wait_drained(agent_dir, records, daemon, log)
        assert _sigterm(daemon, log) < 5.0, "daemon took too long to stop on SIGTERM"

        # With the server gone, the daemon retries with backoff; SIGTERM still stops it.
        server.stop(signal.SIGKILL)
        cmd_d, items_d = add_cmd(5, 4200)
        expected.update(zip(run_all([cmd_d])[0].split(), items_d, strict=True))
        records += 5
        daemon = start_agent("run", "--data-dir", str(agent_dir), log=log)
        procs.append(daemon)
        wait_until(lambda: queue_last_error(agent_dir), timeout_s=30,
                   what="the daemon to fail against the stopped server")
        assert _sigterm(daemon, log) < 5.0, "daemon in backoff took too long to stop"
        server.start()
        sync_now(agent_dir)
    finally:
        reap(procs)

    assert_verifies(agent_dir, records)
    status = assert_positions_agree(server, agent_dir, records)
    assert_server_holds_exactly(server, status["agent_id"], expected, statuses)


# --------------------------------------------------------------------------- 5. busy desk


@pytest.mark.parametrize("mode", ["run", "sync-now"])
def test_sync_while_dossiers_are_being_added(server: Server, agent_dir: Path, tmp_path: Path,
                                            mode: str) -> None:
    """Records committed while a batch is being prepared are not a refusal.

    An officer keeps recording dossiers while the daemon (or a sync-now)
    pushes; whatever the interleaving, the push must not refuse itself, and
    every dossier arrives exactly once.
    """
    n = 1000
    items = make_dossiers(n, seed=5000)
    path = write_items(tmp_path / "desk.json", items)
    log = tmp_path / f"{mode}.log"
    procs: list[subprocess.Popen[str]] = []
    try:
        if mode == "run":
            syncer = start_agent("run", "--data-dir", str(agent_dir), log=log)
            procs.append(syncer)
        writer = start_writer(agent_dir, path)
        procs.append(writer)
        if mode == "sync-now":
            wait_until(lambda: queue_position(agent_dir)[0] > 0, what="the first dossier")
            syncer = start_agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "60",
                                 log=log)
            procs.append(syncer)
        ids = finish(writer, timeout_s=60)[0].split()
        assert len(ids) == n

        def pushed_all() -> bool:
            assert queue_epoch(agent_dir) == 1, (
                f"`{mode}` took its own records for another copy's because dossiers were "
                f"added while its batch was being prepared:\n{log.read_text()}")
            if mode == "run":
                assert syncer.poll() is None, f"daemon exited:\n{log.read_text()}"
                return queue_position(agent_dir) == (n, n)
            return syncer.poll() is not None

        wait_until(pushed_all, timeout_s=60, interval_s=0.02, what=f"`{mode}` to push")
        if mode == "run":
            assert _sigterm(syncer, log) < 5.0
        else:
            assert syncer.returncode == 0, f"sync-now exited {syncer.returncode}:\n" \
                                           f"{log.read_text()}"
            sync_now(agent_dir)  # whatever was added after it found nothing pending
    finally:
        reap(procs)

    assert_verifies(agent_dir, n)
    status = assert_positions_agree(server, agent_dir, n)
    assert_server_holds_exactly(server, status["agent_id"], dict(zip(ids, items, strict=True)))
