"""The agent's data directory and configuration.

A data directory is self-contained: relative file names only, so it can be
copied, moved or restored elsewhere; the server URL is plain configuration.

    agent.json   configuration (no secrets)
    agent.key    Ed25519 signing key, owner-only
    queue.key    queue encryption key, owner-only
    queue.db     the encrypted queue (SQLite, WAL)
    documents/   encrypted copies of scanned documents, by SHA-256
    sync.lock    held while a sync attempt runs
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs

from protocol import SealTo

from .errors import SetupError
from .files import read_json, write_json

__all__ = ["AgentConfig", "AgentPaths", "default_data_dir"]


def default_data_dir() -> Path:
    env = os.environ.get("SYNC_AGENT_DATA_DIR")
    if env:
        return Path(env)
    return Path(platformdirs.user_data_dir("commune-sync-agent", appauthor=False))


@dataclass(frozen=True)
class AgentPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "agent.json"

    @property
    def signing_key(self) -> Path:
        return self.root / "agent.key"

    @property
    def queue_key(self) -> Path:
        return self.root / "queue.key"

    @property
    def queue_db(self) -> Path:
        return self.root / "queue.db"

    @property
    def documents(self) -> Path:
        return self.root / "documents"

    @property
    def sync_lock(self) -> Path:
        return self.root / "sync.lock"

    @property
    def daemon_lock(self) -> Path:
        """Held by ``sync-agent run`` for as long as it lives."""
        return self.root / "daemon.lock"

    @property
    def daemon_file(self) -> Path:
        """Where the running daemon says which loopback port it answers on."""
        return self.root / "daemon.json"


@dataclass(frozen=True)
class AgentConfig:
    """What enrollment established, plus where the server is."""

    server_url: str
    agent_id: str
    commune_code: str
    counter_block: int
    name: str | None = None
    server_key: str = ""  # the server's pinned Ed25519 identity key, hex
    sealing_key_id: int = 0  # the server's current X25519 sealing key, learned from signed acks
    sealing_key: str = ""
    retention_days: float = 90.0  # acknowledged plaintext is erased after this (server time)
    ca_file: str | None = None  # a private CA for https, relative to the data directory

    def __post_init__(self) -> None:
        parts = urlsplit(self.server_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SetupError(f"server URL must start with http:// or https://: {self.server_url}")
        if not 0 <= self.counter_block <= 9:
            raise SetupError("counter_block must be between 0 and 9")
        try:
            ok = len(bytes.fromhex(self.server_key)) == 32 and len(
                bytes.fromhex(self.sealing_key)) == 32
        except ValueError:
            ok = False
        if not ok:
            raise SetupError("agent.json lacks the server's pinned keys; enroll again")
        if self.retention_days < 0:
            raise SetupError("retention_days must not be negative")

    @property
    def server_key_bytes(self) -> bytes:
        return bytes.fromhex(self.server_key)

    def seal_to(self) -> SealTo:
        return SealTo(self.agent_id, self.commune_code, self.sealing_key_id,
                      bytes.fromhex(self.sealing_key))

    @classmethod
    def load(cls, paths: AgentPaths) -> AgentConfig:
        try:
            raw = read_json(paths.config)
        except FileNotFoundError as exc:
            raise SetupError(f"{paths.root} is not an initialised agent data directory") from exc
        try:
            return cls(**raw)
        except TypeError as exc:
            raise SetupError(f"agent.json is not valid: {exc}") from exc

    def save(self, paths: AgentPaths) -> None:
        write_json(paths.config, asdict(self))
