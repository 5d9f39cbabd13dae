"""Sealing batches to the server, signing the server's replies, pinning its key.

* A batch payload (zstd frame) is sealed with HPKE (RFC 9180, base mode,
  DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305) to one of the
  server's X25519 sealing keys. ``info`` binds agent, epoch and seq range, so
  a sealed payload cannot be moved to another batch. Nobody on the path (or
  holding a USB stick) can read it.
* Every reply of the server is a :class:`~protocol.messages.Envelope` signed by
  its Ed25519 identity key, with kind ``"reply"`` and agent ``"syncd"``; the
  agent accepts it only if it verifies against the key it pinned at
  enrollment. A captive portal's page is never an ack.
* The pin travels in the enrollment token: a fingerprint of the identity key.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from .codec import pack
from .errors import DecodeError, LocalProtocolError
from .messages import PROTOCOL_VERSION, Envelope, decode_envelope, encode_envelope
from .signing import sign_envelope, verify_envelope

__all__ = [
    "SERVER_NAME",
    "batch_info",
    "chunk_info",
    "fingerprint",
    "open_payload",
    "open_reply",
    "seal_payload",
    "seal_reply",
]

SERVER_NAME = "syncd"
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


def fingerprint(identity_public_key: bytes) -> str:
    """A short, typeable pin of the server's identity key (80 bits, base32)."""
    digest = hashlib.sha256(b"commune-sync identity\x00" + identity_public_key).digest()
    return base64.b32encode(digest[:10]).decode().lower()


def batch_info(agent_id: str, epoch: int, first_seq: int, count: int) -> bytes:
    """HPKE ``info`` of a batch: binds agent, epoch and seq range."""
    return b"commune-sync batch\x00" + pack([PROTOCOL_VERSION, agent_id, epoch, first_seq, count])


def chunk_info(agent_id: str, sha256: str, size: int, offset: int) -> bytes:
    """HPKE ``info`` of a document chunk: binds agent, document and position."""
    return b"commune-sync chunk\x00" + pack([PROTOCOL_VERSION, agent_id, sha256, size, offset])


def seal_payload(payload: bytes, sealing_key: bytes, info: bytes) -> bytes:
    """Seal ``payload`` to the server's X25519 public key (32 raw bytes)."""
    try:
        public = X25519PublicKey.from_public_bytes(sealing_key)
    except ValueError as exc:
        raise LocalProtocolError("the server's sealing key is not 32 bytes") from exc
    try:
        return bytes(_SUITE.encrypt(payload, public, info=info))
    except ValueError as exc:  # a low-order point: no usable shared secret
        raise LocalProtocolError("the server's sealing key is not usable") from exc


def open_payload(sealed: bytes, key: X25519PrivateKey, info: bytes) -> bytes:
    """Open a sealed payload; any change to it or to its context fails.

    Raises:
        DecodeError: the payload was not sealed for this key and context.
    """
    try:
        return bytes(_SUITE.decrypt(sealed, key, info=info))
    except (InvalidTag, ValueError) as exc:
        raise DecodeError("sealed payload does not open for this key and context") from exc


def seal_reply(identity: Ed25519PrivateKey, message: bytes) -> bytes:
    """Wrap a reply message in an envelope signed by the server's identity key."""
    return encode_envelope(sign_envelope(identity, "reply", SERVER_NAME, message))


def open_reply(data: bytes, identity_public_key: bytes) -> bytes:
    """The message inside a server reply, if it verifies against the pinned key.

    Raises:
        DecodeError: not an envelope from the server.
        SignatureError: signed by another key (or altered).
    """
    env: Envelope = decode_envelope(data)
    if env.kind != "reply" or env.agent_id != SERVER_NAME:
        raise DecodeError("not a server reply")
    verify_envelope(env, identity_public_key)
    return env.signed

