"""The queue key file, optionally protected by a passphrase (scrypt).

Without a passphrase the file holds the 32 key bytes, readable by its owner
only. With one (``SYNC_AGENT_PASSPHRASE`` at ``init``), it holds::

    b"CSK1" | salt (16) | nonce (12) | ChaCha20-Poly1305(scrypt(passphrase, salt), key)

so a copied data directory (or a stolen PC) yields nothing without the
passphrase. Every command then needs the passphrase: from
``SYNC_AGENT_PASSPHRASE``, or typed at a prompt when run interactively.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .errors import SetupError
from .files import read_secret, write_atomic

__all__ = ["PASSPHRASE_ENV", "read_queue_key", "write_queue_key"]

PASSPHRASE_ENV = "SYNC_AGENT_PASSPHRASE"  # noqa: S105 - the variable's name
_MAGIC = b"CSK1"
_WRAPPED_SIZE = len(_MAGIC) + 16 + 12 + 32 + 16


def _derive(passphrase: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(passphrase.encode())


def write_queue_key(path: Path, key: bytes, passphrase: str | None) -> None:
    if not passphrase:
        write_atomic(path, key, mode=0o600)
        return
    salt, nonce = os.urandom(16), os.urandom(12)
    sealed = ChaCha20Poly1305(_derive(passphrase, salt)).encrypt(nonce, key, _MAGIC)
    write_atomic(path, _MAGIC + salt + nonce + sealed, mode=0o600)


def _passphrase() -> str:
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value
    if sys.stdin.isatty():
        return getpass.getpass("Mật khẩu khóa hàng đợi / queue key passphrase: ")
    raise SetupError(f"the queue key is protected by a passphrase; set {PASSPHRASE_ENV}")


def read_queue_key(path: Path) -> bytes:
    """The queue key, unwrapping it with the passphrase if it has one.

    Raises:
        SetupError: missing, readable by others, malformed, or a wrong passphrase.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SetupError(f"key file {path.name} is missing") from exc
    if size != _WRAPPED_SIZE:
        return read_secret(path, 32)
    data = read_secret(path, _WRAPPED_SIZE)
    if not data.startswith(_MAGIC):
        raise SetupError(f"key file {path.name} is not a queue key")
    salt, nonce, sealed = data[4:20], data[20:32], data[32:]
    try:
        return ChaCha20Poly1305(_derive(_passphrase(), salt)).decrypt(nonce, sealed, _MAGIC)
    except InvalidTag as exc:
        raise SetupError("wrong passphrase for the queue key") from exc
