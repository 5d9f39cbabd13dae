"""The agent's operations on its data directory: enroll, add, update, verify.

Used by the CLI and the daemon alike; each opens the queue, does one thing
durably, and closes it.
"""

from __future__ import annotations

import os
import sqlite3
import ssl
import uuid
from dataclasses import dataclass
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from protocol import (
    PROTOCOL_VERSION,
    DecodeError,
    DossierCreated,
    SignatureError,
    StatusChanged,
    ValidationError,
    decode_event,
    derive_dossier_id,
    encode_event,
    pack,
    validate_dossier,
    validate_status,
)
from protocol.dossier import parse_timestamp
from protocol.messages import (
    EnrollReply,
    EnrollRequest,
    decode_enroll_reply,
    decode_envelope,
    decode_error,
    encode_enroll_request,
    encode_envelope,
)
from protocol.sealing import fingerprint, open_reply
from protocol.signing import public_key_bytes, sign_enrollment, sign_envelope, sign_rotation

from .clock import local_now_iso
from .config import AgentConfig, AgentPaths
from .documents import DocumentStore
from .errors import InputError, RefusedError, SetupError, TransportError
from .files import read_secret, write_atomic
from .keyfile import PASSPHRASE_ENV, read_queue_key, write_queue_key
from .queue import Queue
from .sync import SyncEngine
from .tls import client_ssl_context, read_ca_file
from .transport import HttpTransport, Reply

__all__ = ["Agent", "enroll"]

VN_TZ = timezone(timedelta(hours=7))
MAX_CODES_PER_DAY = 999
MAX_RECORD_BYTES = 256 * 1024  # well inside the server's per-record limit


def _ssl_for(root: Path, ca_name: str | None, server_url: str) -> ssl.SSLContext | None:
    if not server_url.startswith("https:"):
        return None
    return client_ssl_context(root / ca_name if ca_name else None)


def _load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """Reuse a key left by an interrupted init or rotation, so a retry is idempotent."""
    if path.exists():
        return Ed25519PrivateKey.from_private_bytes(read_secret(path, 32))
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    write_atomic(path, raw, mode=0o600)
    return key


def _token_fingerprint(token: str) -> str:
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != "cs1" or not parts[1] or len(parts[2]) < 22:
        raise InputError("invalid token", ["token: không phải mã đăng ký của syncd / "
                                           "not an enrollment token from `syncd enroll`"])
    return parts[1]


def _read_enroll_reply(reply: Reply, pin: str) -> EnrollReply:
    """Accept the answer only from the server whose key the token pins."""
    try:
        env = decode_envelope(reply.body)
        if env.kind != "reply":
            raise DecodeError("not a server reply")
        if reply.status != 200:
            err = decode_error(env.signed)
            raise RefusedError(err.code, err.message)
        enrolled = decode_enroll_reply(env.signed)
        if fingerprint(enrolled.server_key) != pin:
            raise TransportError("the server's key does not match the one the token names")
        open_reply(reply.body, enrolled.server_key)
    except (DecodeError, SignatureError) as exc:
        raise TransportError(f"HTTP {reply.status} without a valid signed answer") from exc
    return enrolled


async def enroll(paths: AgentPaths, server_url: str, token: str, name: str | None, *,
                 ca_file: Path | None = None) -> AgentConfig:
    """Create keys, register the public key with the server, create the queue.

    The token carries the fingerprint of the server's identity key; the agent
    pins that key from the first answer on.

    Raises:
        SetupError: already initialised, or the data directory is unusable.
        InputError: the token is not one `syncd enroll` printed.
        RefusedError: the server refused the token.
        TransportError: the server could not be reached properly.
    """
    pin = _token_fingerprint(token)
    if paths.config.exists():
        raise SetupError(f"{paths.root} already holds an enrolled agent")
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_name = None
    if ca_file is not None:
        ca_name = "ca.pem"
        try:
            write_atomic(paths.root / ca_name, read_ca_file(ca_file).encode())
        except OSError as exc:
            raise SetupError(f"cannot read CA file {ca_file}: {exc.strerror or exc}") from exc
    key = _load_or_create_key(paths.signing_key)
    if not paths.queue_key.exists():
        write_queue_key(paths.queue_key, os.urandom(32), os.environ.get(PASSPHRASE_ENV))
    request = EnrollRequest(token, public_key_bytes(key), name, sign_enrollment(key, token))
    transport = HttpTransport(server_url, timeout_s=60,
                              ssl_context=_ssl_for(paths.root, ca_name, server_url))
    try:
        reply = await transport.post("/v1/enroll", encode_enroll_request(request))
    finally:
        await transport.close()
    enrolled = _read_enroll_reply(reply, pin)
    config = AgentConfig(server_url, enrolled.agent_id, enrolled.commune_code,
                         enrolled.counter_block, enrolled.name or name,
                         enrolled.server_key.hex(), enrolled.sealing_key_id,
                         enrolled.sealing_key.hex(), ca_file=ca_name)
    queue = await Queue.open(paths.queue_db, read_queue_key(paths.queue_key),
                             config.agent_id, create=True)
    await queue.close()
    config.save(paths)
    return config


@dataclass
class Agent:
    """An open data directory: configuration, signing key and queue."""

    paths: AgentPaths
    config: AgentConfig
    key: Ed25519PrivateKey
    queue: Queue
    documents: DocumentStore

    @classmethod
    async def open(cls, paths: AgentPaths) -> Agent:
        config = AgentConfig.load(paths)
        key = Ed25519PrivateKey.from_private_bytes(read_secret(paths.signing_key, 32))
        queue_key = read_queue_key(paths.queue_key)
        queue = await Queue.open(paths.queue_db, queue_key, config.agent_id)
        return cls(paths, config, key, queue,
                   DocumentStore(paths.documents, queue_key, config.agent_id))

    async def close(self) -> None:
        await self.queue.close()

    def transport(self) -> HttpTransport:
        return HttpTransport(self.config.server_url, ssl_context=_ssl_for(
            self.paths.root, self.config.ca_file, self.config.server_url))

    def engine(self, transport: HttpTransport, **options: Any) -> SyncEngine:
        """A sync engine for this data directory (locked, documents included)."""
        return SyncEngine(self.queue, self.config, self.key, transport,
                          lock_path=self.paths.sync_lock, documents=self.documents,
                          save_config=self._save_config, **options)

    async def rotate_key(self) -> None:
        """Replace the agent's signing key with a new one, registered with the server.

        The new key waits in ``agent.key.next`` until the server has accepted
        it, so an interrupted rotation is simply run again.
        """
        next_path = self.paths.root / "agent.key.next"
        new = _load_or_create_key(next_path)
        signed = pack({"v": PROTOCOL_VERSION, "kind": "rotate", "new_key": public_key_bytes(new),
                       "proof": sign_rotation(new, self.config.agent_id)})
        env = sign_envelope(self.key, "rotate", self.config.agent_id, signed)
        transport = self.transport()
        try:
            reply = await transport.post("/v1/rotate", encode_envelope(env))
        finally:
            await transport.close()
        message = reply.signed_message(self.config.server_key_bytes)
        if reply.status != 200:
            err = decode_error(message)
            raise RefusedError(err.code, err.message)
        os.replace(next_path, self.paths.signing_key)
        self.key = new

    def _save_config(self, config: AgentConfig) -> None:
        self.config = config
        config.save(self.paths)

    async def pending_dossiers(self) -> int:
        """How many dossiers have records not yet acknowledged (a record that
        cannot be read counts as one)."""
        status = await self.queue.status()
        if status.pending <= 0:
            return 0
        batch = await self.queue.read_pending(max_records=status.pending, max_bytes=1 << 62)
        ids: set[str] = set()
        for seq, data in enumerate(batch.records, start=batch.first_seq):
            try:
                ids.add(decode_event(data, derived_id=derive_dossier_id(
                    self.config.agent_id, batch.epoch, seq)).dossier_id)
            except (DecodeError, ValidationError):
                ids.add(f"#{seq}")
        unread = status.pending - len(batch.records)  # past a damaged record
        return len(ids) + max(0, unread)

    async def waiting(self) -> bool:
        """Whether any record or document still waits for the server."""
        status = await self.queue.status()
        return status.pending > 0 or (await self.queue.documents_waiting())[0] > 0

    def _code_day(self, dossier: dict[str, Any]) -> str:
        received = parse_timestamp(dossier["received_at"]).astimezone(VN_TZ)
        return received.strftime("%y%m%d")

    async def _validate_all(self, items: list[Any]) -> list[dict[str, Any]]:
        """Validate and identify every dossier, or raise InputError listing all problems."""
        dossiers, problems = [], []
        if not items:
            problems.append("không có hồ sơ nào / no dossier given")
        for index, item in enumerate(items):
            prefix = f"#{index + 1} " if len(items) > 1 else ""
            try:
                dossier = validate_dossier(item)
            except ValidationError as exc:
                problems += [prefix + p.render("vi") + " / " + p.message_en for p in exc.problems]
                continue
            if dossier["id"] is not None and (
                    dossier["id"] in {d["id"] for d in dossiers}
                    or await self.queue.has_dossier(dossier["id"])):
                problems.append(prefix + "id: mã định danh đã tồn tại / id already exists")
            if len(encode_event(DossierCreated(dossier))) > MAX_RECORD_BYTES:
                kib = MAX_RECORD_BYTES // 1024
                problems.append(prefix + f"hồ sơ quá lớn (tối đa {kib} KiB) / "
                                f"dossier too large (at most {kib} KiB)")
            dossiers.append(dossier)
        if problems:
            raise InputError("dossiers not added", problems)
        return dossiers

    def _import_documents(self, dossiers: list[dict[str, Any]], base_dir: Path
                          ) -> list[tuple[str, int]]:
        """Copy every ``documents[].path`` into the encrypted store; the records
        then carry the document's ``sha256`` and ``size`` instead of the path."""
        imported, problems = [], []
        for index, dossier in enumerate(dossiers):
            for doc in dossier["documents"]:
                if "path" not in doc:
                    continue
                source = base_dir / Path(doc["path"]).expanduser()
                try:
                    sha256, size = self.documents.import_file(source)
                except InputError as exc:
                    problems.append(f"#{index + 1} documents: {exc}")
                    continue
                del doc["path"]
                doc.update(sha256=sha256, size=size)
                imported.append((sha256, size))
        if problems:
            raise InputError("dossiers not added", problems)
        return imported

    async def add(self, items: list[Any], *, base_dir: Path | None = None) -> list[str]:
        """Validate every dossier, copy its documents in, then append them all
        in one transaction.

        Args:
            items: intake objects.
            base_dir: where relative ``documents[].path`` values start from.

        Returns:
            The dossier ids, in input order, once they are saved.

        Raises:
            InputError: listing every problem; nothing was added.
        """
        dossiers = await self._validate_all(items)
        documents = self._import_documents(dossiers, base_dir or Path.cwd())
        need_code = [d for d in dossiers if d["code"] is None]

        def build(numbers: list[int], epoch: int, first_seq: int
                  ) -> list[tuple[bytes, str | None]]:
            for dossier, number in zip(need_code, numbers, strict=True):
                if number > MAX_CODES_PER_DAY:
                    raise InputError("dossier code counter exhausted for the day")
                serial = self.config.counter_block * 1000 + number
                day = self._code_day(dossier)
                dossier["code"] = f"{self.config.commune_code}-{day}-{serial:04d}"
            records = []
            for seq, dossier in enumerate(dossiers, start=first_seq):
                derived = dossier["id"] is None
                if derived:
                    dossier["id"] = derive_dossier_id(self.config.agent_id, epoch, seq)
                records.append((encode_event(DossierCreated(dossier, derived)), dossier["id"]))
            return records

        try:
            await self.queue.append(build, [self._code_day(d) for d in need_code], documents)
        except sqlite3.IntegrityError as exc:
            raise InputError("dossiers not added",
                             ["id: mã định danh đã tồn tại / id already exists"]) from exc
        return [d["id"] for d in dossiers]

    async def update_status(self, dossier_id: str, status: str, note: str | None,
                            by: str | None) -> int:
        """Append a status change; return its seq."""
        try:
            status = validate_status(status)
            canonical = str(uuid.UUID(dossier_id))
        except ValidationError as exc:
            raise InputError("invalid status", [p.render("vi") + " / " + p.message_en
                                                for p in exc.problems]) from exc
        except ValueError as exc:
            raise InputError("invalid id", ["id: phải là UUID / must be a UUID"]) from exc
        if note is not None and len(note) > 2000:
            raise InputError("note too long", ["note: dài quá 2000 ký tự / longer than 2000"])
        current = await self.queue.resolve_dossier(canonical)
        if current is None:
            raise InputError("unknown dossier", [
                f"không tìm thấy hồ sơ {canonical} / no dossier {canonical} in this queue"])
        event = StatusChanged(current, status, local_now_iso(), by, note)
        _, seqs = await self.queue.append(lambda *_: [(encode_event(event), None)])
        return seqs[0]
