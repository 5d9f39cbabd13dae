"""Errors raised by the agent.

The tree::

    AgentError                    base; ``message_key`` names a CLI message
    ├── SetupError                data directory missing, not initialised, bad key file
    ├── InputError                a dossier or command the officer must correct
    ├── QueueCorrupt              a record fails its AEAD tag or the hash chain (``seq``)
    ├── DocumentDamaged           a stored document fails its tag or hash (``sha256``)
    ├── SyncError                 a sync attempt failed
    │   ├── TransportError        link down, timeout, 5xx, garbage reply (retriable)
    │   └── RefusedError          the server refused on purpose (4xx verdict; not retriable)
    └── LockBusy                  another sync holds the lock

``retriable`` says whether waiting and trying again can help.
"""

from __future__ import annotations

__all__ = [
    "AgentError",
    "DocumentDamaged",
    "InputError",
    "LockBusy",
    "QueueCorrupt",
    "RefusedError",
    "SetupError",
    "SyncError",
    "TransportError",
]


class AgentError(Exception):
    """Base class of agent errors."""

    retriable = False


class SetupError(AgentError):
    """The data directory or its keys are missing or unusable."""


class InputError(AgentError):
    """Input the officer must correct; ``problems`` lists each one."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class QueueCorrupt(AgentError):
    """A queue record failed verification; ``seq`` is the first bad one."""

    def __init__(self, epoch: int, seq: int, reason: str) -> None:
        super().__init__(f"queue record epoch {epoch} seq {seq} is damaged: {reason}")
        self.epoch = epoch
        self.seq = seq
        self.reason = reason


class DocumentDamaged(AgentError):
    """A stored document fails its tag or hash; ``sha256`` names it."""

    def __init__(self, sha256: str, reason: str) -> None:
        super().__init__(f"document {sha256[:12]} is damaged: {reason}")
        self.sha256 = sha256


class SyncError(AgentError):
    """A sync attempt failed."""


class TransportError(SyncError):
    """The server could not be reached properly; trying again may help.

    ``retry_after_s`` carries a server's ``Retry-After``; ``timeout`` says the
    request timed out or the connection was reset mid-way (the link may be
    too slow for the batch size).
    """

    retriable = True

    def __init__(self, message: str, *, retry_after_s: float | None = None,
                 timeout: bool = False) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.timeout = timeout


class RefusedError(SyncError):
    """The server refused the request on purpose; ``code`` is its error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class LockBusy(AgentError):
    """Another sync of this data directory is running."""

    retriable = True
