"""One-time enrollment tokens.

* A token carries ≥128 random bits and is stored only as its SHA-256.
* It is bound to one commune and expires (server clock).
* The first agent key that presents it (with a valid proof of possession)
  consumes it; the same key presenting it again gets the same answer, so a
  lost response does not burn the commune's token; any other key is refused.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from protocol import EnrollReply, EnrollRequest, ErrorCode, SignatureError
from protocol.signing import verify_enrollment

from .errors import RequestError
from .store import SqliteStore

__all__ = ["consume_token", "create_token"]


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create_token(store: SqliteStore, commune_code: str, name: str | None,
                       ttl_hours: float) -> str:
    # 192 random bits; the prefix keeps a token from starting with "-", which a
    # command line would read as an option.
    token = "cs1." + secrets.token_urlsafe(24)
    now = datetime.now(UTC)
    async with store.write() as txn:
        await txn.run("INSERT INTO tokens (token_hash, commune_code, name, created_at, expires_at)"
                      " VALUES (?, ?, ?, ?, ?)", _hash(token), commune_code, name,
                      now.isoformat(), (now + timedelta(hours=ttl_hours)).isoformat())
    return token


async def consume_token(store: SqliteStore, request: EnrollRequest) -> EnrollReply:
    """Register ``request.public_key`` for the token's commune (idempotent per key)."""
    refused = RequestError(403, ErrorCode.INVALID_TOKEN,
                           "enrollment token is unknown, expired or already used")
    try:
        verify_enrollment(request.public_key, request.token, request.proof)
    except SignatureError as exc:
        raise RequestError(401, ErrorCode.BAD_SIGNATURE,
                           "proof of key possession does not verify") from exc
    now = datetime.now(UTC)
    async with store.write() as txn:
        row = await txn.one("SELECT commune_code, name, expires_at, public_key, agent_id "
                            "FROM tokens WHERE token_hash = ?", _hash(request.token))
        if row is None:
            raise refused
        commune, name, expires_at, used_key, agent_id = row
        if used_key is not None:
            if used_key != request.public_key:
                raise refused
            agent = await txn.one("SELECT name, counter_block FROM agents WHERE agent_id = ?",
                                  agent_id)
            return EnrollReply(agent_id, commune, agent[0], agent[1])
        if datetime.fromisoformat(expires_at) <= now:
            raise refused
        if await txn.one("SELECT 1 FROM agents WHERE public_key = ?", request.public_key):
            raise RequestError(409, ErrorCode.INVALID_TOKEN, "this key is already enrolled")
        count = (await txn.one("SELECT count(*) FROM agents WHERE commune_code = ?", commune))[0]
        if count > 9:
            raise RequestError(409, ErrorCode.INVALID_TOKEN,
                               "this commune already has 10 enrolled PCs")
        agent_id = "ag-" + secrets.token_hex(8)
        display = request.name or name
        await txn.run("INSERT INTO agents (agent_id, commune_code, name, public_key, "
                      "counter_block, enrolled_at) VALUES (?, ?, ?, ?, ?, ?)", agent_id,
                      commune, display, request.public_key, count, now.isoformat())
        await txn.run("UPDATE tokens SET public_key = ?, agent_id = ?, used_at = ? "
                      "WHERE token_hash = ?", request.public_key, agent_id, now.isoformat(),
                      _hash(request.token))
    return EnrollReply(agent_id, commune, display, count)
