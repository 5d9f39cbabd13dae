"""Errors raised by the protocol layer.

The tree::

    ProtocolError                 base of everything raised here
    ├── RemoteProtocolError       the peer (or a file on disk) broke the rules
    │   ├── DecodeError           bytes that are not a well-formed message
    │   └── SignatureError        a signature that does not verify
    ├── LocalProtocolError        we were asked to build something invalid
    └── ValidationError           a dossier or event that breaks the schema;
                                  carries every problem found, one per field

Each error carries a stable ``code`` (one of :class:`ErrorCode`) that is also
what travels on the wire, so both sides and operators speak of the same thing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "DecodeError",
    "ErrorCode",
    "FieldProblem",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "SignatureError",
    "ValidationError",
]


class ErrorCode(enum.StrEnum):
    """Stable error codes, shared by the wire format, logs and operator pages."""

    MALFORMED = "malformed"  # bytes that do not decode to a valid message
    UNSUPPORTED_VERSION = "unsupported_version"
    TOO_LARGE = "too_large"  # body or decompressed size beyond the limits
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_AGENT = "unknown_agent"
    REVOKED = "revoked"  # the agent was cut off by an operator
    FORBIDDEN = "forbidden"  # a batch claiming another agent or commune
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"  # the client sent its body too slowly
    UNKNOWN_KEY = "unknown_key"  # sealed to a server key the server does not hold
    INVALID_TOKEN = "invalid_token"  # noqa: S105 - an error code  # unknown, used by another key, or expired
    GAP = "gap"  # batch starts beyond the server's position + 1
    CONFLICT = "conflict"  # same (agent, epoch, seq), different content
    INVALID_RECORD = "invalid_record"  # record decodes but breaks the schema
    UNKNOWN_DOSSIER = "unknown_dossier"  # event for a dossier the server never saw
    DUPLICATE_DOSSIER = "duplicate_dossier"  # dossier id already created elsewhere
    INTERNAL = "internal"
    BUSY = "busy"


class ProtocolError(Exception):
    """Base class of every error raised by :mod:`protocol`."""

    code: ErrorCode = ErrorCode.MALFORMED

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class RemoteProtocolError(ProtocolError):
    """The peer sent something that breaks the protocol."""


class DecodeError(RemoteProtocolError):
    """Bytes that are not a well-formed message of the expected kind."""


class SignatureError(RemoteProtocolError):
    """A signature that does not verify against the expected key."""

    code = ErrorCode.BAD_SIGNATURE


class LocalProtocolError(ProtocolError):
    """We were asked to encode something the protocol does not allow."""


@dataclass(frozen=True)
class FieldProblem:
    """One problem with one field of a dossier or event.

    ``path`` names the field (``applicant.name``, ``fees[1].amount``);
    messages are given in Vietnamese and English.
    """

    path: str
    message_vi: str
    message_en: str

    def render(self, lang: str = "vi") -> str:
        message = self.message_vi if lang == "vi" else self.message_en
        return f"{self.path}: {message}"


class ValidationError(ProtocolError):
    """A dossier or event breaks the schema; ``problems`` lists every one."""

    code = ErrorCode.INVALID_RECORD

    def __init__(self, problems: list[FieldProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(p.render("en") for p in problems))
