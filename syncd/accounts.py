"""Operator accounts for the pages: passwords, roles, sessions.

* Passwords are kept only as scrypt hashes (``scrypt$n$r$p$salt$hash``,
  base64), checked in a worker thread so a login never stalls ingest.
* Roles: ``viewer`` reads every page; ``admin`` may also enroll and revoke.
* A session is a random token in a cookie; the server keeps its SHA-256,
  its user, its CSRF token and its expiry (server clock). Logging out or
  expiring deletes it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .errors import RequestError
from .store import Store

__all__ = ["ROLES", "Session", "add_user", "check_login", "end_session", "find_session",
           "hash_password", "start_session", "verify_password"]

ROLES = ("viewer", "admin")
SESSION_HOURS = 12.0
MIN_PASSWORD = 10
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n),
                             r=int(r), p=int(p), dklen=len(expected))
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))  # unknown names cost the same


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


async def add_user(store: Store, name: str, password: str, role: str) -> None:
    """Create an operator.

    Raises:
        RequestError: 400 for a bad name, role or short password; 409 if the
            name is taken.
    """
    if not _NAME.fullmatch(name):
        raise RequestError(400, "bad_request", "name: 1–64 letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise RequestError(400, "bad_request", f"role must be one of: {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD:
        raise RequestError(400, "bad_request",
                           f"password must be at least {MIN_PASSWORD} characters")
    password_hash = await asyncio.to_thread(hash_password, password)
    async with store.write() as txn:
        await txn.lock("user", name)
        if await txn.one("SELECT 1 FROM users WHERE name = ?", name):
            raise RequestError(409, "conflict", f"user {name} already exists")
        await txn.run("INSERT INTO users VALUES (?, ?, ?, ?)", name, password_hash, role,
                      _iso(_now()))


async def check_login(store: Store, name: str, password: str) -> str | None:
    """The user's role if ``password`` is theirs, else None (same cost either way)."""
    rows = await store.read("SELECT password_hash, role FROM users WHERE name = ?", name)
    stored, role = rows[0] if rows else (_DUMMY_HASH, None)
    ok = await asyncio.to_thread(verify_password, password, stored)
    return role if ok and role is not None else None


@dataclass(frozen=True)
class Session:
    user: str
    role: str
    csrf: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def start_session(store: Store, user: str) -> tuple[str, str]:
    """A new session for ``user``: (cookie token, CSRF token)."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    now = _now()
    async with store.write() as txn:
        await txn.run("DELETE FROM sessions WHERE expires_at < ?", _iso(now))
        await txn.run("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)", _token_hash(token), user,
                      csrf, _iso(now), _iso(now + timedelta(hours=SESSION_HOURS)))
    return token, csrf


async def find_session(store: Store, token: str | None) -> Session | None:
    if not token or len(token) > 100:
        return None
    rows = await store.read(
        "SELECT s.user_name, u.role, s.csrf FROM sessions s JOIN users u ON u.name = s.user_name "
        "WHERE s.token_hash = ? AND s.expires_at > ?", _token_hash(token), _iso(_now()))
    return Session(*rows[0]) if rows else None


async def end_session(store: Store, token: str | None) -> None:
    if token:
        async with store.write() as txn:
            await txn.run("DELETE FROM sessions WHERE token_hash = ?", _token_hash(token))
