"""Protocol v1 messages: the signed envelope, batches, acks, errors, enrollment.

Invariants (see SPEC.md for the byte layout):

* A batch holds records ``first_seq .. first_seq + n - 1`` of one
  (agent, epoch), contiguous, in order; each record is the exact bytes the
  agent stored, so both sides hash the same thing.
* An ack is cumulative: ``acked_seq`` is the highest contiguous seq the server
  holds for (agent, epoch). ``verdicts`` name records that were held but
  refused (quarantined); they never block later records.
* Identity comes from the envelope's verified signature, never from a body.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from .codec import pack, unpack
from .errors import DecodeError, ErrorCode

__all__ = [
    "MEDIA_TYPE",
    "PROTOCOL_VERSION",
    "Ack",
    "CursorRequest",
    "EnrollReply",
    "EnrollRequest",
    "Envelope",
    "ErrorReply",
    "Limits",
    "Verdict",
    "batch_digest",
    "decode_ack",
    "decode_cursor_request",
    "decode_enroll_reply",
    "decode_enroll_request",
    "decode_envelope",
    "decode_error",
    "encode_ack",
    "encode_cursor_request",
    "encode_enroll_reply",
    "encode_enroll_request",
    "encode_envelope",
    "encode_error",
]

PROTOCOL_VERSION = 1
MEDIA_TYPE = "application/vnd.commune-sync.v1+msgpack"
_MAX_SEQ = 2**63 - 1


@dataclass(frozen=True)
class Limits:
    """Size limits a decoder enforces; the server may lower them."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_inflated_bytes: int = 32 * 1024 * 1024
    max_records: int = 10_000
    max_record_bytes: int = 1024 * 1024


DEFAULT_LIMITS = Limits()


def _map(data: bytes, kind: str, max_bytes: int) -> dict[str, Any]:
    obj = unpack(data, max_bytes=max_bytes)
    if not isinstance(obj, dict):
        raise DecodeError(f"{kind}: expected a map")
    version = obj.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise DecodeError(f"{kind}: unsupported protocol version {obj.get('v')!r}",
                          code=ErrorCode.UNSUPPORTED_VERSION)
    if obj.get("kind") != kind:
        raise DecodeError(f"expected a {kind} message, got {obj.get('kind')!r}")
    return obj


def _get(obj: dict[str, Any], key: str, typ: type | tuple[type, ...], *,
         optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is int):
        raise DecodeError(f"field {key!r} is missing or has the wrong type")
    return value


def _seq(obj: dict[str, Any], key: str, low: int = 0) -> int:
    value = _get(obj, key, int)
    if not low <= value <= _MAX_SEQ:
        raise DecodeError(f"field {key!r} out of range")
    return int(value)


def _closed(obj: dict[str, Any], keys: set[str]) -> None:
    extra = set(obj) - keys - {"v", "kind"}
    if extra:
        raise DecodeError(f"unknown fields: {', '.join(sorted(extra))}")


# -- envelope ---------------------------------------------------------------

@dataclass(frozen=True)
class Envelope:
    """A signed message from an agent: ``signature`` covers :meth:`signing_input`."""

    kind: str
    agent_id: str
    signed: bytes
    signature: bytes

    def signing_input(self) -> bytes:
        return signing_input(self.kind, self.agent_id, self.signed)


def signing_input(kind: str, agent_id: str, signed: bytes) -> bytes:
    """The exact bytes an envelope's Ed25519 signature covers."""
    return b"commune-sync\x00" + pack([PROTOCOL_VERSION, kind, agent_id]) + signed


def encode_envelope(env: Envelope) -> bytes:
    return pack([PROTOCOL_VERSION, env.kind, env.agent_id, env.signed, env.signature])


def decode_envelope(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """Decode the outer envelope (nothing inside it is trusted yet)."""
    obj = unpack(data, max_bytes=limits.max_body_bytes, max_items=8)
    if not isinstance(obj, list) or len(obj) != 5:
        raise DecodeError("envelope: expected an array of 5")
    version, kind, agent_id, signed, signature = obj
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise DecodeError(f"unsupported protocol version {version!r}",
                          code=ErrorCode.UNSUPPORTED_VERSION)
    if not (isinstance(kind, str) and isinstance(agent_id, str) and 0 < len(agent_id) <= 64
            and isinstance(signed, bytes) and isinstance(signature, bytes)
            and len(signature) == 64):
        raise DecodeError("envelope: malformed fields")
    return Envelope(kind, agent_id, signed, signature)


def batch_digest(env: Envelope) -> bytes:
    """SHA-256 naming one batch; the ack repeats it so the agent can match."""
    return hashlib.sha256(env.signing_input()).digest()


# -- batch -------------------------------------------------------------------

# -- ack and error -------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """A record the server holds but refused, and why."""

    seq: int
    code: str
    message: str


@dataclass(frozen=True)
class Ack:
    """The server's position for (agent, epoch), after its commit."""

    agent_id: str
    epoch: int
    acked_seq: int
    verdicts: tuple[Verdict, ...] = ()
    batch: bytes | None = None
    server_time: str | None = None
    sealing_key_id: int | None = None  # the server's current sealing key, for rotation
    sealing_key: bytes | None = None


def encode_ack(ack: Ack) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "kind": "ack", "agent": ack.agent_id,
                 "epoch": ack.epoch, "acked_seq": ack.acked_seq,
                 "verdicts": [[v.seq, v.code, v.message] for v in ack.verdicts],
                 "batch": ack.batch, "server_time": ack.server_time,
                 "sealing_key_id": ack.sealing_key_id, "sealing_key": ack.sealing_key})


def _sealing_key(obj: dict[str, Any]) -> tuple[int | None, bytes | None]:
    key_id = _get(obj, "sealing_key_id", int, optional=True)
    key = _get(obj, "sealing_key", bytes, optional=True)
    if (key_id is None) != (key is None) or (key is not None and len(key) != 32):
        raise DecodeError("malformed sealing key")
    if key_id is not None and not 0 <= key_id <= _MAX_SEQ:
        raise DecodeError("sealing key id out of range")
    return key_id, key


def decode_ack(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Ack:
    obj = _map(data, "ack", limits.max_body_bytes)
    _closed(obj, {"agent", "epoch", "acked_seq", "verdicts", "batch", "server_time",
                  "sealing_key_id", "sealing_key"})
    verdicts = []
    for item in _get(obj, "verdicts", list):
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], int)
                and not isinstance(item[0], bool) and isinstance(item[1], str)
                and isinstance(item[2], str)):
            raise DecodeError("ack: malformed verdict")
        verdicts.append(Verdict(item[0], item[1], item[2]))
    return Ack(_get(obj, "agent", str), _seq(obj, "epoch", 1), _seq(obj, "acked_seq"),
               tuple(verdicts), _get(obj, "batch", bytes, optional=True),
               _get(obj, "server_time", str, optional=True), *_sealing_key(obj))


@dataclass(frozen=True)
class ErrorReply:
    """A refusal. For ``gap`` it carries the server's position."""

    code: str
    message: str
    epoch: int | None = None
    acked_seq: int | None = None


def encode_error(err: ErrorReply) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "kind": "error", "code": err.code,
                 "message": err.message, "epoch": err.epoch, "acked_seq": err.acked_seq})


def decode_error(data: bytes, limits: Limits = DEFAULT_LIMITS) -> ErrorReply:
    obj = _map(data, "error", limits.max_body_bytes)
    _closed(obj, {"code", "message", "epoch", "acked_seq"})
    return ErrorReply(_get(obj, "code", str), _get(obj, "message", str),
                      _get(obj, "epoch", int, optional=True),
                      _get(obj, "acked_seq", int, optional=True))


# -- heartbeat ---------------------------------------------------------------

@dataclass(frozen=True)
class Heartbeat:
    """How the agent is doing, sent with each batch and cursor request.

    Operational figures only, never dossier content. The agent's clock
    travels beside it (``agent_clock``); the server records the skew and
    never trusts it.
    """

    queue_depth: int = 0  # records not yet acknowledged
    oldest_unsent_s: int | None = None  # age of the oldest of them, by the PC's clock
    quarantined: int = 0  # records the server refused (verdicts)
    free_disk_bytes: int | None = None  # on the agent's data directory
    agent_version: str | None = None


def heartbeat_to_wire(hb: Heartbeat | None) -> dict[str, Any] | None:
    if hb is None:
        return None
    return {k: v for k, v in (("depth", hb.queue_depth), ("oldest_s", hb.oldest_unsent_s),
                              ("quarantined", hb.quarantined), ("free_disk", hb.free_disk_bytes),
                              ("version", hb.agent_version)) if v is not None}


def heartbeat_from_wire(obj: dict[str, Any]) -> Heartbeat | None:
    hb = _get(obj, "heartbeat", dict, optional=True)
    if hb is None:
        return None
    _closed(hb, {"depth", "oldest_s", "quarantined", "free_disk", "version"})

    def count(key: str) -> int | None:
        return None if hb.get(key) is None else _seq(hb, key)

    version = _get(hb, "version", str, optional=True)
    if version is not None and len(version) > 40:
        raise DecodeError("heartbeat: version longer than 40 characters")
    return Heartbeat(count("depth") or 0, count("oldest_s"), count("quarantined") or 0,
                     count("free_disk"), version)


# -- cursor ------------------------------------------------------------------

@dataclass(frozen=True)
class CursorRequest:
    """Ask the server where (agent, epoch) stands; answered with an Ack."""

    epoch: int
    agent_clock: str | None = None
    heartbeat: Heartbeat | None = None


def encode_cursor_request(req: CursorRequest) -> bytes:
    message = {"v": PROTOCOL_VERSION, "kind": "cursor", "epoch": req.epoch,
               "agent_clock": req.agent_clock}
    if req.heartbeat is not None:
        message["heartbeat"] = heartbeat_to_wire(req.heartbeat)
    return pack(message)


def decode_cursor_request(data: bytes, limits: Limits = DEFAULT_LIMITS) -> CursorRequest:
    obj = _map(data, "cursor", limits.max_body_bytes)
    _closed(obj, {"epoch", "agent_clock", "heartbeat"})
    return CursorRequest(_seq(obj, "epoch", 1), _get(obj, "agent_clock", str, optional=True),
                         heartbeat_from_wire(obj))


# -- enrollment ------------------------------------------------------------------

@dataclass(frozen=True)
class EnrollRequest:
    """An agent key presenting a one-time token; ``proof`` signs both."""

    token: str = field(repr=False)
    public_key: bytes
    name: str | None
    proof: bytes


def enroll_proof_input(token: str, public_key: bytes) -> bytes:
    """The bytes the agent signs to prove it holds the key it registers."""
    return b"commune-sync\x00enroll\x00" + pack([PROTOCOL_VERSION, token, public_key])


def encode_enroll_request(req: EnrollRequest) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "kind": "enroll", "token": req.token,
                 "public_key": req.public_key, "name": req.name, "proof": req.proof})


def decode_enroll_request(data: bytes, limits: Limits = DEFAULT_LIMITS) -> EnrollRequest:
    obj = _map(data, "enroll", 4096)
    _closed(obj, {"token", "public_key", "name", "proof"})
    token, key, proof = _get(obj, "token", str), _get(obj, "public_key", bytes), _get(
        obj, "proof", bytes)
    name = _get(obj, "name", str, optional=True)
    if not (0 < len(token) <= 128 and len(key) == 32 and len(proof) == 64
            and (name is None or len(name) <= 200)):
        raise DecodeError("enroll: malformed fields")
    return EnrollRequest(token, key, name, proof)


@dataclass(frozen=True)
class EnrollReply:
    """What the server tells a newly enrolled agent."""

    agent_id: str
    commune_code: str
    name: str | None
    counter_block: int
    server_key: bytes  # Ed25519 identity key: the agent pins it (token fingerprint)
    sealing_key_id: int
    sealing_key: bytes  # X25519 key batches are sealed to


def encode_enroll_reply(reply: EnrollReply) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "kind": "enrolled", "agent": reply.agent_id,
                 "commune_code": reply.commune_code, "name": reply.name,
                 "counter_block": reply.counter_block, "server_key": reply.server_key,
                 "sealing_key_id": reply.sealing_key_id, "sealing_key": reply.sealing_key})


def decode_enroll_reply(data: bytes, limits: Limits = DEFAULT_LIMITS) -> EnrollReply:
    obj = _map(data, "enrolled", 4096)
    _closed(obj, {"agent", "commune_code", "name", "counter_block", "server_key",
                  "sealing_key_id", "sealing_key"})
    block = _seq(obj, "counter_block")
    if block > 9:
        raise DecodeError("enrolled: counter_block out of range")
    server_key = _get(obj, "server_key", bytes)
    key_id, sealing_key = _sealing_key(obj)
    if len(server_key) != 32 or key_id is None or sealing_key is None:
        raise DecodeError("enrolled: malformed server keys")
    return EnrollReply(_get(obj, "agent", str), _get(obj, "commune_code", str),
                       _get(obj, "name", str, optional=True), block, server_key, key_id,
                       sealing_key)
