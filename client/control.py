"""How ``sync-now`` asks a running daemon to sync and follows its progress.

* ``sync-agent run`` holds ``daemon.lock`` in the data directory for its whole
  life (the operating system drops it when the daemon dies, even by SIGKILL)
  and writes ``daemon.json`` naming its control port on 127.0.0.1.
* ``POST /sync`` on that port, with ``Authorization: Bearer`` the local API
  token (``api.token``), asks the daemon to sync now and answers with JSON
  lines: the progress of its sync as it goes (records acknowledged, records
  in all, bytes sent), then one line ``{"done": true, "failure": ...}`` when
  a sync that *started after the request* has ended, so a dossier saved
  just before pressing the button is in it.
* Without a daemon (no lock held), ``sync-now`` syncs by itself under the
  sync lock (:mod:`client.lock`): two syncs never run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
from aiohttp import web

from .config import AgentPaths
from .errors import DocumentDamaged, LockBusy, QueueCorrupt, RefusedError
from .files import write_atomic
from .lock import held_elsewhere

__all__ = ["Failure", "SyncActivity", "ask_daemon", "daemon_port", "describe_failure",
           "make_control_app"]

log = logging.getLogger("client.control")


@dataclass(frozen=True)
class Failure:
    """Why a sync ended with records still waiting, in a form that crosses
    processes: ``kind`` is one of ``unreachable``, ``refused``, ``revoked``,
    ``damaged`` (``seq``), ``document`` (``sha256``), ``busy``, ``stopped``."""

    kind: str
    message: str
    seq: int | None = None
    sha256: str | None = None


STOPPED = Failure("stopped", "the sync service is stopping")


def describe_failure(exc: BaseException) -> Failure:
    if isinstance(exc, LockBusy):
        return Failure("busy", str(exc))
    if isinstance(exc, QueueCorrupt):
        return Failure("damaged", exc.reason, seq=exc.seq)
    if isinstance(exc, DocumentDamaged):
        return Failure("document", str(exc), sha256=exc.sha256)
    if isinstance(exc, RefusedError):
        return Failure("revoked" if exc.code == "revoked" else "refused", str(exc))
    return Failure("unreachable", str(exc))


class SyncActivity:
    """The daemon's syncs as they happen: which run, its progress, how it ended.

    The daemon calls :meth:`begin`, :meth:`progress` (the engine's callback),
    :meth:`retrying` (the engine's ``on_retry``) and :meth:`end`; followers
    wait on :meth:`changes`. ``requested`` is set when someone asks for a sync
    now.
    """

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.run = 0  # the latest run started
        self.ended = 0  # the latest run ended
        self.running = False
        self.failing = False  # the last attempt of this run failed; it waits to retry
        self.acked = self.total = self.sent_bytes = 0
        self.outcome: Failure | None = None  # how the latest ended run ended
        self.closed = False  # the daemon is stopping: nobody should wait for another run
        self._bytes_base = 0
        self._tick = asyncio.Event()

    def _changed(self) -> None:
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    def begin(self, engine_bytes: int) -> None:
        self.run += 1
        self.running, self.failing = True, False
        self.acked = self.total = self.sent_bytes = 0
        self._bytes_base = engine_bytes
        self._changed()

    def progress(self, acked: int, total: int, engine_bytes: int) -> None:
        self.acked, self.total, self.failing = acked, total, False
        self.sent_bytes = engine_bytes - self._bytes_base
        self._changed()

    async def retrying(self, error: Exception) -> None:
        """The engine's ``on_retry``: an attempt failed; the next waits its turn."""
        self.failing = True
        self._changed()

    @property
    def sending(self) -> bool:
        """Whether records are on their way now (a run, its last attempt not failed)."""
        return self.running and not self.failing

    def end(self, failure: Failure | None) -> None:
        # Kept until the next run ends: a follower woken after the next begin()
        # still reads the outcome of the run it waited for.
        self.ended, self.running, self.outcome = self.run, False, failure
        self._changed()

    def close(self) -> None:
        self.closed = True
        self._changed()

    def snapshot(self) -> dict[str, Any]:
        return {"run": self.run, "running": self.running, "acked": self.acked,
                "total": self.total, "bytes": self.sent_bytes}

    async def changes(self) -> AsyncIterator[None]:
        """Yield after each change (changes that come close together may merge)."""
        while True:
            await self._tick.wait()
            yield None


# -- the daemon's side --------------------------------------------------------------------------

ACTIVITY = web.AppKey("activity", SyncActivity)
TOKEN = web.AppKey("token", str)
WAKE: web.AppKey[Callable[[], Awaitable[None]]] = web.AppKey("wake")


async def post_sync(request: web.Request) -> web.StreamResponse:
    offered = request.headers.get("Authorization", "").encode()
    if not hmac.compare_digest(offered, f"Bearer {request.app[TOKEN]}".encode()):
        raise web.HTTPUnauthorized(text="missing or wrong token")
    activity = request.app[ACTIVITY]
    target = activity.run + 1  # a run that starts after this request
    activity.requested.set()
    await request.app[WAKE]()  # cut a backoff or a pause short
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)

    async def send(line: dict[str, Any]) -> None:
        await response.write(json.dumps(line).encode() + b"\n")

    with contextlib.suppress(ConnectionResetError):  # the asker went away; the sync goes on
        await send(activity.snapshot())
        changes = activity.changes()
        while activity.ended < target and not activity.closed:
            await anext(changes)
            if request.transport is None or request.transport.is_closing():
                return response  # the asker went away (Ctrl-C, its timeout)
            await send(activity.snapshot())
        failure = activity.outcome if activity.ended >= target else STOPPED
        await send({"done": True, "failure": asdict(failure) if failure else None})
        await response.write_eof()
    return response


def make_control_app(activity: SyncActivity, token: str,
                     wake: Callable[[], Awaitable[None]]) -> web.Application:
    app = web.Application()
    app[ACTIVITY], app[TOKEN], app[WAKE] = activity, token, wake
    app.router.add_post("/sync", post_sync)
    return app


def announce(paths: AgentPaths, port: int) -> None:
    """Say which port the daemon's control answers on (read by ``sync-now``)."""
    write_atomic(paths.daemon_file, json.dumps({"pid": os.getpid(), "port": port}).encode(),
                 mode=0o600)


def withdraw(paths: AgentPaths) -> None:
    with contextlib.suppress(OSError):
        paths.daemon_file.unlink()


# -- the asking side ----------------------------------------------------------------------------

def daemon_port(paths: AgentPaths) -> int | None:
    """The control port of the daemon running on this data directory, or None
    when no daemon runs (or it has not said its port yet)."""
    if not held_elsewhere(paths.daemon_lock):
        return None
    try:
        port = json.loads(paths.daemon_file.read_text(encoding="utf-8"))["port"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return port if isinstance(port, int) and 0 < port < 65536 else None


async def ask_daemon(port: int, token: str,
                     progress: Callable[[int, int, int], None]) -> Failure | None:
    """Ask the daemon on ``port`` to sync now; report its progress until a run
    started after the request ends; return that run's failure (None: every
    record reached the server).

    Raises:
        ConnectionError: the daemon did not answer, or stopped before the end
            (the caller syncs by itself instead).
    """
    try:  # no total timeout: the caller bounds the wait (``--timeout``)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session, \
                session.post(
                f"http://127.0.0.1:{port}/sync",
                headers={"Authorization": f"Bearer {token}"}) as response:
            if response.status != 200:
                raise ConnectionError(f"the daemon answered HTTP {response.status}")
            async for raw in response.content:
                line = json.loads(raw)
                if line.get("done"):
                    failure = line.get("failure")
                    return Failure(**failure) if failure else None
                if line.get("total"):
                    progress(int(line["acked"]), int(line["total"]), int(line["bytes"]))
    except (aiohttp.ClientError, ValueError, KeyError, TypeError) as exc:
        raise ConnectionError(f"the daemon did not answer properly ({exc})") from exc
    raise ConnectionError("the daemon stopped before its sync ended")

