"""A dossier's status over time, read back from the records the server holds,
and the choice of dossiers by the day they were received.

Rules kept here:

* Order is the server's: records sorted by (received_at, agent_id, epoch,
  seq), where ``received_at`` is the server's clock at ingest. The ``at`` of
  each status is the officer PC's clock: reported as data, never used to
  order anything (a PC whose clock jumped back still gets its statuses in the
  order they were recorded).
* Only records that applied count (``verdict_code IS NULL``); a quarantined
  record never changed the dossier, so it is not part of its history.
* Periods are Vietnamese calendar days (UTC+7), both ends included.
* SQL is the store's portable dialect (``?`` placeholders) through
  :meth:`Store.read`, so this runs on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from protocol import DossierCreated, StatusChanged, decode_event, derive_dossier_id

from .store import Store

__all__ = ["VIETNAM", "StatusPoint", "local_date", "parse_time", "received_between",
           "status_history"]

VIETNAM = timezone(timedelta(hours=7), "ICT")
_IN_CHUNK = 500  # ids per ``IN (…)`` list, as in the store
_RECORDS = ("SELECT agent_id, epoch, seq, received_at, dossier_id, data FROM records "
            "WHERE verdict_code IS NULL AND dossier_id IS NOT NULL")


@dataclass(frozen=True)
class StatusPoint:
    """The dossier entered ``status`` at ``at`` (the officer's clock, ISO 8601)."""

    status: str
    at: str


def parse_time(value: str) -> datetime:
    """An ISO 8601 time with offset, as the schema guarantees for stored ones."""
    return datetime.fromisoformat(value)


def local_date(value: str) -> date:
    """The Vietnamese calendar day of an ISO 8601 time with offset."""
    return parse_time(value).astimezone(VIETNAM).date()


async def status_history(store: Store, dossier_ids: Collection[str] | None = None
                         ) -> dict[str, list[StatusPoint]]:
    """Each dossier's statuses, in record order.

    Args:
        store: the server's store.
        dossier_ids: the dossiers wanted; None for every dossier.

    Returns:
        dossier id → its points: the status it was created with, at its
        ``received_at``, then one point per status change. Dossiers without
        applied records are absent.

    Raises:
        StoreError: the store could not be read.
    """
    if dossier_ids is None:
        rows = await store.read(_RECORDS)
    else:
        wanted = sorted(set(dossier_ids))
        rows = []
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start:start + _IN_CHUNK]
            rows += await store.read(
                f"{_RECORDS} AND dossier_id IN ({', '.join('?' * len(chunk))})", *chunk)
    # Sorted here, not in SQL: text collation differs between the backends.
    rows.sort(key=lambda r: (r[3], r[0], int(r[1]), int(r[2])))
    history: dict[str, list[StatusPoint]] = {}
    for agent_id, epoch, seq, _, dossier_id, data in rows:
        event = decode_event(bytes(data),
                             derived_id=derive_dossier_id(agent_id, int(epoch), int(seq)))
        if isinstance(event, DossierCreated):
            dossier = event.dossier
            history.setdefault(dossier_id, []).append(
                StatusPoint(str(dossier.get("status") or "received"),
                            str(dossier["received_at"])))
        elif isinstance(event, StatusChanged):
            history.setdefault(dossier_id, []).append(StatusPoint(event.status, event.at))
    return history


def _in_period(dossier: Mapping[str, Any], date_from: date | None, date_to: date | None
               ) -> bool:
    day = local_date(dossier["received_at"])
    return (date_from is None or day >= date_from) and (date_to is None or day <= date_to)


async def received_between(store: Store, *, date_from: date | None = None,
                           date_to: date | None = None, commune: str | None = None
                           ) -> list[dict[str, Any]]:
    """The current dossiers (as :meth:`Store.dossiers`) received on a Vietnamese
    day from ``date_from`` to ``date_to``, both included (None: unbounded)."""
    dossiers: Iterable[dict[str, Any]] = await store.dossiers(commune)
    return [d for d in dossiers if _in_period(d, date_from, date_to)]
