"""The aiohttp application: enrollment, batch ingest, cursor, documents, what
flows down (published documents, central status changes), health.

Every answer to an agent is a protocol message (msgpack, MEDIA_TYPE) inside
an envelope signed by the server's identity key: an ack, an enrollment reply,
a document state, or an error with a stable code. Order of checks on a
request: size (413) and pace (408) of the body, the envelope's signature
against the claimed agent's key (401), revocation (403), the agent's rate
(429), what the batch claims (403), opening it (400); nothing is stored
before all of them pass. An unexpected failure is logged with a request id
and answered 503 (retry later), never with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol import MEDIA_TYPE, ErrorCode, ErrorReply, ProtocolError, SignatureError
from protocol.batches import decode_sealed_batch, open_batch
from protocol.codec import pack, unpack
from protocol.documents import (
    DocChunk,
    DocState,
    decode_doc_chunk,
    decode_doc_status,
    encode_doc_state,
    open_doc_chunk,
)
from protocol.messages import (
    Ack,
    batch_digest,
    decode_cursor_request,
    decode_enroll_request,
    decode_envelope,
    encode_ack,
    encode_enroll_reply,
    encode_error,
)
from protocol.sealing import seal_reply
from protocol.signing import verify_envelope
from protocol.updates import KIND as UPDATES
from protocol.updates import decode_updates_request, encode_updates_page

from .central import updates_page
from .config import ServerConfig
from .documents import DocumentStore
from .enrollment import consume_token, rotate_agent_key
from .errors import RequestError, StoreError
from .ingest import ingest_batch, read_cursor
from .keys import ServerKeys
from .observability import BATCH_ACK, BATCH_HEADER, install_observability
from .published import NAMES, latest
from .store import AgentRow, Store
from .web import make_ui

__all__ = ["CONFIG", "KEYS", "STORE", "Ingest", "accept_batch", "accept_doc_chunk",
           "authenticate", "error_status", "make_app"]

log = logging.getLogger("syncd.app")
CONFIG = web.AppKey("config", ServerConfig)
DOCUMENTS = web.AppKey("documents", DocumentStore)
KEYS = web.AppKey("keys", ServerKeys)
STORE = web.AppKey("store", Store)
LIMITER = web.AppKey("limiter", "RateLimiter")
ADMISSION = web.AppKey("admission", "Admission")
REQUESTS = web.AppKey("requests", "InFlight")
INGEST = web.AppKey("ingest", "Ingest")

_STATUS_BY_CODE = {ErrorCode.TOO_LARGE: 413, ErrorCode.BAD_SIGNATURE: 401,
                   ErrorCode.UNSUPPORTED_VERSION: 400}


class InFlight:
    """Requests being handled, so a shutdown can wait for them to finish."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; False if ``timeout_s`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


class Admission:
    """A bound on ingests in flight (batches and document chunks) in this process.

    Beyond it a request is answered ``503 busy`` before its body is read, with
    a ``Retry-After`` that grows with the crowd turned away in the last few
    seconds and is drawn at random, so a reconnection storm spreads out and
    drains instead of coming back all at once.
    """

    WINDOW_S = 5.0

    def __init__(self, limit: int, rng: random.Random | None = None) -> None:
        self.limit = limit
        self.in_flight = 0
        self.refused = 0  # since start, for figures
        self._recent: deque[float] = deque()
        self._rng = rng or random.Random()  # noqa: S311 - spreading retries, not secrecy

    def try_enter(self, now: float) -> float | None:
        """Take a place and return None, or return the seconds to wait."""
        if self.in_flight < self.limit:
            self.in_flight += 1
            return None
        self.refused += 1
        self._recent.append(now)
        while self._recent and self._recent[0] < now - self.WINDOW_S:
            self._recent.popleft()
        crowd = len(self._recent) / self.limit  # how many rounds of places are waiting
        return float(self._rng.randint(1, max(1, min(30, round(1 + crowd)))))

    def leave(self) -> None:
        self.in_flight -= 1


_INGEST_PATHS = frozenset({"/v1/batches", "/v1/documents/chunk"})


@web.middleware
async def admission_middleware(request: web.Request,
                               handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                               ) -> web.StreamResponse:
    if request.path not in _INGEST_PATHS:
        return await handler(request)
    admission = request.app[ADMISSION]
    wait_s = admission.try_enter(time.monotonic())
    if wait_s is not None:
        raise RequestError(503, ErrorCode.BUSY, "the server is busy; retry later",
                           retry_after_s=wait_s)
    try:
        return await handler(request)
    finally:
        admission.leave()


class RateLimiter:
    """A token bucket per agent (server clock); refuses with a Retry-After."""

    def __init__(self, rate_per_s: float, burst: float) -> None:
        self._rate, self._burst = rate_per_s, burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, agent_id: str, now: float) -> float | None:
        """None if allowed, else seconds to wait."""
        tokens, then = self._buckets.get(agent_id, (self._burst, now))
        tokens = min(self._burst, tokens + (now - then) * self._rate)
        if tokens < 1:
            self._buckets[agent_id] = (tokens, now)
            return (1 - tokens) / self._rate
        self._buckets[agent_id] = (tokens - 1, now)
        return None


def _reply(request: web.Request, status: int, message: bytes, **headers: str) -> web.Response:
    body = seal_reply(request.app[KEYS].identity, message)
    return web.Response(status=status, body=body, content_type=MEDIA_TYPE, headers=headers)


def _error(request: web.Request, status: int, code: str, message: str, *,
           epoch: int | None = None, acked_seq: int | None = None,
           **headers: str) -> web.Response:
    return _reply(request, status, encode_error(ErrorReply(code, message, epoch, acked_seq)),
                  **headers)


@web.middleware
async def errors_middleware(request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                            ) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-Id", "")[:64] or secrets.token_hex(6)
    requests = request.app[REQUESTS]
    requests.enter()
    try:
        response = await handler(request)
    except (RequestError, ProtocolError) as exc:
        retry_after_s = exc.retry_after_s if isinstance(exc, RequestError) else None
        headers = {"Retry-After": f"{retry_after_s:.0f}"} if retry_after_s else {}
        status, err = error_status(exc)
        response = _reply(request, status, encode_error(err), **headers)
    except web.HTTPRequestEntityTooLarge:
        response = _error(request, 413, ErrorCode.TOO_LARGE, "request body too large")
    except web.HTTPException:
        raise
    except StoreError as exc:
        log.error("request %s: store unavailable: %s", request_id, exc)
        response = _error(request, 503, ErrorCode.INTERNAL, "store unavailable; retry later",
                          **{"Retry-After": "5"})
    except Exception:
        log.exception("request %s failed", request_id)
        response = _error(request, 503, ErrorCode.INTERNAL, "server error; retry later",
                          **{"Retry-After": "5"})
    finally:
        requests.leave()
    response.headers["X-Request-Id"] = request_id
    return response


async def _body(request: web.Request) -> bytes:
    """The whole body, within the size limit and at a minimum pace (slow clients: 408)."""
    config = request.app[CONFIG]
    length = request.content_length
    if length is not None and length > config.max_body_bytes:
        raise RequestError(413, ErrorCode.TOO_LARGE, f"body larger than {config.max_body_bytes}"
                           " bytes")
    allowed_s = config.body_timeout_s + (length or 0) / config.min_client_bytes_per_s
    try:
        return await asyncio.wait_for(request.read(), allowed_s)
    except TimeoutError as exc:
        raise RequestError(408, ErrorCode.TIMEOUT, "request body arrived too slowly") from exc
    except (ConnectionResetError, asyncio.IncompleteReadError) as exc:
        # The client hung up mid-body (a 2G link dropping): nothing to answer or log loudly.
        raise RequestError(400, ErrorCode.MALFORMED, "the request body was cut off") from exc


@dataclass(frozen=True)
class Ingest:
    """What accepting a signed request needs, with or without HTTP (``syncd
    import`` reads the same envelopes from a USB stick). ``limiter`` is None
    off-line: a stick carries a week of requests at once."""

    config: ServerConfig
    store: Store
    keys: ServerKeys
    documents: DocumentStore
    limiter: RateLimiter | None = None


async def authenticate(ingest: Ingest, data: bytes, kind: str
                       ) -> tuple[AgentRow, bytes, bytes]:
    """Verify an envelope's signature; return (agent, signed bytes, batch digest).

    Raises:
        RequestError: too large, unknown agent, bad signature, revoked, rate.
        ProtocolError: not an envelope.
    """
    if len(data) > ingest.config.max_body_bytes:
        raise RequestError(413, ErrorCode.TOO_LARGE,
                           f"body larger than {ingest.config.max_body_bytes} bytes")
    env = decode_envelope(data, ingest.config.limits)
    if env.kind != kind:
        raise RequestError(400, ErrorCode.MALFORMED, f"expected a {kind} envelope")
    agent = await ingest.store.agent(env.agent_id)
    if agent is None:
        raise RequestError(401, ErrorCode.UNKNOWN_AGENT, "unknown agent")
    try:
        verify_envelope(env, agent.public_key)
    except SignatureError as exc:
        raise RequestError(401, ErrorCode.BAD_SIGNATURE, "signature does not verify") from exc
    if agent.revoked:
        raise RequestError(403, ErrorCode.REVOKED, "this agent has been revoked by an operator")
    if ingest.limiter is not None:
        wait_s = ingest.limiter.check(agent.agent_id, time.monotonic())
        if wait_s is not None:
            raise RequestError(429, ErrorCode.RATE_LIMITED, "too many requests",
                               retry_after_s=max(1.0, wait_s))
    return agent, env.signed, batch_digest(env)


async def _authenticate(request: web.Request, kind: str) -> tuple[AgentRow, bytes, bytes]:
    return await authenticate(request.app[INGEST], await _body(request), kind)


def error_status(exc: RequestError | ProtocolError) -> tuple[int, ErrorReply]:
    """The HTTP status and signed-reply message answering a refusal."""
    if isinstance(exc, RequestError):
        return exc.status, ErrorReply(exc.code, exc.message, exc.epoch, exc.acked_seq)
    return _STATUS_BY_CODE.get(exc.code, 400), ErrorReply(exc.code, str(exc), None, None)


def _with_keys(keys: ServerKeys, ack: Ack) -> Ack:
    return Ack(ack.agent_id, ack.epoch, ack.acked_seq, ack.verdicts, ack.batch,
               ack.server_time, keys.current_id, keys.sealing_public())


def _sealing_key(keys: ServerKeys, key_id: int) -> X25519PrivateKey:
    key = keys.sealing.get(key_id)
    if key is None:
        raise RequestError(400, ErrorCode.UNKNOWN_KEY, f"no server sealing key {key_id}")
    return key


async def accept_batch(ingest: Ingest, data: bytes,
                       on_header: Callable[[int, int], None] | None = None) -> Ack:
    """Authenticate, check, open and apply one batch envelope; return the ack
    (naming the server's current sealing key). Shared by HTTP and ``syncd import``.

    Raises:
        RequestError, ProtocolError: the refusal to answer (nothing stored).
    """
    agent, signed, digest = await authenticate(ingest, data, "batch")
    sealed = decode_sealed_batch(signed, ingest.config.limits)
    if sealed.agent_id != agent.agent_id or sealed.commune_code != agent.commune_code:
        raise RequestError(403, ErrorCode.FORBIDDEN,
                           "a batch may only carry its own agent's and commune's records")
    if on_header is not None:
        on_header(sealed.first_seq, sealed.count)
    body = open_batch(sealed, _sealing_key(ingest.keys, sealed.key_id), ingest.config.limits)
    ack = await ingest_batch(ingest.store, agent, body, digest)
    log.info("agent %s epoch %d: records %d-%d, acked %d, %d verdicts", agent.agent_id,
             body.epoch, body.first_seq, body.last_seq, ack.acked_seq, len(ack.verdicts))
    return _with_keys(ingest.keys, ack)


async def post_batch(request: web.Request) -> web.Response:
    def header(first_seq: int, count: int) -> None:
        request[BATCH_HEADER] = (first_seq, count)

    ack = await accept_batch(request.app[INGEST], await _body(request), header)
    request[BATCH_ACK] = ack
    return _reply(request, 200, encode_ack(ack))


async def post_cursor(request: web.Request) -> web.Response:
    agent, signed, _ = await _authenticate(request, "cursor")
    cursor = decode_cursor_request(signed, request.app[CONFIG].limits)
    ack = await read_cursor(request.app[STORE], agent, cursor.epoch, cursor.heartbeat,
                            cursor.agent_clock)
    return _reply(request, 200, encode_ack(_with_keys(request.app[KEYS], ack)))


async def post_updates(request: web.Request) -> web.Response:
    """The statuses set centrally for the agent's own commune after the id it holds
    (SPEC §18); changes nothing."""
    agent, signed, _ = await _authenticate(request, UPDATES)
    query = decode_updates_request(signed, request.app[CONFIG].limits)
    page = await updates_page(request.app[STORE], agent.commune_code, query.after)
    return _reply(request, 200, encode_updates_page(page))


async def post_enroll(request: web.Request) -> web.Response:
    enroll = decode_enroll_request(await _body(request))
    reply = await consume_token(request.app[STORE], request.app[KEYS], enroll)
    log.info("enrolled agent %s for commune %s", reply.agent_id, reply.commune_code)
    return _reply(request, 200, encode_enroll_reply(reply))


async def post_rotate(request: web.Request) -> web.Response:
    """Replace an agent's signing key; signed by the current key (or, for a retry
    whose answer was lost, by the previous one naming the current key)."""
    env = decode_envelope(await _body(request), request.app[CONFIG].limits)
    agent = await request.app[STORE].agent(env.agent_id)
    if env.kind != "rotate" or agent is None:
        raise RequestError(401, ErrorCode.UNKNOWN_AGENT, "unknown agent")
    if agent.revoked:
        raise RequestError(403, ErrorCode.REVOKED, "this agent has been revoked by an operator")
    await rotate_agent_key(request.app[STORE], agent, env)
    log.info("agent %s rotated its signing key", agent.agent_id)
    ack = await read_cursor(request.app[STORE], agent, 1)
    return _reply(request, 200, encode_ack(_with_keys(request.app[KEYS], ack)))


async def post_doc_status(request: web.Request) -> web.Response:
    _, signed, _ = await _authenticate(request, "doc_status")
    query = decode_doc_status(signed, request.app[CONFIG].limits)
    state = await request.app[DOCUMENTS].state(query.sha256, query.size)
    return _reply(request, 200, encode_doc_state(state))


async def accept_doc_chunk(ingest: Ingest, data: bytes, *, realign: bool = False
                           ) -> tuple[int, DocState]:
    """Authenticate, open and store one document chunk envelope; return (status, state).
    Shared by HTTP and ``syncd import``.

    With ``realign`` (a stick's chunks, cut before the server's position was
    known), a chunk that starts before the held offset but reaches past it is
    stored from the held offset on; over HTTP a chunk must start exactly there.

    Raises:
        RequestError, ProtocolError: the refusal to answer (nothing stored).
    """
    agent, signed, _ = await authenticate(ingest, data, "doc_chunk")
    sealed = decode_doc_chunk(signed, ingest.config.limits)
    chunk = open_doc_chunk(sealed, _sealing_key(ingest.keys, sealed.key_id), agent.agent_id)
    if realign:
        held = await ingest.documents.state(chunk.sha256, chunk.size)
        end = chunk.offset + len(chunk.data)
        if not held.complete and chunk.offset < held.offset < end:
            chunk = DocChunk(chunk.sha256, chunk.size, held.offset,
                             chunk.data[held.offset - chunk.offset:])
    status, state = await ingest.documents.put_chunk(chunk)
    if status == 200:
        log.info("agent %s document %s: %d/%d bytes%s", agent.agent_id, chunk.sha256[:12],
                 state.offset, state.size, " complete" if state.complete else "")
    return status, state


async def post_doc_chunk(request: web.Request) -> web.Response:
    status, state = await accept_doc_chunk(request.app[INGEST], await _body(request))
    return _reply(request, status, encode_doc_state(state))


async def post_published(request: web.Request) -> web.Response:
    """The newest catalogue or holiday list, if newer than the version the agent holds."""
    raw = unpack(await _body(request), max_bytes=1024)
    name, have = raw.get("name") if isinstance(raw, dict) else None, \
        raw.get("have") if isinstance(raw, dict) else None
    if name not in NAMES or isinstance(have, bool) or not isinstance(have, int) or have < 0:
        raise RequestError(400, ErrorCode.MALFORMED,
                           f"ask for one of {', '.join(NAMES)} with the version held")
    held = await latest(request.app[STORE], name)
    version, body = held if held else (0, None)
    return _reply(request, 200, pack({"v": 1, "kind": "published", "name": name,
                                      "version": version,
                                      "body": body if version > have else None}))


async def get_root(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/ui/")


async def get_health(request: web.Request) -> web.Response:
    await request.app[STORE].read("SELECT 1")
    return web.json_response({"status": "ok"})


def make_app(config: ServerConfig, store: Store, keys: ServerKeys,
             documents_dir: Path | None = None) -> web.Application:
    """Build the application around an open store (the caller closes it).

    Documents are kept in ``documents_dir`` (default: beside the database).
    """
    app = web.Application(middlewares=[errors_middleware, admission_middleware],
                          client_max_size=config.max_body_bytes)
    app[CONFIG] = config
    app[STORE] = store
    app[KEYS] = keys
    app[LIMITER] = RateLimiter(config.rate_limit_per_s, config.rate_limit_burst)
    app[ADMISSION] = Admission(config.max_inflight_ingests)
    app[REQUESTS] = InFlight()
    if documents_dir is None:
        if store.path is None:
            raise ValueError("documents_dir is required with a PostgreSQL store")
        documents_dir = store.path.parent / "documents"
    app[DOCUMENTS] = DocumentStore(documents_dir, store)
    app[INGEST] = Ingest(config, store, keys, app[DOCUMENTS], app[LIMITER])
    app.router.add_post("/v1/documents/status", post_doc_status)
    app.router.add_post("/v1/documents/chunk", post_doc_chunk)
    app.router.add_post("/v1/batches", post_batch)
    app.router.add_post("/v1/cursor", post_cursor)
    app.router.add_post("/v1/enroll", post_enroll)
    app.router.add_post("/v1/rotate", post_rotate)
    app.router.add_post("/v1/published", post_published)
    app.router.add_post("/v1/updates", post_updates)
    app.router.add_get("/healthz", get_health)
    app.router.add_get("/", get_root)
    app.add_subapp("/ui", make_ui(config, store, keys))
    install_observability(app, store)
    return app
