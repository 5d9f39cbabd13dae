"""The export for the national public-service portal (DVCQG): each field by
value, dates in Vietnamese time across the UTC day boundary, nulls for what a
dossier does not have; and the `syncd export-dvcqg` command."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

from syncd.config import ServerPaths
from syncd.dvcqg import export_dvcqg
from syncd.keys import ServerKeys
from syncd.store import Store, open_store
from tests.support.procs import syncd
from tests.syncd.test_report import BIRTH, MARRIAGE, Desk, created, keys, status, store

__all__ = ["keys", "store"]  # fixtures shared with test_report

FULL = {
    "MaHoSo": "01111-261101-0021",
    "MaTTHC": "1.001193",
    "TenTTHC": "Đăng ký khai sinh",
    "ChuHoSo": "Giàng Seo Páo",
    "DinhDanhCHS": "010090001234",
    "SoDienThoai": "0912345678",
    "NgayTiepNhan": "20261201013000",     # 2026-11-30T18:30:00Z
    "NgayHenTra": "20261202170000",
    "NgayKetThucXuLy": "20261201235930",  # the first "finished", 16:59:30Z
    "NgayTra": "20261202081500",
    "TrangThaiHoSo": 10,                  # returned
    "KenhThucHien": 2,                    # online
}
MINIMAL = {
    "MaHoSo": "01111-261101-0022",
    "MaTTHC": "1.000894",
    "TenTTHC": "Đăng ký kết hôn",
    "ChuHoSo": "Người nộp 22",
    "DinhDanhCHS": None,
    "SoDienThoai": None,
    "NgayTiepNhan": "20261126081500",
    "NgayHenTra": None,
    "NgayKetThucXuLy": None,
    "NgayTra": None,
    "TrangThaiHoSo": 2,                   # received
    "KenhThucHien": 1,                    # direct, the default
}


async def load(store: Store, keys: ServerKeys) -> None:
    desk = await Desk.enroll(store, keys, "01111")
    await desk.send(
        created(21, "01111", BIRTH, "2026-11-30T18:30:00+00:00", "2026-12-02T17:00:00+07:00",
                channel="online",
                applicant={"name": "Giàng Seo Páo", "id_type": "cccd",
                           "id_number": "010090001234", "phone": "0912345678"}),
        created(22, "01111", MARRIAGE, "2026-11-26T08:15:00+07:00"),
        status(21, "processing", "2026-12-01T02:00:00+00:00"),
        status(21, "finished", "2026-12-01T16:59:30+00:00"),
        status(21, "processing", "2026-12-02T07:00:00+07:00"),  # reopened, finished again
        status(21, "finished", "2026-12-02T07:30:00+07:00"),
        status(21, "returned", "2026-12-02T08:15:00+07:00"))


async def test_every_field_by_value(store: Store, keys: ServerKeys) -> None:
    await load(store, keys)
    assert await export_dvcqg(store) == [FULL, MINIMAL]  # ordered by code


async def test_the_period_is_in_vietnamese_days(store: Store, keys: ServerKeys) -> None:
    await load(store, keys)
    # 21 was received on 11-30 in UTC but on 12-01 in Vietnam.
    assert await export_dvcqg(store, date_from=date(2026, 12, 1)) == [FULL]
    assert await export_dvcqg(store, date_to=date(2026, 11, 30)) == [MINIMAL]
    assert await export_dvcqg(store, date_from=date(2026, 11, 26),
                              date_to=date(2026, 11, 26)) == [MINIMAL]
    assert await export_dvcqg(store, date_to=date(2026, 11, 25)) == []


async def test_the_command_prints_the_json_array(tmp_path: Path, keys: ServerKeys) -> None:
    data_dir = tmp_path / "server"
    syncd("init", "--data-dir", str(data_dir))
    opened = await open_store(ServerPaths(data_dir).database)
    try:
        await load(opened, keys)
    finally:
        await opened.close()
    everything = syncd("export-dvcqg", "--data-dir", str(data_dir))
    assert json.loads(everything.stdout) == [FULL, MINIMAL]
    assert "Giàng Seo Páo" in everything.stdout  # UTF-8, not \u escapes
    december = syncd("export-dvcqg", "--data-dir", str(data_dir), "--from", "2026-12-01")
    assert json.loads(december.stdout) == [FULL]
    bad = syncd("export-dvcqg", "--data-dir", str(data_dir), "--to", "30/11/2026", check=False)
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == "syncd: --to must be a date YYYY-MM-DD, not '30/11/2026'\n"
