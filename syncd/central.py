"""Dossier statuses set at the province or district, and how they flow down (SPEC §18).

An operator sets a dossier's status (the dossier page, or ``syncd set-status``).
In one transaction the dossier is locked, changed exactly as an agent's status
record would change it (``apply_event``), and the change is kept, numbered, in
``central_changes``. Each commune's agents ask for their commune's changes
after the last id they hold (``/v1/updates``).

Invariants:

* Within a commune, ids are committed in increasing order: a change takes
  the commune's lock before it is numbered and keeps it until its commit. So
  an agent that has read up to id n never later finds a smaller id appear
  (PostgreSQL would otherwise number transactions that commit out of order).
* ``created_at`` is the server's clock in the format of records'
  ``received_at`` (:func:`syncd.ingest.utc_now`): the history orders central
  changes and agents' records by it. The change's ``at`` is the same moment
  in Vietnam time.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from protocol import StatusChanged, ValidationError, apply_event, validate_status
from protocol.updates import MAX_BY, MAX_ITEMS, MAX_NOTE, CentralChange, UpdatesPage

from .errors import RequestError
from .history import vietnam_time
from .store import Store, Txn

__all__ = ["StatusSet", "change_status", "changes_after", "changes_of", "updates_page"]

PAGE_BYTES = 512 * 1024  # well inside an agent's reply limit (1 MiB)
_ITEM_OVERHEAD = 256  # an item's bytes besides its note and operator name
_COLUMNS = "id, dossier_id, status, note, by_user, created_at"


@dataclass(frozen=True)
class StatusSet:
    """A change made: the change as agents receive it, and where it applies."""

    change: CentralChange
    code: str
    commune_code: str
    previous: str


def _bad(vi: str, en: str, status: int = 400, code: str = "bad_request") -> RequestError:
    return RequestError(status, code, f"{vi} / {en}")


def _check(status: str, note: str | None, by_user: str | None
           ) -> tuple[str, str | None, str | None]:
    """The status, note and operator name, checked as an agent's record would be."""
    try:
        status = validate_status(status)
    except ValidationError as exc:
        problem = exc.problems[0]
        raise _bad(problem.render("vi"), problem.message_en) from None
    note = (note or "").strip() or None
    by_user = (by_user or "").strip() or None
    if note is not None and len(note) > MAX_NOTE:
        raise _bad(f"ghi chú dài quá {MAX_NOTE} ký tự", f"note longer than {MAX_NOTE} characters")
    if by_user is not None and len(by_user) > MAX_BY:
        raise _bad(f"tên người đổi dài quá {MAX_BY} ký tự",
                   f"operator name longer than {MAX_BY} characters")
    return status, note, by_user


async def _resolve(txn: Txn, code_or_id: str) -> str:
    """The id of the dossier named by its id (a UUID) or its official code."""
    key = code_or_id.strip()
    try:
        rows = await txn.all("SELECT id FROM dossiers WHERE id = ?", str(uuid.UUID(key)))
    except ValueError:
        rows = await txn.all("SELECT id FROM dossiers WHERE code = ?", key) \
            if 0 < len(key) <= 100 else []
    if not rows:
        raise _bad(f"không tìm thấy hồ sơ {key[:100]!r}", f"no dossier {key[:100]!r}",
                   404, "unknown_dossier")
    if len(rows) > 1:
        raise _bad(f"nhiều hồ sơ có mã {key!r}; hãy dùng mã định danh (id)",
                   f"several dossiers have code {key!r}; use the dossier's id")
    return str(rows[0][0])


async def change_status(store: Store, dossier_code_or_id: str, status: str,
                        note: str | None, by_user: str | None, *,
                        now: datetime | None = None) -> StatusSet:
    """Set a dossier's status centrally, in one transaction.

    Args:
        store: the server's store.
        dossier_code_or_id: the dossier's id (UUID) or its official code.
        status: a status name (SPEC §10.2).
        note: shown to the commune; at most 2000 characters.
        by_user: the operator, at most 200 characters.
        now: the server's clock (default: now).

    Returns:
        The change as agents will receive it, with the dossier's code, commune
        and status before.

    Raises:
        RequestError: 404 ``unknown_dossier``; 400 for a bad status, note or
            name (messages in Vietnamese, then English). Nothing changed.
        StoreError: the store could not do it. Nothing changed.
    """
    status, note, by_user = _check(status, note, by_user)
    async with store.write() as txn:
        dossier_id = await _resolve(txn, dossier_code_or_id)
        await txn.lock("dossier", dossier_id)
        # The time is read once the dossier is ours: a batch that changed it
        # first has an earlier time, so history orders the two as they applied.
        moment = (now or datetime.now(UTC)).astimezone(UTC)
        created_at = moment.isoformat(timespec="milliseconds")
        at = vietnam_time(created_at)
        data, owner, commune = await txn.one(
            "SELECT data, agent_id, commune_code FROM dossiers WHERE id = ?", dossier_id)
        current: dict[str, Any] = json.loads(data)
        try:
            state = apply_event(current, StatusChanged(dossier_id, status, at, by_user, note))
        except ValidationError as exc:  # a status change always fits; kept for safety
            raise _bad("không đổi được trạng thái", f"cannot change the status ({exc})") \
                from None
        await txn.put_dossier(state, owner, commune, created_at)
        await txn.lock("central_changes", commune)  # see the module's invariants
        (change_id,) = await txn.one(
            "INSERT INTO central_changes (dossier_id, commune_code, status, note, by_user, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            dossier_id, commune, status, note, by_user, created_at)
    return StatusSet(CentralChange(int(change_id), dossier_id, status, note, by_user, at,
                                   status),
                     str(current["code"]), str(commune), str(current.get("status", "")))


def _change(row: tuple[Any, ...]) -> CentralChange:
    change_id, dossier_id, status, note, by_user, created_at, now = row
    return CentralChange(int(change_id), dossier_id, status, note, by_user,
                         vietnam_time(created_at), now)


async def changes_after(store: Store, commune_code: str, after_id: int, limit: int
                        ) -> tuple[list[CentralChange], bool]:
    """The changes of ``commune_code``'s dossiers after id ``after_id``, in id
    order, at most ``limit``, each with its dossier's status now; and whether
    more follow."""
    rows = await store.read(
        "SELECT c.id, c.dossier_id, c.status, c.note, c.by_user, c.created_at, d.status "
        "FROM central_changes c LEFT JOIN dossiers d ON d.id = c.dossier_id "
        "WHERE c.commune_code = ? AND c.id > ? ORDER BY c.id LIMIT ?",
        commune_code, after_id, limit + 1)
    return [_change(row) for row in rows[:limit]], len(rows) > limit


async def updates_page(store: Store, commune_code: str, after_id: int, *,
                       limit: int = MAX_ITEMS, max_bytes: int = PAGE_BYTES) -> UpdatesPage:
    """One ``/v1/updates`` answer: at most ``limit`` items and about ``max_bytes``
    (at least one item, if any waits)."""
    items, more = await changes_after(store, commune_code, after_id, limit)
    kept: list[CentralChange] = []
    size = 0
    for item in items:
        size += _ITEM_OVERHEAD + len((item.note or "").encode()) + len((item.by or "").encode())
        if kept and size > max_bytes:
            more = True
            break
        kept.append(item)
    return UpdatesPage(tuple(kept), kept[-1].id if kept else after_id, more)


async def changes_of(store: Store, dossier_id: str) -> list[dict[str, Any]]:
    """A dossier's central changes, oldest first, for its page."""
    rows = await store.read(f"SELECT {_COLUMNS} FROM central_changes "  # noqa: S608
                            "WHERE dossier_id = ? ORDER BY id", dossier_id)
    return [{"id": int(r[0]), "status": r[2], "note": r[3], "by": r[4], "created_at": r[5],
             "at": vietnam_time(r[5])} for r in rows]
