"""The operator pages in a real browser: headless Chromium (Debian's, driven by
Playwright) against a real ``syncd serve`` on loopback. Operators are made with
``syncd user add``; dossiers arrive from real ``sync-agent`` processes.

One server serves the whole module (start-up and the agents' pushes are the
slow part); each test gets fresh browser contexts, so no session leaks between
tests. Every wait is a Playwright expectation with a deadline, never a sleep.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from tests.support.dossiers import PROCEDURES, make_dossier
from tests.support.procs import Server, agent, enroll_agent, syncd

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parents[2] / "test-output" / "fleet.png"
VIEWPORT = {"width": 1366, "height": 768}
PASSWORD = "correct horse battery staple"
VN = timezone(timedelta(hours=7))
STALE, FRESH, NEW = "01234", "05678", "07777"
BIRTH, COPY = PROCEDURES[0], PROCEDURES[5]  # (code, name, field, fee)


@dataclass(frozen=True)
class Saved:
    """A dossier as the agent saved it: its id, the code it was given, what we typed."""

    id: str
    code: str
    applicant: str
    procedure_code: str


@dataclass(frozen=True)
class Fleet:
    server: Server
    stale: list[Saved]  # the dossiers of commune STALE


def _intake(applicant: str, procedure: tuple[str, str, str, int], index: int) -> dict[str, Any]:
    """A dossier received an hour ago (Vietnamese time), due in five days."""
    dossier = make_dossier(random.Random(index), index)
    now = datetime.now(VN).replace(microsecond=0)
    dossier.update(procedure_code=procedure[0], procedure_name=procedure[1],
                   field=procedure[2], fees=[],
                   received_at=(now - timedelta(hours=1, minutes=index)).isoformat(),
                   due_at=(now + timedelta(days=5)).isoformat())
    dossier["applicant"]["name"] = applicant
    return dossier


def _push(server: Server, root: Path, commune: str,
          intake: list[dict[str, Any]]) -> tuple[Path, list[Saved]]:
    """Enroll an agent for ``commune``, add ``intake`` and sync it; what was saved."""
    agent_dir = enroll_agent(server, root / f"agent-{commune}", commune)
    source = root / f"intake-{commune}.json"
    source.write_text(json.dumps(intake, ensure_ascii=False), encoding="utf-8")
    ids = agent("add", "--data-dir", str(agent_dir), str(source)).stdout.split()
    assert len(ids) == len(intake)
    agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "30")
    codes = {d["id"]: d["code"] for d in server.dossiers(commune)}
    return agent_dir, [Saved(i, codes[i], d["applicant"]["name"], d["procedure_code"])
                       for i, d in zip(ids, intake, strict=True)]


def _last_seen_days_ago(server: Server, commune: str, days: float) -> None:
    moment = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="milliseconds")
    with closing(sqlite3.connect(server.data_dir / "syncd.db", timeout=10)) as db, db:
        changed = db.execute("UPDATE agents SET last_seen = ? WHERE commune_code = ?",
                             (moment, commune)).rowcount
    assert changed == 1


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("browser")
    server = Server(root / "server").init()
    for name, role in (("admin", "admin"), ("viewer", "viewer")):
        syncd("user", "add", "--data-dir", str(server.data_dir), name, "--role", role,
              input=PASSWORD + "\n")
    server.start()
    try:
        stale_dir, stale = _push(server, root, STALE, [
            _intake("Giàng Seo Páo", BIRTH, 0), _intake("Nguyễn Thị Hoà", BIRTH, 1),
            _intake("Lò Văn Chứ", COPY, 2)])
        for status in ("processing", "finished"):  # the copy is done, on time
            agent("update", "--data-dir", str(stale_dir), stale[2].id, "--status", status)
        agent("sync-now", "--data-dir", str(stale_dir), "--timeout", "30")
        _push(server, root, FRESH, [_intake("Hà Thị Mai", BIRTH, 3)])
        _last_seen_days_ago(server, STALE, 2)
        yield Fleet(server, stale)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_page(browser: Browser, fleet: Fleet) -> Iterator[Callable[[], Page]]:
    """Pages in fresh contexts (own cookies), closed after the test."""
    contexts = []

    def make() -> Page:
        context = browser.new_context(base_url=fleet.server.url, viewport=VIEWPORT)
        context.set_default_timeout(10_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def log_in(page: Page, user: str, server: Server) -> None:
    """Through the form, from the redirect any page gives without a session."""
    page.goto("/ui/")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    page.get_by_label("Tài khoản").fill(user)
    page.get_by_label("Mật khẩu").fill(PASSWORD)
    page.get_by_role("button", name="Đăng nhập").click()
    expect(page).to_have_url(server.url + "/ui/")
    expect(page.locator("header")).to_contain_text(user)


def fleet_row(page: Page, commune: str) -> Locator:
    return page.locator(f'table#fleet tr[data-commune="{commune}"]')


def cell(table: Locator, row: Locator, header: str) -> Locator:
    """The cell of ``row`` under the column headed ``header`` (exact text)."""
    heading = table.locator("thead th").filter(
        has_text=re.compile(rf"^\s*{re.escape(header)}\s*$"))
    return row.locator("td").nth(heading.evaluate("th => th.cellIndex"))  # waits for it


def test_a_viewer_sees_the_stale_commune_and_opens_its_dossier(
        fleet: Fleet, new_page: Callable[[], Page]) -> None:
    page = new_page()
    log_in(page, "viewer", fleet.server)
    fleet_table = page.locator("table#fleet")
    stale, fresh = fleet_row(page, STALE), fleet_row(page, FRESH)
    expect(stale).to_have_class("behind")
    expect(cell(fleet_table, stale, "Trạng thái")).to_have_text("Chậm đồng bộ")
    expect(cell(fleet_table, stale, "Liên lạc gần nhất")).to_have_text("2 ngày trước")
    expect(fresh).not_to_have_class(re.compile(r"\bbehind\b"))
    expect(cell(fleet_table, fresh, "Trạng thái")).to_have_text("Bình thường")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    stale.get_by_role("link", name=STALE, exact=True).click()
    expect(page).to_have_url(f"{fleet.server.url}/ui/communes/{STALE}")
    dossiers = page.locator("table#dossiers tbody tr")
    expect(dossiers).to_have_count(len(fleet.stale))
    chosen = fleet.stale[1]
    assert re.fullmatch(rf"{STALE}-\d{{6}}-\d{{4,6}}", chosen.code)
    dossiers.filter(has_text=chosen.applicant).get_by_role(
        "link", name=chosen.code, exact=True).click()

    expect(page).to_have_url(f"{fleet.server.url}/ui/dossiers/{chosen.id}")
    expect(page.locator("h1")).to_contain_text(chosen.code)
    applicant = page.locator("table#fields tr").filter(
        has=page.locator("th", has_text="Người nộp")).locator("td")
    expect(applicant).to_contain_text(chosen.applicant)
    expect(page.locator("table#events tbody tr")).to_have_count(1)  # created, accepted
    expect(page.locator("table#events tbody")).to_contain_text("đã nhận")
    expect(page.locator("table#events tbody tr td").nth(1)).to_have_text("created")


def test_the_on_time_report_counts_what_was_received(
        fleet: Fleet, new_page: Callable[[], Page]) -> None:
    page = new_page()
    log_in(page, "viewer", fleet.server)
    page.get_by_role("link", name="Báo cáo đúng hạn").click()
    expect(page).to_have_url(f"{fleet.server.url}/ui/report")
    report = page.locator("table#report")
    expect(report.locator("thead")).to_contain_text("Tỷ lệ đúng hạn")
    expect(page.locator("svg#report-chart")).to_be_visible()

    def row(procedure_code: str) -> Locator:
        return report.locator("tbody tr").filter(
            has=page.get_by_role("link", name=STALE, exact=True)).filter(has_text=procedure_code)

    births = sum(s.procedure_code == BIRTH[0] for s in fleet.stale)
    expect(row(BIRTH[0])).to_have_count(1)
    expect(cell(report, row(BIRTH[0]), "Tiếp nhận")).to_have_text(str(births))
    expect(cell(report, row(COPY[0]), "Tiếp nhận")).to_have_text("1")
    expect(cell(report, row(COPY[0]), "Xong đúng hạn")).to_have_text("1")
    expect(cell(report, row(COPY[0]), "Tỷ lệ đúng hạn")).to_have_text(
        re.compile(r"100(\.0)?\s*%"))

    # The form narrows it to one commune.
    page.get_by_label("Xã", exact=True).fill(STALE)
    page.get_by_role("button", name="Xem").click()
    expect(page).to_have_url(re.compile(rf"/ui/report\?.*commune={STALE}"))
    expect(report.locator("tbody tr")).to_have_count(2)  # birth and copy, not FRESH's


def test_only_an_admin_may_enroll_and_the_token_enrolls(
        fleet: Fleet, new_page: Callable[[], Page], tmp_path: Path) -> None:
    viewer = new_page()
    log_in(viewer, "viewer", fleet.server)
    expect(viewer.locator("header nav")).to_contain_text("Báo cáo đúng hạn")
    expect(viewer.get_by_role("link", name="Cấp mã đăng ký")).to_have_count(0)
    response = viewer.goto("/ui/enroll")
    assert response is not None and response.status == 403
    expect(viewer.get_by_role("alert")).to_have_text("Chỉ quản trị viên được làm việc này.")

    admin = new_page()
    log_in(admin, "admin", fleet.server)
    admin.get_by_role("link", name="Cấp mã đăng ký").click()
    expect(admin).to_have_url(f"{fleet.server.url}/ui/enroll")
    admin.get_by_label("Xã", exact=True).fill(NEW)
    admin.get_by_label("Tên", exact=True).fill("Bộ phận một cửa")
    admin.get_by_role("button", name="Tạo mã").click()
    shown = admin.locator("#token")
    expect(shown).to_contain_text(f"sync-agent init --server {fleet.server.url} --token ")
    qr = admin.get_by_role("img", name="QR")
    expect(qr).to_be_visible()
    expect(qr).to_have_attribute("src", re.compile(r"^data:image/svg\+xml"))
    admin.wait_for_function("img => img.complete && img.naturalWidth > 0",
                            arg=qr.element_handle())  # the CSP lets the data: image load

    # The token on the page is a real one: a commune PC enrolls with it.
    token = shown.inner_text().split("--token", 1)[1].strip()
    agent("init", "--data-dir", str(tmp_path / "agent"), "--server", fleet.server.url,
          "--token", token)
    admin.get_by_role("link", name="Các xã").click()
    expect(fleet_row(admin, NEW)).to_have_count(1)


def test_the_english_link_switches_the_labels_and_sticks(
        fleet: Fleet, new_page: Callable[[], Page]) -> None:
    page = new_page()
    log_in(page, "viewer", fleet.server)
    page.get_by_role("link", name="English").click()
    expect(page).to_have_url(re.compile(r"/ui/\?lang=en$"))
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("h1")).to_have_text("Communes")
    expect(page.locator("header nav")).to_contain_text("On-time report")
    expect(page.get_by_role("button", name="Log out")).to_be_visible()
    expect(cell(page.locator("table#fleet"), fleet_row(page, STALE), "Status")).to_have_text(
        "Behind")

    # Kept in a cookie: the next page, without ?lang, is English too.
    fleet_row(page, STALE).get_by_role("link", name=STALE, exact=True).click()
    expect(page).to_have_url(f"{fleet.server.url}/ui/communes/{STALE}")
    expect(page.locator("h1")).to_have_text(f"Commune {STALE}")
    expect(page.locator("table#dossiers thead")).to_contain_text("Applicant")
