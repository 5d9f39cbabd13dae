"""The aiohttp application: enrollment, batch ingest, cursor, health.

Every answer to an agent is a protocol message (msgpack, MEDIA_TYPE): an
ack, an enrollment reply, or an error with a stable code. Hostile input gets
a 4xx and changes nothing; an unexpected failure is logged with a request id
and answered 503 (retry later), never with a traceback.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from protocol import MEDIA_TYPE, ErrorCode, ErrorReply, ProtocolError, SignatureError
from protocol.documents import decode_doc_chunk, decode_doc_status, encode_doc_state
from protocol.messages import (
    batch_digest,
    decode_batch_body,
    decode_cursor_request,
    decode_enroll_request,
    decode_envelope,
    encode_ack,
    encode_enroll_reply,
    encode_error,
)
from protocol.signing import verify_envelope

from .config import ServerConfig
from .documents import DocumentStore
from .enrollment import consume_token
from .errors import RequestError, StoreError
from .ingest import ingest_batch, read_cursor
from .store import AgentRow, SqliteStore

__all__ = ["CONFIG", "STORE", "make_app"]

log = logging.getLogger("syncd.app")
CONFIG = web.AppKey("config", ServerConfig)
DOCUMENTS = web.AppKey("documents", DocumentStore)
STORE = web.AppKey("store", SqliteStore)

_STATUS_BY_CODE = {ErrorCode.TOO_LARGE: 413, ErrorCode.BAD_SIGNATURE: 401,
                   ErrorCode.UNSUPPORTED_VERSION: 400}


def _reply(status: int, body: bytes, **headers: str) -> web.Response:
    return web.Response(status=status, body=body, content_type=MEDIA_TYPE, headers=headers)


def _error(status: int, code: str, message: str, *, epoch: int | None = None,
           acked_seq: int | None = None, **headers: str) -> web.Response:
    return _reply(status, encode_error(ErrorReply(code, message, epoch, acked_seq)), **headers)


@web.middleware
async def errors_middleware(request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                            ) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-Id", "")[:64] or secrets.token_hex(6)
    try:
        response = await handler(request)
    except RequestError as exc:
        response = _error(exc.status, exc.code, exc.message, epoch=exc.epoch,
                          acked_seq=exc.acked_seq)
    except ProtocolError as exc:
        response = _error(_STATUS_BY_CODE.get(exc.code, 400), exc.code, str(exc))
    except web.HTTPRequestEntityTooLarge:
        response = _error(413, ErrorCode.TOO_LARGE, "request body too large")
    except web.HTTPException:
        raise
    except StoreError as exc:
        log.error("request %s: store unavailable: %s", request_id, exc)
        response = _error(503, ErrorCode.INTERNAL, "store unavailable; retry later",
                          **{"Retry-After": "5"})
    except Exception:
        log.exception("request %s failed", request_id)
        response = _error(503, ErrorCode.INTERNAL, "server error; retry later",
                          **{"Retry-After": "5"})
    response.headers["X-Request-Id"] = request_id
    return response


async def _body(request: web.Request) -> bytes:
    limit = request.app[CONFIG].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise RequestError(413, ErrorCode.TOO_LARGE, f"body larger than {limit} bytes")
    return await request.read()


async def _authenticate(request: web.Request, kind: str) -> tuple[AgentRow, bytes, bytes]:
    """Verify the envelope's signature; return (agent, signed bytes, batch digest)."""
    env = decode_envelope(await _body(request), request.app[CONFIG].limits)
    if env.kind != kind:
        raise RequestError(400, ErrorCode.MALFORMED, f"expected a {kind} envelope")
    agent = await request.app[STORE].agent(env.agent_id)
    if agent is None:
        raise RequestError(401, ErrorCode.UNKNOWN_AGENT, "unknown agent")
    try:
        verify_envelope(env, agent.public_key)
    except SignatureError as exc:
        raise RequestError(401, ErrorCode.BAD_SIGNATURE, "signature does not verify") from exc
    if agent.revoked:
        raise RequestError(403, ErrorCode.UNKNOWN_AGENT, "this agent has been revoked")
    return agent, env.signed, batch_digest(env)


async def post_batch(request: web.Request) -> web.Response:
    agent, signed, digest = await _authenticate(request, "batch")
    body = decode_batch_body(signed, request.app[CONFIG].limits)
    ack = await ingest_batch(request.app[STORE], agent, body, digest)
    log.info("agent %s epoch %d: records %d-%d, acked %d, %d verdicts", agent.agent_id,
             body.epoch, body.first_seq, body.last_seq, ack.acked_seq, len(ack.verdicts))
    return _reply(200, encode_ack(ack))


async def post_cursor(request: web.Request) -> web.Response:
    agent, signed, _ = await _authenticate(request, "cursor")
    cursor = decode_cursor_request(signed, request.app[CONFIG].limits)
    return _reply(200, encode_ack(await read_cursor(request.app[STORE], agent, cursor.epoch)))


async def post_enroll(request: web.Request) -> web.Response:
    enroll = decode_enroll_request(await _body(request))
    reply = await consume_token(request.app[STORE], enroll)
    log.info("enrolled agent %s for commune %s", reply.agent_id, reply.commune_code)
    return _reply(200, encode_enroll_reply(reply))


async def post_doc_status(request: web.Request) -> web.Response:
    _, signed, _ = await _authenticate(request, "doc_status")
    query = decode_doc_status(signed, request.app[CONFIG].limits)
    state = await request.app[DOCUMENTS].state(query.sha256, query.size)
    return _reply(200, encode_doc_state(state))


async def post_doc_chunk(request: web.Request) -> web.Response:
    agent, signed, _ = await _authenticate(request, "doc_chunk")
    chunk = decode_doc_chunk(signed, request.app[CONFIG].limits)
    status, state = await request.app[DOCUMENTS].put_chunk(chunk)
    if status == 200:
        log.info("agent %s document %s: %d/%d bytes%s", agent.agent_id, chunk.sha256[:12],
                 state.offset, state.size, " complete" if state.complete else "")
    return _reply(status, encode_doc_state(state))


async def get_health(request: web.Request) -> web.Response:
    await request.app[STORE].read("SELECT 1")
    return web.json_response({"status": "ok"})


def make_app(config: ServerConfig, store: SqliteStore,
             documents_dir: Path | None = None) -> web.Application:
    """Build the application around an open store (the caller closes it).

    Documents are kept in ``documents_dir`` (default: beside the database).
    """
    app = web.Application(middlewares=[errors_middleware],
                          client_max_size=config.max_body_bytes)
    app[CONFIG] = config
    app[STORE] = store
    app[DOCUMENTS] = DocumentStore(documents_dir or store.path.parent / "documents", store)
    app.router.add_post("/v1/documents/status", post_doc_status)
    app.router.add_post("/v1/documents/chunk", post_doc_chunk)
    app.router.add_post("/v1/batches", post_batch)
    app.router.add_post("/v1/cursor", post_cursor)
    app.router.add_post("/v1/enroll", post_enroll)
    app.router.add_get("/healthz", get_health)
    return app
