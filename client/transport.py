"""HTTP transport to syncd: one aiohttp session, bytes in and out.

Every lower-layer failure becomes :class:`TransportError` (retriable) here,
so the sync engine reasons only in protocol terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from protocol import MEDIA_TYPE

from .errors import TransportError

__all__ = ["HttpTransport", "Reply"]


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes
    retry_after_s: float | None


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class HttpTransport:
    """POSTs protocol messages to ``base_url``; create inside a running loop."""

    def __init__(self, base_url: str, *, timeout_s: float = 60.0,
                 max_reply_bytes: int = 1024 * 1024) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, 15))
        self._max_reply = max_reply_bytes
        self._session: aiohttp.ClientSession | None = None

    async def post(self, path: str, body: bytes) -> Reply:
        """POST ``body``; return the reply, or raise TransportError."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(
                self._base + path, data=body,
                headers={"Content-Type": MEDIA_TYPE, "Accept": MEDIA_TYPE},
            ) as resp:
                data = await resp.content.read(self._max_reply + 1)
                if len(data) > self._max_reply:
                    raise TransportError("reply too large")
                return Reply(resp.status, resp.content_type, data,
                             _retry_after(resp.headers.get("Retry-After")))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"{exc.__class__.__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
