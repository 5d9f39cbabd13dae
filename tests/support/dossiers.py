"""Realistic Vietnamese dossiers for tests, from a seeded generator."""

from __future__ import annotations

import random
from typing import Any

PROCEDURES = [
    ("1.001193", "Đăng ký khai sinh", "Hộ tịch", 0),
    ("1.000894", "Đăng ký kết hôn", "Hộ tịch", 0),
    ("1.000656", "Đăng ký khai tử", "Hộ tịch", 0),
    ("1.004873", "Cấp Giấy xác nhận tình trạng hôn nhân", "Hộ tịch", 0),
    ("2.000635", "Cấp bản sao trích lục hộ tịch", "Hộ tịch", 8000),
    ("2.000815", "Chứng thực bản sao từ bản chính giấy tờ, văn bản", "Chứng thực", 2000),
    ("2.000884", "Chứng thực chữ ký trong giấy tờ, văn bản", "Chứng thực", 10000),
    ("1.011607", "Công nhận hộ nghèo, hộ cận nghèo (hằng năm)", "Bảo trợ xã hội", 0),
]
FAMILY = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Vàng", "Lò", "Giàng", "Sùng", "Hà", "Mùa"]
MIDDLE = ["Văn", "Thị", "A", "Seo", "Đức", "Minh", "Ngọc"]
GIVEN = ["Páo", "Dế", "Mai", "Hoa", "Sính", "Chứ", "Lan", "Tùng", "Thào", "Dũng", "Xuân"]
VILLAGES = ["Bản Phố", "Thôn Nậm Cang", "Bản Sin Chải", "Thôn Lao Chải", "Bản Tả Van"]


def make_dossier(rng: random.Random, index: int = 0) -> dict[str, Any]:
    code, name, field, fee = rng.choice(PROCEDURES)
    day = 1 + index % 28
    hour = 7 + rng.randrange(10)
    return {
        "procedure_code": code,
        "procedure_name": name,
        "field": field,
        "applicant": {
            "name": f"{rng.choice(FAMILY)} {rng.choice(MIDDLE)} {rng.choice(GIVEN)}",
            "id_type": "cccd",
            "id_number": f"{rng.randrange(10**11, 10**12):012d}",
            "phone": f"09{rng.randrange(10**8):08d}",
            "address": f"{rng.choice(VILLAGES)}, xã Bản Hồ",
        },
        "received_at": f"2026-11-{day:02d}T{hour:02d}:{rng.randrange(60):02d}:00+07:00",
        "due_at": f"2026-11-{day:02d}T17:00:00+07:00",
        "fees": [{"name": "Lệ phí", "amount": fee}] if fee else [],
        "documents": [{"name": "Tờ khai", "copies": 1}],
    }


def make_dossiers(count: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [make_dossier(rng, i) for i in range(count)]
