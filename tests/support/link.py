"""A link emulator: an asyncio TCP proxy that behaves like a bad mobile link.

It sits between an agent (the client) and the server (the upstream) on
loopback, because ``tc netem`` is not available where the tests run::

    agent ──TCP──▶ LinkEmulator ──TCP──▶ syncd
          uplink ▶               downlink ◀

The model
=========

* **Bandwidth.** One token bucket per direction, shared by *every* connection
  through the emulator (an agent that opens two connections does not get twice
  the air). Rates are in bits per second of TCP payload; the bucket holds at
  most :data:`BURST_BYTES` (about one 1500-byte packet), so there is no useful
  burst. Data is forwarded in segments of at most :data:`SEGMENT_BYTES` (a
  TCP MSS for a 1500-byte MTU); each segment waits, in arrival order across all
  connections, until the bucket holds enough tokens.
* **Latency.** After its segment has passed the bucket, the bytes are delivered
  ``one_way_delay_s`` later. Each connection-direction has its own delivery
  queue with due times, so the delay does not throttle throughput (it is
  pipelined like a real link); only the bucket blocks the reader. Order within
  a connection-direction is preserved.
* **Backpressure is real.** The emulator reads from a socket only when the
  bucket lets the previous segment through, and it keeps its own buffers and
  its kernel receive buffers small (16 KiB, segments of 1460 bytes), so a
  sender cannot push data faster than the rate: once its own kernel send
  buffer is full, its ``write``/``drain`` (or blocking ``send``) stalls as on
  a real link. That send buffer is the sender's, autotuned by its kernel:
  about 370 KB on Linux loopback here, which is accepted at once (a phone's
  modem buffers similarly). At most :data:`MAX_IN_FLIGHT_SEGMENTS` segments
  wait in a delivery queue (a window of ~93 KB); a receiver that does not read
  stalls its sender.
* **Outages.** With a seeded :class:`random.Random`, the link alternates
  exponentially distributed up times and down times (means from the profile;
  see :func:`outage_schedule`). Going down resets (RST) every open connection
  on both sides and discards whatever was still in flight; while down, new
  connections are accepted and reset at once (the agent sees a refused/reset
  connection). Tests force outages with :meth:`LinkEmulator.go_down`,
  :meth:`LinkEmulator.go_up` and :meth:`LinkEmulator.outage`.
* **Lost responses.** :meth:`LinkEmulator.lose_responses` makes the next *n*
  responses vanish: the request reaches the server normally, but when the
  server's answer starts to come back, the connection is reset on both sides
  and the answer is discarded (it never crosses the bucket, so it is not
  counted in ``bytes_down``). A "response" starts when the upstream sends data
  after the client has sent some, which fits HTTP/1.1 without pipelining.

What is *not* modelled
======================

* **Header overhead.** Counters and rates are TCP payload bytes only. A real
  link also carries ~40 bytes of TCP/IP headers per packet (more with TCP
  options, plus link-layer framing), and pure ACKs in the other direction;
  that is extra on a real 2G link (≈ 3 % for full segments, much more for
  small writes).
* **Connection set-up.** The client's connect completes at once on loopback:
  the SYN/SYN-ACK round trip (one extra RTT per new connection on a real link;
  more with TLS) is not charged, nor are FIN/RST packets.
* **Packet loss and retransmission, jitter, reordering, TCP slow start and
  congestion control, radio wake-up latency.** The link is lossless and steady
  while up; the only failures are outages and lost responses.
* **Per-connection fairness** is approximate: segments are served first come
  first served, which interleaves concurrent connections segment by segment.

Use
===

* In async tests: ``async with LinkEmulator(host, port, PROFILES["2g"]) as link``
  and point the client at ``link.url``.
* In synchronous tests that drive CLI subprocesses: ``with ThreadedLink(...) as
  link`` runs the emulator in its own event loop in a background thread.
* Standalone: ``python -m tests.support.link --profile 2g --upstream
  127.0.0.1:8700 [--port 8799] [--seed N]`` prints its URL and, on Ctrl-C,
  the byte counters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import random
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "BURST_BYTES",
    "MAX_IN_FLIGHT_SEGMENTS",
    "PROFILES",
    "SEGMENT_BYTES",
    "LinkEmulator",
    "LinkProfile",
    "LinkStats",
    "ThreadedLink",
    "TokenBucket",
    "outage_schedule",
    "with_outages",
]

SEGMENT_BYTES = 1460
"""Largest segment forwarded at once (TCP MSS for a 1500-byte MTU)."""

BURST_BYTES = 1500
"""Token bucket depth: about one packet, so no useful burst."""

MAX_IN_FLIGHT_SEGMENTS = 64
"""Segments that may wait in one connection-direction's delivery queue."""

_READ_LIMIT = 2 * SEGMENT_BYTES  # StreamReader pauses the socket beyond 2x this
_SOCKET_BUFFER = 16 * 1024  # kernel receive buffer on the emulator's sockets

T = TypeVar("T")


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class LinkProfile:
    """How a link behaves.

    ``up_bps`` is client → server, ``down_bps`` server → client, both in bits
    per second of TCP payload (``None`` = unlimited). ``one_way_delay_s`` is
    added to every segment in both directions. ``outage_up_mean_s`` and
    ``outage_down_mean_s`` are the mean up time between outages and the mean
    outage length (exponentially distributed); ``None`` for both = no outages.
    """

    name: str
    up_bps: float | None
    down_bps: float | None
    one_way_delay_s: float
    outage_up_mean_s: float | None = None
    outage_down_mean_s: float | None = None

    def __post_init__(self) -> None:
        for field in ("up_bps", "down_bps"):
            value = getattr(self, field)
            if value is not None and value <= 0:
                raise ValueError(f"{field} must be positive or None, not {value}")
        if self.one_way_delay_s < 0:
            raise ValueError("one_way_delay_s must not be negative")
        if (self.outage_up_mean_s is None) != (self.outage_down_mean_s is None):
            raise ValueError("set both outage means, or neither")
        for field in ("outage_up_mean_s", "outage_down_mean_s"):
            value = getattr(self, field)
            if value is not None and value <= 0:
                raise ValueError(f"{field} must be positive or None, not {value}")

    @property
    def has_outages(self) -> bool:
        return self.outage_up_mean_s is not None


def with_outages(profile: LinkProfile, up_mean_s: float | None, down_mean_s: float | None,
                 *, name: str | None = None) -> LinkProfile:
    """``profile`` with other outage means (``None, None`` = without outages)."""
    if name is None:
        base = profile.name.removesuffix("-outages")
        name = base if up_mean_s is None else f"{base}-outages({up_mean_s:g}s/{down_mean_s:g}s)"
    return dataclasses.replace(profile, name=name, outage_up_mean_s=up_mean_s,
                               outage_down_mean_s=down_mean_s)


def _profiles() -> dict[str, LinkProfile]:
    base = [
        LinkProfile("2g", 48_000, 64_000, 0.300),
        LinkProfile("edge", 100_000, 200_000, 0.200),
        LinkProfile("3g", 384_000, 1_000_000, 0.100),
    ]
    outages = {"2g": (30.0, 5.0), "edge": (20.0, 5.0), "3g": (30.0, 5.0)}
    profiles = {p.name: p for p in base}
    for p in base:
        up, down = outages[p.name]
        name = f"{p.name}-outages"
        profiles[name] = with_outages(p, up, down, name=name)
    profiles["loopback"] = LinkProfile("loopback", None, None, 0.0)
    return profiles


PROFILES: dict[str, LinkProfile] = _profiles()
"""Named profiles: ``2g``, ``edge``, ``3g``, each also ``-outages``; ``loopback``."""


def outage_schedule(profile: LinkProfile, seed: int) -> Iterator[tuple[float, float]]:
    """The endless sequence of ``(up_s, down_s)`` periods for ``profile`` and ``seed``.

    The link starts up, stays up ``up_s``, is down for ``down_s``, and so on.
    Both are exponentially distributed with the profile's means, drawn from
    ``random.Random(seed)`` alternately, so the same seed gives the same
    schedule. This is exactly what :class:`LinkEmulator` follows.
    """
    if profile.outage_up_mean_s is None or profile.outage_down_mean_s is None:
        raise ValueError(f"profile {profile.name!r} has no outages")
    rng = random.Random(seed)
    up_rate = 1.0 / profile.outage_up_mean_s
    down_rate = 1.0 / profile.outage_down_mean_s
    while True:
        yield rng.expovariate(up_rate), rng.expovariate(down_rate)


# --------------------------------------------------------------------------- bandwidth


class TokenBucket:
    """A token bucket in bytes, shared by every connection in one direction.

    :meth:`take` waits, first come first served, until ``n`` bytes' worth of
    tokens are there, then spends them. A waiter that is cancelled spends
    nothing. ``rate_bps`` may be changed at any time (``None`` = unlimited).
    """

    def __init__(self, rate_bps: float | None, burst_bytes: int = BURST_BYTES) -> None:
        self.burst_bytes = burst_bytes
        self.rate_bps = rate_bps
        self._tokens = float(burst_bytes)
        self._stamp: float | None = None
        self._lock = asyncio.Lock()

    def _refill(self, now: float) -> None:
        if self._stamp is not None and self.rate_bps is not None:
            self._tokens = min(float(self.burst_bytes),
                               self._tokens + (now - self._stamp) * self.rate_bps / 8)
        self._stamp = now

    def fill(self) -> None:
        """Forget any debt (used when the link comes back up)."""
        self._tokens = float(self.burst_bytes)
        self._stamp = None

    async def take(self, n: int) -> None:
        if n > self.burst_bytes:
            raise ValueError(f"segment of {n} bytes exceeds the bucket ({self.burst_bytes})")
        loop = asyncio.get_running_loop()
        async with self._lock:
            while True:
                if self.rate_bps is None:
                    return
                self._refill(loop.time())
                if self._tokens >= n:
                    self._tokens -= n
                    return
                await asyncio.sleep((n - self._tokens) * 8 / self.rate_bps)


# --------------------------------------------------------------------------- connections


@dataclass(frozen=True)
class LinkStats:
    """A snapshot of an emulator's counters."""

    bytes_up: int
    bytes_down: int
    connections: int
    refused: int
    outages: int
    lost_responses: int
    is_up: bool


_EOF = b""


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Close ``writer``'s socket with an RST (SO_LINGER 0), dropping unsent data."""
    if writer is None:
        return
    transport = writer.transport
    if transport.is_closing():
        transport.abort()  # may still hold a socket if close() was waiting to flush
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _narrow(sock: socket.socket) -> None:
    """Small receive buffer and a 1500-byte-MTU segment size, before connect/listen.

    The peer then sees a small window and, with small segments, its kernel's
    send buffer autotunes to a few hundred KB instead of several MB (loopback's
    MTU is 64 KiB), so its writes stall soon after the link is saturated.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, SEGMENT_BYTES)


async def _open_upstream(host: str, port: int) -> tuple[asyncio.StreamReader,
                                                         asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"cannot resolve {host}:{port}")
    for family, type_, proto, _, address in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            _narrow(sock)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock, limit=_READ_LIMIT)
    raise error


class _Connection:
    """One client connection and its upstream connection: two directions, four tasks."""

    def __init__(self, link: LinkEmulator, client_r: asyncio.StreamReader,
                 client_w: asyncio.StreamWriter) -> None:
        self.link = link
        self.client_r = client_r
        self.client_w = client_w
        self.up_w: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.awaiting_response = False  # the client sent bytes the upstream has not answered

    def reset(self, *, cancel: bool = True) -> None:
        """Reset both sides now and (``cancel``) stop forwarding; idempotent."""
        _reset(self.client_w)
        _reset(self.up_w)
        if cancel and self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()

    async def serve(self) -> None:
        link = self.link
        try:
            up_r, self.up_w = await _open_upstream(link.upstream_host, link.upstream_port)
        except OSError:
            self.reset(cancel=False)
            return
        up_queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(MAX_IN_FLIGHT_SEGMENTS)
        down_queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(MAX_IN_FLIGHT_SEGMENTS)
        tasks = [
            asyncio.ensure_future(self._pump(self.client_r, up_queue, uplink=True)),
            asyncio.ensure_future(self._deliver(up_queue, self.up_w, uplink=True)),
            asyncio.ensure_future(self._pump(up_r, down_queue, uplink=False)),
            asyncio.ensure_future(self._deliver(down_queue, self.client_w, uplink=False)),
        ]
        try:
            await asyncio.gather(*tasks)
        except (OSError, EOFError, asyncio.IncompleteReadError):
            self.reset(cancel=False)  # a reset or broken pipe is passed on to the other side
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for writer in (self.client_w, self.up_w):
            writer.close()
        for writer in (self.client_w, self.up_w):
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _pump(self, reader: asyncio.StreamReader,
                    queue: asyncio.Queue[tuple[float, bytes]], *, uplink: bool) -> None:
        """Read a segment, wait for the bucket, queue it with its due time."""
        link = self.link
        loop = asyncio.get_running_loop()
        bucket = link._up_bucket if uplink else link._down_bucket
        while True:
            data = await reader.read(SEGMENT_BYTES)
            if not data:
                await queue.put((loop.time() + link.profile.one_way_delay_s, _EOF))
                return
            if not uplink and self.awaiting_response:
                self.awaiting_response = False
                if link._lose_pending > 0:
                    link._lose_pending -= 1
                    link.lost_responses += 1
                    self.reset(cancel=False)  # the answer is lost in the air
                    raise ConnectionResetError("response lost by the link emulator")
            await bucket.take(len(data))
            if uplink:
                link.bytes_up += len(data)
            else:
                link.bytes_down += len(data)
            await queue.put((loop.time() + link.profile.one_way_delay_s, data))

    async def _deliver(self, queue: asyncio.Queue[tuple[float, bytes]],
                       writer: asyncio.StreamWriter, *, uplink: bool) -> None:
        """Hand queued segments to ``writer`` when they are due, in order."""
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof() and not writer.transport.is_closing():
                    writer.write_eof()
                return
            writer.write(data)
            if uplink:
                self.awaiting_response = True
            await writer.drain()


# --------------------------------------------------------------------------- emulator


class LinkEmulator:
    """A TCP proxy from ``listen_host:listen_port`` to the upstream, over an emulated link.

    See the module docstring for the model. Counters (plain attributes, read
    them from the emulator's event loop):

    * ``bytes_up`` / ``bytes_down``: payload bytes that passed each
      direction's bucket, i.e. crossed the air (TCP/IP headers not included);
    * ``connections``: connections accepted (including ``refused`` ones);
    * ``refused``: connections reset at once because the link was down;
    * ``outages``: times the link went down;
    * ``lost_responses``: responses discarded by :meth:`lose_responses`.
    """

    def __init__(self, upstream_host: str, upstream_port: int, profile: LinkProfile, *,
                 seed: int = 0, listen_host: str = "127.0.0.1", listen_port: int = 0) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.profile = profile
        self.seed = seed
        self.listen_host = listen_host
        self._listen_port = listen_port
        self._port: int | None = None
        self._up_bucket = TokenBucket(profile.up_bps)
        self._down_bucket = TokenBucket(profile.down_bps)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduler: asyncio.Task[None] | None = None
        self._schedule_round = 0
        self._is_up = True
        self._lose_pending = 0
        self._closed = False
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0
        self.refused = 0
        self.outages = 0
        self.lost_responses = 0

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> LinkEmulator:
        if self._server is not None:
            raise RuntimeError("already started")
        sock = socket.socket(socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            _narrow(sock)  # accepted sockets inherit it
            sock.bind((self.listen_host, self._listen_port))
            sock.listen(128)
            sock.setblocking(False)
            self._server = await asyncio.start_server(self._accept, sock=sock, limit=_READ_LIMIT)
            self._port = int(sock.getsockname()[1])
        except BaseException:
            sock.close()
            raise
        self._start_scheduler()
        return self

    async def close(self) -> None:
        """Stop listening, reset every connection, end every task (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._scheduler is not None:
            self._scheduler.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.reset()
        tasks = [*self._tasks, *([self._scheduler] if self._scheduler else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> LinkEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("not started")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"http://{host}:{self.port}"

    # ------------------------------------------------------------------ faults

    @property
    def is_up(self) -> bool:
        return self._is_up

    def go_down(self) -> None:
        """Start an outage now: reset every open connection, refuse new ones."""
        if not self._is_up:
            return
        self._is_up = False
        self.outages += 1
        for conn in list(self._connections):
            conn.reset()

    def go_up(self) -> None:
        """End the outage: new connections are forwarded again."""
        if self._is_up:
            return
        self._is_up = True
        self._up_bucket.fill()
        self._down_bucket.fill()

    async def outage(self, seconds: float) -> None:
        """Be down for ``seconds``, then up again."""
        self.go_down()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.go_up()

    def lose_responses(self, n: int) -> None:
        """Lose the next ``n`` responses (set, not added: ``0`` cancels)."""
        if n < 0:
            raise ValueError("n must not be negative")
        self._lose_pending = n

    @property
    def responses_to_lose(self) -> int:
        return self._lose_pending

    def set_profile(self, profile: LinkProfile) -> None:
        """Switch to another profile now (rates, delay, outage schedule).

        Segments already queued keep their due times. The outage schedule
        restarts from the emulator's seed; the link is brought up if the new
        profile has no outages.
        """
        self.profile = profile
        self._up_bucket.rate_bps = profile.up_bps
        self._down_bucket.rate_bps = profile.down_bps
        if self._server is not None and not self._closed:
            self._start_scheduler()

    def reset_counters(self) -> None:
        self.bytes_up = self.bytes_down = 0
        self.connections = self.refused = self.outages = self.lost_responses = 0

    def stats(self) -> LinkStats:
        return LinkStats(self.bytes_up, self.bytes_down, self.connections, self.refused,
                         self.outages, self.lost_responses, self._is_up)

    # ------------------------------------------------------------------ internals

    def _start_scheduler(self) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel()
            self._scheduler = None
            self.go_up()
        if self.profile.has_outages:
            self._scheduler = asyncio.ensure_future(
                self._follow_schedule(outage_schedule(self.profile, self.seed)))

    async def _follow_schedule(self, schedule: Iterator[tuple[float, float]]) -> None:
        for up_s, down_s in schedule:
            await asyncio.sleep(up_s)
            self.go_down()
            await asyncio.sleep(down_s)
            self.go_up()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._closed or not self._is_up:
            self.refused += 1
            _reset(writer)
            return
        conn = _Connection(self, reader, writer)
        task = asyncio.ensure_future(self._serve(conn))
        conn.task = task
        self._connections.add(conn)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: _Connection) -> None:
        try:
            await conn.serve()
        except asyncio.CancelledError:
            conn.reset()
            raise
        except Exception:
            conn.reset()
        finally:
            self._connections.discard(conn)


# --------------------------------------------------------------------------- threads


class ThreadedLink:
    """A :class:`LinkEmulator` in its own event loop in a background thread.

    For synchronous tests that drive CLI subprocesses::

        with ThreadedLink("127.0.0.1", server.port, PROFILES["2g"]) as link:
            agent("sync-now", "--server", link.url, ...)
            link.go_down(); ...; link.go_up()
            assert link.bytes_up > 0

    Every accessor and method runs on the emulator's loop and is thread-safe.
    Leaving the ``with`` block closes the emulator and joins the thread.
    """

    def __init__(self, upstream_host: str, upstream_port: int, profile: LinkProfile, *,
                 seed: int = 0, listen_host: str = "127.0.0.1", listen_port: int = 0,
                 start_timeout_s: float = 10.0) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._profile = profile
        self._seed = seed
        self._listen = (listen_host, listen_port)
        self._start_timeout_s = start_timeout_s
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._link: LinkEmulator | None = None

    def start(self) -> ThreadedLink:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._run, name="link-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._start_timeout_s):
            raise RuntimeError("link emulator did not start in time")
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def close(self) -> None:
        """Close the emulator and join the thread (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already gone
                self._loop.call_soon_threadsafe(self._stop.set)
        thread.join(30)
        if thread.is_alive():
            raise RuntimeError("link emulator thread did not stop")

    def __enter__(self) -> ThreadedLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            link = LinkEmulator(*self._upstream, self._profile, seed=self._seed,
                                listen_host=self._listen[0], listen_port=self._listen[1])
            try:
                await link.start()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                return
            self._link = link
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await link.close()

        asyncio.run(main())

    def call(self, fn: Callable[[LinkEmulator], T], timeout_s: float = 10.0) -> T:
        """Run ``fn(emulator)`` on the emulator's loop and return its result."""
        return self._submit(self._wrap(fn), timeout_s)

    @staticmethod
    def _wrap(fn: Callable[[LinkEmulator], T]) -> Callable[[LinkEmulator],
                                                            Coroutine[Any, Any, T]]:
        async def run(link: LinkEmulator) -> T:
            return fn(link)
        return run

    def _submit(self, make: Callable[[LinkEmulator], Coroutine[Any, Any, T]],
                timeout_s: float | None) -> T:
        if self._link is None or self._loop is None or self._thread is None:
            raise RuntimeError("link emulator is not running")
        future = asyncio.run_coroutine_threadsafe(make(self._link), self._loop)
        return future.result(timeout_s)

    # accessors ---------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.call(lambda link: link.port)

    @property
    def url(self) -> str:
        return self.call(lambda link: link.url)

    @property
    def profile(self) -> LinkProfile:
        return self.call(lambda link: link.profile)

    @property
    def is_up(self) -> bool:
        return self.call(lambda link: link.is_up)

    @property
    def bytes_up(self) -> int:
        return self.call(lambda link: link.bytes_up)

    @property
    def bytes_down(self) -> int:
        return self.call(lambda link: link.bytes_down)

    @property
    def connections(self) -> int:
        return self.call(lambda link: link.connections)

    @property
    def refused(self) -> int:
        return self.call(lambda link: link.refused)

    @property
    def outages(self) -> int:
        return self.call(lambda link: link.outages)

    @property
    def lost_responses(self) -> int:
        return self.call(lambda link: link.lost_responses)

    def stats(self) -> LinkStats:
        return self.call(LinkEmulator.stats)

    # methods -------------------------------------------------------------------

    def go_down(self) -> None:
        self.call(LinkEmulator.go_down)

    def go_up(self) -> None:
        self.call(LinkEmulator.go_up)

    def outage(self, seconds: float) -> None:
        """Be down for ``seconds`` (blocks the calling thread meanwhile)."""
        self._submit(lambda link: link.outage(seconds), seconds + 10.0)

    def lose_responses(self, n: int) -> None:
        self.call(lambda link: link.lose_responses(n))

    def set_profile(self, profile: LinkProfile) -> None:
        self.call(lambda link: link.set_profile(profile))

    def reset_counters(self) -> None:
        self.call(LinkEmulator.reset_counters)


# --------------------------------------------------------------------------- command line


def _parse_upstream(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def _format_stats(stats: LinkStats) -> str:
    return (f"bytes_up={stats.bytes_up} bytes_down={stats.bytes_down} "
            f"connections={stats.connections} refused={stats.refused} "
            f"outages={stats.outages} lost_responses={stats.lost_responses}")


async def _serve_forever(args: argparse.Namespace) -> LinkStats:
    profile = PROFILES[args.profile]
    if args.outage_means is not None:
        profile = with_outages(profile, *args.outage_means)
    host, port = args.upstream
    link = LinkEmulator(host, port, profile, seed=args.seed, listen_host=args.host,
                        listen_port=args.port)
    await link.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(link.url, flush=True)
    print(f"profile {profile}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        await link.close()
    return link.stats()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.link",
        description="Emulate a bad mobile link between an agent and a server (TCP proxy).")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="2g")
    parser.add_argument("--upstream", type=_parse_upstream, required=True,
                        metavar="HOST:PORT", help="the server to forward to")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0 = any)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the outage schedule")
    parser.add_argument("--outage-means", type=float, nargs=2, metavar=("UP_S", "DOWN_S"),
                        help="override the mean up time and mean outage length")
    args = parser.parse_args(argv)
    try:
        stats = asyncio.run(_serve_forever(args))
    except OSError as exc:
        print(f"link: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    print(_format_stats(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
