"""The daemon's control port, served for real on loopback and asked with the
real client code: the token, progress to the end of a run started after the
request, the outcome of that run, a daemon stopping, an asker going away."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from client.control import Failure, SyncActivity, ask_daemon, make_control_app

TOKEN = "t0ken-for-tests"


class Daemon:
    def __init__(self, activity: SyncActivity, port: int) -> None:
        self.activity, self.port = activity, port
        self.wakes = 0

    async def requested(self) -> None:
        await asyncio.wait_for(self.activity.requested.wait(), 10)


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    activity = SyncActivity()
    holder: list[Daemon] = []

    async def wake() -> None:
        holder[0].wakes += 1

    runner = web.AppRunner(make_control_app(activity, TOKEN, wake), shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    holder.append(Daemon(activity, runner.addresses[0][1]))
    try:
        yield holder[0]
    finally:
        activity.close()
        await runner.cleanup()


async def test_without_the_token_nothing_is_asked(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with http.post(f"http://127.0.0.1:{daemon.port}/sync",
                                 headers=headers) as response:
                assert response.status == 401
    assert not daemon.activity.requested.is_set() and daemon.wakes == 0
    with pytest.raises(ConnectionError):
        await ask_daemon(daemon.port, "wrong", lambda *_: None)


async def test_the_asker_follows_a_run_started_after_it_asked(daemon: Daemon) -> None:
    activity = daemon.activity
    activity.begin(0)  # a run already under way when the officer presses the button
    seen: list[tuple[int, int, int]] = []
    asking = asyncio.create_task(ask_daemon(daemon.port, TOKEN,
                                            lambda *p: seen.append(p)))
    await daemon.requested()
    assert daemon.wakes == 1
    activity.progress(10, 20, 4096)
    activity.end(None)  # that run ends: not the one asked for
    await asyncio.sleep(0)
    assert not asking.done()
    activity.begin(4096)
    activity.progress(20, 20, 8192)
    activity.end(None)
    assert await asyncio.wait_for(asking, 10) is None
    assert seen[-1] == (20, 20, 4096)  # bytes of this run


async def test_the_outcome_is_the_asked_runs_even_when_another_has_begun(
        daemon: Daemon) -> None:
    activity = daemon.activity
    asking = asyncio.create_task(ask_daemon(daemon.port, TOKEN, lambda *_: None))
    await daemon.requested()
    refused = Failure("refused", "bad record")
    activity.begin(0)
    activity.end(refused)
    activity.begin(0)  # someone else asked: the next run starts before the asker reads
    assert await asyncio.wait_for(asking, 10) == refused


async def test_a_stopping_daemon_tells_the_asker(daemon: Daemon) -> None:
    asking = asyncio.create_task(ask_daemon(daemon.port, TOKEN, lambda *_: None))
    await daemon.requested()
    daemon.activity.close()
    failure = await asyncio.wait_for(asking, 10)
    assert failure is not None and failure.kind == "stopped"


async def test_an_asker_that_goes_away_leaves_no_error(
        daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    asking = asyncio.create_task(ask_daemon(daemon.port, TOKEN, lambda *_: None))
    await daemon.requested()
    asking.cancel()  # Ctrl-C, or its --timeout
    with pytest.raises(asyncio.CancelledError):
        await asking
    for step in range(5):  # the daemon's sync goes on and ends
        daemon.activity.begin(0) if step == 0 else daemon.activity.progress(step, 4, 0)
        await asyncio.sleep(0.05)
    daemon.activity.end(None)
    await asyncio.sleep(0.1)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
