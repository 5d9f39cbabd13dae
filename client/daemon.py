"""``sync-agent run``: push whenever records wait, never give up, stop cleanly.

The daemon polls the queue's position cheaply (new records from ``add`` in
another process show up within ``poll_s``), pushes with the engine's retry
loop, and on SIGTERM finishes the batch in flight before it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from .agent import Agent
from .config import AgentPaths
from .errors import AgentError, QueueCorrupt
from .intake import make_intake_app
from .published import pull_quietly
from .sync import Stopped

__all__ = ["run_daemon"]

log = logging.getLogger("client.daemon")


async def _start_page(agent: Agent, port: int) -> web.AppRunner | None:
    """The intake page and local API on 127.0.0.1:``port``; syncing goes on without it
    if the port is taken."""
    runner = web.AppRunner(make_intake_app(agent), access_log=None)
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


async def run_daemon(paths: AgentPaths, *, poll_s: float = 0.5, refused_pause_s: float = 60.0,
                     stop: asyncio.Event | None = None, ui_port: int = 8701,
                     pull_every_s: float = 600.0) -> None:
    """Run until ``stop`` is set (SIGTERM and SIGINT set it); serve the intake page
    on ``ui_port`` (0: no page)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Windows event loops have no signal handlers; the service manager stops
        # the daemon there, and Ctrl-C arrives as KeyboardInterrupt.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    agent = await Agent.open(paths)
    transport = agent.transport()
    engine = agent.engine(transport, stop=stop)
    log.info("daemon running for agent %s", agent.config.agent_id)
    page = await _start_page(agent, ui_port) if ui_port else None
    next_pull = 0.0
    try:
        while not stop.is_set():
            if loop.time() >= next_pull:  # the catalogue and holidays the province publishes
                await pull_quietly(agent, transport)
                next_pull = loop.time() + pull_every_s
            if await agent.waiting():
                try:
                    await engine.push_until_done()
                    next_pull = 0.0  # the link works: fetch what changed meanwhile
                except Stopped:
                    break
                except QueueCorrupt as exc:
                    log.error("queue damaged at epoch %d seq %d; not sending it", exc.epoch,
                              exc.seq)
                    await engine.pause(refused_pause_s)
                except AgentError as exc:
                    log.warning("sync refused: %s", exc)
                    await engine.pause(refused_pause_s)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll_s)
    except Stopped:
        pass
    finally:
        if page is not None:
            await page.cleanup()
        await transport.close()
        await agent.close()
        log.info("daemon stopped")
