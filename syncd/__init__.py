"""commune-sync central server: ingest, store, operator commands."""

from .app import make_app
from .config import ServerConfig, ServerPaths
from .store import SqliteStore

__all__ = ["ServerConfig", "ServerPaths", "SqliteStore", "make_app"]
