"""The link emulator (tests/support/link.py) on real loopback sockets.

Upstreams are a plain asyncio TCP server (sink, echo or greeter), an aiohttp
HTTP server, or a threaded socketserver echo for the synchronous tests.
Waiting is always on a condition with a deadline; timings are asserted with
tolerances around what the model predicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.link import (
    BURST_BYTES,
    PROFILES,
    SEGMENT_BYTES,
    LinkEmulator,
    LinkProfile,
    ThreadedLink,
    outage_schedule,
    with_outages,
)
from tests.support.procs import wait_until

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers


async def eventually(predicate: Callable[[], Any], *, timeout_s: float = 5.0,
                     what: str = "condition") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not (value := predicate()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.005)
    return value


async def read_exactly(reader: asyncio.StreamReader, n: int, timeout_s: float = 10.0) -> bytes:
    async with asyncio.timeout(timeout_s):
        return await reader.readexactly(n)


async def expect_reset(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> None:
    """The connection is reset (RST), not merely closed."""
    async with asyncio.timeout(timeout_s):
        with pytest.raises(ConnectionResetError):
            await reader.read(65536)


def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()


class TcpUpstream:
    """A plain asyncio upstream: ``sink`` counts, ``echo`` echoes, ``greeting`` is sent first."""

    def __init__(self, mode: str = "sink", greeting: bytes = b"") -> None:
        self.mode = mode
        self.greeting = greeting
        self.received = 0
        self.accepted = 0
        self.open = 0
        self.resets = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpUpstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.accepted += 1
        self.open += 1
        try:
            if self.greeting:
                writer.write(self.greeting)
                await writer.drain()
            while data := await reader.read(65536):
                self.received += len(data)
                if self.mode == "echo":
                    writer.write(data)
                    await writer.drain()
        except OSError:
            self.resets += 1
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self.open -= 1
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


@contextlib.asynccontextmanager
async def tcp_upstream(mode: str = "sink", greeting: bytes = b"") -> AsyncIterator[TcpUpstream]:
    upstream = await TcpUpstream(mode, greeting).start()
    try:
        yield upstream
    finally:
        await upstream.close()


class HttpUpstream:
    """An aiohttp server: POST /echo answers with the body; counts requests it got."""

    def __init__(self) -> None:
        self.requests = 0
        self.port = 0
        app = web.Application()
        app.router.add_post("/echo", self._echo)
        self._runner = web.AppRunner(app)

    async def _echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests += 1
        return web.Response(body=body)

    async def start(self) -> HttpUpstream:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def close(self) -> None:
        await self._runner.cleanup()


@pytest.fixture
async def http_upstream() -> AsyncIterator[HttpUpstream]:
    upstream = await HttpUpstream().start()
    try:
        yield upstream
    finally:
        await upstream.close()


def make_profile(name: str, up_bps: float | None = None, down_bps: float | None = None,
                 delay_s: float = 0.0) -> LinkProfile:
    return LinkProfile(name, up_bps, down_bps, delay_s)


# --------------------------------------------------------------------------- profiles


def test_named_profiles() -> None:
    assert PROFILES["2g"] == LinkProfile("2g", 48_000, 64_000, 0.300)
    assert PROFILES["edge"] == LinkProfile("edge", 100_000, 200_000, 0.200)
    assert PROFILES["3g"] == LinkProfile("3g", 384_000, 1_000_000, 0.100)
    for name, up, down in (("2g", 30, 5), ("edge", 20, 5), ("3g", 30, 5)):
        p = PROFILES[f"{name}-outages"]
        assert (p.outage_up_mean_s, p.outage_down_mean_s) == (up, down)
        assert (p.up_bps, p.down_bps, p.one_way_delay_s) == (
            PROFILES[name].up_bps, PROFILES[name].down_bps, PROFILES[name].one_way_delay_s)
        assert p.has_outages and not PROFILES[name].has_outages
    loopback = PROFILES["loopback"]
    assert (loopback.up_bps, loopback.down_bps, loopback.one_way_delay_s) == (None, None, 0.0)

    derived = with_outages(PROFILES["2g"], 60.0, 2.0)
    assert (derived.outage_up_mean_s, derived.outage_down_mean_s) == (60.0, 2.0)
    assert derived.up_bps == 48_000
    assert not with_outages(PROFILES["2g-outages"], None, None).has_outages
    with pytest.raises(ValueError):
        LinkProfile("bad", 1000, 1000, 0.1, outage_up_mean_s=10.0)
    with pytest.raises(ValueError):
        LinkProfile("bad", 0, 1000, 0.1)


# --------------------------------------------------------------------------- bandwidth


async def test_uplink_rate_is_enforced() -> None:
    # 24 000 bytes through 96 kbit/s: 2.0 s, less the first segment's free burst.
    payload = os.urandom(24_000)
    async with tcp_upstream("sink") as up, \
            LinkEmulator("127.0.0.1", up.port, make_profile("96k", up_bps=96_000)) as link:
        _reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        start = time.monotonic()
        writer.write(payload)
        await eventually(lambda: up.received == len(payload), timeout_s=10, what="all bytes")
        elapsed = time.monotonic() - start
        close_writer(writer)
        assert 1.7 <= elapsed <= 3.0, elapsed
        assert link.bytes_up == len(payload)
        assert link.bytes_down == 0


async def test_downlink_rate_is_enforced() -> None:
    # 24 000 bytes through 192 kbit/s: 1.0 s.
    greeting = os.urandom(24_000)
    async with tcp_upstream("sink", greeting=greeting) as up, \
            LinkEmulator("127.0.0.1", up.port,
                         make_profile("192k", up_bps=1_000, down_bps=192_000)) as link:
        start = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        assert await read_exactly(reader, len(greeting)) == greeting
        elapsed = time.monotonic() - start
        close_writer(writer)
        assert 0.85 <= elapsed <= 1.5, elapsed
        assert (link.bytes_up, link.bytes_down) == (0, len(greeting))


async def test_uplink_rate_is_shared_between_connections() -> None:
    # Two connections of 12 000 bytes each at once: the pair takes as long as
    # 24 000 bytes on one (≈2 s), and they progress together (neither is done
    # after the 1 s that one alone would take).
    payload = os.urandom(12_000)
    done: list[float] = []
    async with tcp_upstream("sink") as up, \
            LinkEmulator("127.0.0.1", up.port, make_profile("96k", up_bps=96_000)) as link:

        async def send() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
            writer.write(payload)
            await writer.drain()
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 10) == b""  # upstream closed after EOF
            done.append(time.monotonic() - start)
            writer.close()
            await writer.wait_closed()

        start = time.monotonic()
        await asyncio.gather(send(), send())
        assert up.received == 2 * len(payload)
        assert link.bytes_up == 2 * len(payload)
        assert link.connections == 2
    assert 1.7 <= max(done) <= 3.0, done
    assert min(done) >= 1.5, done


async def test_backpressure_holds_the_sender_to_the_rate() -> None:
    # 1 MB written at once: the sender's kernel takes a few hundred KB, the
    # rest stays in the sender's own buffer; the emulator passes only what
    # the rate allows.
    async with tcp_upstream("sink") as up, \
            LinkEmulator("127.0.0.1", up.port, make_profile("96k", up_bps=96_000)) as link:
        _reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        start = time.monotonic()
        writer.write(b"x" * 1_000_000)
        await eventually(lambda: link.bytes_up >= 6 * SEGMENT_BYTES, what="some progress")
        elapsed = time.monotonic() - start
        await eventually(lambda: up.received == link.bytes_up, what="delivery")
        assert link.bytes_up <= BURST_BYTES + 96_000 / 8 * elapsed + SEGMENT_BYTES
        assert writer.transport.get_write_buffer_size() >= 500_000
        close_writer(writer)


# --------------------------------------------------------------------------- delay


async def test_one_way_delay_adds_two_delays_to_a_round_trip(
        http_upstream: HttpUpstream) -> None:
    delay = 0.15
    async with LinkEmulator("127.0.0.1", http_upstream.port,
                            make_profile("delay", delay_s=delay)) as link, \
            aiohttp.ClientSession() as session:
        for _ in range(2):  # a new connection, then a kept-alive one
            start = time.monotonic()
            async with session.post(f"{link.url}/echo", data=b"ping") as response:
                assert await response.read() == b"ping"
            elapsed = time.monotonic() - start
            assert 2 * delay <= elapsed <= 2 * delay + 0.15, elapsed
        assert link.connections == 1


async def test_delay_is_pipelined_not_per_segment() -> None:
    # 20 segments behind a 0.2 s delay without a rate limit arrive in ≈0.2 s,
    # not 20 x 0.2 s: the delay does not block the reader.
    payload = os.urandom(20 * SEGMENT_BYTES)
    async with tcp_upstream("sink") as up, \
            LinkEmulator("127.0.0.1", up.port, make_profile("delay", delay_s=0.2)) as link:
        _reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        start = time.monotonic()
        writer.write(payload)
        await eventually(lambda: up.received == len(payload), what="all bytes")
        elapsed = time.monotonic() - start
        close_writer(writer)
        assert 0.2 <= elapsed <= 0.45, elapsed


# --------------------------------------------------------------------------- counters


async def test_counters_count_payload_bytes_per_direction() -> None:
    payload = os.urandom(5_000)
    async with tcp_upstream("echo") as up, \
            LinkEmulator("127.0.0.1", up.port, PROFILES["loopback"]) as link:
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(payload)
        assert await read_exactly(reader, len(payload)) == payload
        writer.write(b"12345")
        assert await read_exactly(reader, 5) == b"12345"
        writer.close()
        await writer.wait_closed()
        assert (link.bytes_up, link.bytes_down, link.connections) == (5_005, 5_005, 1)
        stats = link.stats()
        assert (stats.bytes_up, stats.bytes_down, stats.connections) == (5_005, 5_005, 1)

        link.reset_counters()
        assert (link.bytes_up, link.bytes_down, link.connections, link.outages,
                link.lost_responses, link.refused) == (0, 0, 0, 0, 0, 0)


async def test_order_is_preserved_through_rate_and_delay() -> None:
    payload = os.urandom(40_000)
    async with tcp_upstream("echo") as up, \
            LinkEmulator("127.0.0.1", up.port,
                         make_profile("fast", 2_000_000, 2_000_000, 0.02)) as link:
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        for i in range(0, len(payload), 777):  # odd-sized writes
            writer.write(payload[i:i + 777])
        assert await read_exactly(reader, len(payload)) == payload
        close_writer(writer)


# --------------------------------------------------------------------------- outages


async def test_go_down_resets_open_connections_and_refuses_new_ones() -> None:
    async with tcp_upstream("echo") as up, \
            LinkEmulator("127.0.0.1", up.port, PROFILES["loopback"]) as link:
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(b"ping")
        assert await read_exactly(reader, 4) == b"ping"
        assert link.is_up

        link.go_down()
        assert not link.is_up
        assert link.outages == 1
        await expect_reset(reader)
        close_writer(writer)
        await eventually(lambda: up.open == 0, what="upstream side closed too")

        refused_reader, refused_writer = await asyncio.open_connection("127.0.0.1", link.port)
        await expect_reset(refused_reader)
        close_writer(refused_writer)
        assert link.refused == 1
        assert up.accepted == 1  # the refused connection never reached the server

        link.go_down()  # already down: no new outage
        assert link.outages == 1
        link.go_up()
        assert link.is_up
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(b"pong")
        assert await read_exactly(reader, 4) == b"pong"
        close_writer(writer)
        assert link.connections == 3


async def test_outage_for_a_while() -> None:
    async with tcp_upstream("echo") as up, \
            LinkEmulator("127.0.0.1", up.port, PROFILES["loopback"]) as link:
        start = time.monotonic()
        outage = asyncio.create_task(link.outage(0.2))
        await eventually(lambda: not link.is_up, what="down")
        await eventually(lambda: link.is_up, what="up again")
        assert time.monotonic() - start >= 0.2
        await outage
        assert link.outages == 1


async def test_upstream_that_refuses_resets_the_client() -> None:
    async with tcp_upstream("echo") as up:
        port = up.port
    async with LinkEmulator("127.0.0.1", port, PROFILES["loopback"]) as link:
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        await expect_reset(reader)
        close_writer(writer)
        assert link.connections == 1


def test_outage_schedule_is_reproducible() -> None:
    profile = PROFILES["2g-outages"]
    first = list(itertools.islice(outage_schedule(profile, seed=42), 5))
    again = list(itertools.islice(outage_schedule(profile, seed=42), 5))
    other = list(itertools.islice(outage_schedule(profile, seed=43), 5))
    assert first == again
    assert first != other
    assert all(up > 0 and down > 0 for up, down in first)

    many = list(itertools.islice(outage_schedule(profile, seed=1), 4000))
    assert statistics.fmean(up for up, _ in many) == pytest.approx(30.0, rel=0.1)
    assert statistics.fmean(down for _, down in many) == pytest.approx(5.0, rel=0.1)
    with pytest.raises(ValueError):
        next(outage_schedule(PROFILES["2g"], seed=1))


async def test_emulator_follows_the_seeded_schedule() -> None:
    profile = with_outages(PROFILES["loopback"], 0.2, 0.1)
    (up0, down0), (up1, _) = itertools.islice(outage_schedule(profile, seed=5), 2)
    async with tcp_upstream("echo") as up, \
            LinkEmulator("127.0.0.1", up.port, profile, seed=5) as link:
        start = time.monotonic()
        await eventually(lambda: not link.is_up, what="first outage")
        assert time.monotonic() - start == pytest.approx(up0, abs=0.05)
        await eventually(lambda: link.is_up, what="back up")
        assert time.monotonic() - start == pytest.approx(up0 + down0, abs=0.05)
        await eventually(lambda: link.outages == 2, what="second outage")
        assert time.monotonic() - start == pytest.approx(up0 + down0 + up1, abs=0.05)

        link.set_profile(PROFILES["loopback"])  # stops the schedule, link up
        assert link.is_up
        outages = link.outages
        await asyncio.sleep(0)
        assert link.outages == outages


# --------------------------------------------------------------------------- lost responses


async def test_lost_response_reaches_server_but_not_client(http_upstream: HttpUpstream) -> None:
    async with LinkEmulator("127.0.0.1", http_upstream.port,
                            make_profile("delay", delay_s=0.02)) as link, \
            aiohttp.ClientSession() as session:
        link.lose_responses(1)
        with pytest.raises(aiohttp.ClientError):
            async with session.post(f"{link.url}/echo", data=b"first") as response:
                await response.read()
        assert http_upstream.requests == 1  # the server got it and answered
        assert link.lost_responses == 1
        assert link.bytes_down == 0  # the answer never crossed the air
        assert link.bytes_up > 0

        async with session.post(f"{link.url}/echo", data=b"second") as response:
            assert await response.read() == b"second"
        assert http_upstream.requests == 2
        assert link.lost_responses == 1
        assert link.bytes_down > 0


# --------------------------------------------------------------------------- life cycle


async def test_close_mid_transfer_is_clean_and_idempotent() -> None:
    async with tcp_upstream("echo") as up:
        link = await LinkEmulator("127.0.0.1", up.port,
                                  make_profile("slow", 96_000, 96_000, 0.3)).start()
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(os.urandom(50_000))
        await eventually(lambda: link.bytes_up > SEGMENT_BYTES, what="data in flight")
        await link.close()
        await link.close()
        await expect_reset(reader)
        close_writer(writer)
        await eventually(lambda: up.open == 0, what="upstream side closed")
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", link.port)


# --------------------------------------------------------------------------- threads and CLI


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def threaded_echo() -> Iterator[int]:
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def echo_once(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def test_threaded_link(threaded_echo: int) -> None:
    threads_before = threading.active_count()
    profile = make_profile("t", 400_000, 400_000, 0.02)
    with ThreadedLink("127.0.0.1", threaded_echo, profile) as link:
        assert link.url == f"http://127.0.0.1:{link.port}"
        with pytest.raises(OSError):  # the port is taken: start fails, nothing leaks
            ThreadedLink("127.0.0.1", threaded_echo, profile, listen_port=link.port).start()
        assert echo_once(link.port, b"a" * 3000) == b"a" * 3000
        assert (link.bytes_up, link.bytes_down, link.connections) == (3000, 3000, 1)

        with socket.create_connection(("127.0.0.1", link.port), timeout=10) as sock:
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
            link.go_down()
            assert not link.is_up
            with pytest.raises(ConnectionResetError):
                sock.recv(4)
        link.go_up()

        link.lose_responses(1)
        with socket.create_connection(("127.0.0.1", link.port), timeout=10) as sock:
            sock.sendall(b"lost")
            with pytest.raises(ConnectionResetError):
                sock.recv(4)
        assert link.lost_responses == 1

        link.set_profile(PROFILES["loopback"])
        assert link.profile == PROFILES["loopback"]
        link.reset_counters()
        assert echo_once(link.port, b"b" * 10) == b"b" * 10
        stats = link.stats()
        assert (stats.bytes_up, stats.bytes_down, stats.connections, stats.outages,
                stats.lost_responses, stats.is_up) == (10, 10, 1, 0, 0, True)

        link.outage(0.05)
        assert link.outages == 1 and link.is_up
    wait_until(lambda: threading.active_count() <= threads_before, timeout_s=5,
               what="emulator thread gone")
    with pytest.raises(RuntimeError):
        link.go_down()


def test_command_line(threaded_echo: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.link", "--profile", "loopback",
         "--upstream", f"127.0.0.1:{threaded_echo}", "--seed", "3"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()  # printed as soon as it listens
        assert url.startswith("http://127.0.0.1:"), url
        port = int(url.rsplit(":", 1)[1])
        assert echo_once(port, b"z" * 100) == b"z" * 100
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "bytes_up=100 bytes_down=100 connections=1" in out
