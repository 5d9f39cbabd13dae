"""Simulated commune agents for bench/load.py: the real protocol, without a local queue.

A worker process runs one asyncio loop with one aiohttp session per phase and its
share of agents, and talks to the parent over a pipe:

    worker -> ("ready", info)       keys made, dossiers generated and validated
    parent -> ("enroll", t0)        every agent enrolls over HTTP (POST /v1/enroll)
    worker -> ("enrolled", stats)   records encoded (code, derived id) for the push
    parent -> ("push", t0)          every agent pushes its dossiers (POST /v1/batches)
    worker -> ("pushed", stats)

Each agent does what ``client/`` does, minus the SQLite queue: an Ed25519 key and the
enrollment proof, the reply accepted only from the server whose key the token pins;
records built as ``client.agent.Agent.add`` builds them (``{commune}-{yyMMdd}-{NNNN}``
codes from the enrolled counter block, ids derived from agent, epoch 1 and seq);
batches of epoch 1 from seq 1 sealed to the sealing key of the enrolled reply, signed
at send time; an ack believed only if it verifies against the pinned key, decodes
strictly, names this agent, epoch and batch, and acknowledges the batch's last seq.
503, 429, other 5xx and transport failures are retried with full-jitter backoff, a
``Retry-After`` honoured (``client.pacing.full_jitter``, as the real agent does); any
other answer is an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import protocol
from client.pacing import full_jitter
from protocol import (
    MEDIA_TYPE,
    BatchBody,
    DecodeError,
    DossierCreated,
    SealTo,
    SignatureError,
    derive_dossier_id,
    encode_event,
    validate_dossier,
)
from protocol.batches import encode_batch_body
from protocol.dossier import parse_timestamp
from protocol.messages import (
    EnrollRequest,
    batch_digest,
    decode_ack,
    decode_enroll_reply,
    decode_envelope,
    decode_error,
    encode_enroll_request,
    encode_envelope,
)
from protocol.sealing import fingerprint, open_reply
from protocol.signing import public_key_bytes, sign_enrollment, sign_envelope
from tests.support.dossiers import make_dossier

# The heartbeat the real agent sends with each batch, where this protocol/ has it.
Heartbeat: Any = getattr(protocol, "Heartbeat", None)

__all__ = ["AgentSpec", "WorkerSpec", "worker_main"]

VN_TZ = timezone(timedelta(hours=7))
EPOCH = 1
HEADERS = {"Content-Type": MEDIA_TYPE, "Accept": MEDIA_TYPE}
BACKOFF_BASE_S, BACKOFF_CAP_S = 1.0, 60.0
MAX_SAMPLES = 5
AGENT_VERSION = "commune-sync bench"
FREE_DISK_BYTES = 40 * 10**9


class BenchError(Exception):
    """An answer the real agent would not accept (counted as an error)."""


@dataclass(frozen=True)
class AgentSpec:
    index: int
    commune: str
    token: str
    url: str


@dataclass(frozen=True)
class WorkerSpec:
    worker: int
    agents: list[AgentSpec]
    dossiers: int
    batch_records: int
    level: int
    storm: bool
    concurrency: int
    ramp_s: float
    seed: int
    timeout_s: float
    deadline_s: float


@dataclass
class Stats:
    """What one phase of one worker saw; sent to the parent as a dict."""

    ok: int = 0
    dossiers: int = 0
    errors: int = 0
    status_503: int = 0
    status_429: int = 0
    status_5xx: int = 0
    retries: int = 0
    conn_errors: int = 0
    timeouts: int = 0
    unsigned: int = 0  # retriable answers that were not signed by the pinned key
    latencies: list[float] = field(default_factory=list)
    done: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, dossiers)
    samples: list[str] = field(default_factory=list)
    first_start: float = float("inf")
    last_end: float = 0.0
    cpu_s: float = 0.0

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(text)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes
    retry_after_s: float | None


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < 86_400 else None


def _agent_clock() -> str:
    return datetime.now(UTC).astimezone(VN_TZ).isoformat(timespec="seconds")


class SimAgent:
    """One commune PC: its key, what enrollment told it, its records."""

    def __init__(self, spec: AgentSpec, count: int, seed: int) -> None:
        self.spec = spec
        self.key = Ed25519PrivateKey.generate()
        rng = random.Random(seed * 1_000_003 + spec.index)
        self.dossiers = [validate_dossier(make_dossier(rng, i)) for i in range(count)]
        self.records: list[bytes] = []
        self.agent_id = ""
        self.counter_block = 0
        self.server_key = b""
        self.seal: SealTo | None = None
        self.acked_seq = 0
        self.saved_at = 0.0

    # -- enrollment -----------------------------------------------------------

    def enroll_body(self) -> bytes:
        token = self.spec.token
        return encode_enroll_request(EnrollRequest(
            token, public_key_bytes(self.key), f"bench PC {self.spec.index}",
            sign_enrollment(self.key, token)))

    def accept_enrolled(self, reply: Reply) -> None:
        """As client.agent._read_enroll_reply: only the server the token pins."""
        pin = self.spec.token.split(".")[1]
        try:
            env = decode_envelope(reply.body)
            if env.kind != "reply":
                raise BenchError("enroll: not a server reply")
            enrolled = decode_enroll_reply(env.signed)
            if fingerprint(enrolled.server_key) != pin:
                raise BenchError("enroll: the server's key is not the one the token pins")
            open_reply(reply.body, enrolled.server_key)
        except (DecodeError, SignatureError) as exc:
            raise BenchError(f"enroll: HTTP {reply.status} without a valid signed answer "
                             f"({exc})") from exc
        self.agent_id, self.counter_block = enrolled.agent_id, enrolled.counter_block
        self.server_key = enrolled.server_key
        self.seal = SealTo(enrolled.agent_id, enrolled.commune_code, enrolled.sealing_key_id,
                           enrolled.sealing_key)

    def build_records(self) -> None:
        """Code and derived id as client.agent.Agent.add assigns them, then encode."""
        numbers: dict[str, int] = {}
        self.records = []
        for seq, dossier in enumerate(self.dossiers, start=1):
            day = parse_timestamp(dossier["received_at"]).astimezone(VN_TZ).strftime("%y%m%d")
            numbers[day] = numbers.get(day, 0) + 1
            serial = self.counter_block * 1000 + numbers[day]
            dossier["code"] = f"{self.spec.commune}-{day}-{serial:04d}"
            dossier["id"] = derive_dossier_id(self.agent_id, EPOCH, seq)
            self.records.append(encode_event(DossierCreated(dossier, derived_id=True)))
        self.dossiers = []  # only the bytes travel from here on
        self.saved_at = time.monotonic()

    # -- batches ----------------------------------------------------------------

    def batch(self, first_seq: int, count: int, level: int) -> tuple[bytes, bytes]:
        """Seal and sign records first_seq .. first_seq + count - 1; (body, digest)."""
        assert self.seal is not None
        records = tuple(self.records[first_seq - 1:first_seq - 1 + count])
        extra: dict[str, Any] = {}
        if Heartbeat is not None:
            extra["heartbeat"] = Heartbeat(
                queue_depth=len(self.records) - first_seq + 1,
                oldest_unsent_s=int(time.monotonic() - self.saved_at), quarantined=0,
                free_disk_bytes=FREE_DISK_BYTES, agent_version=AGENT_VERSION)
        body = BatchBody(EPOCH, first_seq, records, _agent_clock(), **extra)
        signed = encode_batch_body(body, self.seal, level=level)
        env = sign_envelope(self.key, "batch", self.agent_id, signed)
        return encode_envelope(env), batch_digest(env)

    def accept_ack(self, reply: Reply, digest: bytes, last_seq: int) -> None:
        """As client.sync.SyncEngine._decode_ack, and the batch must be held whole."""
        if reply.content_type != MEDIA_TYPE:
            raise BenchError(f"ack: reply of type {reply.content_type!r}")
        try:
            ack = decode_ack(open_reply(reply.body, self.server_key))
        except (DecodeError, SignatureError) as exc:
            raise BenchError(f"ack: not a valid signed ack ({exc})") from exc
        if ack.agent_id != self.agent_id or ack.epoch != EPOCH or ack.batch != digest:
            raise BenchError("ack: does not match the batch sent")
        if ack.verdicts:
            raise BenchError(f"ack: verdicts {ack.verdicts[:3]}")
        if ack.acked_seq != last_seq:
            raise BenchError(f"ack: acked_seq {ack.acked_seq}, expected {last_seq}")
        self.acked_seq = ack.acked_seq

    def describe_refusal(self, reply: Reply) -> str:
        try:
            err = decode_error(open_reply(reply.body, self.server_key) if self.server_key
                               else decode_envelope(reply.body).signed)
        except (DecodeError, SignatureError):
            return f"HTTP {reply.status}: {reply.body[:120]!r}"
        return f"HTTP {reply.status}: {err.code}: {err.message}"

    def signed_by_server(self, reply: Reply) -> bool:
        if not self.server_key:  # not enrolled yet: the pin is all it has
            try:
                decode_error(decode_envelope(reply.body).signed)
            except DecodeError:
                return False
            return True
        try:
            decode_error(open_reply(reply.body, self.server_key))
        except (DecodeError, SignatureError):
            return False
        return True


@dataclass
class Context:
    session: aiohttp.ClientSession
    gate: AbstractAsyncContextManager[Any]
    timeout: aiohttp.ClientTimeout
    rng: random.Random
    deadline: float
    stats: Stats


async def _post(ctx: Context, url: str, data: bytes) -> Reply:
    async with ctx.session.post(url, data=data, headers=HEADERS, timeout=ctx.timeout,
                                allow_redirects=False) as resp:
        body = await resp.read()
        return Reply(resp.status, resp.content_type, body,
                     _retry_after(resp.headers.get("Retry-After")))


def _retriable(agent: SimAgent, reply: Reply, stats: Stats) -> bool:
    """Count a 503/429/5xx answer; False for a refusal (an error)."""
    if reply.status == 503:
        stats.status_503 += 1
    elif reply.status == 429:
        stats.status_429 += 1
    elif reply.status >= 500:
        stats.status_5xx += 1
    else:
        return False
    if not agent.signed_by_server(reply):
        stats.unsigned += 1
    return True


async def _attempt(ctx: Context, agent: SimAgent, url: str, data: bytes) -> Reply | None:
    """One request: its reply, or None after a transport failure (counted)."""
    stats = ctx.stats
    try:
        return await _post(ctx, url, data)
    except TimeoutError:
        stats.timeouts += 1
    except (aiohttp.ClientError, OSError) as exc:
        stats.conn_errors += 1
        if stats.conn_errors <= 3:
            print(f"agent {agent.spec.index}: {exc.__class__.__name__}: {exc}",
                  file=sys.stderr, flush=True)
    return None


async def exchange(ctx: Context, agent: SimAgent, path: str, build: Any, accept: Any
                   ) -> float | None:
    """POST ``build()`` until accepted; return the latency from the first attempt, or
    None after a refusal, an answer the agent would not believe, or the deadline."""
    url = agent.spec.url + path
    started = None
    attempt = 0
    while True:
        attempt += 1
        data, state = build()
        async with ctx.gate:
            if started is None:
                started = time.monotonic()
                ctx.stats.first_start = min(ctx.stats.first_start, started)
            reply = await _attempt(ctx, agent, url, data)
        if reply is not None and reply.status == 200:
            try:
                accept(reply, state)
            except BenchError as exc:
                ctx.stats.error(f"agent {agent.spec.index} {path}: {exc}")
                return None
            return time.monotonic() - started
        if reply is not None and not _retriable(agent, reply, ctx.stats):
            ctx.stats.error(f"agent {agent.spec.index} {path}: {agent.describe_refusal(reply)}")
            return None
        hint = reply.retry_after_s if reply is not None else None
        wait = full_jitter(attempt, BACKOFF_BASE_S, BACKOFF_CAP_S, ctx.rng, hint)
        if time.monotonic() + wait > ctx.deadline:
            ctx.stats.error(f"agent {agent.spec.index} {path}: gave up after {attempt} attempts")
            return None
        ctx.stats.retries += 1
        await asyncio.sleep(wait)


async def _enroll_one(ctx: Context, agent: SimAgent, start_at: float) -> None:
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    latency = await exchange(ctx, agent, "/v1/enroll", lambda: (agent.enroll_body(), None),
                             lambda reply, _: agent.accept_enrolled(reply))
    if latency is not None:
        ctx.stats.ok += 1
        ctx.stats.latencies.append(latency)
        ctx.stats.last_end = max(ctx.stats.last_end, time.monotonic())


async def _push_one(ctx: Context, agent: SimAgent, spec: WorkerSpec, start_at: float) -> None:
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    for first in range(1, len(agent.records) + 1, spec.batch_records):
        count = min(spec.batch_records, len(agent.records) - first + 1)
        last = first + count - 1
        latency = await exchange(
            ctx, agent, "/v1/batches",
            lambda first=first, count=count: agent.batch(first, count, spec.level),
            lambda reply, digest, last=last: agent.accept_ack(reply, digest, last))
        if latency is None:
            return  # the real agent would stop here and report the refusal
        now = time.monotonic()
        ctx.stats.ok += 1
        ctx.stats.dossiers += count
        ctx.stats.latencies.append(latency)
        ctx.stats.done.append((now, count))
        ctx.stats.last_end = max(ctx.stats.last_end, now)


def _session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit),
                                 skip_auto_headers=("User-Agent",))


async def _phase(spec: WorkerSpec, agents: list[SimAgent], t0: float, push: bool) -> Stats:
    """Run one phase; agents start spread over the ramp (the storm: within 1 s, no cap)."""
    stats = Stats()
    rng = random.Random(spec.seed * 7919 + spec.worker + (1 if push else 0))
    storm = push and spec.storm
    gate: AbstractAsyncContextManager[Any] = (
        contextlib.nullcontext() if storm else asyncio.Semaphore(spec.concurrency))
    ramp = 1.0 if storm else spec.ramp_s
    cpu = time.process_time()
    async with _session(0 if storm else spec.concurrency) as session:
        ctx = Context(session, gate, aiohttp.ClientTimeout(total=spec.timeout_s), rng,
                      t0 + spec.deadline_s, stats)
        starts = [t0 + rng.uniform(0, ramp) for _ in agents]
        if push:
            tasks = [_push_one(ctx, a, spec, s) for a, s in zip(agents, starts, strict=True)
                     if a.seal is not None]
        else:
            tasks = [_enroll_one(ctx, a, s) for a, s in zip(agents, starts, strict=True)]
        await asyncio.gather(*tasks)
    stats.cpu_s = time.process_time() - cpu
    return stats


async def _recv(conn: Connection) -> tuple[str, Any]:
    message = await asyncio.to_thread(conn.recv)
    return message[0], message[1]


async def _worker(conn: Connection, spec: WorkerSpec) -> None:
    cpu = time.process_time()
    agents = [SimAgent(a, spec.dossiers, spec.seed) for a in spec.agents]
    conn.send(("ready", {"prep_cpu_s": time.process_time() - cpu}))
    command, t0 = await _recv(conn)
    if command != "enroll":
        return
    enrolled = (await _phase(spec, agents, t0, push=False)).as_dict()
    cpu = time.process_time()
    for agent in agents:
        if agent.seal is not None:
            agent.build_records()
    enrolled["encode_cpu_s"] = time.process_time() - cpu
    conn.send(("enrolled", enrolled))
    command, t0 = await _recv(conn)
    if command != "push":
        return
    pushed = (await _phase(spec, agents, t0, push=True)).as_dict()
    pushed["agents"] = [(a.spec.index, a.agent_id, a.acked_seq) for a in agents]
    conn.send(("pushed", pushed))


def worker_main(conn: Connection, spec: WorkerSpec) -> None:
    """Entry point of a worker process (multiprocessing, spawn)."""
    try:
        asyncio.run(_worker(conn, spec))
    except BaseException as exc:
        with contextlib.suppress(OSError):
            conn.send(("failed", f"{exc.__class__.__name__}: {exc}"))
        raise
    finally:
        conn.close()
