"""A dossier's status over time, read back from the records the server holds,
and the choice of dossiers by the day they were received.

Rules kept here:

* Order is the server's: records sorted by (received_at, agent_id, epoch,
  seq), where ``received_at`` is the server's clock at ingest. The ``at`` of
  each status is the officer PC's clock: reported as data, never used to
  order anything (a PC whose clock jumped back still gets its statuses in the
  order they were recorded).
* Statuses set centrally (:mod:`syncd.central`) join in by their
  ``created_at``, the server's clock in the same format as ``received_at``;
  their ``at`` is that moment in Vietnam time.
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
           "status_history", "vietnam_time"]

VIETNAM = timezone(timedelta(hours=7), "ICT")
_IN_CHUNK = 500  # ids per ``IN (…)`` list, as in the store
_RECORDS = ("SELECT agent_id, epoch, seq, received_at, dossier_id, data FROM records "
            "WHERE verdict_code IS NULL AND dossier_id IS NOT NULL")
_CENTRAL = "SELECT id, created_at, dossier_id, status FROM central_changes"


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


def vietnam_time(server_time: str) -> str:
    """A server time (ISO 8601, UTC) as the same moment in Vietnam time."""
    return parse_time(server_time).astimezone(VIETNAM).isoformat(timespec="milliseconds")


async def _rows(store: Store, sql: str, dossier_ids: Collection[str] | None
                ) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` (which ends in a WHERE clause or none) for the wanted dossiers."""
    if dossier_ids is None:
        return await store.read(sql)
    wanted = sorted(set(dossier_ids))
    rows: list[tuple[Any, ...]] = []
    joiner = " AND" if " WHERE " in sql else " WHERE"
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start:start + _IN_CHUNK]
        rows += await store.read(
            f"{sql}{joiner} dossier_id IN ({', '.join('?' * len(chunk))})", *chunk)
    return rows


async def status_history(store: Store, dossier_ids: Collection[str] | None = None
                         ) -> dict[str, list[StatusPoint]]:
    """Each dossier's statuses, in the server's order (records and central changes).

    Args:
        store: the server's store.
        dossier_ids: the dossiers wanted; None for every dossier.

    Returns:
        dossier id → its points: the status it was created with, at its
        ``received_at``, then one point per status change, whether an agent
        recorded it or an operator set it centrally. Dossiers without applied
        records are absent.

    Raises:
        StoreError: the store could not be read.
    """
    records = await _rows(store, _RECORDS, dossier_ids)
    central = await _rows(store, _CENTRAL, dossier_ids)
    # One timeline on the server's clock; sorted here, not in SQL: text collation
    # differs between the backends. At the same millisecond a record comes first.
    timeline: list[tuple[tuple[str, int, str, int, int], str, StatusPoint | None]] = []
    for agent_id, epoch, seq, received_at, dossier_id, data in records:
        point = _record_point(agent_id, int(epoch), int(seq), bytes(data))
        timeline.append(((received_at, 0, agent_id, int(epoch), int(seq)), dossier_id, point))
    for change_id, created_at, dossier_id, status in central:
        timeline.append(((created_at, 1, "", 0, int(change_id)), dossier_id,
                         StatusPoint(status, vietnam_time(created_at))))
    timeline.sort(key=lambda entry: entry[0])
    history: dict[str, list[StatusPoint]] = {}
    for _, dossier_id, point in timeline:
        if point is not None:
            history.setdefault(dossier_id, []).append(point)
    return history


def _record_point(agent_id: str, epoch: int, seq: int, data: bytes) -> StatusPoint | None:
    """The status a record set, if it set one (created or status events)."""
    event = decode_event(data, derived_id=derive_dossier_id(agent_id, epoch, seq))
    if isinstance(event, DossierCreated):
        return StatusPoint(str(event.dossier.get("status") or "received"),
                           str(event.dossier["received_at"]))
    if isinstance(event, StatusChanged):
        return StatusPoint(event.status, event.at)
    return None


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
