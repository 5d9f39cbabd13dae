"""The PC's wall clock, recorded as data only.

Nothing in the agent orders, expires or retries by this clock: order is the
queue's ``seq``, retention runs on the server's time, waits on the monotonic
clock. The clock is read in one place so that a wrong PC clock can be
reproduced: ``SYNC_AGENT_CLOCK_OFFSET_S`` (seconds, may be negative) shifts
it, as a PC whose clock was set wrong would.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

__all__ = ["VN_TZ", "local_now_iso", "wall_now"]

VN_TZ = timezone(timedelta(hours=7))
OFFSET_ENV = "SYNC_AGENT_CLOCK_OFFSET_S"


def _offset_s() -> float:
    try:
        return float(os.environ.get(OFFSET_ENV, "") or 0.0)
    except ValueError:
        return 0.0


def wall_now() -> datetime:
    """The PC's clock (shifted by ``SYNC_AGENT_CLOCK_OFFSET_S``), Vietnam time."""
    return datetime.now(VN_TZ) + timedelta(seconds=_offset_s())


def local_now_iso() -> str:
    """The PC's clock in Vietnam time, as data (never used for ordering)."""
    return wall_now().isoformat(timespec="seconds")
