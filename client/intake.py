"""The intake page and local JSON API the daemon serves on 127.0.0.1.

* The page records a dossier (procedure from the catalogue, applicant,
  documents uploaded or picked from the watched scan folder, see
  :mod:`client.scans`), computes its due date in working days, saves it
  through the same path as ``sync-agent add`` and shows a printable receipt;
  it lists today's dossiers with their sync state in words, and records
  status changes. Vietnamese first, ``?lang=en`` for English.
* Forms carry a token made when the daemon starts (another site open in the
  officer's browser cannot post to the page).
* ``POST /api/dossiers`` and ``GET /api/dossiers/{id}`` need
  ``Authorization: Bearer <token>``, the token kept in the data directory's
  ``api.token`` (owner-only); same validation as ``add``.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from protocol import (
    DecodeError,
    DossierCreated,
    StatusChanged,
    ValidationError,
    decode_event,
    derive_dossier_id,
)
from protocol.dossier import STATUS_LABELS

from .agent import Agent
from .catalogue import VIETNAM, due_at, load_calendar, load_catalogue
from .clock import local_now_iso
from .control import SyncActivity
from .errors import InputError
from .scans import ScanFolder

__all__ = ["API_TOKEN_FILE", "api_token", "make_intake_app"]

log = logging.getLogger("client.intake")
API_TOKEN_FILE = "api.token"  # noqa: S105 - a file name, not a secret
AGENT = web.AppKey("agent", Agent)
FORM_TOKEN = web.AppKey("form_token", str)
API_TOKEN = web.AppKey("api_token", str)
ACTIVITY = web.AppKey("activity", SyncActivity)
SCANS = web.AppKey("scans", ScanFolder)
_MAX_UPLOAD = 50 * 1024 * 1024
_OFFICER = "Cán bộ tiếp nhận: "  # how the receiving officer is kept in the dossier's notes
_CHANGEABLE = ("processing", "supplement_requested", "finished", "returned")
_CENTRAL_SHOWN = 20

LABELS: dict[str, tuple[str, str]] = {
    "title": ("Tiếp nhận hồ sơ", "Dossier intake"),
    "new": ("Hồ sơ mới", "New dossier"),
    "procedure": ("Thủ tục", "Procedure"),
    "applicant": ("Người nộp", "Applicant"),
    "id_number": ("Số CCCD", "ID number"),
    "phone": ("Điện thoại", "Phone"),
    "address": ("Địa chỉ", "Address"),
    "documents": ("Giấy tờ nộp kèm (mỗi dòng một loại)", "Documents (one per line)"),
    "files": ("Tệp quét", "Scanned files"),
    "scans": ("Tệp trong thư mục máy quét", "Files in the scanner's folder"),
    "no_scans": ("Chưa có tệp quét mới.", "No new scan."),
    "documents_received": ("Giấy tờ đã nhận", "Documents received"),
    "officer": ("Cán bộ tiếp nhận", "Receiving officer"),
    "save": ("Lưu và in giấy hẹn", "Save and print receipt"),
    "today": ("Hồ sơ hôm nay", "Today's dossiers"),
    "code": ("Mã hồ sơ", "Code"),
    "status": ("Trạng thái", "Status"),
    "sync": ("Đồng bộ", "Sync"),
    "due": ("Hẹn trả", "Due"),
    "received": ("Tiếp nhận lúc", "Received"),
    "receipt": ("Giấy tiếp nhận hồ sơ và hẹn trả kết quả",
                "Receipt and appointment for results"),
    "print": ("In", "Print"),
    "back": ("Quay lại", "Back"),
    "change": ("Đổi", "Change"),
    "waiting": ("chờ gửi", "waiting"),
    "sending": ("đang gửi", "sending"),
    "synced": ("đã đồng bộ", "synced"),
    "refused": ("bị từ chối", "refused"),
    "none": ("Chưa có hồ sơ nào hôm nay.", "No dossier today yet."),
    "no_due": ("theo quy định", "as regulated"),
    "fee": ("Phí, lệ phí", "Fees"),
    "central_title": ("Cập nhật từ tỉnh/huyện", "Updates from the province/district"),
    "central_mark": ("cập nhật từ tỉnh/huyện", "set at the province/district"),
    "central_by": ("Người cập nhật", "By"),
    "central_at": ("Lúc", "At"),
    "central_note": ("Ghi chú", "Note"),
}

_env = jinja2.Environment(loader=jinja2.PackageLoader("client", "templates"), autoescape=True)


def api_token(root: Path) -> str:
    """The local API's token, created (owner-only) on first use."""
    path = root / API_TOKEN_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text(encoding="utf-8").strip()


def _lang(request: web.Request) -> int:
    return 1 if (request.query.get("lang") or request.cookies.get("lang")) == "en" else 0


def _render(request: web.Request, template: str, status: int = 200,
            **context: Any) -> web.Response:
    index = _lang(request)

    def when(moment: str | None) -> str:
        if not moment:
            return LABELS["no_due"][index]
        return datetime.fromisoformat(moment).astimezone(VIETNAM).strftime("%H:%M %d/%m/%Y")

    html = _env.get_template(template).render(
        t=lambda key: LABELS[key][index], status_word=lambda s: STATUS_LABELS[s][index],
        when=when, lang="en" if index else "vi", form_token=request.app[FORM_TOKEN], **context)
    response = web.Response(text=html, status=status, content_type="text/html", charset="utf-8")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    if "lang" in request.query:
        response.set_cookie("lang", "en" if index else "vi", httponly=True, samesite="Strict")
    return response


async def dossier_states(agent: Agent) -> dict[str, dict[str, Any]]:
    """Every dossier of the queue's epoch: its state, and its sync state in words
    (``waiting``, ``synced``, ``refused`` with the server's reason).

    When a status was set at the province or district and the dossier's last
    status record on this PC had reached the server before that change came
    down, the server's word stands: the status shown is the dossier's status
    at the server then (which orders this PC's record and the central change
    the server's way), and ``central`` holds the change's ``status``, ``by``,
    ``at`` and ``note`` unless a record overtook it there. Otherwise
    ``central`` is None and the local status shows (a record after that
    position reaches the server later, so it wins there too). No clock is
    compared. The dossier's fields carry ``central`` too, so the
    local API returns it.
    """
    status = await agent.queue.status()
    refused = {seq: (code, message) for seq, code, message in await agent.queue.verdicts()}
    out: dict[str, dict[str, Any]] = {}
    for seq, plaintext in await agent.queue.iter_plaintexts():
        try:
            event = decode_event(plaintext, derived_id=derive_dossier_id(
                agent.config.agent_id, status.epoch, seq))
        except (DecodeError, ValidationError):
            continue
        if isinstance(event, DossierCreated):
            out[event.dossier_id] = {"dossier": dict(event.dossier), "last_seq": seq,
                                     "refused": refused.get(seq)}
        elif isinstance(event, StatusChanged) and event.dossier_id in out:
            entry = out[event.dossier_id]
            entry["dossier"]["status"] = event.status
            entry["last_seq"] = seq
            entry["refused"] = entry["refused"] or refused.get(seq)
    central = await agent.queue.latest_central(out)
    for dossier_id, entry in out.items():
        entry["sync"] = ("refused" if entry["refused"] else
                         "synced" if entry["last_seq"] <= status.acked_seq else "waiting")
        update = central.get(dossier_id)
        entry["central"] = None
        if update is not None and (update.local_epoch, update.local_acked_seq) >= (
                status.epoch, entry["last_seq"]):
            entry["dossier"]["status"] = update.now
            if update.now == update.status:  # not overtaken at the server by a record
                entry["central"] = {"status": update.status, "by": update.by,
                                    "at": update.at, "note": update.note}
        entry["dossier"]["central"] = entry["central"]
    return out


def _check_form(request: web.Request, form: Any) -> None:
    if not hmac.compare_digest(str(form.get("form_token", "")), request.app[FORM_TOKEN]):
        raise web.HTTPForbidden(text="form token missing or wrong")


async def get_index(request: web.Request, problems: list[str] | None = None,
                    status: int = 200) -> web.Response:
    agent = request.app[AGENT]
    today = datetime.now(VIETNAM).date()
    states = await dossier_states(agent)
    rows = [s for s in states.values()
            if datetime.fromisoformat(s["dossier"]["received_at"]).astimezone(VIETNAM).date()
            == today]
    rows.sort(key=lambda s: s["dossier"]["received_at"], reverse=True)
    activity = request.app.get(ACTIVITY)
    if activity is not None and activity.sending:  # the daemon is sending what waits
        for row in rows:
            if row["sync"] == "waiting":
                row["sync"] = "sending"
    # Dossiers of any day whose status came down from the province or district,
    # newest first by the server's clock.
    central = sorted((s for s in states.values() if s["central"]),
                     key=lambda s: s["central"]["at"], reverse=True)[:_CENTRAL_SHOWN]
    scans = request.app.get(SCANS)
    return _render(request, "intake.html", status, rows=rows, problems=problems or [],
                   central=central,
                   procedures=load_catalogue(agent.paths.root).procedures,
                   scans=scans.offered() if scans else None,
                   scan_folder=str(scans.folder) if scans else "",
                   changeable=_CHANGEABLE, officer=request.cookies.get("officer", ""))


def _dossier_from_form(agent: Agent, form: Any, documents: list[dict[str, Any]]
                       ) -> dict[str, Any]:
    catalogue = load_catalogue(agent.paths.root)
    procedure = catalogue.get(str(form.get("procedure_code", "")))
    if procedure is None:
        raise InputError("dossier not added", ["procedure_code: chọn một thủ tục / "
                                               "choose a procedure"])
    received_at = local_now_iso()
    due = due_at(datetime.fromisoformat(received_at), procedure.processing_working_days,
                 load_calendar(agent.paths.root))
    applicant = {key: value for key in ("name", "id_number", "phone", "address")
                 if (value := str(form.get(f"applicant_{key}", "")).strip())}
    if "id_number" in applicant:
        applicant["id_type"] = "cccd"
    names = [line.strip() for line in str(form.get("documents", "")).splitlines()
             if line.strip()]
    dossier: dict[str, Any] = {
        "procedure_code": procedure.code, "procedure_name": procedure.name,
        "field": procedure.field, "applicant": applicant, "received_at": received_at,
        "documents": [{"name": name} for name in names] + documents, "channel": "direct"}
    if due is not None:
        dossier["due_at"] = due.isoformat()
    if procedure.fee_vnd:
        dossier["fees"] = [{"name": procedure.name, "amount": procedure.fee_vnd}]
    if officer := str(form.get("officer", "")).strip():
        dossier["notes"] = f"{_OFFICER}{officer}"[:4000]
    return dossier


async def post_dossier(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    form = await request.post()
    _check_form(request, form)
    with tempfile.TemporaryDirectory() as scratch:
        documents = []
        for field in form.getall("files", []):
            if not isinstance(field, web.FileField) or not field.filename:
                continue
            name = Path(field.filename).name
            path = Path(scratch) / f"{len(documents)}-{name}"
            path.write_bytes(field.file.read(_MAX_UPLOAD + 1)[:_MAX_UPLOAD])
            documents.append({"name": name, "path": str(path)})
        scans = request.app.get(SCANS)
        chosen = [str(name) for name in form.getall("scans", [])]
        for name in chosen:
            path = scans.path_of(name) if scans else None
            if path is None:
                return await get_index(request, [
                    f"scans: tệp “{name}” không còn trong thư mục quét / “{name}” is no "
                    "longer in the scan folder"], status=400)
            documents.append({"name": name, "path": str(path)})
        try:
            [dossier_id] = await agent.add([_dossier_from_form(agent, form, documents)])
        except InputError as exc:
            return await get_index(request, exc.problems or [str(exc)], status=400)
    if scans is not None and chosen:
        scans.set_aside(chosen)  # copied into the dossier: out of the list, not deleted
    log.info("dossier %s recorded from the intake page", dossier_id)
    response = web.HTTPSeeOther(f"/dossiers/{dossier_id}/receipt")
    if officer := str(form.get("officer", "")).strip():
        response.set_cookie("officer", officer[:100], httponly=True, samesite="Strict")
    raise response


async def get_receipt(request: web.Request) -> web.Response:
    states = await dossier_states(request.app[AGENT])
    entry = states.get(request.match_info["id"])
    if entry is None:
        raise web.HTTPNotFound(text="no such dossier")
    notes = str(entry["dossier"].get("notes") or "")
    officer = notes[len(_OFFICER):] if notes.startswith(_OFFICER) else ""
    return _render(request, "receipt.html", d=entry["dossier"], officer=officer)


async def post_status(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    _check_form(request, form)
    status = str(form.get("status", ""))
    if status not in _CHANGEABLE:
        raise web.HTTPBadRequest(text="status not allowed here")
    try:
        await request.app[AGENT].update_status(request.match_info["id"], status,
                                               None, request.cookies.get("officer") or None)
    except InputError as exc:
        return await get_index(request, exc.problems or [str(exc)], status=400)
    raise web.HTTPSeeOther("/")


# -- the local JSON API ------------------------------------------------------------------------

def _authorised(request: web.Request) -> None:
    offered = request.headers.get("Authorization", "")
    expected = f"Bearer {request.app[API_TOKEN]}"
    if not hmac.compare_digest(offered.encode(), expected.encode()):
        raise web.HTTPUnauthorized(
            text=json.dumps({"error": "unauthorized",
                             "message": "thiếu hoặc sai mã truy cập / missing or wrong token"}),
            content_type="application/json")


async def api_post_dossiers(request: web.Request) -> web.Response:
    _authorised(request)
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "bad_request", "message": "body is not JSON"},
                                 status=400)
    items = body if isinstance(body, list) else [body]
    for item in items:  # documents come by upload or the scan folder, not by path here
        if isinstance(item, dict) and any(isinstance(d, dict) and "path" in d
                                          for d in item.get("documents") or []):
            return web.json_response({"error": "bad_request",
                                      "message": "documents[].path is not accepted here"},
                                     status=400)
    try:
        ids = await request.app[AGENT].add(items)
    except InputError as exc:
        return web.json_response({"error": "invalid", "problems": exc.problems or [str(exc)]},
                                 status=400)
    return web.json_response({"ids": ids}, status=201)


async def api_get_dossier(request: web.Request) -> web.Response:
    _authorised(request)
    entry = (await dossier_states(request.app[AGENT])).get(request.match_info["id"])
    if entry is None:
        return web.json_response({"error": "not_found"}, status=404)
    return web.json_response({**entry["dossier"], "sync": entry["sync"],
                              "refused": entry["refused"]})


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Anything unexpected: logged, answered 503 in words, never a traceback."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("intake page %s failed", request.path)
        return web.Response(status=503, content_type="text/plain", charset="utf-8",
                            text="Lỗi tạm thời, xin thử lại. / Temporary error, please retry.")


def make_intake_app(agent: Agent, activity: SyncActivity | None = None,
                    scans: ScanFolder | None = None) -> web.Application:
    """The page and API for ``agent``; with the daemon's ``activity``, records it
    is sending say so; with ``scans``, finished scans are offered on the form."""
    app = web.Application(client_max_size=_MAX_UPLOAD + 1024 * 1024, middlewares=[_errors])
    app[AGENT] = agent
    if activity is not None:
        app[ACTIVITY] = activity
    if scans is not None:
        app[SCANS] = scans
    app[FORM_TOKEN] = secrets.token_urlsafe(24)
    app[API_TOKEN] = api_token(agent.paths.root)
    app.router.add_get("/", get_index)
    app.router.add_post("/dossiers", post_dossier)
    app.router.add_get("/dossiers/{id}/receipt", get_receipt)
    app.router.add_post("/dossiers/{id}/status", post_status)
    app.router.add_post("/api/dossiers", api_post_dossiers)
    app.router.add_get("/api/dossiers/{id}", api_get_dossier)
    return app
