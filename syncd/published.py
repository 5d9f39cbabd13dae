"""What the server publishes for agents: the procedure catalogue and the holiday list.

Each is a JSON document with a version that grows by one whenever its content
changes (importing the same file again changes nothing). Agents ask with the
version they hold and get the document only when a newer one exists; the
answer is signed like every other (SPEC §17).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from typing import Any

from .errors import RequestError
from .store import Store

__all__ = ["NAMES", "latest", "publish_catalogue", "split_catalogue"]

NAMES = ("catalogue", "holidays")
MAX_BODY = 1024 * 1024
_CODE = re.compile(r"[123]\.\d{6}(?:[.\-][A-Za-z0-9][A-Za-z0-9.\-]{0,40})?", re.ASCII)


def _problem(text: str) -> RequestError:
    return RequestError(400, "bad_request", text)


def _procedure(raw: Any, index: int) -> dict[str, Any]:
    where = f"procedures[{index}]"
    if not isinstance(raw, dict):
        raise _problem(f"{where}: must be an object")
    code, name = raw.get("code"), raw.get("name")
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        raise _problem(f"{where}.code: a national procedure code such as 1.001193")
    if not isinstance(name, str) or not name.strip() or len(name) > 300:
        raise _problem(f"{where}.name: required, at most 300 characters")
    out: dict[str, Any] = {"code": code, "name": name.strip()}
    for key, limit in (("processing_working_days", 366), ("fee_vnd", 10**12)):
        value = raw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 <= value <= limit):
            raise _problem(f"{where}.{key}: a whole number from 0 to {limit}, or null")
        out[key] = value
    for key in ("field", "fee_note"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > 500):
            raise _problem(f"{where}.{key}: text of at most 500 characters, or null")
        out[key] = value
    return out


def _dates(raw: Any, key: str) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _problem(f"{key}: must be a list of dates YYYY-MM-DD")
    try:
        return sorted({date.fromisoformat(str(day)).isoformat() for day in raw})
    except ValueError as exc:
        raise _problem(f"{key}: {exc}") from None


def split_catalogue(raw: Any) -> dict[str, bytes]:
    """A catalogue file (``procedures``, ``holidays``, ``working_weekends``) as the
    two published documents, checked.

    Raises:
        RequestError: 400 naming the first problem.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("procedures"), list) \
            or not raw["procedures"]:
        raise _problem("the file must be a JSON object with a non-empty list `procedures`")
    procedures = [_procedure(p, i) for i, p in enumerate(raw["procedures"])]
    codes = [p["code"] for p in procedures]
    if len(set(codes)) != len(codes):
        raise _problem("procedures: a code appears twice")
    documents = {
        "catalogue": {"procedures": procedures},
        "holidays": {"holidays": _dates(raw.get("holidays"), "holidays"),
                     "working_weekends": _dates(raw.get("working_weekends"),
                                                "working_weekends")},
    }
    out = {name: json.dumps(doc, ensure_ascii=False, sort_keys=True).encode()
           for name, doc in documents.items()}
    if any(len(body) > MAX_BODY for body in out.values()):
        raise _problem("the catalogue is larger than 1 MiB")
    return out


async def publish_catalogue(store: Store, raw: Any) -> dict[str, int]:
    """Publish a catalogue file; returns each document's version (unchanged if the
    content is the same)."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    versions = {}
    async with store.write() as txn:
        for name, body in split_catalogue(raw).items():
            await txn.lock("published", name)
            row = await txn.one("SELECT version, body FROM published WHERE name = ?", name)
            if row is not None and bytes(row[1]) == body:
                versions[name] = int(row[0])
                continue
            version = int(row[0]) + 1 if row else 1
            await txn.run("INSERT INTO published VALUES (?, ?, ?, ?) ON CONFLICT (name) DO "
                          "UPDATE SET version = excluded.version, body = excluded.body, "
                          "updated_at = excluded.updated_at", name, version, body, now)
            versions[name] = version
    return versions


async def latest(store: Store, name: str) -> tuple[int, bytes] | None:
    rows = await store.read("SELECT version, body FROM published WHERE name = ?", name)
    return (int(rows[0][0]), bytes(rows[0][1])) if rows else None
