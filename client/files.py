"""Small-file discipline for the data directory: atomic writes and key files.

Any file other than the SQLite queue is written to a temporary name, fsynced,
then renamed over the target, and the directory is fsynced, so a power cut
leaves either the old file or the new one. Key files are created readable by
their owner only.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import SetupError

__all__ = ["read_json", "read_secret", "write_atomic", "write_json"]


def write_atomic(path: Path, data: bytes | Iterable[bytes], *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (bytes, or pieces written in turn, never
    joined into one copy) durably: temp file, fsync, rename. On failure
    ``path`` is as it was and no temp file is left."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            for piece in [data] if isinstance(data, bytes | bytearray) else data:
                view = memoryview(piece)
                while view:  # a write may take only part of the bytes (a nearly full disk)
                    view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half file behind
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2).encode() + b"\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise SetupError(f"cannot read {path.name}: {exc}") from exc


def read_secret(path: Path, size: int) -> bytes:
    """Read a key file of exactly ``size`` bytes that only its owner may read."""
    try:
        info = path.stat()
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise SetupError(f"key file {path.name} is missing") from exc
    except OSError as exc:
        raise SetupError(f"cannot read key file {path.name}: {exc}") from exc
    if os.name == "posix" and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SetupError(
            f"key file {path.name} is readable by other users; run: chmod 600 {path.name}")
    if len(data) != size:
        raise SetupError(f"key file {path.name} has the wrong size")
    return data
