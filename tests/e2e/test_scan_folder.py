"""The watched scan folder of a real `sync-agent run`: a finished scan is offered
on the intake page, attached to a dossier, moved aside, and reaches the server."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_intake import PROCEDURE, Page
from tests.support.procs import AGENT, Server, agent_status, cli_env, free_port, wait_until


@pytest.fixture
def desk(tmp_path: Path, server: Server, agent_dir: Path
         ) -> Iterator[tuple[Server, Path, Path, Page]]:
    scans = tmp_path / "Máy quét"
    port = free_port()
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115
    daemon = subprocess.Popen([AGENT, "run", "--data-dir", str(agent_dir), "--ui-port",
                               str(port), "--scan-dir", str(scans)], stdout=log, stderr=log,
                              env=cli_env())
    page = Page(port)
    try:
        wait_until(lambda: page.get("/")[0] == 200 or daemon.poll() is not None,
                   what="the intake page")
        assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
        yield server, agent_dir, scans, page
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()


def offered(page: Page) -> list[str]:
    return re.findall(r'name="scans" value="([^"]+)"', page.get("/")[1])


def test_a_finished_scan_is_offered_attached_set_aside_and_sent(
        desk: tuple[Server, Path, Path, Page]) -> None:
    server, agent_dir, scans, page = desk
    assert "Chưa có tệp quét mới." in page.get("/")[1]  # the folder was created, empty
    scan = os.urandom(300_000)
    (scans / "to-khai.pdf").write_bytes(scan)
    (scans / ".hidden.pdf").write_bytes(b"x")
    (scans / "dang-quet.pdf.part").write_bytes(b"half")
    wait_until(lambda: offered(page) == ["to-khai.pdf"], what="the scan to be offered")

    token = page.form_token()
    form = {"form_token": token, "procedure_code": PROCEDURE, "applicant_name": "Thào Thị Dợ",
            "scans": "../api.token"}
    status, _, html = page.post("/dossiers", form)
    assert status == 400 and "không còn trong thư mục quét" in html
    assert "Chưa có hồ sơ nào hôm nay" in html  # nothing was added

    status, location, _ = page.post("/dossiers", {**form, "scans": "to-khai.pdf"})
    assert status == 303, location
    _, receipt = page.get(location)
    assert "to-khai.pdf" in receipt
    assert (scans / "attached" / "to-khai.pdf").read_bytes() == scan
    assert not (scans / "to-khai.pdf").exists()
    assert offered(page) == []

    digest = hashlib.sha256(scan).hexdigest()
    wait_until(lambda: agent_status(agent_dir)["documents_pending"] == 0
               and agent_status(agent_dir)["pending"] == 0, timeout_s=60,
               what="the dossier and its scan to be sent")
    [held] = server.dossiers()
    assert any(d.get("sha256") == digest for d in held["documents"])
    assert (server.data_dir / "documents" / digest).read_bytes() == scan


def test_a_scan_attached_twice_is_refused_the_second_time(
        desk: tuple[Server, Path, Path, Page]) -> None:
    _, _, scans, page = desk
    (scans / "giay-to.jpg").write_bytes(os.urandom(10_000))
    wait_until(lambda: offered(page) == ["giay-to.jpg"], what="the scan to be offered")
    token = page.form_token()  # two tabs opened before either saved
    form = {"form_token": token, "procedure_code": PROCEDURE, "applicant_name": "Lý A Sử",
            "scans": "giay-to.jpg"}
    assert page.post("/dossiers", form)[0] == 303
    status, _, html = page.post("/dossiers", {**form, "applicant_name": "Lý Thị Mỷ"})
    assert status == 400 and "giay-to.jpg" in html
    assert html.count("<tr data-id=") == 1
