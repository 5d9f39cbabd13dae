"""Load benchmark: thousands of simulated agents speaking the real protocol to `syncd serve`.

    .venv/bin/python bench/load.py                      # 3,321 agents x 50 dossiers, SQLite
    .venv/bin/python bench/load.py --storm              # all agents connect within 1 s
    .venv/bin/python bench/load.py --db postgresql://postgres@127.0.0.1:5432/test [--servers 2]
    .venv/bin/python bench/load.py --agents 20 --dossiers 10        # a smoke run

Set-up (not timed with the push): ``syncd init`` in a temporary data directory (with
``--db``, a fresh PostgreSQL database ``bench_<random>`` created beside the one named,
and dropped at the end); one enrollment token per agent, one commune each (3,321 is
the number of communes), created in process with ``syncd.enrollment.create_token`` and
written in one transaction (see :func:`mint_tokens`); ``--servers`` ``syncd serve``
processes on loopback (with ``--db``, each on its own copy of the data directory; on
SQLite they share the one database file). Worker processes (``--procs``, see
bench/load_agent.py) each run an asyncio loop holding their share of the agents.

Phases: every agent enrolls over HTTP (``/v1/enroll`` with its proof; timed apart),
then pushes its dossiers in batches of ``--batch-records``. Normal mode: agents start
spread over ``--ramp`` seconds, at most ``--concurrency`` requests in flight per worker.
``--storm``: every agent starts within one second, no client-side cap.

Printed: dossiers/s over the push (and sustained, between the 10 % and 90 % acks),
batches/s, ack latency p50/p99/max (first attempt to verified ack, retries included),
errors, 503s, 429s, retries, server peak RSS (VmRSS every 0.2 s), server and generator
CPU; then the exactly-once check with the operator commands: ``syncd dossiers --json``
holds agents x dossiers rows, every expected derived id once; ``syncd agents --json``
shows each agent at ``acked_seq`` = its dossiers. Exit status 1 when the check fails
or any error was counted, 2 when the run cannot start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import multiprocessing as mp
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from load_agent import AgentSpec, WorkerSpec, worker_main

import syncd.store
from protocol import derive_dossier_id
from syncd.config import ServerConfig, ServerPaths
from syncd.enrollment import create_token
from syncd.keys import ServerKeys
from tests.support.procs import cli_env, free_port, wait_until

SYNCD = str(Path(sys.executable).parent / "syncd")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the database -------------------------------------------------------------------

def _psql(url: str, sql: str) -> None:
    proc = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url],
                          input=sql, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"psql failed ({proc.returncode}): {proc.stderr.strip()[:2000]}")


@contextlib.contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """A new database beside the one ``url`` names, dropped afterwards; yields its URL."""
    name = f"bench_{secrets.token_hex(4)}"
    _psql(url, f'CREATE DATABASE "{name}";')
    try:
        yield urlunsplit(urlsplit(url)._replace(path="/" + name))
    finally:
        _psql(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE);')


def postgres_ready() -> str | None:
    """None when the PostgreSQL variants can run, else why not."""
    help_text = subprocess.run([SYNCD, "serve", "--help"], capture_output=True, text=True,
                               env=cli_env()).stdout
    if "--db" not in help_text:
        return "`syncd serve --help` shows no --db option yet: PostgreSQL is not supported"
    if importlib.util.find_spec("asyncpg") is None:
        return (f"asyncpg is not installed in {sys.prefix}: the PostgreSQL variants need it "
                f"(`{sys.prefix}/bin/pip install asyncpg`, or the project's extra once it "
                "exists)")
    if shutil.which("psql") is None:
        return "psql is not on PATH: it creates and drops the bench database"
    return None


def db_args(db_url: str | None) -> list[str]:
    return ["--db", db_url] if db_url else []


# -- tokens -----------------------------------------------------------------------------

class _Recorder:
    """Stands in for a store: collects the statements ``create_token`` runs, so that
    thousands of tokens are written in one transaction (one fsync), not one each."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[_Recorder]:
        yield self

    async def run(self, sql: str, *args: Any) -> None:
        self.statements.append((sql, args))

    async def lock(self, kind: str, key: str) -> None:
        """Nothing to serialise: the statements are replayed in one transaction."""


async def _open_store(data_dir: Path, db_url: str | None) -> Any:
    """The server's store as ``syncd`` opens it, or None where this version of syncd
    cannot open the one asked for (PostgreSQL before ``syncd.store.open_store``)."""
    opener = getattr(syncd.store, "open_store", None)
    if opener is not None:
        return await opener(ServerPaths(data_dir).database, db_url)
    if db_url is None:
        return await syncd.store.SqliteStore.open(ServerPaths(data_dir).database)
    return None


async def _replay(data_dir: Path, db_url: str | None,
                  statements: list[tuple[str, tuple[Any, ...]]]) -> None:
    store = await _open_store(data_dir, db_url)
    if store is None:
        assert db_url is not None
        _replay_postgres(db_url, statements)
        return
    try:
        async with store.write() as txn:
            for sql, args in statements:
                await txn.run(sql, *args)
    finally:
        await store.close()


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"'\\x{value.hex()}'::bytea"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def _replay_postgres(db_url: str, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
    """For a syncd without a PostgreSQL store API: the same statements, with literal
    values, through psql, in one transaction."""
    lines = ["BEGIN;"]
    for sql, args in statements:
        parts = sql.split("?")
        assert len(parts) == len(args) + 1, sql
        text = parts[0] + "".join(_literal(a) + p for a, p in zip(args, parts[1:], strict=True))
        lines.append(text + ";")
    lines.append("COMMIT;")
    _psql(db_url, "\n".join(lines))


async def mint_tokens(data_dir: Path, db_url: str | None, communes: list[str]) -> list[str]:
    """One enrollment token per commune, exactly as ``syncd enroll`` makes them.

    ``create_token`` runs against a recorder, and its statements are then applied in
    one transaction of the real store (:func:`_open_store`: the one place that knows
    how the server's store is reached).
    """
    paths = ServerPaths(data_dir)
    config, keys = ServerConfig.load(paths), ServerKeys.load(data_dir)
    recorder = _Recorder()
    tokens = [await create_token(cast(Any, recorder), commune, None,
                                 config.token_ttl_hours, keys.fingerprint)
              for commune in communes]
    await _replay(data_dir, db_url, recorder.statements)
    return tokens


# -- the servers --------------------------------------------------------------------------

def _read_proc(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return ""


def rss_kib(pid: int) -> int:
    for line in _read_proc(pid, "status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _ticks(stat: str) -> float:
    fields = stat.rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def cpu_by_thread(pid: int) -> dict[str, float]:
    """CPU seconds of ``pid``: its main thread (the event loop) and its other threads
    (aiosqlite's connection thread, the default executor), by thread name."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            comm = _read_proc(pid, f"task/{task}/comm").strip()
            name = "main" if task == str(pid) else f"other threads ({comm})"
            out[name] = out.get(name, 0.0) + _ticks(_read_proc(pid, f"task/{task}/stat"))
    return out


def postgres_cpu_s() -> dict[int, float]:
    """CPU seconds of every PostgreSQL process (the database works for the server)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _read_proc(int(entry), "comm").strip() == "postgres":
            out[int(entry)] = _ticks(_read_proc(int(entry), "stat"))
    return out


def machine_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _, _, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class ServerProc:
    data_dir: Path
    port: int
    db_url: str | None
    log_path: Path
    profile: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = ["serve", "--data-dir", str(self.data_dir), "--port", str(self.port),
                *db_args(self.db_url)]
        if self.profile is not None:
            cmd = [sys.executable, "-m", "cProfile", "-o", str(self.profile), "-m", "syncd.cli",
                   *args]
        else:
            cmd = [SYNCD, *args]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=cli_env())
        wait_until(lambda: self.healthy() or self.proc.poll() is not None,  # type: ignore[union-attr]
                   timeout_s=60, what="syncd to answer /healthz")
        if self.proc.poll() is not None:
            raise SystemExit(f"syncd serve exited: {self.log_path.read_text()[-3000:]}")

    def healthy(self) -> bool:
        import urllib.request
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log_problems(self) -> list[str]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [ln for ln in lines if " ERROR " in ln or " CRITICAL " in ln or
                ln.startswith("Traceback")]


class RssSampler(threading.Thread):
    """VmRSS of each server every ``interval_s``; keeps the peak and the last value."""

    def __init__(self, pids: list[int], interval_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.interval_s = interval_s
        self.peak = dict.fromkeys(pids, 0)
        self.start_kib = {pid: rss_kib(pid) for pid in pids}
        self.last = dict(self.start_kib)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        for pid in self.pids:
            kib = rss_kib(pid)
            if kib:
                self.last[pid] = kib
                self.peak[pid] = max(self.peak[pid], kib)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)
        self.sample()


# -- the workers --------------------------------------------------------------------------

@dataclass
class Workers:
    procs: list[Any] = field(default_factory=list)
    conns: list[Connection] = field(default_factory=list)

    def start(self, specs: list[WorkerSpec]) -> None:
        ctx = mp.get_context("spawn")
        for spec in specs:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, spec), daemon=True)
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)

    def send(self, command: str, value: Any) -> None:
        for conn in self.conns:
            conn.send((command, value))

    def gather(self, expected: str, timeout_s: float) -> list[Any]:
        """One message from each worker; exits if a worker fails or dies."""
        out: list[Any] = [None] * len(self.conns)
        deadline = time.monotonic() + timeout_s
        pending = set(range(len(self.conns)))
        while pending:
            if time.monotonic() > deadline:
                raise SystemExit(f"workers did not finish {expected!r} in {timeout_s:.0f} s")
            for i in sorted(pending):
                if self.conns[i].poll(0.05):
                    kind, value = self.conns[i].recv()
                    if kind != expected:
                        raise SystemExit(f"worker {i}: {kind}: {value}")
                    out[i] = value
                    pending.discard(i)
                elif not self.procs[i].is_alive():
                    raise SystemExit(f"worker {i} died (exit {self.procs[i].exitcode})")
        return out

    def stop(self) -> None:
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


# -- figures ------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def merge(stats: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for part in stats:
        for key, value in part.items():
            if key == "first_start":
                total[key] = min(total.get(key, float("inf")), value)
            elif key == "last_end":
                total[key] = max(total.get(key, 0.0), value)
            elif isinstance(value, list):
                total.setdefault(key, []).extend(value)
            else:
                total[key] = total.get(key, 0) + value
    return total


def sustained_rate(done: list[tuple[float, int]]) -> float:
    """Dossiers/s between the acks at 10 % and 90 % of the run (ramp and tail cut off)."""
    if len(done) < 10:
        return float("nan")
    ordered = sorted(done)
    lo, hi = int(0.1 * len(ordered)), int(0.9 * len(ordered))
    span = ordered[hi][0] - ordered[lo][0]
    return sum(n for _, n in ordered[lo + 1:hi + 1]) / span if span > 0 else float("nan")


def timeline(done: list[tuple[float, int]], t0: float, step_s: float) -> list[int]:
    """Dossiers acknowledged in each ``step_s`` from the start of the push."""
    counts: list[int] = []
    for when, n in done:
        slot = max(0, int((when - t0) / step_s))
        counts.extend([0] * (slot + 1 - len(counts)))
        counts[slot] += n
    return counts


def push_figures(push: dict[str, Any], t0: float) -> dict[str, Any]:
    wall = max(push["last_end"] - t0, 1e-9)
    lat = push["latencies"]
    return {
        "dossiers_pushed": push["dossiers"], "batches": push["ok"],
        "push_wall_s": round(wall, 2),
        "dossiers_per_s": round(push["dossiers"] / wall, 1),
        "dossiers_per_s_sustained": round(sustained_rate(push["done"]), 1),
        "batches_per_s": round(push["ok"] / wall, 1),
        "ack_latency_ms": {"p50": round(pct(lat, 0.5) * 1000, 1),
                           "p99": round(pct(lat, 0.99) * 1000, 1),
                           "max": round(max(lat, default=float("nan")) * 1000, 1)},
        "errors": push["errors"], "status_503": push["status_503"],
        "status_429": push["status_429"], "status_other_5xx": push["status_5xx"],
        "retries": push["retries"], "connection_errors": push["conn_errors"],
        "timeouts": push["timeouts"], "unsigned_retriable_replies": push["unsigned"],
        "generator_cpu_s": round(push["cpu_s"], 1), "error_samples": push["samples"],
        "dossiers_per_10s": timeline(push["done"], t0, 10.0),
    }


# -- where the server's time goes (--profile-server) ---------------------------------------

_PROFILE_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("idle (epoll)", ("select.epoll",)),
    ("Ed25519 verify", ("Ed25519PublicKey",)),
    ("Ed25519 sign (replies)", ("Ed25519PrivateKey",)),
    ("HPKE open", ("hpke", "/protocol/sealing.py")),
    ("zstd", ("zstd", "/protocol/compression.py")),
    ("msgpack and strict codec", ("msgpack", "/protocol/codec.py")),
    ("record validation", ("/protocol/dossier.py", "/protocol/events.py", "/re/", "'re.",
                           "uuid", "datetime")),
    ("json", ("/json/", "_json")),
    ("aiosqlite (event-loop side)", ("aiosqlite", "SimpleQueue")),
    ("syncd and protocol/ other", ("/syncd/", "/protocol/")),
    ("aiohttp", ("aiohttp", "multidict", "yarl")),
    ("logging", ("/logging/",)),
    ("asyncio and sockets", ("/asyncio/", "selectors", "socket")),
)


def profile_breakdown(path: Path) -> dict[str, float]:
    """Own time of the server's main thread by category (cProfile sees only that thread;
    SQLite runs in aiosqlite's thread: see the CPU by thread)."""
    import pstats
    out: dict[str, float] = {}
    raw = cast(Any, pstats.Stats(str(path))).stats
    for (filename, _, name), (_, _, own, _, _) in raw.items():
        where = f"{filename} {name}"
        category = next((label for label, keys in _PROFILE_CATEGORIES
                         if any(k in where for k in keys)), "other")
        out[category] = out.get(category, 0.0) + own
    return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


# -- the exactly-once check ---------------------------------------------------------------

def _syncd_json(command: str, data_dir: Path, db_url: str | None, tmp: Path) -> Any:
    out_path = tmp / f"{command}.json"
    with open(out_path, "wb") as out:
        proc = subprocess.run([SYNCD, command, "--data-dir", str(data_dir), "--json",
                               *db_args(db_url)], stdout=out, stderr=subprocess.PIPE,
                              env=cli_env(), timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"syncd {command} failed: {proc.stderr.decode()[-2000:]}")
    with open(out_path, encoding="utf-8") as src:
        data = json.load(src)
    out_path.unlink()
    return data


def check_exactly_once(data_dir: Path, db_url: str | None, tmp: Path,
                       agents: list[tuple[int, str, int]], dossiers: int) -> dict[str, Any]:
    started = time.perf_counter()
    rows = _syncd_json("dossiers", data_dir, db_url, tmp)
    ids = [row["id"] for row in rows]
    expected = {derive_dossier_id(agent_id, 1, seq)
                for _, agent_id, _ in agents if agent_id for seq in range(1, dossiers + 1)}
    server_agents = {row["agent_id"]: row for row in _syncd_json("agents", data_dir, db_url,
                                                                 tmp)}
    alerts = _syncd_json("alerts", data_dir, db_url, tmp)
    behind = [agent_id for _, agent_id, _ in agents
              if server_agents.get(agent_id, {}).get("acked_seq") != dossiers]
    result = {
        "dossiers_held": len(rows), "dossiers_expected": len(agents) * dossiers,
        "ids_unique": len(set(ids)) == len(ids), "ids_as_expected": set(ids) == expected,
        "agents_enrolled": len(server_agents), "agents_behind": len(behind),
        "alerts": len(alerts), "check_s": round(time.perf_counter() - started, 1),
    }
    result["ok"] = (result["dossiers_held"] == result["dossiers_expected"]
                    and result["ids_unique"] and result["ids_as_expected"]
                    and len(server_agents) == len(agents) and not behind and not alerts)
    return result


# -- the run --------------------------------------------------------------------------------

def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def worker_specs(args: argparse.Namespace, tokens: list[str], communes: list[str],
                 urls: list[str]) -> list[WorkerSpec]:
    specs = []
    for w in range(args.procs):
        agents = [AgentSpec(i, communes[i], tokens[i], urls[i % len(urls)])
                  for i in range(w, args.agents, args.procs)]
        specs.append(WorkerSpec(w, agents, args.dossiers, args.batch_records, args.level,
                                args.storm, args.concurrency, args.ramp, args.seed,
                                args.timeout, args.deadline))
    return specs


def setup_servers(args: argparse.Namespace, root: Path, db_url: str | None
                  ) -> tuple[Path, list[ServerProc], dict[str, float]]:
    timings: dict[str, float] = {}
    data_dir = root / "server"
    started = time.perf_counter()
    subprocess.run([SYNCD, "init", "--data-dir", str(data_dir), *db_args(db_url)],
                   check=True, capture_output=True, env=cli_env())
    timings["init_s"] = time.perf_counter() - started
    dirs = [data_dir]
    for n in range(1, args.servers):
        # SQLite: the servers share the one database file; PostgreSQL: copies of the data
        # directory (keys, config), one database.
        dirs.append(data_dir if db_url is None else root / f"server-{n + 1}")
        if db_url is not None:
            shutil.copytree(data_dir, dirs[-1])
    servers = [ServerProc(d, free_port(), db_url, root / f"serve-{n + 1}.log",
                          args.profile_server / f"syncd-{n + 1}.prof"
                          if args.profile_server else None)
               for n, d in enumerate(dirs)]
    return data_dir, servers, timings


def run(args: argparse.Namespace, root: Path, db_url: str | None) -> dict[str, Any]:
    data_dir, servers, timings = setup_servers(args, root, db_url)
    communes = [f"{i + 1:05d}" for i in range(args.agents)]
    started = time.perf_counter()
    tokens = asyncio.run(mint_tokens(data_dir, db_url, communes))
    timings["tokens_s"] = time.perf_counter() - started
    log(f"{args.agents} tokens in {timings['tokens_s']:.1f} s; starting "
        f"{len(servers)} syncd serve")
    workers = Workers()
    try:
        for server in servers:
            server.start()
        workers.start(worker_specs(args, tokens, communes, [s.url for s in servers]))
        ready = workers.gather("ready", 900)
        log(f"workers ready (dossiers generated: {sum(r['prep_cpu_s'] for r in ready):.1f} "
            "CPU s); enrolling")
        result = phases(args, workers, servers)
    finally:
        exits = [s.stop() for s in servers]
        workers.stop()
    result["setup"] = {k: round(v, 2) for k, v in timings.items()}
    result["server_exit_codes"] = exits
    result["server_log_problems"] = [p for s in servers for p in s.log_problems()][:10]
    result["server_profile"] = [profile_breakdown(s.profile) for s in servers
                                if s.profile is not None and s.profile.exists()]
    log("checking exactly once with syncd dossiers/agents/alerts --json")
    result["check"] = check_exactly_once(data_dir, db_url, root, result.pop("agents"),
                                         args.dossiers)
    return result


def phases(args: argparse.Namespace, workers: Workers, servers: list[ServerProc]
           ) -> dict[str, Any]:
    t0 = time.monotonic() + 0.2
    workers.send("enroll", t0)
    enrolled = merge(workers.gather("enrolled", args.deadline + 120))
    enroll_wall = enrolled["last_end"] - t0
    log(f"enrolled {enrolled['ok']} in {enroll_wall:.1f} s ({enrolled['errors']} errors); "
        f"pushing{' (storm)' if args.storm else ''}")
    pids = [s.proc.pid for s in servers if s.proc is not None]
    cpu_before = {pid: cpu_by_thread(pid) for pid in pids}
    sampler = RssSampler(pids)
    sampler.start()
    t0 = time.monotonic() + 0.3
    busy_before, pg_before = machine_busy_s(), postgres_cpu_s()
    workers.send("push", t0)
    pushed_parts = workers.gather("pushed", args.deadline + 300)
    busy = machine_busy_s() - busy_before
    pg_cpu = sum(v - pg_before.get(pid, 0.0) for pid, v in postgres_cpu_s().items())
    sampler.stop()
    cpu_after = {pid: cpu_by_thread(pid) for pid in pids}
    push = merge(pushed_parts)
    figures = push_figures(push, t0)
    threads: dict[str, float] = {}
    for pid in pids:
        for name, secs in cpu_after[pid].items():
            threads[name] = threads.get(name, 0.0) + secs - cpu_before[pid].get(name, 0.0)
    # Whatever else ran on the machine meanwhile (other jobs skew every figure above).
    figures["machine_busy_cpu_s"] = round(busy, 1)
    figures["postgres_cpu_s"] = round(pg_cpu, 1)
    figures["other_cpu_s"] = round(busy - sum(threads.values()) - push["cpu_s"] - pg_cpu, 1)
    return {
        "agents": push["agents"],
        "enroll": {"enrolled": enrolled["ok"], "wall_s": round(enroll_wall, 2),
                   "per_s": round(enrolled["ok"] / max(enroll_wall, 1e-9), 1),
                   "latency_p50_ms": round(pct(enrolled["latencies"], 0.5) * 1000, 1),
                   "latency_p99_ms": round(pct(enrolled["latencies"], 0.99) * 1000, 1),
                   "errors": enrolled["errors"], "status_503": enrolled["status_503"],
                   "retries": enrolled["retries"], "error_samples": enrolled["samples"]},
        "push": figures,
        "server": {"alive_after_push": all(s.alive for s in servers),
                   "rss_start_mib": [round(sampler.start_kib[p] / 1024, 1) for p in pids],
                   "rss_peak_mib": [round(sampler.peak[p] / 1024, 1) for p in pids],
                   "rss_end_mib": [round(sampler.last[p] / 1024, 1) for p in pids],
                   "cpu_s_by_thread": {k: round(v, 1) for k, v in sorted(
                       threads.items(), key=lambda kv: -kv[1]) if v >= 0.05}},
    }


def report(args: argparse.Namespace, r: dict[str, Any]) -> None:
    p, e, s, c = r["push"], r["enroll"], r["server"], r["check"]
    backend = "PostgreSQL" if args.db else "SQLite"
    lat = p["ack_latency_ms"]
    print(f"load: {args.agents} agents x {args.dossiers} dossiers, {backend}, "
          f"{args.servers} syncd, {args.procs} generator processes, "
          f"{'storm (all start within 1 s)' if args.storm else f'ramp {args.ramp:g} s, '}"
          f"{'' if args.storm else f'{args.concurrency} in flight per process'}, "
          f"batches of {args.batch_records}, zstd {args.level}")
    print(f"setup: init {r['setup']['init_s']} s, tokens {r['setup']['tokens_s']} s; "
          f"enrollment over HTTP: {e['enrolled']} in {e['wall_s']} s ({e['per_s']}/s, "
          f"p50 {e['latency_p50_ms']} ms, p99 {e['latency_p99_ms']} ms, "
          f"{e['errors']} errors, {e['status_503']} 503s)")
    print(f"push: {p['dossiers_pushed']} dossiers in {p['batches']} batches, "
          f"{p['push_wall_s']} s: {p['dossiers_per_s']} dossiers/s "
          f"(sustained {p['dossiers_per_s_sustained']}), {p['batches_per_s']} batches/s")
    print(f"ack latency: p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms")
    print(f"dossiers acknowledged per 10 s: {p['dossiers_per_10s']}")
    print(f"errors {p['errors']}, 503s {p['status_503']}, 429s {p['status_429']}, other 5xx "
          f"{p['status_other_5xx']}, retries {p['retries']}, connection errors "
          f"{p['connection_errors']}, timeouts {p['timeouts']}, unsigned 503/429 "
          f"{p['unsigned_retriable_replies']}")
    for sample in p["error_samples"] + e["error_samples"]:
        print(f"  error: {sample}")
    print(f"server: up after push {s['alive_after_push']}, RSS start {s['rss_start_mib']} MiB, "
          f"peak {s['rss_peak_mib']} MiB, end {s['rss_end_mib']} MiB; exit codes "
          f"{r['server_exit_codes']}")
    cores = len(os.sched_getaffinity(0))
    print(f"CPU during push: server {s['cpu_s_by_thread']} s, generator {p['generator_cpu_s']} s,"
          f" PostgreSQL {p['postgres_cpu_s']} s; whole machine {p['machine_busy_cpu_s']} s of"
          f" {cores * p['push_wall_s']:.0f} (anything else: {p['other_cpu_s']} s)")
    for n, breakdown in enumerate(r["server_profile"], start=1):
        print(f"server {n} main thread, own seconds under cProfile (whole run): {breakdown}")
    for line in r["server_log_problems"]:
        print(f"  server log: {line[:300]}")
    print(f"exactly once: {'OK' if c['ok'] else 'FAILED'}: {c['dossiers_held']} held of "
          f"{c['dossiers_expected']}, ids unique {c['ids_unique']}, ids as derived "
          f"{c['ids_as_expected']}, {c['agents_enrolled']} agents, {c['agents_behind']} not at "
          f"acked_seq {args.dossiers}, {c['alerts']} alerts (check {c['check_s']} s)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=3321)
    parser.add_argument("--dossiers", type=int, default=50, help="per agent")
    parser.add_argument("--db", default=None,
                        help="PostgreSQL URL; a fresh database beside it is used and dropped")
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--procs", type=int, default=3, help="generator processes")
    parser.add_argument("--storm", action="store_true", help="all agents start within 1 s")
    parser.add_argument("--batch-records", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=16,
                        help="requests in flight per generator process (not in a storm)")
    parser.add_argument("--ramp", type=float, default=2.0, help="start spread, seconds")
    parser.add_argument("--level", type=int, default=6,
                        help="zstd level (the real agent's on a fast link: 6)")
    parser.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    parser.add_argument("--deadline", type=float, default=1200.0,
                        help="an agent gives up this long after its phase started")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile-server", type=Path, default=None, metavar="DIR",
                        help="run syncd serve under cProfile, writing DIR/syncd-N.prof")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if min(args.agents, args.dossiers, args.servers, args.procs, args.batch_records,
           args.concurrency) < 1:
        parser.error("counts must be at least 1")
    if args.dossiers > 999:
        parser.error("--dossiers: at most 999 (one code counter per PC and day)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.db:
        problem = postgres_ready()
        if problem:
            log(f"load: cannot run the PostgreSQL variant: {problem}")
            return 2
    fds = raise_fd_limit()
    if fds < 2 * args.agents + 100:
        log(f"load: warning: open file limit {fds} is low for {args.agents} connections")
    if args.profile_server:
        args.profile_server.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-load-"))
    try:
        with contextlib.ExitStack() as stack:
            db_url = stack.enter_context(fresh_database(args.db)) if args.db else None
            result = run(args, root, db_url)
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    result["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        report(args, result)
    ok = result["check"]["ok"] and result["push"]["errors"] == 0 and (
        result["enroll"]["errors"] == 0) and result["server"]["alive_after_push"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
