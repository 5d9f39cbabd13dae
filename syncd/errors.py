"""Errors raised by the server.

The tree::

    SyncdError                  base; ``status`` is the HTTP status to answer
    ├── SetupError              data directory missing or unusable (CLI only)
    ├── RequestError            a request to refuse; ``code`` is the wire error code
    └── StoreError              the store could not do its work (answered 503)
"""

from __future__ import annotations

from protocol import ErrorCode

__all__ = ["RequestError", "SetupError", "StoreError", "SyncdError"]


class SyncdError(Exception):
    status = 500


class SetupError(SyncdError):
    """The data directory or its configuration is missing or unusable."""


class RequestError(SyncdError):
    """A request refused with ``status`` and a wire ``code``."""

    def __init__(self, status: int, code: ErrorCode | str, message: str, *,
                 epoch: int | None = None, acked_seq: int | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = str(code)
        self.message = message
        self.epoch = epoch
        self.acked_seq = acked_seq
        self.retry_after_s = retry_after_s


class StoreError(SyncdError):
    """The store failed (disk full, database locked too long): retry later."""

    status = 503
