"""The intake page and local API of a real `sync-agent run` daemon, offline then online."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from client.catalogue import VIETNAM, due_at, load_calendar, load_catalogue
from tests.support.procs import AGENT, Server, cli_env, enroll_agent, free_port, wait_until

PROCEDURE = "1.004873"  # three working days


class Page:
    """A tiny browser for the daemon's page: forms as urlencoded posts, no redirects followed."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except urllib.error.URLError:
            return 0, ""  # not listening (yet)

    def post(self, path: str, data: dict[str, str], headers: dict[str, str] | None = None,
             body: bytes | None = None) -> tuple[int, str, str]:
        request = urllib.request.Request(
            self.base + path, data=body if body is not None else
            urllib.parse.urlencode(data).encode(), headers=headers or {}, method="POST")
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=30) as resp:
                return resp.status, resp.headers.get("Location", ""), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Location", ""), exc.read().decode()

    def form_token(self) -> str:
        _, html = self.get("/")
        match = re.search(r'name="form_token" value="([^"]+)"', html)
        assert match
        return match.group(1)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture
def desk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Server, Path, Page]]:
    server = Server(tmp_path / "server").init().start()
    agent_dir = enroll_agent(server, tmp_path / "agent")
    server.stop()  # the link is down
    port = free_port()
    log = open(tmp_path / "daemon.log", "w", encoding="utf-8")  # noqa: SIM115
    request.addfinalizer(log.close)
    daemon = subprocess.Popen([AGENT, "run", "--data-dir", str(agent_dir), "--ui-port",
                               str(port)], stdout=log, stderr=log, env=cli_env())
    page = Page(port)
    wait_until(lambda: page.get("/")[0] == 200 if daemon.poll() is None else True,
               what="the intake page")
    assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
    try:
        yield server, agent_dir, page
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        server.stop()


def row(page: Page, dossier_id: str) -> str:
    _, html = page.get("/")
    match = re.search(rf'<tr data-id="{dossier_id}">(.*?)</tr>', html, re.S)
    assert match, "dossier not in today's list"
    return match.group(1)


def test_record_print_and_watch_it_reach_the_province(
        desk: tuple[Server, Path, Page]) -> None:
    server, _, page = desk
    token = page.form_token()
    status, location, _ = page.post("/dossiers", {
        "form_token": token, "procedure_code": PROCEDURE, "applicant_name": "Lò Thị Mai",
        "applicant_id_number": "011234567890", "documents": "Tờ khai\nBản sao CCCD",
        "officer": "Cán bộ Vàng A Páo"})
    assert status == 303 and location.endswith("/receipt"), location
    dossier_id = location.split("/")[2]

    status, receipt = page.get(location)
    assert status == 200
    code = re.search(r'<td id="code">([^<]+)</td>', receipt)
    received = re.search(r'<td id="received">([^<]+)</td>', receipt)
    due = re.search(r'<td id="due">([^<]+)</td>', receipt)
    assert code and code.group(1).startswith("01234-") and received and due
    received_at = datetime.strptime(received.group(1), "%H:%M %d/%m/%Y").replace(tzinfo=VIETNAM)
    procedure = load_catalogue().get(PROCEDURE)
    assert procedure is not None
    expected = due_at(received_at, procedure.processing_working_days, load_calendar())
    assert expected is not None and due.group(1) == expected.strftime("%H:%M %d/%m/%Y")
    assert "Lò Thị Mai" in receipt and "Bản sao CCCD" in receipt and "Vàng A Páo" in receipt

    assert "chờ gửi" in row(page, dossier_id)
    server.start()  # the link is back: the daemon pushes by itself
    wait_until(lambda: "đã đồng bộ" in row(page, dossier_id), timeout_s=60,
               what="the list to say synced")
    [held] = server.dossiers()
    assert held["id"] == dossier_id and held["code"] == code.group(1)
    assert held["due_at"] == expected.isoformat()

    # A status change from the page waits, then reaches the province too.
    status, _, _ = page.post(f"/dossiers/{dossier_id}/status",
                             {"form_token": token, "status": "processing"})
    assert status == 303
    assert "Đang xử lý" in row(page, dossier_id)
    wait_until(lambda: server.dossiers()[0]["status"] == "processing", timeout_s=60,
               what="the status on the server")


def test_forms_without_the_token_and_bad_input_change_nothing(
        desk: tuple[Server, Path, Page]) -> None:
    _, _, page = desk
    status, _, _ = page.post("/dossiers", {"procedure_code": PROCEDURE,
                                           "applicant_name": "Forged"})
    assert status == 403
    status, _, html = page.post("/dossiers", {"form_token": page.form_token(),
                                              "procedure_code": "9.999999",
                                              "applicant_name": "X"})
    assert status == 400 and "chọn một thủ tục" in html
    assert "Chưa có hồ sơ nào hôm nay" in page.get("/")[1]


def test_local_api_needs_the_token_and_validates_like_add(
        desk: tuple[Server, Path, Page]) -> None:
    _, agent_dir, page = desk
    token = (agent_dir / "api.token").read_text().strip()
    assert (agent_dir / "api.token").stat().st_mode & 0o077 == 0
    dossier = {"procedure_code": "1.001193", "procedure_name": "Đăng ký khai sinh",
               "applicant": {"name": "Giàng Seo Dính"},
               "received_at": "2026-11-26T09:00:00+07:00"}
    body = json.dumps(dossier).encode()
    json_type = {"Content-Type": "application/json"}
    for headers in (json_type, {**json_type, "Authorization": "Bearer wrong"}):
        status, _, answer = page.post("/api/dossiers", {}, headers, body)
        assert status == 401 and "token" in answer
    auth = {**json_type, "Authorization": f"Bearer {token}"}
    status, _, answer = page.post("/api/dossiers", {}, auth,
                                  json.dumps({"applicant": {}}).encode())
    assert status == 400 and json.loads(answer)["problems"]
    status, _, answer = page.post("/api/dossiers", {}, auth, body)
    assert status == 201
    [dossier_id] = json.loads(answer)["ids"]
    request = urllib.request.Request(f"{page.base}/api/dossiers/{dossier_id}",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        held = json.loads(resp.read())
    assert held["applicant"]["name"] == "Giàng Seo Dính" and held["sync"] == "waiting"
    assert page.get(f"/api/dossiers/{dossier_id}")[0] == 401
