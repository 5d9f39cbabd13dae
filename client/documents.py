"""Scanned documents kept by the agent: copied at ``add``, encrypted at rest.

A document is addressed by the SHA-256 of its plaintext and stored as
``documents/<sha256>.enc``: fixed-size blocks, each sealed with
ChaCha20-Poly1305 under a key derived from the queue key; the associated data
binds agent, document hash, block index and block count, so blocks cannot be
swapped, dropped or moved between documents. Any block can be read alone,
which is what chunked, resumable upload needs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol import pack

from .errors import DocumentDamaged, InputError

__all__ = ["BLOCK_BYTES", "DocumentStore"]

BLOCK_BYTES = 64 * 1024
_NONCE, _TAG = 12, 16
_SEALED_BLOCK = _NONCE + BLOCK_BYTES + _TAG
MAX_DOCUMENT_BYTES = 200 * 1024 * 1024


class DocumentStore:
    """Encrypted copies of documents under ``root``."""

    def __init__(self, root: Path, queue_key: bytes, agent_id: str) -> None:
        self.root = root
        key = HKDF(hashes.SHA256(), 32, None, b"commune-sync document").derive(queue_key)
        self._aead = ChaCha20Poly1305(key)
        self._agent_id = agent_id

    def path(self, sha256: str) -> Path:
        return self.root / f"{sha256}.enc"

    def _aad(self, sha256: str, index: int, blocks: int) -> bytes:
        return pack(["commune-sync document", self._agent_id, sha256, index, blocks])

    @staticmethod
    def _blocks(size: int) -> int:
        return max(1, -(-size // BLOCK_BYTES))

    def import_file(self, source: Path) -> tuple[str, int]:
        """Copy ``source`` in, encrypted; return ``(sha256, size)``.

        The copy is durable (temp file, fsync, rename) before this returns, so
        the original may be deleted once the dossier is saved.

        Raises:
            InputError: the file cannot be read or is too large.
        """
        digest, size = hashlib.sha256(), 0
        try:
            with source.open("rb") as src:
                while block := src.read(BLOCK_BYTES):
                    digest.update(block)
                    size += len(block)
                    if size > MAX_DOCUMENT_BYTES:
                        raise InputError(f"{source.name}: tệp quá lớn / file too large")
            sha256 = digest.hexdigest()
            target = self.path(sha256)
            if not target.exists():
                self._write_sealed(source, sha256, size, target)
        except OSError as exc:
            raise InputError(f"không đọc được tệp / cannot read file {source}: "
                             f"{exc.strerror or exc}") from exc
        return sha256, size

    def _write_sealed(self, source: Path, sha256: str, size: int, target: Path) -> None:
        self.root.mkdir(mode=0o700, exist_ok=True)
        blocks = self._blocks(size)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        check = hashlib.sha256()
        with source.open("rb") as src, tmp.open("wb") as out:
            for index in range(blocks):
                block = src.read(BLOCK_BYTES)
                check.update(block)
                nonce = os.urandom(_NONCE)
                out.write(nonce + self._aead.encrypt(nonce, block,
                                                     self._aad(sha256, index, blocks)))
            out.flush()
            os.fsync(out.fileno())
        if check.hexdigest() != sha256:  # the file changed while we copied it
            tmp.unlink()
            raise InputError(f"{source.name}: tệp thay đổi trong lúc sao chép / "
                             "file changed while being copied")
        os.replace(tmp, target)
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, sha256: str, size: int, offset: int, length: int) -> bytes:
        """Plaintext bytes ``offset .. offset + length`` (clipped to the size).

        Raises:
            DocumentDamaged: a block is missing or fails its tag.
        """
        blocks = self._blocks(size)
        end = min(size, offset + length)
        out = bytearray()
        try:
            with self.path(sha256).open("rb") as src:
                for index in range(offset // BLOCK_BYTES, (max(end, 1) - 1) // BLOCK_BYTES + 1):
                    src.seek(index * _SEALED_BLOCK)
                    sealed = src.read(_SEALED_BLOCK)
                    block = self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:],
                                               self._aad(sha256, index, blocks))
                    out += block
        except (OSError, InvalidTag, ValueError) as exc:
            raise DocumentDamaged(sha256, "missing, altered or truncated") from exc
        start = offset - (offset // BLOCK_BYTES) * BLOCK_BYTES
        return bytes(out[start:start + (end - offset)])

    def verify(self, sha256: str, size: int) -> None:
        """Decrypt the whole document and check its hash."""
        digest = hashlib.sha256()
        for offset in range(0, max(size, 1), 16 * BLOCK_BYTES):
            digest.update(self.read(sha256, size, offset, 16 * BLOCK_BYTES))
        if digest.hexdigest() != sha256:
            raise DocumentDamaged(sha256, "does not match its hash")
