"""Dossiers in the shape of the national public-service portal (Cổng Dịch vụ
công quốc gia, DVCQG): one object per dossier, the portal's field names, its
status and channel codes, and its dates (``yyyyMMddHHmmss``, Vietnamese time).

The end of processing (``NgayKetThucXuLy``) is the first ``finished`` status
and the return (``NgayTra``) the first ``returned`` one, both at the officer's
clock as recorded on the dossier; absent dates are null.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from protocol import CHANNELS, STATUS_CODES

from .history import VIETNAM, StatusPoint, parse_time, received_between, status_history
from .store import Store

__all__ = ["dvcqg_record", "export_dvcqg", "portal_time"]


def portal_time(value: str | None) -> str | None:
    """An ISO 8601 time with offset as ``yyyyMMddHHmmss`` in Vietnamese time."""
    if value is None:
        return None
    return parse_time(value).astimezone(VIETNAM).strftime("%Y%m%d%H%M%S")


def _first(history: Sequence[StatusPoint], status: str) -> str | None:
    return next((point.at for point in history if point.status == status), None)


def dvcqg_record(dossier: Mapping[str, Any], history: Sequence[StatusPoint]
                 ) -> dict[str, Any]:
    """One dossier (its current state and status points) as the portal's object (pure)."""
    applicant = dossier["applicant"]
    return {
        "MaHoSo": dossier["code"],
        "MaTTHC": dossier["procedure_code"],
        "TenTTHC": dossier["procedure_name"],
        "ChuHoSo": applicant["name"],
        "DinhDanhCHS": applicant.get("id_number"),
        "SoDienThoai": applicant.get("phone"),
        "NgayTiepNhan": portal_time(dossier["received_at"]),
        "NgayHenTra": portal_time(dossier.get("due_at")),
        "NgayKetThucXuLy": portal_time(_first(history, "finished")),
        "NgayTra": portal_time(_first(history, "returned")),
        "TrangThaiHoSo": STATUS_CODES[dossier["status"]],
        "KenhThucHien": CHANNELS[dossier.get("channel") or "direct"],
    }


async def export_dvcqg(store: Store, *, date_from: date | None = None,
                       date_to: date | None = None) -> list[dict[str, Any]]:
    """Every dossier received from ``date_from`` to ``date_to`` (Vietnamese days,
    both included; None: unbounded) as portal objects, ordered by code.

    Raises:
        StoreError: the store could not be read.
    """
    dossiers = await received_between(store, date_from=date_from, date_to=date_to)
    whole = date_from is None and date_to is None
    histories = await status_history(store, None if whole else [d["id"] for d in dossiers])
    return [dvcqg_record(d, histories.get(d["id"], ())) for d in dossiers]
