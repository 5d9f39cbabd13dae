"""The server's data directory and configuration.

    syncd.json   configuration (no secrets; relative names only)
    server.key   Ed25519 key the server signs with, owner-only
    syncd.db     the SQLite store (WAL, synchronous=FULL)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import platformdirs

from protocol import Limits

from .errors import SetupError

__all__ = ["ServerConfig", "ServerPaths", "default_data_dir"]


def default_data_dir() -> Path:
    env = os.environ.get("SYNCD_DATA_DIR")
    if env:
        return Path(env)
    return Path(platformdirs.user_data_dir("commune-syncd", appauthor=False))


@dataclass(frozen=True)
class ServerPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "syncd.json"

    @property
    def signing_key(self) -> Path:
        return self.root / "server.key"

    @property
    def database(self) -> Path:
        return self.root / "syncd.db"


@dataclass(frozen=True)
class ServerConfig:
    """Settings in syncd.json; every field has a safe default."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_inflated_bytes: int = 32 * 1024 * 1024
    max_records_per_batch: int = 10_000
    token_ttl_hours: float = 72.0
    body_timeout_s: float = 30.0  # plus one second per min_client_bytes_per_s of body
    min_client_bytes_per_s: float = 1_000.0  # a 2G uplink does ~6,000
    rate_limit_per_s: float = 5.0  # requests per agent, sustained
    rate_limit_burst: float = 60.0
    max_inflight_ingests: int = 64  # per process; beyond it 503 busy, before the body
    limits: Limits = field(init=False)

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024 or self.max_inflated_bytes < self.max_body_bytes:
            raise SetupError("syncd.json: body limits are too small or inconsistent")
        if self.max_inflight_ingests < 1:
            raise SetupError("syncd.json: max_inflight_ingests must be at least 1")
        object.__setattr__(self, "limits", Limits(
            max_body_bytes=self.max_body_bytes, max_inflated_bytes=self.max_inflated_bytes,
            max_records=self.max_records_per_batch))

    @classmethod
    def load(cls, paths: ServerPaths) -> ServerConfig:
        try:
            raw = json.loads(paths.config.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise SetupError(f"{paths.root} is not an initialised syncd data directory "
                             "(run `syncd init`)") from exc
        except (OSError, ValueError) as exc:
            raise SetupError(f"cannot read syncd.json: {exc}") from exc
        try:
            return cls(**raw)
        except TypeError as exc:
            raise SetupError(f"syncd.json is not valid: {exc}") from exc

    def to_json(self) -> str:
        raw = asdict(self)
        raw.pop("limits")
        return json.dumps(raw, indent=2) + "\n"
