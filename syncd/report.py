"""The on-time report (in the manner of QĐ 766/QĐ-TTg): per commune and
procedure, how many dossiers were received in a period and how many were, or
are being, handled within their due time.

How a dossier is judged (``judge``):

* Its due time is ``due_at`` extended by every pause for supplements: from
  entering ``supplement_requested`` to the next change to another status.
  A dossier without ``due_at`` is never late.
* Finished: judged at its first ``finished`` (or, if it was returned
  without ever being marked finished, its first ``returned``), counting only
  the pauses before that moment.
* Still active (registered, received, processing, supplement_requested,
  awaiting_fees): judged against the server's ``now``; a pause still open
  runs to ``now``.
* Rejected, withdrawn or stopped: counted as received only.

Times are the officer's clock as recorded on the dossier (``at``); a clock
that went back makes a pause count as zero, never negative. ``now`` is an
argument: the server's clock, passed in by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any, Literal

from .history import StatusPoint, parse_time, received_between, status_history
from .store import Store

__all__ = ["COLUMNS", "Outcome", "count_row", "judge", "on_time_report", "report_rows",
           "total_row"]

_CLOSED = frozenset({"rejected", "withdrawn", "stopped"})
_PAUSE = "supplement_requested"
_COUNTS = ("received", "finished_on_time", "finished_late", "processing_on_time",
           "processing_late")
COLUMNS = ("commune_code", "procedure_code", "procedure_name", *_COUNTS, "on_time_rate")

Outcome = Literal["finished_on_time", "finished_late", "processing_on_time", "processing_late"]


def _finish(history: Sequence[StatusPoint]) -> datetime | None:
    """When the dossier was first finished; its first return if never finished."""
    for wanted in ("finished", "returned"):
        for point in history:
            if point.status == wanted:
                return parse_time(point.at)
    return None


def _paused(history: Sequence[StatusPoint], until: datetime) -> timedelta:
    """Time spent waiting for supplements before ``until`` (an open pause runs to it)."""
    total = timedelta()
    start: datetime | None = None
    for point in history:
        at = parse_time(point.at)
        if point.status == _PAUSE:
            if start is None:
                start = at
            continue
        if start is not None:
            total += max(timedelta(), min(at, until) - start)
            start = None
    if start is not None:
        total += max(timedelta(), until - start)
    return total


def judge(dossier: Mapping[str, Any], history: Sequence[StatusPoint], now: datetime
          ) -> Outcome | None:
    """Where ``dossier`` counts beyond ``received``, or None (rejected, withdrawn, stopped).

    Args:
        dossier: its current state (``status``, ``due_at``, ``received_at``).
        history: its status points in record order (see :func:`status_history`);
            empty means only its current status, since its reception.
        now: the server's clock (timezone-aware).
    """
    status = dossier["status"]
    if status in _CLOSED:
        return None
    points = list(history) or [StatusPoint(status, dossier["received_at"])]
    finish = _finish(points)
    due_at = dossier.get("due_at")
    moment = finish if finish is not None else now
    late = due_at is not None and moment > parse_time(due_at) + _paused(points, moment)
    if finish is not None:
        return "finished_late" if late else "finished_on_time"
    return "processing_late" if late else "processing_on_time"


def _with_rate(counts: dict[str, int]) -> dict[str, Any]:
    finished = counts["finished_on_time"] + counts["finished_late"]
    rate = round(counts["finished_on_time"] / finished, 4) if finished else None
    return {**counts, "on_time_rate": rate}


def count_row(dossiers: Iterable[Mapping[str, Any]],
              histories: Mapping[str, Sequence[StatusPoint]], *, now: datetime
              ) -> dict[str, Any]:
    """The counts and the on-time rate of ``dossiers`` (pure).

    Returns:
        ``received``, ``finished_on_time``, ``finished_late``,
        ``processing_on_time``, ``processing_late`` and ``on_time_rate``
        (finished on time / finished, 4 decimals; None when none finished).
    """
    row = dict.fromkeys(_COUNTS, 0)
    for dossier in dossiers:
        row["received"] += 1
        outcome = judge(dossier, histories.get(dossier["id"], ()), now)
        if outcome is not None:
            row[outcome] += 1
    return _with_rate(row)


def report_rows(dossiers: Iterable[Mapping[str, Any]],
                histories: Mapping[str, Sequence[StatusPoint]], *, now: datetime
                ) -> list[dict[str, Any]]:
    """One row per (commune_code, procedure_code), sorted by both (pure).

    ``procedure_name`` is the name on the group's first dossier.
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for dossier in dossiers:
        groups.setdefault((dossier["commune_code"], dossier["procedure_code"]), []).append(
            dossier)
    return [{"commune_code": commune, "procedure_code": procedure,
             "procedure_name": members[0]["procedure_name"],
             **count_row(members, histories, now=now)}
            for (commune, procedure), members in sorted(groups.items())]


def total_row(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The counts of report ``rows`` added up, with their on-time rate (pure)."""
    total = dict.fromkeys(_COUNTS, 0)
    for row in rows:
        for key in _COUNTS:
            total[key] += row[key]
    return _with_rate(total)


async def on_time_report(store: Store, *, date_from: date | None = None,
                         date_to: date | None = None, commune: str | None = None,
                         now: datetime) -> list[dict[str, Any]]:
    """The report for dossiers received from ``date_from`` to ``date_to``
    (Vietnamese days, both included; None: unbounded), of one commune or all.

    Args:
        now: the server's clock (timezone-aware), for dossiers still in progress.

    Raises:
        StoreError: the store could not be read.
    """
    dossiers = await received_between(store, date_from=date_from, date_to=date_to,
                                      commune=commune)
    whole = date_from is None and date_to is None and commune is None
    histories = await status_history(store, None if whole else [d["id"] for d in dossiers])
    return report_rows(dossiers, histories, now=now)
