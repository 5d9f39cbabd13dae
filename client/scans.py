"""The scanner's folder, watched: files the scanner has finished writing are
offered on the intake page, and the ones the officer attaches move aside.

Rules:

* A file is offered once it is *settled*: the same size and modification
  stamp at looks at least ``settle_s`` (2 s) apart, and taken only if it is
  still so when the dossier is saved (the daemon's monotonic
  clock; the stamp is only compared with itself, never used to order
  anything). A scan still being written is not offered.
* Only plain files directly in the folder count; hidden files, temporary
  files and the ``attached`` subfolder are ignored. Names are offered in
  name order, at most ``MAX_OFFERED``.
* Attaching takes the file by its bare name, checked against what is
  offered now (no path from a form ever reaches the filesystem); after the
  dossier is saved (its documents copied into the agent's store) the file is
  moved into ``attached/``, never deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ATTACHED", "MAX_OFFERED", "ScanFile", "ScanFolder"]

log = logging.getLogger("client.scans")
ATTACHED = "attached"
MAX_OFFERED = 200
_TEMPORARY = (".tmp", ".part", ".crdownload", "~")


@dataclass(frozen=True)
class ScanFile:
    name: str
    size: int


class ScanFolder:
    """Watches ``folder`` (created when missing) for finished scans."""

    def __init__(self, folder: Path, *, settle_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.folder = folder
        self.settle_s = settle_s
        self._clock = clock
        # name → (size, stamp, first seen with them)
        self._seen: dict[str, tuple[int, int, float]] = {}

    def look(self) -> None:
        """One look at the folder (the watcher calls this every ``settle_s``)."""
        now = self._clock()
        seen: dict[str, tuple[int, int, float]] = {}
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            entries = []
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.endswith(_TEMPORARY):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                stat = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            previous = self._seen.get(name)
            since = previous[2] if previous and previous[:2] == (stat.st_size,
                                                                 stat.st_mtime_ns) else now
            seen[name] = (stat.st_size, stat.st_mtime_ns, since)
        self._seen = seen

    def offered(self) -> list[ScanFile]:
        """The settled scans, by name."""
        now = self._clock()
        ready = sorted(name for name, (size, _, since) in self._seen.items()
                       if size > 0 and now - since >= self.settle_s)
        return [ScanFile(name, self._seen[name][0]) for name in ready[:MAX_OFFERED]]

    def path_of(self, name: str) -> Path | None:
        """The path of an offered scan named ``name``, or None (not offered, or
        changed since it was last seen: a scanner writing it again)."""
        seen = self._seen.get(name)
        if seen is None or not any(scan.name == name for scan in self.offered()):
            return None
        path = self.folder / name
        try:
            stat = path.stat(follow_symlinks=False)
        except OSError:
            return None
        return path if (stat.st_size, stat.st_mtime_ns) == seen[:2] else None

    def set_aside(self, names: list[str]) -> None:
        """Move attached scans into ``attached/`` (a name taken there gets a suffix)."""
        target = self.folder / ATTACHED
        try:
            target.mkdir(exist_ok=True)
        except OSError as exc:  # a read-only share, a file named so: the scans just stay
            log.warning("scans not moved aside: %s", exc.strerror)
            return
        for name in names:
            destination = target / name
            stem, suffix, n = destination.stem, destination.suffix, 1
            while destination.exists():
                n += 1
                destination = target / f"{stem} ({n}){suffix}"
            try:
                (self.folder / name).rename(destination)
            except OSError as exc:  # the dossier holds its copy; the file just stays
                log.warning("scan not moved aside: %s", exc.strerror)
            self._seen.pop(name, None)

    async def watch(self, stop: asyncio.Event) -> None:
        """Look every ``settle_s`` until ``stop`` is set."""
        with contextlib.suppress(OSError):
            self.folder.mkdir(parents=True, exist_ok=True)
        while not stop.is_set():
            await asyncio.to_thread(self.look)  # a slow network share never blocks the page
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settle_s / 2)
