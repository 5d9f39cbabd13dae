"""`sync-now` with the daemon running: it asks the daemon and shows the daemon's
progress instead of sending itself; without a daemon (or after one was killed)
it syncs by itself; a second daemon on the same data directory refuses to start."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from client.agent import Agent
from client.config import AgentPaths
from client.control import SyncActivity
from client.intake import make_intake_app
from tests.support.dossiers import make_dossiers
from tests.support.procs import AGENT, Server, agent, cli_env, communicate_within, wait_until

ASKING_VI = "Dịch vụ đồng bộ nền đang chạy"


def add(agent_dir: Path, count: int, seed: int, tmp_path: Path) -> None:
    path = tmp_path / f"dossiers-{seed}.json"
    path.write_text(json.dumps(make_dossiers(count, seed=seed), ensure_ascii=False),
                    encoding="utf-8")
    agent("add", "--data-dir", str(agent_dir), str(path))


@pytest.fixture
def daemon(agent_dir: Path, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([AGENT, "run", "--data-dir", str(agent_dir), "--ui-port", "0"],
                            stdout=log, stderr=log, env=cli_env())
    wait_until(lambda: (agent_dir / "daemon.json").exists() or proc.poll() is not None,
               what="the daemon to announce its control port")
    assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        log.close()


class Terminal:
    """A pseudo-terminal for a child's stderr, read as it writes."""

    def __init__(self) -> None:
        self.main, self.side = pty.openpty()
        self.shown = b""

    def read_until(self, needle: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while needle.encode() not in self.shown:
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not shown: {self.shown.decode()!r}")
            with contextlib.suppress(BlockingIOError):
                os.set_blocking(self.main, False)
                self.shown += os.read(self.main, 65536)
            time.sleep(0.05)
        return self.shown.decode()

    def drain(self) -> str:
        os.close(self.side)
        os.set_blocking(self.main, True)
        with contextlib.suppress(OSError):  # EIO once the terminal is closed and drained
            while chunk := os.read(self.main, 65536):
                self.shown += chunk
        os.close(self.main)
        return self.shown.decode()


def test_sync_now_asks_the_running_daemon_and_shows_its_progress(
        tmp_path: Path, server: Server, agent_dir: Path,
        daemon: subprocess.Popen[bytes]) -> None:
    server.stop()  # the link is down: the daemon keeps trying
    add(agent_dir, 30, 1, tmp_path)
    terminal = Terminal()
    run = subprocess.Popen([AGENT, "sync-now", "--data-dir", str(agent_dir), "--timeout",
                            "90"], stdout=subprocess.PIPE, stderr=terminal.side, text=True,
                           env=cli_env("vi"))
    terminal.read_until(ASKING_VI, 30)  # it asked the daemon, and waits on it
    server.start()  # the link is back: the daemon sends
    code, out, _ = communicate_within(run, 120)
    shown = terminal.drain()
    assert code == 0, (out, shown)
    assert "không còn gì chờ gửi" in out
    assert re.search(r"█+ Đã đồng bộ 30/30 bản ghi, đã gửi \d+ KiB", shown), shown
    assert "tự gửi" not in shown  # it never fell back to sending by itself
    assert len(server.dossiers()) == 30
    assert daemon.poll() is None


def test_sync_now_through_the_daemon_says_why_records_still_wait(
        tmp_path: Path, server: Server, agent_dir: Path,
        daemon: subprocess.Popen[bytes]) -> None:
    server.stop()
    add(agent_dir, 3, 2, tmp_path)
    result = agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "3", "--lang", "en",
                   check=False)
    assert result.returncode == 3, result
    assert "The background sync service is running" in result.stderr
    assert ("0 records have reached the province; 3 records still waiting. Reason: timed out "
            "after 3") in result.stderr
    assert daemon.poll() is None  # the daemon goes on trying


def test_two_sync_now_with_a_daemon_send_nothing_twice(
        tmp_path: Path, server: Server, agent_dir: Path,
        daemon: subprocess.Popen[bytes]) -> None:
    server.stop()
    add(agent_dir, 40, 3, tmp_path)
    runs = [subprocess.Popen([AGENT, "sync-now", "--data-dir", str(agent_dir), "--timeout",
                              "90"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=cli_env()) for _ in range(2)]
    server.start()
    results = [communicate_within(run, 120) for run in runs]
    assert [code for code, _, _ in results] == [0, 0], results
    assert all("nothing is waiting" in out for _, out, _ in results)
    assert all("The background sync service is running" in err for _, _, err in results)
    held = server.dossiers()
    assert len(held) == 40 and len({d["id"] for d in held}) == 40
    assert server.alerts() == []
    batches = [line for line in server.log.read_text().splitlines() if "records 1-" in line]
    assert len(batches) == 1, batches  # one sender: the daemon


def test_after_the_daemon_is_killed_sync_now_sends_by_itself(
        tmp_path: Path, server: Server, agent_dir: Path,
        daemon: subprocess.Popen[bytes]) -> None:
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(timeout=30)
    assert (agent_dir / "daemon.json").exists()  # left behind by SIGKILL
    add(agent_dir, 5, 4, tmp_path)
    result = agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "60", "--lang", "en")
    assert "background sync service" not in result.stderr
    assert "nothing is waiting" in result.stdout
    assert len(server.dossiers()) == 5


def test_a_second_daemon_on_the_same_data_directory_refuses_to_start(
        agent_dir: Path, daemon: subprocess.Popen[bytes]) -> None:
    second = agent("run", "--data-dir", str(agent_dir), "--ui-port", "0", "--lang", "vi",
                   check=False)
    assert second.returncode == 1
    assert "Dịch vụ đồng bộ nền đã chạy cho thư mục dữ liệu này rồi." in second.stderr
    assert daemon.poll() is None


async def test_the_intake_list_says_sending_only_while_records_are_on_their_way(
        agent_dir: Path) -> None:
    agent_ = await Agent.open(AgentPaths(agent_dir))
    activity = SyncActivity()
    runner = web.AppRunner(make_intake_app(agent_, activity))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as http:
            async def sync_word() -> str:
                async with http.get(base + "/") as response:
                    html = await response.text()
                match = re.search(r'<td class="sync (\w+)">', html)
                assert match, html
                return match.group(1)

            async with http.get(base + "/") as response:
                token = re.search(r'name="form_token" value="([^"]+)"', await response.text())
            assert token
            async with http.post(base + "/dossiers", allow_redirects=False, data={
                    "form_token": token.group(1), "procedure_code": "1.004873",
                    "applicant_name": "Hờ A Chứ"}) as response:
                assert response.status == 303
            assert await sync_word() == "waiting"
            activity.begin(0)  # the daemon starts a sync
            assert await sync_word() == "sending"
            await activity.retrying(TimeoutError("link down"))  # its attempt failed
            assert await sync_word() == "waiting"
            activity.progress(0, 1, 512)  # a batch went through: sending again
            assert await sync_word() == "sending"
            activity.end(None)
            assert await sync_word() == "waiting"  # not acknowledged: still waits
    finally:
        await runner.cleanup()
        await agent_.close()
