"""A waiting agent sends at once when the link returns or `sync-now` asks.

The engine runs in process (to pin its backoff long), against a real syncd
subprocess behind the real link emulator.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import pytest

from client.agent import Agent
from client.config import AgentPaths
from client.sync import SyncLimits
from client.transport import HttpTransport
from tests.support.dossiers import make_dossiers
from tests.support.link import PROFILES, LinkEmulator
from tests.support.procs import Server, agent, enroll_agent


class _Longest(random.Random):
    """Full jitter that always draws the longest wait."""

    def uniform(self, a: float, b: float) -> float:
        return max(a, b)


async def _wait_for(predicate, timeout_s: float, what: str) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not await predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.parametrize("way", ["probe", "wake"])
async def test_waiting_agent_sends_at_once(server: Server, tmp_path: Path, way: str) -> None:
    link = await LinkEmulator("127.0.0.1", server.port, PROFILES["3g"]).start()
    try:
        # Blocking CLI calls run in a thread: the link lives on this event loop.
        agent_dir = await asyncio.to_thread(enroll_agent, server, tmp_path / "agent",
                                            server_url=link.url)
        source = tmp_path / "d.json"
        source.write_text(json.dumps(make_dossiers(30, seed=3), ensure_ascii=False))
        await asyncio.to_thread(agent, "add", "--data-dir", str(agent_dir), str(source))
        paths = AgentPaths(agent_dir)
        officer = await Agent.open(paths)
        transport = HttpTransport(officer.config.server_url)
        probe_s = 1.0 if way == "probe" else 10_000.0
        engine = officer.engine(transport, rng=_Longest(), limits=SyncLimits(
            backoff_base_s=60, backoff_cap_s=60, probe_interval_s=probe_s))
        link.go_down()
        push = asyncio.create_task(engine.push_until_done())

        async def failed_once() -> bool:
            return (await officer.queue.status()).last_error is not None
        await _wait_for(failed_once, 10, "the first failed attempt")
        link.go_up()
        if way == "wake":
            other = await Agent.open(paths)  # what `sync-now` in another process does
            await other.queue.wake()
            await other.close()

        async def drained() -> bool:
            return (await officer.queue.status()).pending == 0
        elapsed = await _wait_for(drained, 15, "the queue to drain")
        assert elapsed < 15  # the backoff drawn was 60 s
        await asyncio.wait_for(push, 5)
        await transport.close()
        await officer.close()
    finally:
        await link.close()
    assert len(server.dossiers()) == 30
