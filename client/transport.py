"""HTTP transport to syncd: one aiohttp session, bytes in and out.

Every lower-layer failure becomes :class:`TransportError` (retriable) here,
so the sync engine reasons only in protocol terms. Timeouts are per request:
the engine sizes them from the payload and the link's measured rate.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import aiohttp

from protocol import MEDIA_TYPE, DecodeError, SignatureError
from protocol.sealing import open_reply

from .errors import TransportError
from .tls import describe_tls_error

__all__ = ["HttpTransport", "Reply"]


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes
    retry_after_s: float | None

    def signed_message(self, server_key: bytes) -> bytes:
        """The message inside this reply, if signed by the pinned server key.

        Anything else (a captive portal's page, a proxy's error, a forgery) is
        a transport failure: nothing in it is believed.
        """
        try:
            if self.content_type != MEDIA_TYPE:
                raise DecodeError(f"reply of type {self.content_type!r}")
            return open_reply(self.body, server_key)
        except (DecodeError, SignatureError) as exc:
            raise TransportError(f"HTTP {self.status} without a valid signed answer "
                                 f"from the server ({exc})",
                                 retry_after_s=self.retry_after_s) from exc


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds < 86_400 else None


class HttpTransport:
    """POSTs protocol messages to ``base_url``; create inside a running loop."""

    def __init__(self, base_url: str, *, timeout_s: float = 60.0,
                 max_reply_bytes: int = 1024 * 1024,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._base = base_url.rstrip("/")
        self._ssl = ssl_context
        self._default_timeout_s = timeout_s
        self._max_reply = max_reply_bytes
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No automatic retries or redirects underneath: retrying is the engine's job.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=4, keepalive_timeout=30,
                                               ssl=self._ssl if self._ssl else True),
                skip_auto_headers=("User-Agent",))
        return self._session

    async def post(self, path: str, body: bytes, *, timeout_s: float | None = None) -> Reply:
        """POST ``body``; return the reply, or raise TransportError."""
        total = timeout_s or self._default_timeout_s
        timeout = aiohttp.ClientTimeout(total=total, sock_connect=min(total, 20))
        try:
            async with self._client().post(
                self._base + path, data=body, timeout=timeout, allow_redirects=False,
                headers={"Content-Type": MEDIA_TYPE},
            ) as resp:
                data = await resp.content.read(self._max_reply + 1)
                if len(data) > self._max_reply:
                    raise TransportError("reply too large")
                return Reply(resp.status, resp.content_type, data,
                             _retry_after(resp.headers.get("Retry-After")))
        except TimeoutError as exc:
            raise TransportError(f"no answer within {total:.0f} s", timeout=True) from exc
        except aiohttp.ClientSSLError as exc:
            raise TransportError(describe_tls_error(exc)) from exc
        except (aiohttp.ClientError, OSError) as exc:
            reset = isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError)
            raise TransportError(f"{exc.__class__.__name__}: {exc}", timeout=reset) from exc

    async def probe(self, *, timeout_s: float = 10.0) -> bool:
        """A cheap check that the server answers at all (GET /healthz)."""
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._client().get(self._base + "/healthz", timeout=timeout,
                                          allow_redirects=False) as resp:
                await resp.read()
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
