"""Ed25519 signatures over envelopes and enrollment proofs.

Pure functions over key objects and bytes; keys are loaded by the caller.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .codec import pack
from .errors import SignatureError
from .messages import PROTOCOL_VERSION, Envelope, enroll_proof_input, signing_input

__all__ = [
    "is_weak_key",
    "public_key_bytes",
    "sign_enrollment",
    "sign_envelope",
    "sign_rotation",
    "verify_enrollment",
    "verify_envelope",
    "verify_rotation",
]


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of the public half of ``key``."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign_envelope(key: Ed25519PrivateKey, kind: str, agent_id: str, signed: bytes) -> Envelope:
    return Envelope(kind, agent_id, signed, key.sign(signing_input(kind, agent_id, signed)))


def verify_envelope(env: Envelope, public_key: bytes) -> None:
    """Raise :class:`SignatureError` unless ``env`` was signed by ``public_key``."""
    _verify(public_key, env.signature, env.signing_input())


def sign_enrollment(key: Ed25519PrivateKey, token: str) -> bytes:
    return key.sign(enroll_proof_input(token, public_key_bytes(key)))


def verify_enrollment(public_key: bytes, token: str, proof: bytes) -> None:
    _verify(public_key, proof, enroll_proof_input(token, public_key))


def rotation_proof_input(agent_id: str, new_key: bytes) -> bytes:
    """What a new agent key signs to show the agent holds it (``/v1/rotate``)."""
    return b"commune-sync\x00rotate\x00" + pack([PROTOCOL_VERSION, agent_id, new_key])


def sign_rotation(new_key: Ed25519PrivateKey, agent_id: str) -> bytes:
    return new_key.sign(rotation_proof_input(agent_id, public_key_bytes(new_key)))


def verify_rotation(agent_id: str, new_key: bytes, proof: bytes) -> None:
    _verify(new_key, proof, rotation_proof_input(agent_id, new_key))


# Encodings of the Ed25519 points of small order (libsodium's list), compared
# with the sign bit cleared. OpenSSL accepts them as keys, and for such a key
# a fixed "signature" verifies every message, so none may ever be registered.
_SMALL_ORDER = frozenset(bytes.fromhex(h) for h in (
    "00" * 32,
    "01" + "00" * 31,
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "ec" + "ff" * 30 + "7f",
    "ed" + "ff" * 30 + "7f",
    "ee" + "ff" * 30 + "7f",
))


def is_weak_key(public_key: bytes) -> bool:
    """True for a key of small order (or a non-canonical encoding of one)."""
    if len(public_key) != 32:
        return True
    return public_key[:31] + bytes([public_key[31] & 0x7F]) in _SMALL_ORDER


def _verify(public_key: bytes, signature: bytes, data: bytes) -> None:
    if is_weak_key(public_key):
        raise SignatureError("a key of small order is never accepted")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError("signature does not verify") from exc
