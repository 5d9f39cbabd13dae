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

from protocol import (
    PROTOCOL_VERSION,
    EnrollReply,
    EnrollRequest,
    Envelope,
    ErrorCode,
    SignatureError,
    unpack,
)
from protocol.signing import verify_enrollment, verify_envelope, verify_rotation

from .errors import RequestError
from .keys import ServerKeys
from .store import AgentRow, Store

__all__ = ["consume_token", "create_token", "revoke_agent", "rotate_agent_key"]


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create_token(store: Store, commune_code: str, name: str | None,
                       ttl_hours: float, server_fingerprint: str) -> str:
    """A token ``cs1.<fingerprint>.<secret>``: 192 random bits, and the pin of the
    server's identity key so the agent trusts nothing else from first contact.
    The prefix also keeps a token from starting with "-" (read as an option)."""
    token = f"cs1.{server_fingerprint}.{secrets.token_urlsafe(24)}"
    now = datetime.now(UTC)
    async with store.write() as txn:
        await txn.run("INSERT INTO tokens (token_hash, commune_code, name, created_at, expires_at)"
                      " VALUES (?, ?, ?, ?, ?)", _hash(token), commune_code, name,
                      now.isoformat(), (now + timedelta(hours=ttl_hours)).isoformat())
    return token


async def consume_token(store: Store, keys: ServerKeys,
                        request: EnrollRequest) -> EnrollReply:
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
        await txn.lock("token", _hash(request.token).hex())
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
            return EnrollReply(agent_id, commune, agent[0], agent[1], keys.identity_public,
                               keys.current_id, keys.sealing_public())
        if datetime.fromisoformat(expires_at) <= now:
            raise refused
        if await txn.one("SELECT 1 FROM agents WHERE public_key = ?", request.public_key):
            raise RequestError(409, ErrorCode.INVALID_TOKEN, "this key is already enrolled")
        await txn.lock("commune", commune)  # counter blocks are counted per commune
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
    return EnrollReply(agent_id, commune, display, count, keys.identity_public, keys.current_id,
                       keys.sealing_public())


async def rotate_agent_key(store: Store, agent: AgentRow, env: Envelope) -> None:
    """Switch ``agent`` to a new signing key (idempotent for a retried request).

    The envelope is signed by the current key (or, when the answer to an
    accepted rotation was lost, by the previous key naming the current one);
    ``proof`` shows possession of the new key.
    """
    obj = unpack(env.signed, max_bytes=1024)
    if not (isinstance(obj, dict) and set(obj) == {"v", "kind", "new_key", "proof"}
            and obj["v"] == PROTOCOL_VERSION and type(obj["v"]) is int
            and obj["kind"] == "rotate"):
        raise RequestError(400, ErrorCode.MALFORMED, "malformed rotation request")
    new_key, proof = obj["new_key"], obj["proof"]
    if not (isinstance(new_key, bytes) and len(new_key) == 32 and isinstance(proof, bytes)):
        raise RequestError(400, ErrorCode.MALFORMED, "malformed rotation request")
    try:
        verify_rotation(agent.agent_id, new_key, proof)
        if new_key == agent.public_key and agent.previous_key is not None:
            verify_envelope(env, agent.previous_key)
            return  # already done: the answer was lost
        verify_envelope(env, agent.public_key)
    except SignatureError as exc:
        raise RequestError(401, ErrorCode.BAD_SIGNATURE, "signature does not verify") from exc
    async with store.write() as txn:
        if await txn.one("SELECT 1 FROM agents WHERE public_key = ?", new_key):
            raise RequestError(409, ErrorCode.INVALID_TOKEN, "this key is already in use")
        await txn.run("UPDATE agents SET previous_key = public_key, public_key = ? "
                      "WHERE agent_id = ? AND public_key = ?", new_key, agent.agent_id,
                      agent.public_key)



async def revoke_agent(store: Store, agent_id: str) -> str | None:
    """Cut ``agent_id`` off (nothing it sends is stored from now on); returns its
    commune code, or None if there is no such agent. Revoking twice changes nothing."""
    async with store.write() as txn:
        await txn.lock("agent", agent_id)
        row = await txn.one("SELECT revoked_at, commune_code FROM agents WHERE agent_id = ?",
                            agent_id)
        if row is None:
            return None
        if row[0] is None:
            await txn.run("UPDATE agents SET revoked_at = ? WHERE agent_id = ?",
                          datetime.now(UTC).isoformat(timespec="milliseconds"), agent_id)
        return str(row[1])
