"""An inter-process lock on the data directory, so two syncs never run at once.

Held by the daemon for one sync attempt at a time (never across a backoff
sleep), and by ``sync-now`` when it syncs by itself. The operating system
drops it when its holder dies, even by SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from types import TracebackType

from .errors import LockBusy

__all__ = ["HeldForLife", "SyncLock", "held_elsewhere"]

if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


class SyncLock:
    """``async with SyncLock(path, wait_s=...)``: raises LockBusy after ``wait_s``."""

    def __init__(self, path: Path, *, wait_s: float = 0.0, poll_s: float = 0.05) -> None:
        self._path = path
        self._wait_s = wait_s
        self._poll_s = poll_s
        self._fd: int | None = None

    async def __aenter__(self) -> SyncLock:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self._wait_s
        while not _try_lock(fd):
            if time.monotonic() >= deadline:
                os.close(fd)
                raise LockBusy("another sync of this data directory is running")
            await asyncio.sleep(self._poll_s)
        self._fd = fd
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._fd is not None:
            _unlock(self._fd)
            os.close(self._fd)
            self._fd = None


class HeldForLife:
    """A lock a process keeps while it lives (the daemon's ``daemon.lock``), so
    others can tell it is running: the operating system drops it when the
    holder dies, even by SIGKILL, so a lock never outlives its daemon."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False if another process holds it."""
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        if not _try_lock(fd):
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            _unlock(self._fd)
            os.close(self._fd)
            self._fd = None


def held_elsewhere(path: Path) -> bool:
    """Whether another process holds the lock at ``path`` now."""
    if not path.exists():
        return False
    probe = HeldForLife(path)
    if probe.acquire():
        probe.release()
        return False
    return True
