"""The server's keys, in its data directory, each file owner-only.

    server.key       Ed25519 identity: signs every reply; agents pin it
    sealing-N.key    X25519 sealing keys; the highest N is current. Old keys
                     are kept so batches sealed long ago (a USB stick, a PC
                     that was off for months) still open.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from protocol.sealing import fingerprint

from .errors import SetupError

__all__ = ["ServerKeys"]

_SEALING = re.compile(r"sealing-(\d{1,6})\.key")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_private(path: Path) -> bytes:
    try:
        info, data = path.stat(), path.read_bytes()
    except OSError as exc:
        raise SetupError(f"cannot read key file {path.name}: {exc.strerror or exc}") from exc
    if os.name == "posix" and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SetupError(f"key file {path.name} is readable by other users; "
                         f"run: chmod 600 {path}")
    if len(data) != 32:
        raise SetupError(f"key file {path.name} has the wrong size")
    return data


def _raw(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


@dataclass(frozen=True)
class ServerKeys:
    identity: Ed25519PrivateKey = field(repr=False)
    sealing: dict[int, X25519PrivateKey] = field(repr=False)

    @property
    def current_id(self) -> int:
        return max(self.sealing)

    @property
    def identity_public(self) -> bytes:
        return self.identity.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sealing_public(self, key_id: int | None = None) -> bytes:
        key = self.sealing[self.current_id if key_id is None else key_id]
        return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.identity_public)

    @classmethod
    def create(cls, root: Path) -> ServerKeys:
        """Create the identity and the first sealing key (never overwrites)."""
        if not (root / "server.key").exists():
            _write_private(root / "server.key", _raw(Ed25519PrivateKey.generate()))
        if not any(_SEALING.fullmatch(p.name) for p in root.iterdir()):
            _write_private(root / "sealing-1.key", _raw(X25519PrivateKey.generate()))
        return cls.load(root)

    @classmethod
    def load(cls, root: Path) -> ServerKeys:
        identity = Ed25519PrivateKey.from_private_bytes(_read_private(root / "server.key"))
        sealing = {int(m.group(1)): X25519PrivateKey.from_private_bytes(_read_private(p))
                   for p in root.iterdir() if (m := _SEALING.fullmatch(p.name))}
        if not sealing:
            raise SetupError(f"no sealing key in {root} (run `syncd init`)")
        return cls(identity, sealing)

    @classmethod
    def rotate(cls, root: Path) -> int:
        """Add a new current sealing key; old ones stay. Returns its id."""
        keys = cls.load(root)
        new_id = keys.current_id + 1
        _write_private(root / f"sealing-{new_id}.key", _raw(X25519PrivateKey.generate()))
        return new_id
