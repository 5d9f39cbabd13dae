"""A status set at the province reaches the commune's list: a real `syncd serve`, the
operator's `syncd set-status`, a real `sync-agent run` daemon and `sync-agent sync-now`."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from client.catalogue import VIETNAM
from tests.e2e.test_intake import Page, row
from tests.support.procs import AGENT, Server, agent, cli_env, free_port, syncd, wait_until


@contextlib.contextmanager
def running_daemon(agent_dir: Path, tmp_path: Path) -> Iterator[Page]:
    """`sync-agent run` for the enrolled agent, its intake page on a free port."""
    port = free_port()
    with open(tmp_path / "daemon.log", "w", encoding="utf-8") as log:
        proc = subprocess.Popen([AGENT, "run", "--data-dir", str(agent_dir), "--ui-port",
                                 str(port)], stdout=log, stderr=log, env=cli_env())
        page = Page(port)
        try:
            wait_until(lambda: page.get("/")[0] == 200 if proc.poll() is None else True,
                       what="the intake page")
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
            yield page
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.fixture
def daemon(server: Server, agent_dir: Path, tmp_path: Path) -> Iterator[Page]:
    with running_daemon(agent_dir, tmp_path) as page:
        yield page


def api(page: Page, agent_dir: Path, dossier_id: str) -> dict[str, Any]:
    token = (agent_dir / "api.token").read_text().strip()
    request = urllib.request.Request(f"{page.base}/api/dossiers/{dossier_id}",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return dict(json.loads(resp.read()))


def test_a_status_set_at_the_province_reaches_the_list_and_a_later_local_one_wins(
        server: Server, agent_dir: Path, daemon: Page) -> None:
    page = daemon
    token = (agent_dir / "api.token").read_text().strip()
    received = datetime.now(VIETNAM).replace(microsecond=0).isoformat()  # today's list
    dossier = {"procedure_code": "1.001193", "procedure_name": "Đăng ký khai sinh",
               "applicant": {"name": "Sùng A Dế"}, "received_at": received}
    status, _, answer = page.post("/api/dossiers", {}, {
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        json.dumps(dossier).encode())
    assert status == 201, answer
    [dossier_id] = json.loads(answer)["ids"]
    wait_until(lambda: api(page, agent_dir, dossier_id)["sync"] == "synced", timeout_s=60,
               what="the daemon to push the dossier")
    [held] = server.dossiers()
    assert held["id"] == dossier_id and api(page, agent_dir, dossier_id)["central"] is None

    # The district finishes it; the operator records that at the province.
    done = syncd("set-status", "--data-dir", str(server.data_dir), held["code"], "finished",
                 "--note", "Đã ký, mời nhận kết quả", "--by", "huyen.vanthu")
    assert "received -> finished" in done.stderr
    assert server.dossiers()[0]["status"] == "finished"

    agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "60")  # asks the daemon
    shown = api(page, agent_dir, dossier_id)
    assert shown["status"] == "finished" and shown["sync"] == "synced"
    assert shown["central"]["status"] == "finished"
    assert shown["central"]["by"] == "huyen.vanthu"
    assert shown["central"]["note"] == "Đã ký, mời nhận kết quả"
    assert shown["central"]["at"].endswith("+07:00")
    assert "Đã giải quyết" in row(page, dossier_id)
    assert "cập nhật từ tỉnh/huyện" in row(page, dossier_id)
    html = page.get("/")[1]
    central = re.search(rf'<tr data-central-id="{dossier_id}">(.*?)</tr>', html, re.S)
    assert central and "huyen.vanthu" in central.group(1)
    assert "Đã ký, mời nhận kết quả" in central.group(1)

    # The officer returns the result at the desk afterwards: the local word wins,
    # here and, once pushed, at the province.
    status, _, _ = page.post(f"/dossiers/{dossier_id}/status",
                             {"form_token": page.form_token(), "status": "returned"})
    assert status == 303
    shown = api(page, agent_dir, dossier_id)
    assert shown["status"] == "returned" and shown["central"] is None
    assert "Đã trả kết quả" in row(page, dossier_id)
    assert f'data-central-id="{dossier_id}"' not in page.get("/")[1]
    wait_until(lambda: server.dossiers()[0]["status"] == "returned", timeout_s=60,
               what="the local change to reach the province")
    agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "60")
    assert api(page, agent_dir, dossier_id)["status"] == "returned"  # nothing new came down


def test_a_status_set_after_a_usb_import_shows_once_the_daemon_starts(
        server: Server, agent_dir: Path, tmp_path: Path) -> None:
    """The stick carried the dossier to the province, the district finished it,
    and the PC had not brought the acks back: when the daemon starts with the
    link up it pushes (the server already holds it) before it asks what came
    down, so the PC shows the province's word."""
    received = datetime.now(VIETNAM).replace(microsecond=0).isoformat()
    source = tmp_path / "dossier.json"
    source.write_text(json.dumps({"procedure_code": "1.001193",
                                  "procedure_name": "Đăng ký khai sinh",
                                  "applicant": {"name": "Vừ A Tủa"}, "received_at": received},
                                 ensure_ascii=False), encoding="utf-8")
    [dossier_id] = agent("add", "--data-dir", str(agent_dir), str(source)).stdout.split()
    stick = tmp_path / "stick"
    agent("export", "--data-dir", str(agent_dir), "--to", str(stick))
    syncd("import", "--data-dir", str(server.data_dir), str(stick))
    [held] = server.dossiers()
    syncd("set-status", "--data-dir", str(server.data_dir), held["code"], "finished",
          "--by", "huyen.vanthu")

    with running_daemon(agent_dir, tmp_path) as page:
        wait_until(lambda: api(page, agent_dir, dossier_id)["status"] == "finished",
                   timeout_s=60, what="the province's status on the PC")
        shown = api(page, agent_dir, dossier_id)
        assert shown["sync"] == "synced" and shown["central"]["by"] == "huyen.vanthu"
    assert server.dossiers()[0]["status"] == "finished"
