"""``sync-agent run``: push whenever records wait, never give up, stop cleanly.

The daemon polls the queue's position cheaply (new records from ``add`` in
another process show up within ``poll_s``), pushes with the engine's retry
loop, and on SIGTERM finishes the batch in flight before it closes.

It holds ``daemon.lock`` while it lives (a second daemon on the same data
directory refuses to start) and answers ``sync-now`` on a loopback control
port (:mod:`client.control`): a sync asked for starts at once, and the
asker follows its progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from aiohttp import web

from .agent import Agent
from .config import AgentConfig, AgentPaths
from .control import (
    STOPPED,
    Failure,
    SyncActivity,
    announce,
    describe_failure,
    make_control_app,
    withdraw,
)
from .errors import AgentError, QueueCorrupt, SetupError
from .intake import api_token, make_intake_app
from .lock import HeldForLife
from .published import pull_quietly
from .scans import ScanFolder
from .sync import Stopped

__all__ = ["run_daemon"]

log = logging.getLogger("client.daemon")


async def _start_page(agent: Agent, port: int, activity: SyncActivity,
                      scans: ScanFolder) -> web.AppRunner | None:
    """The intake page and local API on 127.0.0.1:``port``; syncing goes on without it
    if the port is taken."""
    runner = web.AppRunner(make_intake_app(agent, activity, scans), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    except OSError as exc:
        log.error("intake page not started: port %d on 127.0.0.1 is unavailable (%s)", port,
                  exc.strerror)
        await runner.cleanup()
        return None
    log.info("intake page on http://127.0.0.1:%d/", port)
    return runner


async def _start_control(agent: Agent, activity: SyncActivity) -> web.AppRunner:
    """The control port ``sync-now`` asks (127.0.0.1, a free port, announced in
    ``daemon.json``)."""
    runner = web.AppRunner(make_control_app(activity, api_token(agent.paths.root),
                                            agent.queue.wake),
                           access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    announce(agent.paths, runner.addresses[0][1])
    return runner


async def _either(first: asyncio.Event, second: asyncio.Event, timeout_s: float) -> None:
    """Wait until either event is set, or ``timeout_s``."""
    waits = [asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def run_daemon(paths: AgentPaths, *, poll_s: float = 0.5, refused_pause_s: float = 60.0,
                     stop: asyncio.Event | None = None, ui_port: int = 8701,
                     pull_every_s: float = 600.0, scan_dir: Path | None = None) -> None:
    """Run until ``stop`` is set (SIGTERM and SIGINT set it); serve the intake page
    on ``ui_port`` (0: no page), offering the scans that land in ``scan_dir``
    (default: ``scans`` in the data directory).

    Raises:
        SetupError: another daemon runs on this data directory.
    """
    AgentConfig.load(paths)  # not enrolled: say so before anything is created
    life = HeldForLife(paths.daemon_lock)
    if not life.acquire():
        raise SetupError("another `sync-agent run` is already running for this data directory")
    withdraw(paths)  # a port announced by a daemon that died is no longer ours to name
    try:
        await _run(paths, poll_s, refused_pause_s, stop or asyncio.Event(), ui_port,
                   pull_every_s, ScanFolder(scan_dir or paths.root / "scans"))
    finally:
        life.release()


async def _run(paths: AgentPaths, poll_s: float, refused_pause_s: float, stop: asyncio.Event,
               ui_port: int, pull_every_s: float, scans: ScanFolder) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Windows event loops have no signal handlers; the service manager stops
        # the daemon there, and Ctrl-C arrives as KeyboardInterrupt.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    agent = await Agent.open(paths)
    activity = SyncActivity()
    transport = agent.transport()
    engine = agent.engine(transport, stop=stop, progress=activity.progress)
    log.info("daemon running for agent %s", agent.config.agent_id)
    control = await _start_control(agent, activity)
    page = await _start_page(agent, ui_port, activity, scans) if ui_port else None
    watcher = asyncio.create_task(scans.watch(stop)) if page is not None else None
    next_pull = 0.0
    try:
        while not stop.is_set():
            waiting = await agent.waiting()
            # What the province publishes (catalogue, holidays, statuses set there),
            # asked after a push, never before one: the statuses' order needs the
            # server to have acknowledged what it already holds of this queue.
            if loop.time() >= next_pull and not waiting:
                await pull_quietly(agent, transport)
                next_pull = loop.time() + pull_every_s
            if activity.requested.is_set() or waiting:
                activity.requested.clear()
                activity.begin(engine.sent_bytes)
                failure: Failure | None = STOPPED
                try:
                    await engine.push_until_done(on_retry=activity.retrying)
                    await pull_quietly(agent, transport)  # the link works: what changed
                    next_pull = loop.time() + pull_every_s
                    failure = None
                except Stopped:
                    break
                except QueueCorrupt as exc:
                    log.error("queue damaged at epoch %d seq %d; not sending it", exc.epoch,
                              exc.seq)
                    failure = describe_failure(exc)
                except AgentError as exc:
                    log.warning("sync refused: %s", exc)
                    failure = describe_failure(exc)
                finally:
                    activity.end(failure)
                if failure is not None and not activity.requested.is_set():
                    await engine.pause(refused_pause_s)  # `sync-now` cuts it short
                continue
            await _either(stop, activity.requested, poll_s)
    except Stopped:
        pass
    finally:
        activity.close()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        withdraw(paths)
        await control.cleanup()
        if page is not None:
            await page.cleanup()
        await transport.close()
        await agent.close()
        log.info("daemon stopped")
