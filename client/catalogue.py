"""The procedure catalogue and the holiday list, and the due date they give.

Both are data: a copy ships with the agent (``client/data/``) for the first
day offline; a newer copy the server publishes replaces it in the data
directory (``catalogue.json``, ``holidays.json``).

Due dates (the appointment on the receipt):

* A procedure's processing time is in working days: Monday to Friday, not a
  holiday, plus any weekend day the list names as a working day.
* Counting starts the day after receipt: the due date is the N-th working
  day after the day the dossier was received, at 17:00 Vietnam time.
* 0 days means the same day: 17:00 on the day of receipt when it was
  received on a working day before 15:00, else 17:00 on the next working day.
* A procedure without a confirmed time gives no due date.

The receipt time is the officer's clock: it is what the receipt says, and
the due date is data printed for the citizen; nothing is ordered by it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

__all__ = ["VIETNAM", "Calendar", "Catalogue", "Procedure", "due_at", "load_calendar",
           "load_catalogue", "parse_calendar", "parse_catalogue"]

VIETNAM = timezone(timedelta(hours=7), "ICT")
_SHIPPED = Path(__file__).with_name("data")
_CLOSE = time(17, 0)
_SAME_DAY_CUTOFF = time(15, 0)
_MAX_DAYS = 366  # no procedure takes longer; bounds the walk through the calendar


@dataclass(frozen=True)
class Procedure:
    code: str
    name: str
    field: str | None
    processing_working_days: int | None
    fee_vnd: int | None
    fee_note: str | None


@dataclass(frozen=True)
class Catalogue:
    version: int
    procedures: tuple[Procedure, ...]

    def get(self, code: str) -> Procedure | None:
        return next((p for p in self.procedures if p.code == code), None)


@dataclass(frozen=True)
class Calendar:
    """Which days are working days."""

    holidays: frozenset[date]
    working_weekends: frozenset[date] = frozenset()

    def is_working_day(self, day: date) -> bool:
        if day in self.working_weekends:
            return True
        return day.weekday() < 5 and day not in self.holidays

    def next_working_day(self, day: date) -> date:
        """The first working day after ``day``."""
        for _ in range(_MAX_DAYS):
            day += timedelta(days=1)
            if self.is_working_day(day):
                return day
        raise ValueError("no working day within a year")


def _read(data_dir: Path | None, name: str) -> dict[str, Any]:
    for folder in ([data_dir] if data_dir is not None else []) + [_SHIPPED]:
        path = folder / name
        if path.exists():
            raw = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict):
                raise ValueError(f"{path}: not a JSON object")
            return raw
    raise FileNotFoundError(name)


def parse_catalogue(raw: dict[str, Any]) -> Catalogue:
    """A catalogue document (as shipped or as the server publishes it)."""
    procedures = tuple(Procedure(
        code=str(p["code"]), name=str(p["name"]), field=p.get("field"),
        processing_working_days=p.get("processing_working_days"), fee_vnd=p.get("fee_vnd"),
        fee_note=p.get("fee_note")) for p in raw["procedures"])
    return Catalogue(int(raw.get("version", 0)), procedures)


def parse_calendar(raw: dict[str, Any]) -> Calendar:
    """A holiday-list document (as shipped or as the server publishes it)."""
    return Calendar(frozenset(map(date.fromisoformat, raw.get("holidays", []))),
                    frozenset(map(date.fromisoformat, raw.get("working_weekends", []))))


def load_catalogue(data_dir: Path | None = None) -> Catalogue:
    """The catalogue the server last published into ``data_dir``, else the shipped one."""
    return parse_catalogue(_read(data_dir, "catalogue.json"))


def load_calendar(data_dir: Path | None = None) -> Calendar:
    return parse_calendar(_read(data_dir, "holidays.json"))


def due_at(received_at: datetime, working_days: int | None, calendar: Calendar
           ) -> datetime | None:
    """The appointment for a dossier received at ``received_at`` (see the module's rules)."""
    if working_days is None:
        return None
    if working_days < 0:
        raise ValueError("working days must not be negative")
    local = received_at.astimezone(VIETNAM)
    day = local.date()
    if working_days == 0:
        if not (calendar.is_working_day(day) and local.time() < _SAME_DAY_CUTOFF):
            day = calendar.next_working_day(day)
    else:
        for _ in range(working_days):
            day = calendar.next_working_day(day)
    return datetime.combine(day, _CLOSE, tzinfo=VIETNAM)
