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


def _verify(public_key: bytes, signature: bytes, data: bytes) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError("signature does not verify") from exc
