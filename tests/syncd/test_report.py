"""The on-time report: dossiers and status changes go in through the real
``ingest_batch`` into a real store; the numbers coming out are worked out by
hand in the comments next to each dossier.

The officer's clock (``at``) is what the judgement reads; the server's clock
(each batch's ``now``) only orders the records.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import BatchBody, DossierCreated, EnrollRequest, StatusChanged, encode_event
from protocol.signing import public_key_bytes, sign_enrollment
from syncd.config import ServerPaths
from syncd.enrollment import consume_token, create_token
from syncd.history import VIETNAM, StatusPoint, status_history
from syncd.ingest import ingest_batch
from syncd.keys import ServerKeys
from syncd.report import count_row, judge, on_time_report, report_rows
from syncd.store import AgentRow, Store, open_store
from tests.support.procs import syncd

A, B = "01111", "02222"
BIRTH = ("1.001193", "Đăng ký khai sinh")
MARRIAGE = ("1.000894", "Đăng ký kết hôn")
NOW = datetime(2026, 12, 1, 10, 0, tzinfo=VIETNAM)  # the server's clock for the report
DIGEST = bytes(32)
_SERVER_CLOCK = count()


# Helpers (test_dvcqg uses them too) ---------------------------------------------------------


def dossier_id(n: int) -> str:
    return str(uuid.UUID(int=n))


def created(n: int, commune: str, procedure: tuple[str, str], received_at: str,
            due_at: str | None = None, **fields: Any) -> bytes:
    """Dossier ``n``'s created record."""
    dossier = {"id": dossier_id(n), "code": f"{commune}-261101-{n:04d}",
               "procedure_code": procedure[0], "procedure_name": procedure[1],
               "applicant": {"name": f"Người nộp {n}"}, "received_at": received_at, **fields}
    if due_at is not None:
        dossier["due_at"] = due_at
    return encode_event(DossierCreated(dossier))


def status(n: int, value: str, at: str) -> bytes:
    """Dossier ``n`` moved to ``value`` at ``at`` on the officer's PC."""
    return encode_event(StatusChanged(dossier_id(n), value, at))


async def enroll_pc(store: Store, keys: ServerKeys, commune: str
                    ) -> tuple[AgentRow, Ed25519PrivateKey]:
    """A PC of ``commune`` enrolled through the real token path: its row and key."""
    key = Ed25519PrivateKey.generate()
    token = await create_token(store, commune, None, 72, keys.fingerprint)
    reply = await consume_token(store, keys, EnrollRequest(
        token, public_key_bytes(key), None, sign_enrollment(key, token)))
    agent = await store.agent(reply.agent_id)
    assert agent is not None
    return agent, key


class Desk:
    """One enrolled PC of a commune, sending batches of contiguous records."""

    def __init__(self, store: Store, agent: AgentRow) -> None:
        self.store, self.agent, self.next_seq = store, agent, 1

    @classmethod
    async def enroll(cls, store: Store, keys: ServerKeys, commune: str) -> Desk:
        agent, _ = await enroll_pc(store, keys, commune)
        return cls(store, agent)

    async def send(self, *records: bytes) -> None:
        # Each batch a second later on the server's clock than the one before.
        now = datetime(2026, 12, 1, tzinfo=UTC) + timedelta(seconds=next(_SERVER_CLOCK))
        ack = await ingest_batch(self.store, self.agent,
                                 BatchBody(1, self.next_seq, records), DIGEST,
                                 now.isoformat(timespec="milliseconds"))
        self.next_seq += len(records)
        assert ack.acked_seq == self.next_seq - 1


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> ServerKeys:
    return ServerKeys.create(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def store(backend_store: Store) -> Store:
    """Every test here runs on SQLite and on PostgreSQL."""
    return backend_store


def vn(day: str, time: str = "08:00") -> str:
    """A time on the officer's PC, in Vietnam."""
    return f"2026-{day}T{time}:00+07:00"


async def load_scenario(store: Store, keys: ServerKeys) -> None:
    """Two communes, two procedures; the report is judged at NOW (12-01 10:00)."""
    a1 = await Desk.enroll(store, keys, A)
    a2 = await Desk.enroll(store, keys, A)  # a second PC of commune A
    b = await Desk.enroll(store, keys, B)
    await a1.send(
        # 1: due 11-05 17:00, finished 11-06 16:00: late by the calendar, but it waited
        #    two days (11-03 10:00 → 11-05 10:00) for a supplement: due 11-07 17:00. On time.
        created(1, A, BIRTH, vn("11-02"), vn("11-05", "17:00")),
        # 2: due 11-04 17:00, finished 11-06 09:00, no pause. Late.
        created(2, A, BIRTH, vn("11-03"), vn("11-04", "17:00")),
        # 3: due 11-25 17:00, still processing on 12-01. Late (in progress).
        created(3, A, BIRTH, vn("11-20"), vn("11-25", "17:00")),
        # 4: due 12-05 17:00, still processing on 12-01. On time (in progress).
        created(4, A, BIRTH, vn("11-28"), vn("12-05", "17:00")),
        # 11: due 11-04 17:00, finished by a PC whose clock says 08:30. On time.
        created(11, A, BIRTH, vn("11-04"), vn("11-04", "17:00")),
        # 5: no due date, finished weeks later. Never late: on time.
        created(5, A, MARRIAGE, vn("11-10")),
        # 6: rejected: counts as received only, though its due time has passed.
        created(6, A, MARRIAGE, vn("11-12"), vn("11-13", "17:00")),
        # 7: due 11-15 17:00, returned 11-16 09:00 without a "finished": late.
        created(7, A, MARRIAGE, vn("11-14"), vn("11-15", "17:00")),
    )
    await b.send(
        # 8: received 11-01 06:30 Vietnam (10-31 in UTC), due 11-03 17:00, waiting for a
        #    supplement since 11-03 08:00, before its due time: the pause runs to NOW. On time.
        created(8, B, BIRTH, "2026-11-01T06:30:00+07:00", vn("11-03", "17:00")),
        # 9: received 10-31 23:30 Vietnam, finished 11-01 10:00, due 11-01 17:00. On time.
        created(9, B, BIRTH, "2026-10-31T23:30:00+07:00", vn("11-01", "17:00")),
        # 10: received 11-30 18:00 UTC = 12-01 01:00 Vietnam; no due date: on time.
        created(10, B, BIRTH, "2026-11-30T18:00:00+00:00"),
        status(8, "supplement_requested", vn("11-03")),
        status(9, "finished", vn("11-01", "10:00")),
    )
    await a1.send(status(1, "processing", vn("11-02", "09:00")),
                  status(2, "processing", vn("11-03", "09:00")),
                  status(6, "rejected", vn("11-12", "10:00")))
    await a2.send(status(1, "supplement_requested", vn("11-03", "10:00")),
                  status(11, "processing", vn("11-04", "09:00")))
    await a1.send(status(1, "processing", vn("11-05", "10:00")),
                  status(7, "processing", vn("11-14", "09:00")),
                  status(11, "finished", vn("11-04", "08:30")))
    await a2.send(status(1, "finished", vn("11-06", "16:00")),
                  status(2, "finished", vn("11-06", "09:00")),
                  status(7, "returned", vn("11-16", "09:00")))
    await a1.send(status(1, "returned", vn("11-07")),
                  status(3, "processing", vn("11-20", "09:00")),
                  status(4, "processing", vn("11-28", "09:00")),
                  status(5, "finished", vn("11-30", "16:00")))
    # Commune B cannot finish commune A's dossier: refused, quarantined, not history.
    await b.send(status(3, "finished", vn("11-21")))


def row(commune: str, procedure: tuple[str, str], *counts: int,
        rate: float | None) -> dict[str, Any]:
    keys = ("received", "finished_on_time", "finished_late", "processing_on_time",
            "processing_late")
    return {"commune_code": commune, "procedure_code": procedure[0],
            "procedure_name": procedure[1], **dict(zip(keys, counts, strict=True)),
            "on_time_rate": rate}


# Store: the report ---------------------------------------------------------------------------


async def test_the_report_counts_each_dossier_as_worked_out_by_hand(store: Store,
                                                                    keys: ServerKeys) -> None:
    await load_scenario(store, keys)
    assert await on_time_report(store, now=NOW) == [
        row(A, MARRIAGE, 3, 1, 1, 0, 0, rate=0.5),        # 5 on time, 7 late, 6 rejected
        row(A, BIRTH, 5, 2, 1, 1, 1, rate=0.6667),        # 1, 11 on time; 2 late; 4; 3
        row(B, BIRTH, 3, 1, 0, 2, 0, rate=1.0),           # 9 on time; 8 and 10 in time
    ]


async def test_the_report_filters_by_vietnamese_day_and_commune(store: Store,
                                                                keys: ServerKeys) -> None:
    await load_scenario(store, keys)
    november = await on_time_report(store, date_from=date(2026, 11, 1),
                                    date_to=date(2026, 11, 30), now=NOW)
    assert november == [
        row(A, MARRIAGE, 3, 1, 1, 0, 0, rate=0.5),
        row(A, BIRTH, 5, 2, 1, 1, 1, rate=0.6667),
        row(B, BIRTH, 1, 0, 0, 1, 0, rate=None),  # 8 only: 9 is October's, 10 December's
    ]
    assert await on_time_report(store, date_to=date(2026, 10, 31), now=NOW) == [
        row(B, BIRTH, 1, 1, 0, 0, 0, rate=1.0)]   # 9, received 10-31 23:30 Vietnam
    assert await on_time_report(store, date_from=date(2026, 11, 20), now=NOW) == [
        row(A, BIRTH, 2, 0, 0, 1, 1, rate=None),  # 3 late and 4 in time
        row(B, BIRTH, 1, 0, 0, 1, 0, rate=None),  # 10
    ]
    assert await on_time_report(store, commune=B, now=NOW) == [
        row(B, BIRTH, 3, 1, 0, 2, 0, rate=1.0)]
    assert await on_time_report(store, commune=A, date_from=date(2026, 12, 1), now=NOW) == []
    # Judged later, dossier 4 is late too (due 12-05 17:00) and 8's pause keeps running.
    later = await on_time_report(store, commune=A, now=datetime(2026, 12, 6, tzinfo=VIETNAM))
    assert later[1] == row(A, BIRTH, 5, 2, 1, 0, 2, rate=0.6667)


async def test_history_is_in_record_order_from_applied_records_only(store: Store,
                                                                    keys: ServerKeys) -> None:
    await load_scenario(store, keys)
    history = await status_history(store)
    assert history[dossier_id(1)] == [
        StatusPoint("received", vn("11-02")),
        StatusPoint("processing", vn("11-02", "09:00")),
        StatusPoint("supplement_requested", vn("11-03", "10:00")),
        StatusPoint("processing", vn("11-05", "10:00")),
        StatusPoint("finished", vn("11-06", "16:00")),
        StatusPoint("returned", vn("11-07")),
    ]
    # Recorded after "processing" though that PC's clock put it earlier.
    assert [p.status for p in history[dossier_id(11)]] == ["received", "processing", "finished"]
    # Commune B's "finished" for commune A's dossier 3 was refused.
    assert history[dossier_id(3)] == [StatusPoint("received", vn("11-20")),
                                      StatusPoint("processing", vn("11-20", "09:00"))]
    assert len(history) == 11
    # Asking by id, in chunks of the IN list, gives the same.
    wanted = [dossier_id(n) for n in range(1, 1300)]
    assert await status_history(store, wanted) == history
    assert await status_history(store, [dossier_id(8)]) == {dossier_id(8): history[dossier_id(8)]}
    assert await status_history(store, []) == {}


# Pure: the judgement -------------------------------------------------------------------------


def at(hour: int, minute: int = 0, day: int = 2) -> str:
    return f"2026-11-{day:02d}T{hour:02d}:{minute:02d}:00+07:00"


def points(*pairs: tuple[str, str]) -> list[StatusPoint]:
    return [StatusPoint(s, t) for s, t in pairs]


DUE_10 = {"id": "x", "status": "finished", "received_at": at(8), "due_at": at(10)}


def test_only_pauses_before_the_finish_extend_the_due_time() -> None:
    # Paused 09:00 → 11:00 (two hours): due 12:00.
    paused = [("received", at(8)), ("supplement_requested", at(9)),
              ("supplement_requested", at(9, 30)),  # asked again: still the same pause
              ("processing", at(11))]
    assert judge(DUE_10, points(*paused, ("finished", at(11, 59))), NOW) == "finished_on_time"
    assert judge(DUE_10, points(*paused, ("finished", at(12, 1))), NOW) == "finished_late"
    # A pause after the finish changes nothing.
    after = [("received", at(8)), ("finished", at(10, 30)), ("supplement_requested", at(11)),
             ("returned", at(15))]
    assert judge({**DUE_10, "status": "returned"}, points(*after), NOW) == "finished_late"
    # Returned without "finished": the return is the finish.
    returned = {**DUE_10, "status": "returned"}
    assert judge(returned, points(("received", at(8)), ("returned", at(9, 59))), NOW) == \
        "finished_on_time"


def test_a_pause_still_open_runs_to_now() -> None:
    waiting = {**DUE_10, "status": "supplement_requested"}
    before_due = points(("received", at(8)), ("supplement_requested", at(9, 30)))
    after_due = points(("received", at(8)), ("supplement_requested", at(10, 30)))
    for now_day in (2, 20):
        now = datetime.fromisoformat(at(12, day=now_day))
        assert judge(waiting, before_due, now) == "processing_on_time"
        assert judge(waiting, after_due, now) == "processing_late"
    processing = {**DUE_10, "status": "processing"}
    assert judge(processing, points(("received", at(8))),
                 datetime.fromisoformat(at(9, 59))) == "processing_on_time"
    assert judge(processing, points(("received", at(8))),
                 datetime(2026, 11, 2, 3, 1, tzinfo=UTC)) == "processing_late"  # 10:01 +07


def test_a_clock_gone_back_pauses_nothing_and_closed_dossiers_are_only_received() -> None:
    back = points(("received", at(8)), ("supplement_requested", at(9)),
                  ("processing", at(7)), ("finished", at(10, 30)))
    assert judge(DUE_10, back, NOW) == "finished_late"
    for closed in ("rejected", "withdrawn", "stopped"):
        assert judge({**DUE_10, "status": closed}, points(("received", at(8))), NOW) is None
    # Without history (nothing recorded since intake) the current status stands.
    assert judge({**DUE_10, "status": "finished", "received_at": at(9)}, [], NOW) == \
        "finished_on_time"


def test_rows_group_sort_and_round() -> None:
    def dossier(n: int, commune: str, procedure: tuple[str, str], state: str,
                due: str | None) -> dict[str, Any]:
        return {"id": str(n), "commune_code": commune, "procedure_code": procedure[0],
                "procedure_name": procedure[1], "status": state, "received_at": at(8),
                "due_at": due}

    dossiers = [dossier(1, B, BIRTH, "finished", None), dossier(2, A, BIRTH, "finished", at(9)),
                dossier(3, A, BIRTH, "finished", None), dossier(4, A, BIRTH, "finished", None),
                dossier(5, A, MARRIAGE, "withdrawn", at(9))]
    histories = {"2": points(("received", at(8)), ("finished", at(9, 1)))}
    assert report_rows(dossiers, histories, now=NOW) == [
        row(A, MARRIAGE, 1, 0, 0, 0, 0, rate=None),
        row(A, BIRTH, 3, 2, 1, 0, 0, rate=0.6667),
        row(B, BIRTH, 1, 1, 0, 0, 0, rate=1.0),
    ]
    assert count_row([], {}, now=NOW)["on_time_rate"] is None


# The command ---------------------------------------------------------------------------------


async def cli_data_dir(tmp_path: Path, keys: ServerKeys) -> Path:
    """A `syncd init` data directory holding dossiers whose judgement does not
    depend on today's date (received in 2020; due in 2020 or 2099)."""
    data_dir = tmp_path / "server"
    syncd("init", "--data-dir", str(data_dir))
    store = await open_store(ServerPaths(data_dir).database)
    try:
        a, b = await Desk.enroll(store, keys, A), await Desk.enroll(store, keys, B)
        await a.send(
            created(1, A, BIRTH, "2020-03-02T08:00:00+07:00", "2020-03-05T17:00:00+07:00"),
            created(2, A, BIRTH, "2020-03-03T08:00:00+07:00", "2020-03-04T17:00:00+07:00"),
            created(3, A, BIRTH, "2020-03-10T08:00:00+07:00", "2020-03-12T17:00:00+07:00"),
            status(1, "finished", "2020-03-04T10:00:00+07:00"),   # on time
            status(2, "finished", "2020-03-06T10:00:00+07:00"),   # late
            status(3, "processing", "2020-03-10T09:00:00+07:00"))  # in progress, late
        await b.send(created(4, B, MARRIAGE, "2020-03-11T08:00:00+07:00",
                             "2099-01-01T17:00:00+07:00", status="processing"))
    finally:
        await store.close()
    return data_dir


CLI_ROWS = [row(A, BIRTH, 3, 1, 1, 0, 1, rate=0.5), row(B, MARRIAGE, 1, 0, 0, 1, 0, rate=None)]


async def test_report_json_and_table(tmp_path: Path, keys: ServerKeys) -> None:
    data_dir = str(await cli_data_dir(tmp_path, keys))
    assert json.loads(syncd("report", "--data-dir", data_dir, "--json").stdout) == CLI_ROWS
    only_b = syncd("report", "--data-dir", data_dir, "--commune", B, "--json").stdout
    assert json.loads(only_b) == CLI_ROWS[1:]
    from_10 = syncd("report", "--data-dir", data_dir, "--from", "2020-03-10", "--to",
                    "2020-03-31", "--json").stdout
    assert json.loads(from_10) == [row(A, BIRTH, 1, 0, 0, 0, 1, rate=None), CLI_ROWS[1]]
    assert json.loads(syncd("report", "--data-dir", data_dir, "--to", "2020-03-01",
                            "--json").stdout) == []
    table = syncd("report", "--data-dir", data_dir).stdout.splitlines()
    assert table[0].split("\t")[:3] == ["commune_code", "procedure_code", "received"]
    assert table[1].split("\t") == [A, BIRTH[0], "3", "1", "1", "0", "1", "50.00%", BIRTH[1]]
    assert table[-1].split("\t")[:8] == ["(all)", "", "4", "1", "1", "1", "1", "50.00%"]


async def test_report_csv(tmp_path: Path, keys: ServerKeys) -> None:
    data_dir = str(await cli_data_dir(tmp_path, keys))
    out = syncd("report", "--data-dir", data_dir, "--csv").stdout
    header, *rows = list(csv.reader(io.StringIO(out)))
    assert header == ["commune_code", "procedure_code", "procedure_name", "received",
                      "finished_on_time", "finished_late", "processing_on_time",
                      "processing_late", "on_time_rate"]
    assert rows == [[A, BIRTH[0], BIRTH[1], "3", "1", "1", "0", "1", "0.5"],
                    [B, MARRIAGE[0], MARRIAGE[1], "1", "0", "0", "1", "0", ""]]


async def test_report_refuses_bad_dates_and_communes(tmp_path: Path, keys: ServerKeys) -> None:
    data_dir = str(await cli_data_dir(tmp_path, keys))
    for args, flag in ((["--from", "2020-13-01"], "--from"), (["--from", "01/03/2020"], "--from"),
                       (["--to", "2020-02-30"], "--to"),
                       (["--from", "2020-03-02", "--to", "2020-03-01"], "--from"),
                       (["--commune", "1234"], "--commune")):
        proc = syncd("report", "--data-dir", data_dir, *args, "--json", check=False)
        assert (proc.returncode, proc.stdout) == (2, ""), args
        assert proc.stderr.startswith(f"syncd: {flag}") and proc.stderr.count("\n") == 1, \
            proc.stderr
