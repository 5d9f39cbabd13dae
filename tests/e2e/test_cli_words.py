"""What the officer reads: `status` in words in both languages, and two `sync-now`
pressed at once (one waits for the other; nothing is sent twice)."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import subprocess
from pathlib import Path

from tests.support.dossiers import make_dossiers
from tests.support.procs import AGENT, Server, agent, cli_env, communicate_within


def add(agent_dir: Path, count: int, seed: int, tmp_path: Path) -> list[str]:
    path = tmp_path / f"dossiers-{seed}.json"
    path.write_text(json.dumps(make_dossiers(count, seed=seed), ensure_ascii=False),
                    encoding="utf-8")
    return agent("add", "--data-dir", str(agent_dir), str(path)).stdout.split()


def test_status_says_in_words_what_waits_and_when_it_last_synced(
        tmp_path: Path, server: Server, agent_dir: Path) -> None:
    never = agent("status", "--data-dir", str(agent_dir), lang="vi").stdout
    assert "lần đồng bộ gần nhất chưa bao giờ" in never
    add(agent_dir, 3, 1, tmp_path)
    agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "60")
    synced = agent("status", "--data-dir", str(agent_dir), lang="vi").stdout
    assert "Mọi bản ghi đã đến tỉnh; lần đồng bộ gần nhất vừa xong." in synced

    server.stop()
    [first, *_] = add(agent_dir, 3, 2, tmp_path)
    agent("update", "--data-dir", str(agent_dir), first, "--status", "processing")
    agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "2", check=False)
    vi = agent("status", "--data-dir", str(agent_dir), lang="vi").stdout
    assert "3 hồ sơ chưa đồng bộ; lần đồng bộ gần nhất vừa xong." in vi
    assert "Chờ gửi 4 bản ghi (hồ sơ mới và thay đổi trạng thái)." in vi
    assert "Lý do còn chờ:" in vi
    en = agent("status", "--data-dir", str(agent_dir), "--lang", "en", lang="vi").stdout
    assert "3 dossiers not yet synced; last sync just now." in en and "Why they wait:" in en
    report = json.loads(agent("status", "--data-dir", str(agent_dir), "--json").stdout)
    assert (report["pending"], report["dossiers_pending"]) == (4, 3)
    later = subprocess.run([AGENT, "status", "--data-dir", str(agent_dir)], text=True,
                           capture_output=True, timeout=60,
                           env={**cli_env("vi"), "SYNC_AGENT_CLOCK_OFFSET_S": "660"})
    assert "lần đồng bộ gần nhất 11 phút trước" in later.stdout


def test_two_sync_now_at_once_one_waits_and_nothing_is_sent_twice(
        tmp_path: Path, server: Server, agent_dir: Path) -> None:
    add(agent_dir, 40, 3, tmp_path)
    runs = [subprocess.Popen([AGENT, "sync-now", "--data-dir", str(agent_dir), "--timeout",
                              "90"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=cli_env()) for _ in range(2)]
    results = [communicate_within(run, 120) for run in runs]
    assert [code for code, _, _ in results] == [0, 0], results
    assert all("nothing is waiting" in out for _, out, _ in results)
    held = server.dossiers()
    assert len(held) == 40 and len({d["id"] for d in held}) == 40
    assert server.alerts() == []  # no record was resent with other content
    [row] = server.agents()
    assert row["acked_seq"] == 40
    log = (server.data_dir.parent / f"{server.data_dir.name}-serve.log").read_text()
    batches = [line for line in log.splitlines() if "records 1-" in line]
    assert len(batches) == 1, batches  # the second run found nothing left to send


def test_sync_now_at_a_terminal_shows_a_bar_with_records_and_bytes(
        tmp_path: Path, server: Server, agent_dir: Path) -> None:
    add(agent_dir, 30, 4, tmp_path)
    main, terminal = pty.openpty()
    try:
        run = subprocess.Popen([AGENT, "sync-now", "--data-dir", str(agent_dir), "--timeout",
                                "60"], stdout=subprocess.PIPE, stderr=terminal, text=True,
                               env=cli_env("vi"))
        code, out, _ = communicate_within(run, 90)
        os.close(terminal)
        terminal = -1
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the terminal is closed and drained
            while chunk := os.read(main, 65536):
                shown += chunk
    finally:
        os.close(main)
        if terminal != -1:
            os.close(terminal)
    text = shown.decode()
    assert code == 0 and "không còn gì chờ gửi" in out
    assert re.search(r"█+ Đã đồng bộ 30/30 bản ghi, đã gửi \d+ KiB", text), text
