"""Pull what the server publishes (the procedure catalogue, the holiday list),
and with it the dossier statuses set centrally (:mod:`client.updates`).

The agent asks with the version it holds; a newer document arrives signed by
the pinned server key, is checked (it must load as a catalogue or calendar),
and replaces the copy in the data directory atomically. Until the first pull
the copy shipped with the agent is used (see :mod:`client.catalogue`).
A failed pull changes nothing and is tried again at the next sync.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

from protocol import DecodeError
from protocol.codec import pack, unpack

from .agent import Agent
from .catalogue import parse_calendar, parse_catalogue
from .errors import SyncError, TransportError
from .files import write_atomic
from .transport import HttpTransport
from .updates import pull_updates

__all__ = ["pull_published"]

log = logging.getLogger("client.published")
NAMES = ("catalogue", "holidays")
_VERSIONS = "published.json"
_MAX = 2 * 1024 * 1024


def _versions(root: Path) -> dict[str, int]:
    try:
        raw = json.loads((root / _VERSIONS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in raw.items() if isinstance(v, int)} if isinstance(raw, dict) else {}


def _check(name: str, body: bytes) -> None:
    """The document must load the way the intake page will load it."""
    raw = json.loads(body)
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    (parse_catalogue if name == "catalogue" else parse_calendar)(raw)


async def pull_published(agent: Agent, transport: HttpTransport) -> list[str]:
    """Fetch every newer published document; return the names that changed."""
    root = agent.paths.root
    versions = _versions(root)
    changed = []
    for name in NAMES:
        have = versions.get(name, 0)
        reply = await transport.post("/v1/published", pack({"name": name, "have": have}),
                                     timeout_s=15)
        message: Any = unpack(reply.signed_message(agent.config.server_key_bytes),
                              max_bytes=_MAX)
        if reply.status != 200 or not isinstance(message, dict) \
                or message.get("kind") != "published" or message.get("name") != name:
            raise TransportError(f"unexpected answer to a {name} pull (HTTP {reply.status})")
        version, body = message.get("version"), message.get("body")
        if not isinstance(version, int) or body is None or version <= have:
            continue
        if not isinstance(body, bytes):
            raise TransportError(f"{name}: malformed document")
        try:
            _check(name, body)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("published %s version %d refused: %s", name, version, exc)
            continue
        write_atomic(root / f"{name}.json", body)
        versions[name] = version
        write_atomic(root / _VERSIONS, json.dumps(versions).encode())
        log.info("%s version %d received", name, version)
        changed.append(name)
    return changed


async def pull_quietly(agent: Agent, transport: HttpTransport) -> list[str]:
    """:func:`pull_published`, then the dossier statuses set centrally
    (:func:`client.updates.pull_updates`), logging instead of raising (sync goes
    on without them); returns the published names that changed."""
    try:
        changed = await pull_published(agent, transport)
    except (TransportError, DecodeError) as exc:
        log.warning("catalogue not pulled this time: %s", exc)
        changed = []
    try:
        await pull_updates(agent, transport)
    except (SyncError, DecodeError, sqlite3.Error) as exc:
        log.warning("central status changes not pulled this time: %s", exc)
    return changed
