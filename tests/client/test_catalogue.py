"""Due dates from the shipped catalogue and holiday list: weekends, holidays, same day."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path

import pytest

from client.catalogue import VIETNAM, Calendar, due_at, load_calendar, load_catalogue


def vn(day: str, hour: int = 9, minute: int = 0) -> datetime:
    return datetime.fromisoformat(f"{day}T{hour:02d}:{minute:02d}:00+07:00")


CALENDAR = Calendar(frozenset({date(2026, 4, 30), date(2026, 5, 1)}))


def test_counting_starts_the_next_day_and_skips_the_weekend() -> None:
    # Wednesday 2026-11-25 + 3 working days: Thu, Fri, (Sat, Sun) Mon 11-30.
    assert due_at(vn("2026-11-25"), 3, CALENDAR) == vn("2026-11-30", 17)
    # Received on a Saturday: Monday is the first day.
    assert due_at(vn("2026-11-28"), 1, CALENDAR) == vn("2026-11-30", 17)


def test_a_holiday_is_not_a_working_day() -> None:
    # Wednesday 2026-04-29 + 2: (Thu 30/4, Fri 1/5 holidays, weekend) Mon 5/4, Tue 5/5.
    assert due_at(vn("2026-04-29"), 2, CALENDAR) == vn("2026-05-05", 17)
    # Across a weekend and a holiday together, with the shipped list (Giỗ Tổ, Mon 2026-04-27).
    shipped = load_calendar()
    assert due_at(vn("2026-04-24"), 1, shipped) == vn("2026-04-28", 17)


def test_a_working_weekend_day_counts() -> None:
    swapped = Calendar(frozenset(), frozenset({date(2026, 11, 28)}))
    assert due_at(vn("2026-11-27"), 1, swapped) == vn("2026-11-28", 17)


def test_same_day_procedures_before_and_after_three_pm() -> None:
    assert due_at(vn("2026-11-26", 14, 59), 0, CALENDAR) == vn("2026-11-26", 17)
    assert due_at(vn("2026-11-26", 15, 0), 0, CALENDAR) == vn("2026-11-27", 17)
    assert due_at(vn("2026-11-27", 16), 0, CALENDAR) == vn("2026-11-30", 17)  # Fri → Mon
    assert due_at(vn("2026-11-28", 9), 0, CALENDAR) == vn("2026-11-30", 17)   # Saturday


def test_the_day_is_vietnamese_whatever_the_clock_zone() -> None:
    # 2026-11-25 20:00 UTC is Thursday 03:00 in Vietnam.
    received = datetime.fromisoformat("2026-11-25T20:00:00+00:00")
    assert due_at(received, 1, CALENDAR) == vn("2026-11-27", 17)
    assert due_at(received, 1, CALENDAR).tzinfo == VIETNAM  # type: ignore[union-attr]


def test_no_confirmed_time_gives_no_due_date() -> None:
    assert due_at(vn("2026-11-26"), None, CALENDAR) is None
    with pytest.raises(ValueError):
        due_at(vn("2026-11-26"), -1, CALENDAR)


def test_the_shipped_catalogue_holds_the_reference_procedures() -> None:
    catalogue = load_catalogue()
    birth = catalogue.get("1.001193")
    assert birth is not None and birth.name == "Đăng ký khai sinh"
    assert birth.processing_working_days == 0
    assert len(catalogue.procedures) == 14 and catalogue.get("9.999999") is None


def test_a_published_list_in_the_data_directory_replaces_the_shipped_one(tmp_path: Path) -> None:
    (tmp_path / "holidays.json").write_text(json.dumps(
        {"version": 2, "holidays": ["2026-11-27"]}), encoding="utf-8")
    assert due_at(vn("2026-11-26"), 1, load_calendar(tmp_path)) == vn("2026-11-30", 17)
    assert due_at(vn("2026-11-26"), 1, load_calendar()) == vn("2026-11-27", 17)
