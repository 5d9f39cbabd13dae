"""Operator pages under ``/ui``: server-rendered (Jinja2), usable without JavaScript.

Every page needs a session (:mod:`syncd.accounts`); every form carries the
session's CSRF token and a POST without it is refused (403) before anything
changes. Only admins enroll, revoke and set a dossier's status. Labels are Vietnamese first; English
with ``?lang=en`` (kept in a cookie). Errors are pages with a 4xx or 503
status, never a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
import segno
from aiohttp import web
from multidict import MultiDictProxy

from protocol import (
    DecodeError,
    ValidationError,
    decode_event,
    derive_dossier_id,
)
from protocol.dossier import STATUS_LABELS
from protocol.events import DocumentAdded, DossierCreated, FieldsChanged, StatusChanged

from .accounts import Session, check_login, end_session, find_session, start_session
from .central import change_status, changes_of
from .config import ServerConfig
from .enrollment import create_token, revoke_agent
from .errors import RequestError, StoreError
from .history import VIETNAM
from .keys import ServerKeys
from .report import on_time_report, total_row
from .store import Store

__all__ = ["make_ui"]

log = logging.getLogger("syncd.web")
COOKIE = "syncd_session"
LOGIN_COOKIE = "syncd_login"
LANG_COOKIE = "syncd_lang"
UI_CONFIG = web.AppKey("ui_config", ServerConfig)
UI_KEYS = web.AppKey("ui_keys", ServerKeys)
UI_STORE = web.AppKey("ui_store", Store)
SESSION = web.RequestKey("session", Session)
FORM = web.RequestKey("form", MultiDictProxy)
STALE_HOURS = 24.0
SKEW_ALERT_S = 300.0

# Every label a page shows: (Vietnamese, English).
LABELS: dict[str, tuple[str, str]] = {
    "title": ("Máy chủ tổng hợp hồ sơ", "Dossier aggregation server"),
    "fleet": ("Các xã", "Communes"),
    "alerts": ("Cảnh báo", "Alerts"),
    "report": ("Báo cáo đúng hạn", "On-time report"),
    "enroll": ("Cấp mã đăng ký", "Enroll"),
    "logout": ("Đăng xuất", "Log out"),
    "login": ("Đăng nhập", "Log in"),
    "user": ("Tài khoản", "User"),
    "password": ("Mật khẩu", "Password"),
    "bad_login": ("Sai tài khoản hoặc mật khẩu.", "Wrong user name or password."),
    "commune": ("Xã", "Commune"),
    "code": ("Mã", "Code"),
    "name": ("Tên", "Name"),
    "agent": ("Máy trạm", "Agent"),
    "last_contact": ("Liên lạc gần nhất", "Last contact"),
    "never": ("chưa bao giờ", "never"),
    "records_waiting": ("Bản ghi chờ gửi", "Records waiting"),
    "documents_waiting": ("Tài liệu chờ gửi", "Documents waiting"),
    "oldest_unsent": ("Chờ lâu nhất", "Oldest unsent"),
    "version": ("Phiên bản", "Version"),
    "behind": ("Chậm đồng bộ", "Behind"),
    "behind_note": ("quá {hours} giờ không đồng bộ", "not synced for over {hours} h"),
    "ok": ("Bình thường", "OK"),
    "revoked": ("Đã thu hồi", "Revoked"),
    "revoke": ("Thu hồi máy trạm", "Revoke agent"),
    "dossiers": ("Hồ sơ", "Dossiers"),
    "status": ("Trạng thái", "Status"),
    "procedure": ("Thủ tục", "Procedure"),
    "applicant": ("Người nộp", "Applicant"),
    "received_at": ("Ngày tiếp nhận", "Received"),
    "due_at": ("Ngày hẹn trả", "Due"),
    "updated_at": ("Cập nhật", "Updated"),
    "sync_history": ("Lịch sử đồng bộ", "Sync history"),
    "epoch": ("Kỳ", "Epoch"),
    "acked_seq": ("Đã nhận đến", "Acknowledged up to"),
    "fields": ("Thông tin", "Fields"),
    "events": ("Lịch sử sự kiện", "Event history"),
    "documents": ("Tài liệu", "Documents"),
    "complete": ("đã nhận đủ", "complete"),
    "incomplete": ("chưa đủ", "incomplete"),
    "kind": ("Loại", "Kind"),
    "detail": ("Chi tiết", "Detail"),
    "time": ("Thời điểm", "Time"),
    "server_time": ("Máy chủ nhận", "Server received"),
    "verdict": ("Kết quả", "Verdict"),
    "accepted": ("đã nhận", "accepted"),
    "conflicts": ("Xung đột và cảnh báo", "Conflicts and alerts"),
    "quarantined": ("Bản ghi bị từ chối", "Refused records"),
    "revoked_agents": ("Máy trạm đã thu hồi", "Revoked agents"),
    "clock_skew": ("Lệch đồng hồ", "Clock skew"),
    "none": ("Không có.", "None."),
    "enroll_help": ("Mã dùng một lần, cho một xã; hết hạn sau {hours} giờ.",
                    "One-time code for one commune; expires after {hours} h."),
    "create_token": ("Tạo mã", "Create code"),
    "token_once": ("Mã chỉ hiện một lần. Nhập trên máy xã: ",
                   "Shown once only. On the commune PC run: "),
    "admins_only": ("Chỉ quản trị viên được làm việc này.", "Only admins may do this."),
    "not_found": ("Không tìm thấy.", "Not found."),
    "error": ("Lỗi", "Error"),
    "retry": ("Máy chủ đang bận; thử lại sau.", "The server is busy; try again later."),
    "from": ("Từ ngày", "From"),
    "to": ("Đến ngày", "To"),
    "show": ("Xem", "Show"),
    "received": ("Tiếp nhận", "Received"),
    "finished_on_time": ("Xong đúng hạn", "Finished on time"),
    "finished_late": ("Xong trễ hạn", "Finished late"),
    "processing_on_time": ("Đang xử lý trong hạn", "Processing, in time"),
    "processing_late": ("Đang xử lý quá hạn", "Processing, late"),
    "on_time_rate": ("Tỷ lệ đúng hạn", "On-time rate"),
    "minutes_ago": ("{n} phút trước", "{n} min ago"),
    "role_admin": ("quản trị", "admin"),
    "role_viewer": ("xem", "viewer"),
    "field": ("Lĩnh vực", "Field"),
    "channel": ("Kênh nộp", "Channel"),
    "summary": ("Tóm tắt", "Summary"),
    "processing_unit": ("Đơn vị xử lý", "Processing unit"),
    "notes": ("Ghi chú", "Notes"),
    "fee": ("Phí, lệ phí", "Fee"),
    "hours_ago": ("{n} giờ trước", "{n} h ago"),
    "days_ago": ("{n} ngày trước", "{n} days ago"),
    "central": ("Thay đổi tại tỉnh/huyện", "Changed at the province/district"),
    "set_status": ("Đổi trạng thái", "Set the status"),
    "set_status_help": ("Xã nhận thay đổi này ở lần đồng bộ tới.",
                        "The commune receives this change at its next sync."),
    "note": ("Ghi chú", "Note"),
    "save": ("Lưu", "Save"),
}

_env = jinja2.Environment(loader=jinja2.PackageLoader("syncd", "templates"),
                          autoescape=True, undefined=jinja2.StrictUndefined)


def _lang(request: web.Request) -> str:
    asked = request.query.get("lang") or request.cookies.get(LANG_COOKIE)
    return "en" if asked == "en" else "vi"


def _now() -> datetime:
    return datetime.now(UTC)


def _age_s(moment: str | None, now: datetime) -> float | None:
    if not moment:
        return None
    try:
        return (now - datetime.fromisoformat(moment)).total_seconds()
    except ValueError:
        return None


def render(request: web.Request, template: str, status: int = 200,
           **context: Any) -> web.Response:
    lang = _lang(request)
    index = 0 if lang == "vi" else 1

    def t(key: str, **kw: Any) -> str:
        return LABELS[key][index].format(**kw)

    def status_label(name: str | None) -> str:
        return STATUS_LABELS[name][index] if name in STATUS_LABELS else str(name or "")

    def ago(seconds: float | None) -> str:
        if seconds is None:
            return t("never")
        if seconds < 3600:
            return t("minutes_ago", n=max(0, int(seconds // 60)))
        if seconds < 48 * 3600:
            return t("hours_ago", n=int(seconds // 3600))
        return t("days_ago", n=int(seconds // 86400))

    def when(moment: str | None) -> str:
        """An ISO time as the officer reads it: Vietnam time, day first."""
        if not moment:
            return "–"
        try:
            return datetime.fromisoformat(moment).astimezone(VIETNAM).strftime("%d/%m/%Y %H:%M")
        except (TypeError, ValueError):
            return str(moment)

    def lang_link(target: str) -> str:
        return "?" + urlencode({**request.query, "lang": target})

    session = request.get(SESSION)
    html = _env.get_template(template).render(
        t=t, status_label=status_label, ago=ago, when=when, lang_link=lang_link, lang=lang,
        session=session,
        csrf=session.csrf if session else "", path=request.path, **context)
    response = web.Response(text=html, status=status, content_type="text/html",
                            charset="utf-8")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
        "frame-ancestors 'none'")
    if "lang" in request.query:
        response.set_cookie(LANG_COOKIE, lang, path="/ui", httponly=True, samesite="Strict",
                            secure=request.secure)
    return response


def _store(request: web.Request) -> Store:
    return request.config_dict[UI_STORE]


# -- the gate: sessions, CSRF, errors as pages -------------------------------------------

_PUBLIC = {"/ui/login"}


@web.middleware
async def ui_middleware(request: web.Request,
                        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
    try:
        if request.path not in _PUBLIC:
            session = await find_session(_store(request), request.cookies.get(COOKIE))
            if session is None:
                raise web.HTTPSeeOther(f"/ui/login?next={quote(request.path_qs)}")
            request[SESSION] = session
            if request.method == "POST":
                form = await request.post()
                if not hmac.compare_digest(str(form.get("csrf", "")), session.csrf):
                    raise RequestError(403, "forbidden", "CSRF token missing or wrong")
                request[FORM] = form
        return await handler(request)
    except web.HTTPException:
        raise
    except RequestError as exc:
        return render(request, "error.html", exc.status, message=exc.message)
    except StoreError as exc:
        log.error("page %s: store unavailable: %s", request.path, exc)
        response = render(request, "error.html", 503, message=None)
        response.headers["Retry-After"] = "5"
        return response
    except Exception:
        log.exception("page %s failed", request.path)
        return render(request, "error.html", 503, message=None)


def _require_admin(request: web.Request) -> None:
    if not request[SESSION].is_admin:
        raise RequestError(403, "forbidden", LABELS["admins_only"][_lang(request) == "en"])


# -- log in and out ----------------------------------------------------------------------

def _safe_next(value: str | None) -> str:
    if value and value.startswith("/ui/") and not value.startswith("//"):
        return value
    return "/ui/"


async def get_login(request: web.Request) -> web.Response:
    nonce = secrets.token_urlsafe(24)
    response = render(request, "login.html", nonce=nonce, failed=False,
                      next=_safe_next(request.query.get("next")))
    response.set_cookie(LOGIN_COOKIE, nonce, path="/ui/login", httponly=True,
                        samesite="Strict", secure=request.secure)
    return response


async def post_login(request: web.Request) -> web.Response:
    form = await request.post()
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    if not nonce or not hmac.compare_digest(str(form.get("nonce", "")), nonce):
        raise RequestError(403, "forbidden", "CSRF token missing or wrong")
    name, password = str(form.get("user", ""))[:64], str(form.get("password", ""))[:1024]
    store = _store(request)
    if await check_login(store, name, password) is None:
        log.warning("failed login for %r", name)
        new_nonce = secrets.token_urlsafe(24)
        response = render(request, "login.html", 401, nonce=new_nonce, failed=True,
                          next=_safe_next(str(form.get("next", ""))))
        response.set_cookie(LOGIN_COOKIE, new_nonce, path="/ui/login", httponly=True,
                            samesite="Strict", secure=request.secure)
        return response
    token, _ = await start_session(store, name)
    log.info("operator %s logged in", name)
    response = web.HTTPSeeOther(_safe_next(str(form.get("next", ""))))
    response.set_cookie(COOKIE, token, path="/ui", httponly=True, samesite="Strict",
                        secure=request.secure, max_age=12 * 3600)
    response.del_cookie(LOGIN_COOKIE, path="/ui/login")
    raise response


async def post_logout(request: web.Request) -> web.Response:
    await end_session(_store(request), request.cookies.get(COOKIE))
    response = web.HTTPSeeOther("/ui/login")
    response.del_cookie(COOKIE, path="/ui")
    raise response


# -- the fleet ---------------------------------------------------------------------------

async def _documents_waiting(store: Store) -> dict[str, int]:
    """Per commune: documents its dossiers list whose bytes have not all arrived."""
    complete = {row[0] for row in await store.read(
        "SELECT sha256 FROM documents WHERE complete = 1")}
    waiting: dict[str, int] = {}
    for commune, data in await store.read(
            "SELECT commune_code, data FROM dossiers WHERE data LIKE ?", '%"sha256"%'):
        for doc in json.loads(data).get("documents", []):
            if "sha256" in doc and doc["sha256"] not in complete:
                waiting[commune] = waiting.get(commune, 0) + 1
    return waiting


async def fleet_rows(store: Store, stale_hours: float, now: datetime) -> list[dict[str, Any]]:
    """One row per agent, the most behind first: never seen, then oldest contact."""
    alerts = dict(await store.read("SELECT agent_id, count(*) FROM alerts "
                                   "WHERE agent_id IS NOT NULL GROUP BY agent_id"))
    docs = await _documents_waiting(store)
    rows = []
    for agent in await store.agents():
        age = _age_s(agent["last_seen"], now)
        rows.append({**agent, "age_s": age, "alerts": int(alerts.get(agent["agent_id"], 0)),
                     "documents_waiting": docs.get(agent["commune_code"], 0),
                     "behind": not agent["revoked"] and (age is None
                                                         or age > stale_hours * 3600)})
    rows.sort(key=lambda r: (r["revoked"], -(r["age_s"] if r["age_s"] is not None
                                             else float("inf")), r["commune_code"]))
    return rows


async def get_fleet(request: web.Request) -> web.Response:
    try:
        hours = float(request.query.get("target", STALE_HOURS))
    except ValueError:
        hours = STALE_HOURS
    hours = min(max(hours, 0.1), 24 * 365)
    rows = await fleet_rows(_store(request), hours, _now())
    return render(request, "fleet.html", rows=rows, hours=f"{hours:g}",
                  behind=sum(r["behind"] for r in rows))


async def get_commune(request: web.Request) -> web.Response:
    code = request.match_info["code"]
    store = _store(request)
    agents = [a for a in await store.agents() if a["commune_code"] == code]
    dossiers = await store.dossiers(code)
    if not agents and not dossiers:
        raise RequestError(404, "not_found", LABELS["not_found"][_lang(request) == "en"])
    positions = await store.read(
        "SELECT p.agent_id, p.epoch, p.acked_seq, p.updated_at FROM positions p "
        "JOIN agents a ON a.agent_id = p.agent_id WHERE a.commune_code = ? "
        "ORDER BY p.updated_at DESC", code)
    now = _now()
    for agent in agents:
        agent["age_s"] = _age_s(agent["last_seen"], now)
    dossiers.sort(key=lambda d: str(d.get("received_at", "")), reverse=True)
    return render(request, "commune.html", code=code, agents=agents, positions=positions,
                  dossiers=dossiers[:500], total=len(dossiers))


def _describe(event: Any) -> tuple[str, str, str | None, str | None]:
    """(kind, status or detail, officer's time, by) of an event, for the history table."""
    if isinstance(event, DossierCreated):
        return "created", str(event.dossier.get("status", "received")), \
            event.dossier.get("received_at"), None
    if isinstance(event, StatusChanged):
        return "status", event.status, event.at, event.by
    if isinstance(event, FieldsChanged):
        return "fields", ", ".join(sorted(event.changes)), event.at, event.by
    if isinstance(event, DocumentAdded):
        return "document", str(event.document.get("name", "")), event.at, event.by
    return "?", "", None, None


async def get_dossier(request: web.Request) -> web.Response:
    dossier_id = request.match_info["id"]
    store = _store(request)
    rows = await store.read("SELECT data, agent_id, commune_code, updated_at FROM dossiers "
                            "WHERE id = ?", dossier_id)
    if not rows:
        raise RequestError(404, "not_found", LABELS["not_found"][_lang(request) == "en"])
    data, agent_id, commune, updated_at = rows[0]
    dossier = json.loads(data)
    complete = {row[0] for row in await store.read(
        "SELECT sha256 FROM documents WHERE complete = 1")}
    for doc in dossier.get("documents", []):
        doc["complete"] = doc.get("sha256") in complete if "sha256" in doc else None
    events = []
    for r_agent, epoch, seq, received_at, raw, verdict, message in await store.read(
            "SELECT agent_id, epoch, seq, received_at, data, verdict_code, verdict_message "
            "FROM records WHERE dossier_id = ? ORDER BY received_at, agent_id, epoch, seq",
            dossier_id):
        try:
            kind, what, at, by = _describe(decode_event(
                bytes(raw), derived_id=derive_dossier_id(r_agent, int(epoch), int(seq))))
        except (DecodeError, ValidationError):
            kind, what, at, by = "?", "", None, None
        events.append({"agent_id": r_agent, "epoch": epoch, "seq": seq,
                       "received_at": received_at, "kind": kind, "what": what, "at": at,
                       "by": by, "verdict": verdict, "message": message, "note": None})
    for change in await changes_of(store, dossier_id):  # set here, at the province
        events.append({"agent_id": None, "epoch": None, "seq": None,
                       "received_at": change["created_at"], "kind": "central",
                       "what": change["status"], "at": change["at"], "by": change["by"],
                       "verdict": None, "message": None, "note": change["note"]})
    # One timeline on the server's clock (stable: records keep their order).
    events.sort(key=lambda e: str(e["received_at"]))
    return render(request, "dossier.html", dossier=dossier, agent_id=agent_id, commune=commune,
                  updated_at=updated_at, events=events,
                  statuses=[(name, vi, en) for name, (vi, en) in STATUS_LABELS.items()])


async def post_dossier_status(request: web.Request) -> web.Response:
    """An admin sets the dossier's status centrally; the commune receives it."""
    _require_admin(request)
    dossier_id = request.match_info["id"]
    form = request[FORM]
    done = await change_status(_store(request), dossier_id, str(form.get("status", "")),
                               str(form.get("note", "")), request[SESSION].user)
    log.info("operator %s set dossier %s to %s (change %d)", request[SESSION].user,
             done.change.dossier_id, done.change.status, done.change.id)
    raise web.HTTPSeeOther(f"/ui/dossiers/{quote(done.change.dossier_id)}")


async def get_alerts(request: web.Request) -> web.Response:
    store = _store(request)
    refused = await store.read(
        "SELECT r.agent_id, a.commune_code, r.epoch, r.seq, r.received_at, r.verdict_code, "
        "r.verdict_message FROM records r JOIN agents a ON a.agent_id = r.agent_id "
        "WHERE r.verdict_code IS NOT NULL ORDER BY r.received_at DESC LIMIT 200")
    agents = await store.agents()
    return render(request, "alerts.html", alerts=list(reversed(await store.alerts()))[:500],
                  refused=refused, revoked=[a for a in agents if a["revoked"]],
                  skewed=[a for a in agents if a["clock_skew_s"] is not None
                          and abs(a["clock_skew_s"]) > SKEW_ALERT_S],
                  skew_limit=int(SKEW_ALERT_S))


# -- enroll and revoke (admins) ------------------------------------------------------------

async def get_enroll(request: web.Request) -> web.Response:
    _require_admin(request)
    config = request.config_dict[UI_CONFIG]
    return render(request, "enroll.html", hours=f"{config.token_ttl_hours:g}", problem=None,
                  token=None)


async def post_enroll(request: web.Request) -> web.Response:
    _require_admin(request)
    form = request[FORM]
    commune, name = str(form.get("commune", "")).strip(), str(form.get("name", "")).strip()
    config = request.config_dict[UI_CONFIG]
    hours = f"{config.token_ttl_hours:g}"
    if not (len(commune) == 5 and commune.isascii() and commune.isdigit()):
        return render(request, "enroll.html", 400, hours=hours, token=None,
                      problem="Mã xã gồm 5 chữ số / The commune code is 5 digits")
    if len(name) > 100:
        return render(request, "enroll.html", 400, hours=hours, token=None,
                      problem="Tên quá dài / The name is too long")
    keys = request.config_dict[UI_KEYS]
    token = await create_token(_store(request), commune, name or None, config.token_ttl_hours,
                               keys.fingerprint)
    log.info("operator %s created an enrollment token for commune %s",
             request[SESSION].user, commune)
    qr = segno.make(token, error="m").svg_data_uri(scale=4, border=2)
    return render(request, "enroll.html", hours=hours, token=token, qr=qr, commune=commune,
                  server=str(request.url.origin()), problem=None)


async def post_revoke(request: web.Request) -> web.Response:
    _require_admin(request)
    agent_id = request.match_info["agent_id"]
    commune = await revoke_agent(_store(request), agent_id)
    if commune is None:
        raise RequestError(404, "not_found", LABELS["not_found"][_lang(request) == "en"])
    log.info("operator %s revoked agent %s", request[SESSION].user, agent_id)
    raise web.HTTPSeeOther(f"/ui/communes/{commune}")


def _query_date(request: web.Request, name: str) -> date | None:
    value = request.query.get(name, "").strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise RequestError(400, "bad_request", f"{name}: YYYY-MM-DD") from None


async def get_report(request: web.Request) -> web.Response:
    start, end = _query_date(request, "from"), _query_date(request, "to")
    commune = request.query.get("commune", "").strip() or None
    if commune is not None and not (len(commune) == 5 and commune.isascii()
                                    and commune.isdigit()):
        raise RequestError(400, "bad_request", "commune: 5 chữ số / 5 digits")
    rows = await on_time_report(_store(request), date_from=start, date_to=end, commune=commune,
                                now=_now())
    total = {"commune_code": "", "procedure_code": "", "procedure_name": "",
             **total_row(rows)} if rows else None
    return render(request, "report.html", rows=rows, total=total,
                  date_from=start.isoformat() if start else "",
                  date_to=end.isoformat() if end else "", commune=commune or "")


def make_ui(config: ServerConfig, store: Store, keys: ServerKeys) -> web.Application:
    """The pages, to mount at ``/ui`` on the main application."""
    ui = web.Application(middlewares=[ui_middleware])
    ui[UI_CONFIG] = config
    ui[UI_STORE] = store
    ui[UI_KEYS] = keys
    ui.router.add_get("/login", get_login)
    ui.router.add_post("/login", post_login)
    ui.router.add_post("/logout", post_logout)
    ui.router.add_get("/", get_fleet)
    ui.router.add_get("/communes/{code:[0-9]{5}}", get_commune)
    ui.router.add_get("/dossiers/{id}", get_dossier)
    ui.router.add_post("/dossiers/{id}/status", post_dossier_status)
    ui.router.add_get("/alerts", get_alerts)
    ui.router.add_get("/report", get_report)
    ui.router.add_get("/enroll", get_enroll)
    ui.router.add_post("/enroll", post_enroll)
    ui.router.add_post("/agents/{agent_id}/revoke", post_revoke)
    return ui
