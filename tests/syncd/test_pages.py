"""The operator pages over a real aiohttp server on loopback: login, roles,
CSRF, and what the fleet, commune, dossier and alerts pages show."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import BatchBody
from protocol.messages import decode_ack, decode_enroll_reply
from syncd.accounts import add_user, check_login, hash_password, verify_password
from syncd.app import make_app
from syncd.config import ServerConfig
from syncd.errors import RequestError
from syncd.keys import ServerKeys
from syncd.store import SqliteStore
from tests.support.procs import syncd
from tests.syncd.test_app import created, enroll, send

PASSWORD = "correct horse battery"


@pytest.fixture
async def users(store: SqliteStore) -> None:
    await add_user(store, "admin", PASSWORD, "admin")
    await add_user(store, "viewer", PASSWORD, "viewer")


@pytest.fixture
async def client(store: SqliteStore, keys: ServerKeys, users: None
                 ) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(make_app(ServerConfig(), store, keys))) as client:
        yield client


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no hidden field {name}"
    return match.group(1)


async def login(client: TestClient[Any, Any], user: str, password: str = PASSWORD) -> str:
    """Log in through the form; return the CSRF token the pages carry."""
    page = await client.get("/ui/login")
    nonce = hidden(await page.text(), "nonce")
    resp = await client.post("/ui/login", data={"user": user, "password": password,
                                                "nonce": nonce, "next": "/ui/"})
    assert resp.status == 200 and resp.url.path == "/ui/", await resp.text()
    return hidden(await resp.text(), "csrf")


async def test_passwords_are_kept_as_scrypt_hashes(store: SqliteStore, users: None) -> None:
    [(stored,)] = await store.read("SELECT password_hash FROM users WHERE name = 'admin'")
    assert stored.startswith("scrypt$") and PASSWORD not in stored
    assert verify_password(PASSWORD, stored) and not verify_password("wrong", stored)
    assert hash_password(PASSWORD) != hash_password(PASSWORD)  # salted
    with pytest.raises(RequestError, match="at least"):
        await add_user(store, "short", "123", "viewer")
    with pytest.raises(RequestError, match="already exists"):
        await add_user(store, "admin", PASSWORD, "admin")
    with pytest.raises(RequestError, match="role"):
        await add_user(store, "x", PASSWORD, "root")


@pytest.mark.parametrize("path", ["/ui/", "/ui/alerts", "/ui/enroll", "/ui/communes/01234",
                                  "/ui/dossiers/x"])
async def test_no_page_without_login(client: TestClient[Any, Any], path: str) -> None:
    resp = await client.get(path, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/ui/login?next=")
    forged = await client.post("/ui/enroll", data={"commune": "01234"}, allow_redirects=False)
    assert forged.status == 303


async def test_a_wrong_password_is_refused_and_logs_nobody_in(
        client: TestClient[Any, Any]) -> None:
    page = await client.get("/ui/login")
    nonce = hidden(await page.text(), "nonce")
    resp = await client.post("/ui/login", data={"user": "admin", "password": "wrong password",
                                                "nonce": nonce})
    assert resp.status == 401 and "Sai tài khoản hoặc mật khẩu" in await resp.text()
    assert (await client.get("/ui/", allow_redirects=False)).status == 303


async def test_login_without_the_form_nonce_is_refused(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/ui/login", data={"user": "admin", "password": PASSWORD})
    assert resp.status == 403
    assert (await client.get("/ui/", allow_redirects=False)).status == 303


async def test_session_cookie_is_http_only_and_strict(client: TestClient[Any, Any]) -> None:
    page = await client.get("/ui/login")
    nonce = hidden(await page.text(), "nonce")
    resp = await client.post("/ui/login", data={"user": "admin", "password": PASSWORD,
                                                "nonce": nonce}, allow_redirects=False)
    cookie = resp.cookies["syncd_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/ui"


async def test_a_viewer_cannot_enroll_or_revoke(client: TestClient[Any, Any],
                                                store: SqliteStore) -> None:
    csrf = await login(client, "viewer")
    assert (await client.get("/ui/enroll")).status == 403
    resp = await client.post("/ui/enroll", data={"csrf": csrf, "commune": "01234"})
    assert resp.status == 403 and "Chỉ quản trị viên" in await resp.text()
    status, reply = await enroll(client, store, Ed25519PrivateKey.generate())
    assert status == 200
    agent_id = decode_enroll_reply(reply).agent_id
    resp = await client.post(f"/ui/agents/{agent_id}/revoke", data={"csrf": csrf})
    assert resp.status == 403
    assert [a["revoked"] for a in await store.agents()] == [False]
    assert await store.read("SELECT count(*) FROM tokens") == [(1,)]  # only the one above


async def test_a_form_without_the_csrf_token_changes_nothing(client: TestClient[Any, Any],
                                                             store: SqliteStore) -> None:
    csrf = await login(client, "admin")
    before = await store.read("SELECT count(*) FROM tokens")
    for data in ({"commune": "01234"}, {"commune": "01234", "csrf": "forged"}):
        resp = await client.post("/ui/enroll", data=data)
        assert resp.status == 403
    assert await store.read("SELECT count(*) FROM tokens") == before
    resp = await client.post("/ui/enroll", data={"csrf": csrf, "commune": "01234",
                                                 "name": "Xã Tả Van"})
    html = await resp.text()
    assert resp.status == 200
    token = re.search(r"--token (cs1\.\S+)</p>", html)
    assert token and 'id="qr" src="data:image/svg+xml' in html
    assert await store.read("SELECT count(*) FROM tokens") == [(before[0][0] + 1,)]
    # The token is shown once: the enroll page does not show it again.
    assert token.group(1) not in await (await client.get("/ui/enroll")).text()
    # A bad commune code is refused with the reason, nothing created.
    resp = await client.post("/ui/enroll", data={"csrf": csrf, "commune": "12"})
    assert resp.status == 400 and "5" in await resp.text()


async def test_admin_revokes_an_agent_from_the_commune_page(client: TestClient[Any, Any],
                                                            store: SqliteStore) -> None:
    csrf = await login(client, "admin")
    _, reply = await enroll(client, store, Ed25519PrivateKey.generate())
    agent_id = decode_enroll_reply(reply).agent_id
    resp = await client.post(f"/ui/agents/{agent_id}/revoke", data={"csrf": csrf})
    assert resp.status == 200 and resp.url.path == "/ui/communes/01234"
    assert [a["revoked"] for a in await store.agents()] == [True]
    assert "Đã thu hồi" in await resp.text()


async def test_fleet_flags_a_commune_behind_and_links_to_its_dossier(
        client: TestClient[Any, Any], store: SqliteStore) -> None:
    key = Ed25519PrivateKey.generate()
    _, reply = await enroll(client, store, key)
    agent_id = decode_enroll_reply(reply).agent_id
    status, ack = await send(client, key, agent_id, BatchBody(1, 1, (created(1),)))
    assert status == 200 and decode_ack(ack).acked_seq == 1
    await login(client, "viewer")

    html = await (await client.get("/ui/")).text()
    row = re.search(r'<tr class="([^"]*)" data-commune="01234">', html)
    assert row and row.group(1) == "", "just synced: not behind"

    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).isoformat(timespec="milliseconds")
    async with store.write() as txn:
        await txn.run("UPDATE agents SET last_seen = ? WHERE agent_id = ?", two_days_ago,
                      agent_id)
    html = await (await client.get("/ui/?lang=en")).text()
    row = re.search(r'<tr class="([^"]*)" data-commune="01234">(.*?)</tr>', html, re.S)
    assert row and row.group(1) == "behind" and "Behind" in row.group(2)
    assert "2 days ago" in row.group(2)
    assert "Communes" in html and "Các xã" not in html
    assert "Các xã" not in await (await client.get("/ui/")).text()  # English kept by the cookie
    # A 72 h target does not flag it.
    html = await (await client.get("/ui/?target=72")).text()
    assert re.search(r'<tr class="" data-commune="01234">', html)

    commune = await (await client.get("/ui/communes/01234")).text()
    link = re.search(r'href="/ui/dossiers/([0-9a-f-]{36})">(01234-261126-0001)</a>', commune)
    assert link
    dossier = await client.get(f"/ui/dossiers/{link.group(1)}")
    text = await dossier.text()
    assert dossier.status == 200 and "01234-261126-0001" in text and "created" in text
    assert (await client.get("/ui/dossiers/no-such")).status == 404
    assert (await client.get("/ui/communes/99999")).status == 404


async def test_alerts_page_lists_refused_records(client: TestClient[Any, Any],
                                                 store: SqliteStore) -> None:
    key = Ed25519PrivateKey.generate()
    _, reply = await enroll(client, store, key)
    agent_id = decode_enroll_reply(reply).agent_id
    await send(client, key, agent_id, BatchBody(1, 1, (created(1), b"\x81\xa1t\xa3bad")))
    await login(client, "viewer")
    html = await (await client.get("/ui/alerts")).text()
    assert "invalid_record" in html


async def test_logout_ends_the_session(client: TestClient[Any, Any]) -> None:
    csrf = await login(client, "viewer")
    resp = await client.post("/ui/logout", data={"csrf": csrf})
    assert resp.url.path == "/ui/login"
    assert (await client.get("/ui/", allow_redirects=False)).status == 303


async def test_pages_on_a_real_socket_refuse_cross_site_posts(
        client: TestClient[Any, Any]) -> None:
    """Another site's form posts without our cookies (SameSite=Strict) and token."""
    csrf = await login(client, "admin")
    assert csrf
    async with ClientSession() as stranger:
        resp = await stranger.post(client.make_url("/ui/enroll"), data={"commune": "01234"},
                                   allow_redirects=False)
        assert resp.status == 303


async def test_report_page_counts_and_charts(client: TestClient[Any, Any],
                                             store: SqliteStore) -> None:
    key = Ed25519PrivateKey.generate()
    _, reply = await enroll(client, store, key)
    agent_id = decode_enroll_reply(reply).agent_id
    await send(client, key, agent_id, BatchBody(1, 1, (created(1), created(2), created(3))))
    await login(client, "viewer")
    html = await (await client.get("/ui/report")).text()
    received = re.findall(r'<tr data-commune="01234" data-procedure="([^"]+)">.*?'
                          r'<td class="received">(\d+)</td>', html, re.S)
    assert sum(int(n) for _, n in received) == 3
    assert '<svg id="report-chart"' in html
    assert (await client.get("/ui/report?from=2026-13-01")).status == 400
    html = await (await client.get("/ui/report?commune=99999")).text()
    assert 'data-commune="01234"' not in html


def test_user_add_reads_the_password_from_stdin_and_refuses_bad_input(tmp_path: Path) -> None:
    data = str(tmp_path / "server")
    assert syncd("init", "--data-dir", data).returncode == 0
    done = syncd("user", "add", "--data-dir", data, "ops", "--role", "admin",
                 input="a long password\n")
    assert done.returncode == 0 and "ops" in done.stderr and "Traceback" not in done.stderr
    again = syncd("user", "add", "--data-dir", data, "ops", "--role", "viewer",
                  input="another long one\n", check=False)
    assert again.returncode == 2 and "already exists" in again.stderr
    short = syncd("user", "add", "--data-dir", data, "v", "--role", "viewer", input="short\n",
                  check=False)
    assert short.returncode == 2 and "at least 10" in short.stderr
    bad_role = syncd("user", "add", "--data-dir", data, "v", "--role", "root", input="x" * 12,
                     check=False)
    assert bad_role.returncode == 2 and "Traceback" not in bad_role.stderr

    async def check() -> list[tuple[str | None, str | None]]:
        store = await SqliteStore.open(Path(data) / "syncd.db")
        try:
            return [(await check_login(store, "ops", "a long password")),
                    (await check_login(store, "ops", "another long one"))]
        finally:
            await store.close()
    assert asyncio.run(check()) == ["admin", None]
