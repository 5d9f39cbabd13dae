"""``syncd import``: bundles carried on a USB stick, ingested as if they had
been POSTed, answered with signed acks (or refusal) files beside them.

Rules:

* Every item goes through the very functions the HTTP handlers use
  (:func:`syncd.app.accept_batch`, :func:`syncd.app.accept_doc_chunk`):
  signature, revocation, claims, sealing and limits are checked once, there.
* A bundle is first authenticated as a whole: from an unknown or revoked
  agent, or with any item that is not a validly signed request of the agent
  the bundle names (a tampered file), it is refused and nothing from it is
  stored. Other bundles still import. The refusal is answered on the stick
  too: a signed refusal file beside the bundle (SPEC §16) tells the officer
  why, in Vietnamese and English.
* A bundle has at most one answer beside it: writing its acks removes a
  refusal left by an earlier import (the operator fixed the cause), and a
  refusal never touches an acks file (what an earlier import stored stays
  stored, and its acks stay true).
* Importing a bundle again changes nothing: batches and chunks are
  idempotent, and an acks file that says the same (apart from the server
  time of the acks and chunks replayed after their document completed) is
  left as it was, byte for byte.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from protocol import DecodeError, ErrorCode, ProtocolError
from protocol.bundles import (
    BUNDLE_SUFFIX,
    AckItem,
    Acks,
    Bundle,
    Refusal,
    acks_name,
    agent_of_bundle_name,
    bundle_digest,
    decode_acks,
    decode_bundle,
    encode_acks,
    encode_refusal,
    refusal_name,
)
from protocol.documents import DocState, decode_doc_state, encode_doc_state
from protocol.messages import DEFAULT_LIMITS, decode_ack, encode_ack, encode_error
from protocol.sealing import open_reply, seal_reply
from protocol.signing import public_key_bytes

from .app import Ingest, accept_batch, accept_doc_chunk, authenticate, error_status
from .documents import replace_durably
from .errors import RequestError

__all__ = ["BundleRefused", "ImportResult", "import_bundle", "import_folder"]

log = logging.getLogger("syncd.sneakernet")
_KINDS = {"/v1/batches": "batch", "/v1/documents/chunk": "doc_chunk"}


class BundleRefused(Exception):
    """A whole bundle was refused; nothing from it was stored.

    ``reason`` is for the operator (English, in the exception's text); ``code``
    and the two ``officer`` sentences go into the signed refusal file;
    ``refusal_file`` names it once written (None: no agent to address it to).
    """

    def __init__(self, name: str, agent_id: str | None, reason: str, *, code: str,
                 officer_vi: str, officer_en: str) -> None:
        who = f" from agent {agent_id}" if agent_id else ""
        super().__init__(f"{name}: bundle{who} refused, nothing stored: {reason}")
        self.name, self.agent_id, self.reason = name, agent_id, reason
        self.code, self.officer_vi, self.officer_en = code, officer_vi, officer_en
        self.refusal_file: str | None = None


# What a failed item means to the officer, by its code (the operator reads the detail).
_ITEM_VI = "mục thứ {n} trong gói không qua được kiểm tra của máy chủ ({code})"
_ITEM_EN = "item {n} of the bundle failed the server's checks ({code})"
_RESEND_VI = "tệp đã bị sửa hoặc hỏng trên đường mang đi; hãy xuất lại bằng `sync-agent export`"
_RESEND_EN = ("the file was altered or damaged on the way; export again with "
              "`sync-agent export`")


@dataclass(frozen=True)
class ImportResult:
    name: str
    agent_id: str
    batches: int
    chunks: int
    refused_items: int  # answered with a signed refusal (a gap, a conflict ...)
    acked_seq: int | None  # the last batch ack's position
    acks_file: str
    unchanged: bool  # the acks file already said all this


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    replace_durably(tmp, path)


async def _check_bundle(ingest: Ingest, name: str, bundle: Bundle) -> None:
    """Authenticate every item before storing any (the HTTP checks, unchanged)."""
    agent = await ingest.store.agent(bundle.agent_id)
    if agent is None:
        raise BundleRefused(
            name, bundle.agent_id, "unknown agent (not enrolled here)",
            code=ErrorCode.UNKNOWN_AGENT,
            officer_vi="máy trạm này chưa được đăng ký với máy chủ tỉnh; hãy xin cán bộ CNTT "
                       "của huyện/tỉnh mã đăng ký mới",
            officer_en="this PC is not enrolled at the province server; ask the district or "
                       "province IT staff for a new enrollment token")
    if agent.revoked:
        raise BundleRefused(
            name, bundle.agent_id, "this agent has been revoked by an operator",
            code=ErrorCode.REVOKED,
            officer_vi="máy trạm này đã bị thu hồi quyền đồng bộ; hãy liên hệ cán bộ CNTT của "
                       "huyện/tỉnh để đăng ký lại",
            officer_en="this PC's access has been revoked by an operator; ask the district or "
                       "province IT staff to enroll it again")
    for number, item in enumerate(bundle.items, start=1):
        try:
            signer, _, _ = await authenticate(ingest, item.body, _KINDS[item.path])
        except (RequestError, ProtocolError) as exc:
            err = error_status(exc)[1]
            raise BundleRefused(
                name, bundle.agent_id, f"item {number} ({item.path}): {err.message}",
                code=err.code,
                officer_vi=_ITEM_VI.format(n=number, code=err.code) + "; " + _RESEND_VI,
                officer_en=_ITEM_EN.format(n=number, code=err.code) + "; " + _RESEND_EN,
            ) from exc
        if signer.agent_id != bundle.agent_id:
            raise BundleRefused(
                name, bundle.agent_id,
                f"item {number} is signed by another agent ({signer.agent_id})",
                code=ErrorCode.FORBIDDEN,
                officer_vi=f"mục thứ {number} trong gói do máy trạm khác ký; " + _RESEND_VI,
                officer_en=f"item {number} of the bundle is signed by another PC; "
                           + _RESEND_EN)


async def _answer(ingest: Ingest, path: str, body: bytes) -> tuple[int, bytes]:
    """(status, reply message) exactly as the HTTP handler would answer."""
    try:
        if path == "/v1/batches":
            return 200, encode_ack(await accept_batch(ingest, body))
        status, state = await accept_doc_chunk(ingest, body, realign=True)
        return status, encode_doc_state(state)
    except (RequestError, ProtocolError) as exc:
        status, err = error_status(exc)
        return status, encode_error(err)


def _substance(acks: Acks, server_key: bytes) -> tuple[tuple[object, ...],
                                                      dict[str, DocState]]:
    """What an acks file says: each batch's answer without the server time of
    its ack, and each document's last state."""
    batches: list[object] = []
    documents: dict[str, DocState] = {}
    for item in acks.items:
        message = open_reply(item.reply, server_key)
        if item.path == "/v1/batches":
            batches.append((item.status, replace(decode_ack(message), server_time=None)
                            if item.status == 200 else message))
            continue
        try:
            state = decode_doc_state(message, DEFAULT_LIMITS)
        except DecodeError:
            batches.append((item.status, message))  # a refusal stays in its place
        else:
            documents[state.sha256] = state
    return (acks.agent_id, acks.bundle, tuple(batches)), documents


def _same_answers(path: Path, acks: Acks, server_key: bytes) -> bool:
    """Whether the acks file at ``path`` already says what ``acks`` says. A chunk
    replayed after its document completed is answered "complete" instead of its
    old offset (a part cut before the document's last chunk, say): that is no
    news, the agent only ever takes "complete" and the last part says it."""
    try:
        old, old_docs = _substance(decode_acks(path.read_bytes()), server_key)
        new, new_docs = _substance(acks, server_key)
    except (OSError, ProtocolError):
        return False
    return old == new and old_docs.keys() == new_docs.keys() and all(
        state == old_docs[sha256] or state.complete for sha256, state in new_docs.items())


def _write_refusal(ingest: Ingest, path: Path, data: bytes, refused: BundleRefused) -> None:
    """Answer a refused bundle on the stick: a signed refusal file beside it,
    left byte for byte when it already says the same (signatures are deterministic)."""
    agent_id = refused.agent_id or agent_of_bundle_name(path.name)
    if agent_id is None:
        return  # neither the file nor its name says whom to answer
    refusal = Refusal(agent_id, bundle_digest(data), str(refused.code), refused.officer_vi,
                      refused.officer_en)
    target = path.with_name(refusal_name(path.name))
    reply = seal_reply(ingest.keys.identity, encode_refusal(refusal))
    try:
        same = target.read_bytes() == reply
    except OSError:
        same = False
    if not same:
        _write_atomic(target, reply)
    refused.refusal_file = target.name


async def _checked_bundle(ingest: Ingest, path: Path, data: bytes) -> Bundle:
    """The decoded bundle, every item authenticated; else refused, with its
    refusal file written.

    Raises:
        BundleRefused: nothing was stored.
    """
    try:
        try:
            bundle = decode_bundle(data)
        except DecodeError as exc:
            raise BundleRefused(
                path.name, None, f"not a valid bundle file ({exc})", code=exc.code,
                officer_vi=f"tệp không phải là gói hợp lệ ({exc.code}); " + _RESEND_VI,
                officer_en=f"the file is not a valid bundle ({exc.code}); " + _RESEND_EN,
            ) from exc
        await _check_bundle(ingest, path.name, bundle)
    except BundleRefused as refused:
        _write_refusal(ingest, path, data, refused)
        raise
    return bundle


async def import_bundle(ingest: Ingest, path: Path) -> ImportResult:
    """Ingest one bundle file and write its acks file beside it (or, when the
    bundle is refused, its signed refusal file).

    Raises:
        BundleRefused: naming the file and the agent; nothing was stored.
        StoreError: the store failed (nothing more of this bundle was tried).
        OSError: the acks or refusal file could not be written.
    """
    data = path.read_bytes()
    bundle = await _checked_bundle(ingest, path, data)
    identity = ingest.keys.identity
    items, batches, chunks, refused, acked = [], 0, 0, 0, None
    for item in bundle.items:
        status, message = await _answer(ingest, item.path, item.body)
        is_batch = item.path == "/v1/batches"
        batches, chunks = batches + is_batch, chunks + (not is_batch)
        if is_batch and status == 200:
            acked = decode_ack(message).acked_seq
        elif status != 200 and not (status == 409 and not is_batch):
            refused += 1
        items.append(AckItem(item.path, status, seal_reply(identity, message),
                             item.body if is_batch else None))
    acks = Acks(bundle.agent_id, bundle_digest(data), tuple(items))
    target = path.with_name(acks_name(path.name))
    unchanged = _same_answers(target, acks, public_key_bytes(identity))
    if not unchanged:
        _write_atomic(target, encode_acks(acks))
    # A refusal from an earlier import (the agent was unknown then, say) no longer holds.
    path.with_name(refusal_name(path.name)).unlink(missing_ok=True)
    log.info("imported %s from agent %s: %d batches, %d chunks", path.name, bundle.agent_id,
             batches, chunks)
    return ImportResult(path.name, bundle.agent_id, batches, chunks, refused, acked,
                        target.name, unchanged)


def bundle_files(folder: Path) -> list[Path]:
    """The bundle files in ``folder``, in name order (one agent's parts in order)."""
    return sorted(p for p in folder.iterdir() if p.name.endswith(BUNDLE_SUFFIX) and p.is_file())


async def import_folder(ingest: Ingest, folder: Path
                        ) -> list[ImportResult | BundleRefused]:
    """Import every bundle in ``folder``; a refused one does not stop the others."""
    results: list[ImportResult | BundleRefused] = []
    for path in bundle_files(folder):
        try:
            results.append(await import_bundle(ingest, path))
        except BundleRefused as exc:
            log.info("%s", exc)
            results.append(exc)
    return results
