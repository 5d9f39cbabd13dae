"""The commune's intake page in a real browser: headless Debian Chromium (Playwright)
against a real `sync-agent run` daemon whose server is down, then back.

Record a dossier from the form, read the receipt (code, due date), see it waiting
in today's list, then synced once the link is back. Screenshots of the page and
the receipt go to test-output/.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from client.catalogue import VIETNAM, due_at, load_calendar, load_catalogue
from tests.support.procs import AGENT, Server, cli_env, enroll_agent, free_port, wait_until

CHROMIUM = "/usr/bin/chromium"
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"
PROCEDURE = "1.004873"  # Cấp Giấy xác nhận tình trạng hôn nhân: three working days


@pytest.fixture
def desk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Server, str, Path]]:
    server = Server(tmp_path / "server").init().start()
    agent_dir = enroll_agent(server, tmp_path / "agent")
    server.stop()  # the link is down when the citizen arrives
    port = free_port()
    log = open(tmp_path / "daemon.log", "w", encoding="utf-8")  # noqa: SIM115
    request.addfinalizer(log.close)
    daemon = subprocess.Popen([AGENT, "run", "--data-dir", str(agent_dir), "--ui-port",
                               str(port)], stdout=log, stderr=log, env=cli_env())
    wait_until(lambda: "intake page on" in (tmp_path / "daemon.log").read_text()
               or daemon.poll() is not None, what="the intake page")
    try:
        yield server, f"http://127.0.0.1:{port}/", agent_dir / "scans"
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        server.stop()


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": 1366, "height": 768})
        finally:
            browser.close()


def test_record_a_dossier_print_its_receipt_and_see_it_synced(
        desk: tuple[Server, str, Path], page: Page) -> None:
    server, url, scans = desk
    OUTPUT.mkdir(exist_ok=True)
    (scans / "giay-khai-sinh-ban-sao.pdf").write_bytes(b"%PDF-1.4 scanned page\n" * 400)
    (scans / "so-ho-khau.pdf").write_bytes(b"%PDF-1.4 another scan\n" * 300)

    def offered() -> bool:
        page.goto(url)
        return page.locator("input[name=scans]").count() == 2
    wait_until(offered, timeout_s=30, interval_s=0.3, what="the scans to be offered")
    expect(page.locator("h2").first).to_have_text("Hồ sơ mới")
    page.select_option("select[name=procedure_code]", PROCEDURE)
    page.fill("input[name=applicant_name]", "Sùng Thị Hoa")
    page.fill("input[name=applicant_id_number]", "011234567891")
    page.fill("textarea[name=documents]", "Tờ khai\nBản sao CCCD")
    page.locator("input[name=scans][value='giay-khai-sinh-ban-sao.pdf']").focus()
    page.keyboard.press("Space")  # ticked from the keyboard
    page.fill("input[name=officer]", "Vàng A Páo")
    page.keyboard.press("Enter")  # the keyboard alone submits the form

    expect(page).to_have_url(re.compile(r"/dossiers/[0-9a-f-]{36}/receipt$"))
    code = page.locator("#code").inner_text()
    assert re.fullmatch(r"01234-\d{6}-\d{4,6}", code)
    received = datetime.strptime(page.locator("#received").inner_text(),
                                 "%H:%M %d/%m/%Y").replace(tzinfo=VIETNAM)
    procedure = load_catalogue().get(PROCEDURE)
    assert procedure is not None
    due = due_at(received, procedure.processing_working_days, load_calendar())
    assert due is not None
    expect(page.locator("#due")).to_have_text(due.strftime("%H:%M %d/%m/%Y"))
    expect(page.locator("#receipt")).to_contain_text("Sùng Thị Hoa")
    expect(page.locator("#receipt")).to_contain_text("Bản sao CCCD")
    expect(page.locator("#receipt")).to_contain_text("giay-khai-sinh-ban-sao.pdf")
    page.emulate_media(media="print")
    expect(page.get_by_role("button", name="In")).to_be_hidden()  # not on paper
    page.screenshot(path=str(OUTPUT / "receipt.png"), full_page=True)
    page.emulate_media(media="screen")

    page.get_by_role("link", name="Quay lại").click()
    row = page.locator("#today tbody tr", has_text=code)

    def waiting() -> bool:  # "đang gửi" while the daemon's first try is on its way
        page.reload()
        return row.locator("td.sync").inner_text() == "chờ gửi"
    wait_until(waiting, timeout_s=30, interval_s=0.3, what="the list to say waiting")
    # The attached scan left the offer; the other one is still there.
    expect(page.locator("input[name=scans]")).to_have_count(1)
    assert (scans / "attached" / "giay-khai-sinh-ban-sao.pdf").exists()
    page.screenshot(path=str(OUTPUT / "intake.png"), full_page=True)

    server.start()  # the link is back; the daemon pushes by itself

    def synced() -> bool:
        page.reload()
        return row.locator("td.sync").inner_text() == "đã đồng bộ"
    wait_until(synced, timeout_s=60, interval_s=0.5, what="the list to say synced")
    assert [d["code"] for d in server.dossiers()] == [code]

    page.get_by_role("link", name="English").click()
    expect(page.locator("h2").first).to_have_text("New dossier")
    expect(row.locator("td.sync")).to_have_text("synced")
