"""Fuzzing what agents send to syncd, in process: a real SQLite file, a real
aiohttp server on loopback, enrolled agents, and hostile bodies.

Properties checked for every body sent to every endpoint:

* the answer is 200, or a 4xx carrying a protocol error, and either way it
  is an envelope signed by the server's identity key (never a 5xx, never an
  unsigned page, never an error in the server's log);
* nothing is stored unless the answer is 200: the row counts of every table,
  SQLite's ``total_changes()`` and the files in the documents directory are
  the same before and after a refusal (one allowed exception: an authentic
  document chunk answered 409 registers its document, as a status query
  would have);
* a 200 to a batch means it was a valid, authentic one: the test opens it
  itself (signature of an enrolled agent, its own agent and commune, sealed
  to a server key) and checks the ack and the rows against a model of the
  server's positions (records stored = seqs beyond the position; acked_seq);
* bodies built to be refused (bit flips, truncations, changed fields, wrong
  keys, foreign seals...) are refused, and valid ones are accepted;
* a replayed batch gets the same ack and stores nothing new;
* at the end, the store agrees with the model: positions, contiguous records,
  and every stored dossier still validates.

The generators draw through :class:`Draw`, so the same code runs under
Hypothesis here (a byte tape, see :class:`TapeDraw`; bounded examples) and
under a seeded ``random.Random`` in ``bench/fuzz.py`` (long runs). Set
``SYNCD_FUZZ_EXAMPLES`` to scale the number of examples (default 300 per
test). Server bugs found this way have regression tests at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
import zstandard
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    MEDIA_TYPE,
    STATUSES,
    DecodeError,
    ErrorCode,
    Limits,
    ProtocolError,
    ValidationError,
    decode_event,
    derive_dossier_id,
    pack,
    validate_dossier,
)
from protocol.batches import decode_sealed_batch, open_batch
from protocol.compression import compress
from protocol.documents import decode_doc_chunk, decode_doc_state, open_doc_chunk
from protocol.events import MUTABLE_FIELDS
from protocol.messages import (
    Ack,
    EnrollRequest,
    ErrorReply,
    Verdict,
    batch_digest,
    decode_ack,
    decode_cursor_request,
    decode_enroll_reply,
    decode_enroll_request,
    decode_envelope,
    decode_error,
    encode_enroll_request,
)
from protocol.sealing import batch_info, chunk_info, open_reply, seal_payload
from protocol.signing import (
    public_key_bytes,
    sign_enrollment,
    sign_envelope,
    sign_rotation,
    verify_enrollment,
    verify_envelope,
)
from syncd.app import make_app
from syncd.config import ServerConfig
from syncd.enrollment import create_token
from syncd.keys import ServerKeys
from syncd.store import SqliteStore
from tests.support.dossiers import make_dossier

T = TypeVar("T")

MAX_SEQ = 2**63 - 1
MAX_DOCUMENT = 200 * 1024 * 1024
AT = "2026-11-26T10:00:00+07:00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BATCHES, CURSOR, ENROLL, ROTATE = "/v1/batches", "/v1/cursor", "/v1/enroll", "/v1/rotate"
DOC_STATUS, DOC_CHUNK = "/v1/documents/status", "/v1/documents/chunk"
PATHS = (BATCHES, CURSOR, ENROLL, ROTATE, DOC_STATUS, DOC_CHUNK)
KIND_OF = {BATCHES: "batch", CURSOR: "cursor", ENROLL: "enroll", ROTATE: "rotate",
           DOC_STATUS: "doc_status", DOC_CHUNK: "doc_chunk"}
TABLES = ("agents", "tokens", "positions", "records", "dossiers", "alerts", "documents")
HEADERS = {"Content-Type": MEDIA_TYPE}
ERROR_CODES = frozenset(code.value for code in ErrorCode)

# Small limits make the "too large" paths cheap to reach; the rate limit is
# lifted so thousands of requests from one agent are all looked at.
CONFIG = ServerConfig(max_body_bytes=64 * 1024, max_inflated_bytes=256 * 1024,
                      max_records_per_batch=50, rate_limit_per_s=1e9, rate_limit_burst=1e9)
LIMITS: Limits = CONFIG.limits


# -- drawing ------------------------------------------------------------------

class Draw(Protocol):
    """Where generators get their choices from (Hypothesis or a seeded Random)."""

    def integer(self, lo: int, hi: int) -> int: ...

    def binary(self, lo: int, hi: int) -> bytes: ...

    def text(self, hi: int) -> str: ...

    def choice(self, options: Sequence[T]) -> T: ...


_ALPHABET = ("abcxyzABCXYZ0123456789 -_.:+@/\\\x00\x01\t\n\r\x1f\x7f\x85\xa0\u0300\u0301"
             "ễưđẠơ\u200b\u200e\ufeff\ufffd\u4e2d😀\U0010ffff")


class RandomDraw:
    """Choices from ``random.Random`` (fast; no shrinking)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def binary(self, lo: int, hi: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(lo, hi))

    def text(self, hi: int) -> str:
        return "".join(self.rng.choice(_ALPHABET) for _ in range(self.rng.randint(0, hi)))

    def choice(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]


class TapeDraw:
    """Choices read from a byte string that Hypothesis generates and shrinks.

    The generators look at the server's state (positions, held dossiers), so
    drawing straight from Hypothesis would change the shape of the draws
    between runs, which it refuses as flaky. One fixed-size tape keeps its
    view constant; shrinking it towards zeros picks the first option of
    every choice and the low end of every range. Past its end, choices come
    from a PRNG seeded with the tape.
    """

    def __init__(self, tape: bytes) -> None:
        self.tape, self.pos = tape, 0
        self.rng = random.Random(tape)

    def _raw(self, size: int) -> bytes:
        chunk = self.tape[self.pos:self.pos + size]
        self.pos += size
        return chunk + self.rng.randbytes(size - len(chunk))

    def integer(self, lo: int, hi: int) -> int:
        span = hi - lo + 1
        return lo + int.from_bytes(self._raw(span.bit_length() // 8 + 2)) % span

    def binary(self, lo: int, hi: int) -> bytes:
        return self._raw(self.integer(lo, hi))

    def text(self, hi: int) -> str:
        return "".join(self.choice(_ALPHABET) for _ in range(self.integer(0, hi)))

    def choice(self, options: Sequence[T]) -> T:
        return options[self.integer(0, len(options) - 1)]


# -- the world the generators know --------------------------------------------

@dataclass(frozen=True)
class Agent:
    key: Ed25519PrivateKey = field(repr=False)
    agent_id: str
    commune: str

    @property
    def public(self) -> bytes:
        return public_key_bytes(self.key)


@dataclass
class World:
    """The keys and agents of one server, and the model of its positions."""

    keys: ServerKeys
    agent: Agent  # the main agent, commune 01234
    other: Agent  # another enrolled agent, commune 05678
    newcomer: Agent  # enrolled with ``token``; the enrollment fuzz repeats it
    token: str
    expired_token: str
    stranger: Ed25519PrivateKey = field(repr=False)  # never enrolled
    wrong_sealing: X25519PrivateKey = field(repr=False)  # not a server key
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    dossier_ids: list[str] = field(default_factory=list)  # held, commune 01234
    foreign_ids: list[str] = field(default_factory=list)  # held, commune 05678
    captured: dict[bytes, tuple[Verdict, ...]] = field(default_factory=dict)
    replayable: list[bytes] = field(default_factory=list)

    @property
    def agents(self) -> dict[str, Agent]:
        return {a.agent_id: a for a in (self.agent, self.other, self.newcomer)}

    @property
    def key_ids(self) -> list[int]:
        return sorted(self.keys.sealing)

    def hwm(self, agent: Agent, epoch: int) -> int:
        return self.positions.get((agent.agent_id, epoch), 0)

    def wrong_public(self) -> bytes:
        return self.wrong_sealing.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Case:
    """One request. ``expect``: "ok" (must be 200), "refuse" (must not be 200),
    "gap" (must be a 409 gap), or "any" (only the general properties)."""

    path: str
    body: bytes
    label: str
    expect: str = "any"
    chunked: bool = False  # sent without a Content-Length


@dataclass
class Outcome:
    case: Case
    status: int = 0
    code: str | None = None
    message: bytes | None = None
    stored: bool = False
    problems: list[str] = field(default_factory=list)

    def report(self) -> str:
        body = self.case.body
        return (f"{self.case.label} ({self.case.expect}) POST {self.case.path} -> "
                f"{self.status} {self.code or ''}\n  " + "\n  ".join(self.problems)
                + f"\n  body ({len(body)} bytes): {body[:160].hex()}")


# -- building messages ----------------------------------------------------------

def envelope(key: Ed25519PrivateKey, kind: str, agent_id: str, signed: bytes) -> bytes:
    env = sign_envelope(key, kind, agent_id, signed)
    return pack([1, env.kind, env.agent_id, env.signed, env.signature])


def same(a: Any, b: Any) -> bool:
    """Equal and of the same type (1 == 1.0 == True in Python, not on the wire)."""
    return type(a) is type(b) and a == b


def tampered(old: dict[str, Any], new: dict[str, Any],
             free: dict[str, Callable[[Any], bool]] | None = None) -> bool:
    """Whether ``new`` differs from ``old`` where the server must notice:
    a bound field changed, a field added or removed, or a free field
    (not covered by the seal) given a value it must refuse."""
    free = free or {}
    for key in set(old) | set(new):
        if key in free:
            if key in new and not free[key](new[key]):
                return True
        elif key not in old or key not in new or not same(old[key], new[key]):
            return True
    return False


def _clock_ok(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _name_ok(value: Any) -> bool:
    return value is None or (isinstance(value, str) and len(value) <= 200)


SPECIAL_INTS = (0, 1, -1, 127, 128, 255, 256, 65536, 2**31 - 1, 2**31, 2**32, 2**53 + 1,
                MAX_SEQ - 1, MAX_SEQ, 2**63, 2**64 - 1, -(2**31), -(2**63))
SPECIAL_FLOATS = (0.0, -0.0, 0.5, 1.0, 1e308, -5e-324, float("inf"), float("-inf"),
                  float("nan"))
STRINGS = (
    "", " ", "\x00", "\t", "\r\n", "\x7f", "\u0301", "\u200b", "\ufeff", "received",
    "finished", "bogus", "direct", "online", "citizen", "cccd", "passport", "tax_code",
    "1.001193", "4.000000", "01234", "0123", "05678", "01234-261126-0001", "x-000000-0000",
    AT, "2026-11-26T10:00:00", "2026-11-26", "9999-12-31T23:59:59+23:59",
    "0001-01-01T00:00:00-23:59", "2026-02-30T10:00:00+07:00", "2026-11-26T10:00:00+24:00",
    "2026-11-26T10:00:00Z", "2026-11-26 10:00:00+07:00", "2026-W48-4T10:00+07:00",
    "00000000-0000-0000-0000-000000000000", "{12345678-1234-5678-1234-567812345678}",
    "urn:uuid:12345678-1234-5678-1234-567812345678", "12345678123456781234567812345678",
    "a" * 64, "A" * 64, "a" * 63, "0901234567", "+84901234567", "x@y.z", "@", "Nguyễn Văn A",
    "Nguye\u0302\u0303n", "😀" * 10, "a" * 201, "a" * 501, "a" * 2001, "a" * 4001, "\U0010ffff",
)
KEYS = (
    "t", "id", "status", "at", "by", "note", "changes", "dossier", "document", "code",
    "procedure_code", "procedure_name", "field", "channel", "applicant", "summary",
    "submitted_at", "received_at", "due_at", "fees", "documents", "processing_unit", "notes",
    "name", "type", "id_type", "id_number", "phone", "email", "address", "commune_code",
    "amount", "copies", "path", "sha256", "size", "", "x", "ID", "\x00",
)
EXTRA_KEYS = ("extra", "x", "", "V", "Kind", "sealed_", "signature", "agent_id")
# Single msgpack objects that do not decode to an event.
ODD_RECORDS = (
    b"\xa2\xff\xfe",  # str with invalid UTF-8
    b"\x82\xa1t\xa1x\xa1t\xa1y",  # duplicate map key
    b"\x81\x01\x02",  # int map key
    b"\x81\xc4\x01k\x01",  # bin map key
    b"\xca\x7f\xc0\x00\x00",  # float32 NaN
    b"\xd4\xff\x00",  # timestamp ext of a bad length
    b"\xd6\xff\x00\x00\x00\x01",  # a valid timestamp ext
    b"\xc7\x03\x05abc",  # ext 8
    b"\xc0", b"\xc2", b"\x91" * 17 + b"\xc0", b"\x91" * 1024 + b"\xc0",
)
# Bytes that are not exactly one msgpack object.
MALFORMED_RECORDS = (b"", b"\xc1", b"\x92\x01", b"\x01\x02", b"\xdd\xff\xff\xff\xff",
                     b"\xdb\xff\xff\xff\xff", b"\xdf\x00\x01\x00\x00", b"\xc4",
                     b"\x91" * 1025 + b"\xc0")


def random_uuid(d: Draw) -> str:
    return str(uuid.UUID(int=d.integer(0, 2**128 - 1)))


def random_key(d: Draw) -> Any:
    k = d.integer(0, 9)
    if k == 9:
        return d.integer(-5, 5)
    return d.text(8) if k == 8 else d.choice(KEYS)


def fragment(d: Draw) -> Any:
    """A valid-looking piece of a dossier, to put where it does not belong."""
    sample = make_dossier(random.Random(d.integer(0, 2**32 - 1)))
    return d.choice((sample["applicant"], sample["documents"], sample["documents"][0],
                     [{"name": "Lệ phí", "amount": 8000}], {"name": "Giấy", "sha256": "a" * 64,
                                                            "size": 10}, sample))


def value(d: Draw, w: World, depth: int = 0) -> Any:
    """Any msgpack value, biased towards the ones a validator gets wrong."""
    k = d.integer(0, 11 if depth < 3 else 7)
    if k == 0:
        return None
    if k == 1:
        return d.choice((True, False))
    if k == 2:
        return d.choice(SPECIAL_INTS)
    if k == 3:
        return d.integer(-(2**63), 2**64 - 1)
    if k == 4:
        return d.choice(SPECIAL_FLOATS)
    if k == 5:
        return d.choice(STRINGS)
    if k == 6:
        return d.text(24)
    if k == 7:
        return d.binary(0, 40)
    if k == 8:
        return [value(d, w, depth + 1) for _ in range(d.integer(0, 4))]
    if k == 9:
        return {random_key(d): value(d, w, depth + 1) for _ in range(d.integer(0, 4))}
    if k == 10:
        ids = w.dossier_ids + w.foreign_ids
        return d.choice(ids) if ids else random_uuid(d)
    return fragment(d)


def target_id(d: Draw, w: World) -> str:
    k = d.integer(0, 3)
    if k <= 1 and w.dossier_ids:
        return d.choice(w.dossier_ids)
    if k == 2 and w.foreign_ids:
        return d.choice(w.foreign_ids)
    return random_uuid(d)


def created_event(d: Draw, w: World, agent: Agent, seq: int) -> dict[str, Any]:
    dossier = make_dossier(random.Random(d.integer(0, 2**32 - 1)), seq)
    dossier["code"] = f"{agent.commune}-261126-{seq % 10**6:04d}"
    k = d.integer(0, 5)
    if k == 1:
        dossier["id"] = random_uuid(d)
    elif k == 2 and w.dossier_ids:
        dossier["id"] = d.choice(w.dossier_ids)  # a duplicate
    elif k == 3 and w.foreign_ids:
        dossier["id"] = d.choice(w.foreign_ids)  # another commune's
    if d.integer(0, 3) == 0:
        dossier["status"] = d.choice(STATUSES)
    return {"t": "created", "dossier": dossier}


def change_event(d: Draw, w: World) -> dict[str, Any]:
    kind = d.choice(("status", "fields", "document"))
    event: dict[str, Any] = {"t": kind, "id": target_id(d, w),
                             "at": d.choice((AT, "2026-11-27T08:15:00+07:00"))}
    if d.integer(0, 2) == 0:
        event["by"] = d.choice(("cán bộ A", "", "x" * 201))
    if kind == "status":
        event["status"] = d.choice(STATUSES)
        if d.integer(0, 2) == 0:
            event["note"] = d.choice(("bổ sung giấy tờ", "x" * 2001))
    elif kind == "fields":
        sample = make_dossier(random.Random(d.integer(0, 2**32 - 1)))
        name = d.choice(sorted(MUTABLE_FIELDS))
        event["changes"] = {name: sample[name] if name in sample else value(d, w)}
    else:
        document: dict[str, Any] = {"name": "Giấy tờ bổ sung", "copies": d.integer(1, 3)}
        if d.integer(0, 2) == 0:
            document |= {"sha256": hashlib.sha256(d.binary(0, 8)).hexdigest(),
                         "size": d.integer(0, 10**6)}
        event["document"] = document
    return event


def mutate_tree(d: Draw, w: World, obj: dict[str, Any], edits: int) -> None:
    """Edit ``obj`` in place at random depths: set, replace or delete."""
    for _ in range(edits):
        node: Any = obj
        while True:
            items = node.values() if isinstance(node, dict) else node
            children = [v for v in items if isinstance(v, dict | list)]
            if not children or d.integer(0, 2) == 0:
                break
            node = d.choice(children)
        op = d.integer(0, 2)
        if isinstance(node, dict):
            keys = list(node)
            if op == 0 and keys:
                del node[d.choice(keys)]
            else:
                node[d.choice(keys) if keys and op == 1 else random_key(d)] = value(d, w)
        elif op == 0 and node:
            node.pop(d.integer(0, len(node) - 1))
        elif op == 1 and node:
            node[d.integer(0, len(node) - 1)] = value(d, w)
        else:
            node.append(value(d, w))


def gen_record(d: Draw, w: World, agent: Agent, seq: int, *,
               wellformed: bool = False) -> tuple[bytes, bool]:
    """Record bytes, and whether they are exactly one msgpack object."""
    k = d.integer(0, 11 if wellformed else 13)
    if k <= 3:
        return pack(created_event(d, w, agent, seq)), True
    if k <= 5:
        return pack(change_event(d, w)), True
    if k <= 8:
        event = created_event(d, w, agent, seq) if d.integer(0, 1) else change_event(d, w)
        mutate_tree(d, w, event, d.integer(1, 3))
        return pack(event), True
    if k == 9:
        return pack(value(d, w)), True
    if k == 10:
        data = d.binary(0, 16)
        return bytes([0xC7, len(data), d.integer(0, 255)]) + data, True  # ext 8, any type
    if k == 11:
        return d.choice(ODD_RECORDS), True
    if k == 12:
        return d.choice(MALFORMED_RECORDS), False
    return d.binary(0, 16), False


def pick_epoch(d: Draw, w: World, agent: Agent) -> int:
    k = d.integer(0, 9)
    if k < 6:
        return 1
    if k < 8:
        return 2
    if k == 8:
        return d.choice(sorted({e for (a, e) in w.positions if a == agent.agent_id} | {1}))
    return d.choice((3, 2**31, 2**32 + 1, MAX_SEQ)) if d.integer(0, 1) else d.integer(3, MAX_SEQ)


@dataclass
class Draft:
    """A batch before signing: the signed map and what went into it."""

    agent: Agent
    fields: dict[str, Any]
    records: list[bytes]
    payload: bytes
    ok: bool  # a valid batch as built (records each one object, count within limits)

    @property
    def info(self) -> bytes:
        f = self.fields
        return batch_info(f["agent"], f["epoch"], f["first_seq"], f["count"])

    def signed(self) -> bytes:
        return pack(self.fields)

    def body(self) -> bytes:
        return envelope(self.agent.key, "batch", self.agent.agent_id, self.signed())

    def resigned(self, **changes: Any) -> bytes:
        return envelope(self.agent.key, "batch", self.agent.agent_id,
                        pack({**self.fields, **changes}))


def batch_fields(w: World, agent_id: str, commune: str, epoch: int, first_seq: int,
                 count: int, payload: bytes, *, key_id: int | None = None,
                 public: bytes | None = None, info: bytes | None = None,
                 agent_clock: str | None = None) -> dict[str, Any]:
    key_id = w.keys.current_id if key_id is None else key_id
    public = public or w.keys.sealing_public(key_id)
    sealed = seal_payload(payload, public, info or batch_info(agent_id, epoch, first_seq, count))
    return {"v": 1, "kind": "batch", "agent": agent_id, "commune": commune, "epoch": epoch,
            "first_seq": first_seq, "count": count, "codec": "zstd", "key_id": key_id,
            "sealed": sealed, "agent_clock": agent_clock}


def draft_batch(d: Draw, w: World, agent: Agent | None = None, *, gap: bool = False,
                wellformed: bool = False) -> Draft:
    agent = agent or w.agent
    epoch = pick_epoch(d, w, agent)
    hwm = w.hwm(agent, epoch)
    count = d.integer(1, 4)
    # Without a gap, sometimes overlapping what is held: replays and conflicts.
    first_seq = (hwm + 2 + d.choice((0, 1, 100, 10**9)) if gap
                 else d.integer(max(1, hwm - 3), hwm + 1))
    made = [gen_record(d, w, agent, first_seq + i, wellformed=wellformed) for i in range(count)]
    records = [r for r, _ in made]
    payload = compress(b"".join(records), level=d.choice((1, 3, 9, 19, -5)),
                       dict_id=d.choice((None, 0)))
    key_id = d.choice(w.key_ids)
    fields = batch_fields(w, agent.agent_id, agent.commune, epoch, first_seq, count, payload,
                          key_id=key_id, agent_clock=d.choice((None, AT, "not a time")))
    return Draft(agent, fields, records, payload, all(ok for _, ok in made))


def mutate_bytes(d: Draw, body: bytes) -> tuple[str, bytes]:
    if d.integer(0, 1):
        return "truncated", body[:d.integer(0, len(body) - 1)]
    data = bytearray(body)
    for _ in range(d.integer(1, 8)):
        bit = d.integer(0, len(data) * 8 - 1)
        data[bit // 8] ^= 1 << (bit % 8)
    return "bitflip", bytes(data)


def hostile_for(d: Draw, w: World, old: Any) -> Any:
    """A replacement for a field whose value was ``old``."""
    if d.integer(0, 3) == 0 or old is None or isinstance(old, bool):
        return value(d, w)
    if isinstance(old, int):
        return d.choice((old + 1, old - 1, 0, -1, MAX_SEQ, MAX_SEQ + 1, 2**64 - 1, -(2**63),
                         True, float(old), str(old), None, [old]))
    if isinstance(old, str):
        return d.choice((w.other.agent_id, w.other.commune, w.agent.agent_id, w.agent.commune,
                         "", old + "x", old.upper(), old + "\x00", old.encode(), None, 1, [old]))
    if isinstance(old, bytes):
        k = d.integer(0, 6)
        if k == 0:
            return old[:-1]
        if k == 1:
            return old + b"\x00"
        if k == 2:
            bit = d.integer(0, len(old) * 8 - 1)
            return old[:bit // 8] + bytes([old[bit // 8] ^ (1 << bit % 8)]) + old[bit // 8 + 1:]
        if k == 3:
            return old.decode("latin-1")
        return d.choice((b"", d.binary(0, 64), bytes(len(old))))
    return value(d, w)


def mutate_map(d: Draw, w: World, fields: dict[str, Any]) -> dict[str, Any]:
    new = dict(fields)
    for _ in range(d.integer(1, 3)):
        op = d.integer(0, 5)
        if op == 0 and new:
            del new[d.choice(list(new))]
        elif op == 1:
            new[d.choice(EXTRA_KEYS)] = value(d, w)
        else:
            key = d.choice(list(fields))
            new[key] = hostile_for(d, w, fields[key])
    return new


def envelope_variant(d: Draw, w: World, agent: Agent, kind: str,
                     signed: bytes) -> tuple[str, bytes]:
    """A broken outer envelope around a good signed part (all must be refused)."""
    good = sign_envelope(agent.key, kind, agent.agent_id, signed)
    sig = good.signature
    k = d.integer(0, 5)
    if k == 0:
        other = d.choice([x for x in ("batch", "cursor", "Batch", "", "batch\x00", "reply",
                                      "rotate", "doc_chunk", "doc_status", "enroll")
                          if x != kind])
        return "kind", envelope(agent.key, other, agent.agent_id, signed)
    if k == 1:
        other_id = d.choice([x for x in (w.agent.agent_id, w.other.agent_id, "ag-nobody",
                                         "syncd", agent.agent_id + "x",
                                         agent.agent_id.upper(), "", "a" * 65)
                             if x != agent.agent_id])
        return "agent", envelope(agent.key, kind, other_id, signed)
    if k == 2:
        version = d.choice((0, 2, -1, True, 1.0, "1", None, 2**64 - 1))
        return "version", pack([version, kind, agent.agent_id, signed, sig])
    if k == 3:
        shape = d.choice(([1, kind, agent.agent_id, signed],
                          [1, kind, agent.agent_id, signed, sig, b""],
                          {"v": 1, "kind": kind, "agent": agent.agent_id, "signed": signed,
                           "signature": sig},
                          [[1, kind, agent.agent_id, signed, sig]], []))
        return "shape", pack(shape)
    if k == 4:
        flipped = bytearray(sig)
        flipped[d.integer(0, 63)] ^= 1 << d.integer(0, 7)
        signature = d.choice((sig[:63], sig + b"\x00", bytes(64), bytes(flipped),
                              sig.decode("latin-1")))
        return "signature", pack([1, kind, agent.agent_id, signed, signature])
    parts: list[Any] = [1, kind, agent.agent_id, signed, sig]
    slot = d.integer(1, 3)
    parts[slot] = d.choice((parts[slot].encode() if isinstance(parts[slot], str)
                            else parts[slot].decode("latin-1"), 5, None, [parts[slot]]))
    return "types", pack(parts)


def signer_variant(d: Draw, w: World, agent: Agent) -> Ed25519PrivateKey:
    """A key that is not ``agent``'s."""
    return d.choice([k for k in (w.stranger, w.agent.key, w.other.key, w.newcomer.key,
                                 w.keys.identity) if k is not agent.key])


def random_body(d: Draw, w: World, path: str) -> tuple[str, bytes]:
    k = d.integer(0, 9)
    if k == 0:  # around and beyond the body limit, announced or chunked
        size = d.choice((CONFIG.max_body_bytes - 1, CONFIG.max_body_bytes,
                         CONFIG.max_body_bytes + 1, 2 * CONFIG.max_body_bytes))
        return d.choice(("big", "big-chunked")), (d.binary(1, 8) * size)[:size]
    if k <= 4:
        return "bytes", d.binary(0, 300)
    kind = KIND_OF[path]
    agent_id = d.choice((w.agent.agent_id, w.other.agent_id, "ag-nobody", ""))
    if k == 5:
        return "value", pack(value(d, w))
    if k in (6, 7):
        inner = {"v": 1, "kind": kind} | {random_key(d): value(d, w)
                                          for _ in range(d.integer(0, 6))}
        if k == 6:
            return "map", pack(inner)
        return "envelope", pack([1, kind, agent_id, pack(inner), d.binary(64, 64)])
    return "envelope-junk", pack([1, kind, agent_id, pack(value(d, w)), d.binary(0, 70)])


# -- generators: batches ----------------------------------------------------------

def gen_batch_valid(d: Draw, w: World) -> Case:
    draft = draft_batch(d, w, w.other if d.integer(0, 7) == 0 else w.agent)
    return Case(BATCHES, draft.body(), "batch/valid", "ok" if draft.ok else "any")


def gen_batch_wellformed(d: Draw, w: World) -> Case:
    draft = draft_batch(d, w, wellformed=True)
    return Case(BATCHES, draft.body(), "batch/records", "ok")


def gen_batch_gap(d: Draw, w: World) -> Case:
    draft = draft_batch(d, w, gap=True)
    return Case(BATCHES, draft.body(), "batch/gap", "gap" if draft.ok else "any")


def gen_batch_replay(d: Draw, w: World) -> Case:
    if not w.replayable:
        return gen_batch_valid(d, w)
    return Case(BATCHES, d.choice(w.replayable), "batch/replay", "ok")


def gen_batch_bytes(d: Draw, w: World) -> Case:
    draft = draft_batch(d, w)
    body = draft.body()
    how, mutated = mutate_bytes(d, body)
    expect = "refuse" if mutated != body else ("ok" if draft.ok else "any")
    return Case(BATCHES, mutated, f"batch/{how}", expect)


def gen_batch_fields(d: Draw, w: World) -> Case:
    draft = draft_batch(d, w)
    if d.integer(0, 3) == 0:
        how, body = envelope_variant(d, w, draft.agent, "batch", draft.signed())
        return Case(BATCHES, body, f"batch/envelope/{how}", "refuse")
    new = mutate_map(d, w, draft.fields)
    body = envelope(draft.agent.key, "batch", draft.agent.agent_id, pack(new))
    if tampered(draft.fields, new, {"agent_clock": _clock_ok}):
        return Case(BATCHES, body, "batch/fields", "refuse")
    return Case(BATCHES, body, "batch/fields-clock", "ok" if draft.ok else "any")


def gen_batch_resealed(d: Draw, w: World) -> Case:
    """Authentic (signed by the agent, sealed to the server) but hostile claims."""
    a = w.agent
    epoch = pick_epoch(d, w, a)
    hwm = w.hwm(a, epoch)
    count = d.integer(1, 4)
    records = [gen_record(d, w, a, hwm + 1 + i, wellformed=True)[0] for i in range(count)]
    payload = compress(b"".join(records))
    k = d.integer(0, 6)
    if k == 0:
        claimed = max(0, count + d.choice((-1, 1, 2, 100)))
        fields = batch_fields(w, a.agent_id, a.commune, epoch, hwm + 1, claimed, payload)
        label, expect = "count-mismatch", "refuse"
    elif k == 1:
        claimed = LIMITS.max_records + d.integer(1, 5)
        payload = compress(b"\xc0" * claimed)
        fields = batch_fields(w, a.agent_id, a.commune, epoch, hwm + 1, claimed, payload)
        label, expect = "oversize-count", "refuse"
    elif k == 2:
        claimed = d.choice((2**31, MAX_SEQ, MAX_SEQ - hwm + 1, 2**64 - 1))
        fields = batch_fields(w, a.agent_id, a.commune, epoch, hwm + 1, claimed, payload)
        label, expect = "huge-count", "refuse"
    elif k == 3:
        first_seq = d.choice((MAX_SEQ, MAX_SEQ - count + 1, MAX_SEQ - count + 2, 2**63,
                              2**64 - 1, hwm + 1))
        fields = batch_fields(w, a.agent_id, a.commune, epoch, first_seq, count, payload)
        label = "extreme-seq"
        if first_seq + count - 1 > MAX_SEQ:
            expect = "refuse"
        else:
            expect = "gap" if first_seq > hwm + 1 else "ok"
    elif k == 4:
        epoch, first_seq = d.choice(((0, 1), (-1, 1), (-(2**63), 1), (1, 0), (1, -1), (0, 0)))
        fields = batch_fields(w, a.agent_id, a.commune, epoch, first_seq, count, payload)
        label, expect = "non-positive", "refuse"
    elif k == 5:
        b = w.other
        agent_id, commune = d.choice(((b.agent_id, b.commune), (a.agent_id, b.commune),
                                      (b.agent_id, a.commune), (a.agent_id, "99999"),
                                      (a.agent_id, ""), ("ag-nobody", a.commune)))
        fields = batch_fields(w, agent_id, commune, epoch, hwm + 1, count, payload)
        label, expect = "claims-another", "refuse"
    else:
        epoch = d.choice((MAX_SEQ, 2**62, 2**32))
        first_seq = w.positions.get((a.agent_id, epoch), 0) + 1
        fields = batch_fields(w, a.agent_id, a.commune, epoch, first_seq, count, payload)
        label, expect = "extreme-epoch", "ok"
    return Case(BATCHES, envelope(a.key, "batch", a.agent_id, pack(fields)),
                f"batch/resealed/{label}", expect)


def _frame_layout(frame: bytes) -> tuple[int, int, int, int]:
    """(dict id offset, its size, content size offset, its size) of a zstd frame."""
    fhd = frame[4]
    single = (fhd >> 5) & 1
    pos = 5 + (0 if single else 1)
    did_size = (0, 1, 2, 4)[fhd & 3]
    fcs_size = (1 if single else 0, 2, 4, 8)[fhd >> 6]
    return pos, did_size, pos + did_size, fcs_size


def _patch(frame: bytes, pos: int, size: int, delta: int) -> bytes:
    old = int.from_bytes(frame[pos:pos + size], "little")
    new = ((old + delta) % (1 << 8 * size)).to_bytes(size, "little")
    return frame[:pos] + new + frame[pos + size:]


_BOMB: list[bytes] = []


def gen_batch_payload(d: Draw, w: World) -> Case:
    """The sealed payload replaced: foreign seals, broken frames, lying counts."""
    draft = draft_batch(d, w)
    key_id = draft.fields["key_id"]
    public, info = w.keys.sealing_public(key_id), draft.info
    joined = b"".join(draft.records)
    frame = compress(joined)
    k = d.integer(0, 12)
    expect = "refuse"
    if k == 0:
        label, sealed = "random-sealed", d.binary(0, 200)
    elif k == 1:
        label, sealed = "wrong-key", seal_payload(draft.payload, w.wrong_public(), info)
    elif k == 2:
        f = draft.fields
        other_info = d.choice((
            batch_info(f["agent"], f["epoch"] + 1, f["first_seq"], f["count"]),
            batch_info(f["agent"], f["epoch"], f["first_seq"] + 1, f["count"]),
            batch_info(f["agent"], f["epoch"], f["first_seq"], f["count"] + 1),
            batch_info(w.other.agent_id, f["epoch"], f["first_seq"], f["count"]),
            chunk_info(f["agent"], "a" * 64, 10, 0), b"", info + b"\x00"))
        label, sealed = "wrong-info", seal_payload(draft.payload, public, other_info)
    elif k == 3:
        other_id = d.choice([i for i in w.key_ids if i != key_id])
        label = "other-server-key"
        sealed = seal_payload(draft.payload, w.keys.sealing_public(other_id), info)
    else:
        if k == 4:
            label, payload = "not-zstd", d.binary(0, 100)
            if payload.startswith(ZSTD_MAGIC):
                expect = "any"
        elif k == 5:
            label, expect = "zstd-of-random", "any"
            payload = compress(d.binary(1, 100), dict_id=d.choice((None, 0)))
        elif k == 6:
            if not _BOMB:
                _BOMB.append(compress(b"\x00" * (LIMITS.max_inflated_bytes + 1), dict_id=0))
            label, payload = "bomb", _BOMB[0]
        elif k == 7:
            label = "no-content-size"
            payload = zstandard.ZstdCompressor(write_content_size=False).compress(joined)
        elif k == 8:
            label, payload = "empty-frame", compress(b"")
        elif k == 9:
            pos, size, _, _ = _frame_layout(frame)
            label, payload = "unknown-dictionary", _patch(frame, pos, size, d.choice((1, -1, 7)))
            expect = "refuse" if size else "any"
        elif k == 10:
            _, _, pos, size = _frame_layout(frame)
            label, payload = "lying-size", _patch(frame, pos, size, d.choice((1, -1, 1000)))
            expect = "refuse" if size else "any"
        elif k == 11:
            skippable = b"\x50\x2a\x4d\x18\x04\x00\x00\x00abcd"
            label, payload = d.choice((
                ("two-frames", frame + frame), ("trailing-byte", frame + b"\x00"),
                ("truncated-frame", frame[:d.integer(0, len(frame) - 1)]),
                ("skippable-first", skippable + frame), ("skippable-after", frame + skippable),
                ("skippable-only", skippable)))
            if label.startswith("skippable-") and label != "skippable-only":
                expect = "any"
        else:
            extra = gen_record(d, w, draft.agent, 0, wellformed=True)[0]
            expect = "refuse" if draft.ok else "any"  # malformed records may re-split
            label, payload = "count-mismatch", compress(
                joined + extra if d.integer(0, 1) or len(draft.records) == 1
                else b"".join(draft.records[1:]))
        sealed = seal_payload(payload, public, info)
    body = draft.resigned(sealed=sealed)
    return Case(BATCHES, body, f"batch/payload/{label}", expect)


def gen_batch_keys(d: Draw, w: World) -> Case:
    """Signed or sealed with the wrong keys."""
    a, b = w.agent, w.other
    k = d.integer(0, 7)
    if k == 1:
        draft_b = draft_batch(d, w, b)
        return Case(BATCHES, envelope(a.key, "batch", b.agent_id, draft_b.signed()),
                    "batch/keys/signs-as-other", "refuse")
    if k == 5:  # another agent signs, claiming our agent's records inside
        draft = draft_batch(d, w, a)
        return Case(BATCHES, envelope(b.key, "batch", b.agent_id, draft.signed()),
                    "batch/keys/other-claims-us", "refuse")
    if k == 6:
        draft = draft_batch(d, w, b)
        return Case(BATCHES, draft.body(), "batch/keys/other-valid",
                    "ok" if draft.ok else "any")
    draft = draft_batch(d, w, a)
    if k == 0:
        return Case(BATCHES, envelope(signer_variant(d, w, a), "batch", a.agent_id,
                                      draft.signed()), "batch/keys/foreign-signer", "refuse")
    if k == 2:
        sealed = seal_payload(draft.payload, w.wrong_public(), draft.info)
        return Case(BATCHES, draft.resigned(sealed=sealed), "batch/keys/sealed-to-stranger",
                    "refuse")
    if k == 3:
        key_id = draft.fields["key_id"]
        other_id = d.choice([i for i in w.key_ids if i != key_id])
        return Case(BATCHES, draft.resigned(key_id=other_id), "batch/keys/key-id-swap",
                    "refuse")
    if k == 4:
        return Case(BATCHES, draft.resigned(key_id=d.choice((0, 3, 99, MAX_SEQ))),
                    "batch/keys/unknown-key-id", "refuse")
    return Case(BATCHES, envelope(w.keys.identity, "reply", "syncd", draft.signed()),
                "batch/keys/server-reply", "refuse")


def gen_batch_random(d: Draw, w: World) -> Case:
    how, body = random_body(d, w, BATCHES)
    return Case(BATCHES, body, f"batch/random/{how}", "refuse", how == "big-chunked")


# -- generators: the other endpoints --------------------------------------------------

def signed_case(d: Draw, w: World, path: str, agent: Agent, fields: dict[str, Any],
                valid_expect: str, mutated_expect: Callable[[dict[str, Any]], str]) -> Case:
    """A signed request: valid, fields changed and re-signed, a broken envelope,
    bytes damaged, signed by another key, or random."""
    kind, label = KIND_OF[path], KIND_OF[path]
    signed = pack(fields)
    k = d.integer(0, 7)
    if k <= 1:
        return Case(path, envelope(agent.key, kind, agent.agent_id, signed), f"{label}/valid",
                    valid_expect)
    if k <= 3:
        new = mutate_map(d, w, fields)
        return Case(path, envelope(agent.key, kind, agent.agent_id, pack(new)),
                    f"{label}/fields", mutated_expect(new))
    if k == 4:
        how, body = envelope_variant(d, w, agent, kind, signed)
        return Case(path, body, f"{label}/envelope/{how}", "refuse")
    if k == 5:
        body = envelope(agent.key, kind, agent.agent_id, signed)
        how, mutated = mutate_bytes(d, body)
        return Case(path, mutated, f"{label}/{how}", "refuse" if mutated != body
                    else valid_expect)
    if k == 6:
        return Case(path, envelope(signer_variant(d, w, agent), kind, agent.agent_id, signed),
                    f"{label}/foreign-signer", "refuse")
    how, body = random_body(d, w, path)
    return Case(path, body, f"{label}/random/{how}", "refuse", how == "big-chunked")


def gen_cursor(d: Draw, w: World) -> Case:
    agent = w.other if d.integer(0, 5) == 0 else w.agent
    fields = {"v": 1, "kind": "cursor", "epoch": pick_epoch(d, w, agent),
              "agent_clock": d.choice((None, AT))}
    # Nothing is sealed: a changed epoch is another valid question.
    return signed_case(d, w, CURSOR, agent, fields, "ok", lambda _: "any")


def gen_doc_status(d: Draw, w: World) -> Case:
    sha = d.choice(("0" * 64, hashlib.sha256(d.binary(0, 8)).hexdigest()))
    fields = {"v": 1, "kind": "doc_status", "sha256": sha,
              "size": d.choice((0, 1, d.integer(0, MAX_DOCUMENT), MAX_DOCUMENT))}
    return signed_case(d, w, DOC_STATUS, w.agent, fields, "any", lambda _: "any")


def gen_doc_chunk(d: Draw, w: World) -> Case:
    a = w.agent
    data = d.binary(1, 200)
    sha = hashlib.sha256(data).hexdigest() if d.integer(0, 1) else d.choice((
        "0" * 64, hashlib.sha256(d.binary(0, 8)).hexdigest()))
    size = len(data) + d.choice((0, 0, 1, 1000, MAX_DOCUMENT - len(data)))
    offset = 0 if d.integer(0, 2) else d.integer(0, size - len(data))
    key_id = d.choice(w.key_ids)
    k = d.integer(0, 5)
    label, expect = "doc_chunk", "any"
    if k == 0:  # empty, or running past the document's end
        room = size - offset - len(data)
        data = d.choice((b"", data + bytes(room + 1) if room < 4096 else b""))
        label, expect = "doc_chunk/overrun", "refuse"
    sealed = seal_payload(data, w.keys.sealing_public(key_id),
                          chunk_info(a.agent_id, sha, size, offset))
    if k == 1:
        label, expect = "doc_chunk/foreign-seal", "refuse"
        sealed = d.choice((d.binary(0, 100), seal_payload(data, w.wrong_public(), chunk_info(
            a.agent_id, sha, size, offset)), seal_payload(data, w.keys.sealing_public(key_id),
                                                          chunk_info(w.other.agent_id, sha,
                                                                     size, offset))))
    fields = {"v": 1, "kind": "doc_chunk", "sha256": sha, "size": size, "offset": offset,
              "key_id": key_id, "sealed": sealed}
    if k <= 1:
        return Case(DOC_CHUNK, envelope(a.key, "doc_chunk", a.agent_id, pack(fields)), label,
                    expect)
    # Every field is bound by the seal (or checked before it is opened).
    return signed_case(d, w, DOC_CHUNK, a, fields, "any",
                       lambda new: "refuse" if tampered(fields, new) else "any")


def gen_rotate(d: Draw, w: World) -> Case:
    a = w.agent
    k = d.integer(0, 3)
    if k == 0:  # signed by the agent, but no proof of a new key
        new_key = d.choice((d.binary(32, 32), public_key_bytes(w.stranger), a.public,
                            d.binary(0, 40)))
        proof = d.choice((d.binary(64, 64), sign_rotation(w.stranger, w.other.agent_id),
                          sign_enrollment(w.stranger, "x"), value(d, w)))
        signed = pack({"v": 1, "kind": "rotate", "new_key": new_key, "proof": proof})
        return Case(ROTATE, envelope(a.key, "rotate", a.agent_id, signed), "rotate/bad-proof",
                    "refuse")
    if k == 1:  # a stranger proves its own key and asks to become the agent
        signed = pack({"v": 1, "kind": "rotate", "new_key": public_key_bytes(w.stranger),
                       "proof": sign_rotation(w.stranger, a.agent_id)})
        return Case(ROTATE, envelope(signer_variant(d, w, a), "rotate", a.agent_id, signed),
                    "rotate/hijack", "refuse")
    if k == 2:
        signed = pack({"v": 1, "kind": "rotate", "new_key": public_key_bytes(w.stranger),
                       "proof": sign_rotation(w.stranger, a.agent_id)})
        how, body = envelope_variant(d, w, w.newcomer, "rotate", signed)
        return Case(ROTATE, body, f"rotate/envelope/{how}", "refuse")
    how, body = random_body(d, w, ROTATE)
    return Case(ROTATE, body, f"rotate/random/{how}", "refuse", how == "big-chunked")


def gen_enroll(d: Draw, w: World) -> Case:
    key, token = w.newcomer.key, w.token
    fields = {"v": 1, "kind": "enroll", "token": token, "public_key": w.newcomer.public,
              "name": "PC fuzz", "proof": sign_enrollment(key, token)}
    k = d.integer(0, 6)
    if k == 0:  # the enrolled key repeats its request: the same answer
        return Case(ENROLL, pack(fields), "enroll/valid", "ok")
    if k == 1:
        name = d.choice((None, "", "x" * 200, "x" * 201, 5, b"x", d.text(30)))
        return Case(ENROLL, pack(fields | {"name": name}), "enroll/name",
                    "ok" if _name_ok(name) else "refuse")
    if k == 2:
        new = mutate_map(d, w, fields)
        return Case(ENROLL, pack(new), "enroll/fields",
                    "refuse" if tampered(fields, new, {"name": _name_ok}) else "ok")
    if k == 3:  # a good proof for a token that is unknown, expired or someone else's
        signer = d.choice((key, w.stranger, w.agent.key))
        other = d.choice((w.expired_token, "no-such-token", token + "x", token[:-1],
                          f"cs1.{w.keys.fingerprint}.{d.text(32)}", "x" * 129))
        other = d.choice((other, token)) if signer is not key else other
        request = EnrollRequest(other, public_key_bytes(signer), None,
                                sign_enrollment(signer, other))
        return Case(ENROLL, encode_enroll_request(request), "enroll/other-token-or-key",
                    "refuse")
    if k == 4:  # "any": the name is not covered by the proof, a flip there is harmless
        how, mutated = mutate_bytes(d, pack(fields))
        return Case(ENROLL, mutated, f"enroll/{how}", "any")
    how, body = random_body(d, w, ENROLL)
    return Case(ENROLL, body, f"enroll/random/{how}", "refuse", how == "big-chunked")


def gen_random(d: Draw, w: World) -> Case:
    path = d.choice(PATHS)
    how, body = random_body(d, w, path)
    return Case(path, body, f"random/{KIND_OF[path]}/{how}", "refuse", how == "big-chunked")


GENERATORS: tuple[tuple[Callable[[Draw, World], Case], int], ...] = (
    (gen_batch_valid, 8), (gen_batch_wellformed, 3), (gen_batch_gap, 2),
    (gen_batch_replay, 3), (gen_batch_bytes, 12), (gen_batch_fields, 12),
    (gen_batch_resealed, 7), (gen_batch_payload, 12), (gen_batch_keys, 7),
    (gen_batch_random, 4), (gen_cursor, 6), (gen_enroll, 6), (gen_doc_chunk, 5),
    (gen_doc_status, 3), (gen_rotate, 3), (gen_random, 4),
)
_WEIGHTED = [gen for gen, weight in GENERATORS for _ in range(weight)]


def generate_case(d: Draw, w: World) -> Case:
    """Any case, weighted towards batches (what ``bench/fuzz.py`` runs)."""
    return d.choice(_WEIGHTED)(d, w)


# -- the server under test and the checks --------------------------------------------

class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


_COUNTS = ("SELECT " + ", ".join(f"(SELECT count(*) FROM {t})" for t in TABLES)
           + ", total_changes()")


class Harness:
    """One server (app, store, keys) on loopback, its agents, and the checks."""

    def __init__(self, client: TestClient[Any, Any], store: SqliteStore, keys: ServerKeys,
                 errors: _Errors) -> None:
        self.client, self.store, self.keys, self.errors = client, store, keys, errors
        self.documents = store.path.parent / "documents"
        self.world: World

    @classmethod
    @asynccontextmanager
    async def running(cls, root: Path) -> AsyncIterator[Harness]:
        root.mkdir(parents=True, exist_ok=True)
        ServerKeys.create(root)
        ServerKeys.rotate(root)  # key 1 is old, key 2 current: both must open
        keys = ServerKeys.load(root)
        errors = _Errors()
        logger = logging.getLogger("syncd")
        logger.addHandler(errors)
        store = await SqliteStore.open(root / "syncd.db")
        try:
            async with TestClient(TestServer(make_app(CONFIG, store, keys))) as client:
                harness = cls(client, store, keys, errors)
                await harness._setup()
                yield harness
        finally:
            await store.close()
            logger.removeHandler(errors)

    async def _post(self, path: str, body: bytes) -> tuple[int, bytes]:
        resp = await self.client.post(path, data=body, headers=HEADERS)
        return resp.status, open_reply(await resp.read(), self.keys.identity_public)

    async def _enroll(self, key: Ed25519PrivateKey, commune: str, token: str) -> Agent:
        request = EnrollRequest(token, public_key_bytes(key), "PC", sign_enrollment(key, token))
        status, message = await self._post(ENROLL, encode_enroll_request(request))
        assert status == 200, decode_error(message)
        return Agent(key, decode_enroll_reply(message).agent_id, commune)

    async def _setup(self) -> None:
        fp = self.keys.fingerprint
        agent = await self._enroll(Ed25519PrivateKey.generate(), "01234",
                                   await create_token(self.store, "01234", None, 72, fp))
        other = await self._enroll(Ed25519PrivateKey.generate(), "05678",
                                   await create_token(self.store, "05678", None, 72, fp))
        token = await create_token(self.store, "09999", None, 72, fp)
        newcomer = await self._enroll(Ed25519PrivateKey.generate(), "09999", token)
        self.world = World(self.keys, agent, other, newcomer, token,
                           await create_token(self.store, "09999", None, -1, fp),
                           Ed25519PrivateKey.generate(), X25519PrivateKey.generate())
        draw = RandomDraw(random.Random(0))
        for who in (other, agent):  # some dossiers to refer to, in two communes
            records = [pack(created_event(draw, self.world, who, seq)) for seq in (1, 2, 3)]
            fields = batch_fields(self.world, who.agent_id, who.commune, 1, 1, 3,
                                  compress(b"".join(records)))
            case = Case(BATCHES, envelope(who.key, "batch", who.agent_id, pack(fields)),
                        "setup", "ok")
            outcome = await self.check(case)
            assert not outcome.problems, outcome.report()

    async def snapshot(self) -> dict[str, int]:
        [row] = await self.store.read(_COUNTS)
        counts = dict(zip((*TABLES, "changes"), row, strict=True))
        counts["files"] = len(os.listdir(self.documents)) if self.documents.exists() else 0
        return counts

    async def refresh_ids(self) -> None:
        rows = await self.store.read("SELECT id, commune_code FROM dossiers "
                                     "ORDER BY rowid DESC LIMIT 40")
        self.world.dossier_ids = [i for i, c in rows if c == self.world.agent.commune]
        self.world.foreign_ids = [i for i, c in rows if c != self.world.agent.commune]

    async def check(self, case: Case) -> Outcome:
        """Send ``case`` and check every property; problems are listed, not raised."""
        out = Outcome(case)
        before = await self.snapshot()
        logged = len(self.errors.records)
        resp = await self.client.post(case.path, data=_chunks(case.body) if case.chunked
                                      else case.body, headers=HEADERS)
        raw = await resp.read()
        after = await self.snapshot()
        out.status = status = resp.status
        changed = sorted(k for k in before if before[k] != after[k])
        out.stored = any(before[k] != after[k] for k in (*TABLES, "files"))
        problems = out.problems
        problems += [f"server logged an error: {r}" for r in self.errors.records[logged:]]
        if status != 200 and not 400 <= status < 500:
            problems.append(f"answered {status}")
        try:
            out.message = open_reply(raw, self.keys.identity_public)
        except ProtocolError as exc:
            problems.append(f"the reply is not signed by the server ({exc}): {raw[:200]!r}")
        if resp.content_type != MEDIA_TYPE:
            problems.append(f"content type {resp.content_type}")
        error = self._error(out) if status != 200 and out.message is not None else None
        if case.expect == "refuse" and status == 200:
            problems.append("accepted a body built to be refused")
        elif case.expect == "ok" and status != 200:
            problems.append("refused a valid request")
        elif case.expect == "gap" and out.code != ErrorCode.GAP:
            problems.append("expected a gap")
        if status != 200:  # a refusal stores nothing; but put_chunk registers the document
            allowed = {"documents", "files", "changes"} if (  # before it compares offsets
                case.path in (DOC_STATUS, DOC_CHUNK) and case.expect != "refuse") else set()
            problems += [f"{k} changed ({before[k]} -> {after[k]}) on a {status}"
                         for k in changed if k not in allowed]
        if out.message is None:
            return out
        try:
            if status == 200:
                await self._accepted(out, before, after)
            elif error is not None and error.code == ErrorCode.GAP:
                self._gap(out, error)
        except (ProtocolError, KeyError) as exc:
            problems.append(f"answered {status} but: {exc!r}")
        return out

    def _error(self, out: Outcome) -> ErrorReply | None:
        assert out.message is not None
        try:
            error = decode_error(out.message, LIMITS)
        except ProtocolError:
            if out.case.path == DOC_CHUNK and out.status == 409:  # the held offset
                with suppress(ProtocolError):
                    decode_doc_state(out.message, LIMITS)
                    out.code = "doc_state"
                    return None
            out.problems.append(f"a {out.status} without a protocol error: {out.message!r}")
            return None
        out.code = error.code
        if error.code not in ERROR_CODES:
            out.problems.append(f"unknown error code {error.code!r}")
        return error

    def _gap(self, out: Outcome, error: ErrorReply) -> None:
        env = decode_envelope(out.case.body, LIMITS)
        held = self.world.positions.get((env.agent_id, error.epoch or 0), 0)
        if error.acked_seq != held:
            out.problems.append(f"gap says position {error.acked_seq}, model says {held}")

    def _signer(self, out: Outcome, kind: str) -> tuple[Agent, Any]:
        env = decode_envelope(out.case.body, LIMITS)
        agent = self.world.agents[env.agent_id]
        if env.kind != kind:
            raise DecodeError(f"accepted a {env.kind!r} envelope on {out.case.path}")
        verify_envelope(env, agent.public)
        return agent, env

    async def _accepted(self, out: Outcome, before: dict[str, int],
                        after: dict[str, int]) -> None:
        assert out.message is not None
        path, message = out.case.path, out.message
        if path == BATCHES:
            await self._accepted_batch(out, before, after)
        elif path == CURSOR:
            agent, env = self._signer(out, "cursor")
            query = decode_cursor_request(env.signed, LIMITS)
            ack = decode_ack(message, LIMITS)
            held = self.world.positions.get((agent.agent_id, query.epoch), 0)
            if (ack.agent_id, ack.epoch, ack.acked_seq, ack.verdicts, ack.batch) != (
                    agent.agent_id, query.epoch, held, (), None):
                out.problems.append(f"cursor ack {ack} but model holds {held}")
        elif path == ENROLL:
            request = decode_enroll_request(out.case.body)
            verify_enrollment(request.public_key, request.token, request.proof)
            reply = decode_enroll_reply(message)
            if (request.token, request.public_key, reply.agent_id, reply.server_key) != (
                    self.world.token, self.world.newcomer.public,
                    self.world.newcomer.agent_id, self.keys.identity_public):
                out.problems.append(f"enrolled {reply} for an unexpected request")
            if before != after:
                out.problems.append("a repeated enrollment changed the store")
        elif path == DOC_CHUNK:
            agent, env = self._signer(out, "doc_chunk")
            sealed = decode_doc_chunk(env.signed, LIMITS)
            open_doc_chunk(sealed, self.keys.sealing[sealed.key_id], agent.agent_id)
            decode_doc_state(message, LIMITS)
        elif path == DOC_STATUS:
            self._signer(out, "doc_status")
            decode_doc_state(message, LIMITS)
        else:
            out.problems.append(f"{path} accepted a request the fuzz never makes valid")

    async def _accepted_batch(self, out: Outcome, before: dict[str, int],
                              after: dict[str, int]) -> None:
        """A 200: the batch must be authentic, and the ack and rows fit the model."""
        w, problems = self.world, out.problems
        agent, env = self._signer(out, "batch")
        sealed = decode_sealed_batch(env.signed, LIMITS)
        if (sealed.agent_id, sealed.commune_code) != (agent.agent_id, agent.commune):
            problems.append(f"accepted a batch claiming {sealed.agent_id}/{sealed.commune_code}"
                            f" from {agent.agent_id}/{agent.commune}")
        body = open_batch(sealed, self.keys.sealing[sealed.key_id], LIMITS)
        assert out.message is not None
        ack = decode_ack(out.message, LIMITS)
        digest = batch_digest(env)
        hwm = w.hwm(agent, body.epoch)
        # A conflict (a held seq with other bytes) stops the batch there: the
        # agent's numbering diverged, so nothing after it is applied.
        conflicts = [v.seq for v in ack.verdicts if v.code == "conflict"]
        if len(conflicts) > 1 or any(seq > hwm or seq != max(v.seq for v in ack.verdicts)
                                     for seq in conflicts):
            problems.append(f"conflict verdicts {conflicts}: at most one, held, and last")
        position = hwm if conflicts else max(hwm, body.last_seq)
        fresh = position - hwm
        delta = {k: after[k] - before[k] for k in before}
        if body.first_seq > hwm + 1:
            problems.append(f"accepted a batch starting at {body.first_seq} beyond {hwm} + 1")
        if delta["records"] != fresh:
            problems.append(f"stored {delta['records']} records, expected {fresh}")
        if not 0 <= delta["dossiers"] <= fresh:
            problems.append(f"{delta['dossiers']} new dossiers from {fresh} new records")
        expected = (agent.agent_id, body.epoch, position, digest,
                    self.keys.current_id, self.keys.sealing_public())
        got = (ack.agent_id, ack.epoch, ack.acked_seq, ack.batch, ack.sealing_key_id,
               ack.sealing_key)
        if got != expected:
            problems.append(f"ack {got} but expected {expected}")
        seqs = [v.seq for v in ack.verdicts]
        if seqs != sorted(set(seqs)) or any(not body.first_seq <= s <= body.last_seq
                                            for s in seqs):
            problems.append(f"verdicts for seqs {seqs} in {body.first_seq}..{body.last_seq}")
        for offset, record in enumerate(body.records):  # an undecodable new record is held
            seq = body.first_seq + offset  # with a verdict
            if seq > position or seq <= hwm:
                continue
            if not _decodes(record, agent, body.epoch, seq) and seq not in seqs:
                problems.append(f"record {seq} does not decode but got no verdict")
        if digest in w.captured:  # a replay: the same answer, nothing new
            if ack.verdicts != w.captured[digest]:
                problems.append(f"replay verdicts {ack.verdicts} != {w.captured[digest]}")
            if any(delta[k] for k in (*TABLES, "files")):
                problems.append(f"a replay stored something: {delta}")
        else:
            w.captured[digest] = ack.verdicts
            if len(w.replayable) < 400:
                w.replayable.append(out.case.body)
        w.positions[(agent.agent_id, body.epoch)] = position
        if delta["records"]:
            await self.refresh_ids()

    async def final_checks(self) -> list[str]:
        """The store agrees with the model; every stored dossier validates."""
        problems = []
        held = {(a, e): s for a, e, s in await self.store.read(
            "SELECT agent_id, epoch, acked_seq FROM positions") if s}
        model = {k: v for k, v in self.world.positions.items() if v}
        if held != model:
            problems.append(f"positions {held} != model {model}")
        for agent_id, epoch, count, low, high in await self.store.read(
                "SELECT agent_id, epoch, count(*), min(seq), max(seq) FROM records "
                "GROUP BY agent_id, epoch"):
            if (count, low, high) != (held.get((agent_id, epoch)), 1, count):
                problems.append(f"records of {agent_id}/{epoch} are not 1..position: "
                                f"{count} from {low} to {high}")
        agents = self.world.agents
        for data, agent_id, commune in await self.store.read(
                "SELECT data, agent_id, commune_code FROM dossiers"):
            dossier = json.loads(data)
            try:
                if validate_dossier(dossier, require_identity=True) != dossier:
                    problems.append(f"stored dossier is not normalised: {dossier}")
            except ValidationError as exc:
                problems.append(f"stored dossier does not validate: {exc}: {dossier}")
            if agents[agent_id].commune != commune:
                problems.append(f"dossier of {agent_id} stored under commune {commune}")
        return problems


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 16384):
        yield body[start:start + 16384]


def _decodes(record: bytes, agent: Agent, epoch: int, seq: int) -> bool:
    try:
        decode_event(record, derived_id=derive_dossier_id(agent.agent_id, epoch, seq))
    except (DecodeError, ValidationError):
        return False
    return True


# -- the tests -------------------------------------------------------------------------

EXAMPLES = int(os.environ.get("SYNCD_FUZZ_EXAMPLES", "300"))


def fuzz(scale: float = 1.0) -> Any:
    return settings(max_examples=max(1, int(EXAMPLES * scale)), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


TAPES = st.binary(min_size=1024, max_size=1024)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with Harness.running(tmp_path / "server") as harness:
        yield harness
        problems = await harness.final_checks()
    assert not problems, "\n".join(problems)


async def run(harness: Harness, case: Case) -> Outcome:
    outcome = await harness.check(case)
    assert not outcome.problems, outcome.report()
    return outcome


@fuzz()
@given(tape=TAPES)
async def test_random_bodies_on_every_endpoint(harness: Harness, tape: bytes) -> None:
    await run(harness, gen_random(TapeDraw(tape), harness.world))


@fuzz(1.5)
@given(tape=TAPES)
async def test_truncated_and_bit_flipped_batches_are_refused(
        harness: Harness, tape: bytes) -> None:
    d, w = TapeDraw(tape), harness.world
    draft = draft_batch(d, w)
    body = draft.body()
    how, mutated = mutate_bytes(d, body)
    if mutated != body:
        await run(harness, Case(BATCHES, mutated, f"batch/{how}", "refuse"))
    # ... while the batch they were made from is accepted.
    await run(harness, Case(BATCHES, body, "batch/original", "ok" if draft.ok else "any"))


@fuzz(1.5)
@given(tape=TAPES)
async def test_resigned_batches_with_hostile_fields(harness: Harness,
                                                    tape: bytes) -> None:
    d = TapeDraw(tape)
    gen = d.choice((gen_batch_fields, gen_batch_resealed))
    await run(harness, gen(d, harness.world))


@fuzz(1.5)
@given(tape=TAPES)
async def test_hostile_sealed_payloads(harness: Harness, tape: bytes) -> None:
    await run(harness, gen_batch_payload(TapeDraw(tape), harness.world))


@fuzz()
@given(tape=TAPES)
async def test_wrong_keys_are_refused(harness: Harness, tape: bytes) -> None:
    await run(harness, gen_batch_keys(TapeDraw(tape), harness.world))


@fuzz()
@given(tape=TAPES)
async def test_records_that_are_not_events_are_held_with_verdicts(
        harness: Harness, tape: bytes) -> None:
    d = TapeDraw(tape)
    gen = d.choice((gen_batch_wellformed, gen_batch_valid, gen_batch_gap))
    await run(harness, gen(d, harness.world))


@fuzz(0.5)
@given(tape=TAPES)
async def test_a_replayed_batch_gets_the_same_ack_and_stores_nothing(
        harness: Harness, tape: bytes) -> None:
    d, w = TapeDraw(tape), harness.world
    if w.replayable and d.integer(0, 2) == 0:  # an old one, after others moved on
        await run(harness, Case(BATCHES, d.choice(w.replayable), "batch/replay-old", "ok"))
    body = draft_batch(d, w, wellformed=True).body()
    first = await run(harness, Case(BATCHES, body, "batch/original", "ok"))
    assert first.message is not None
    for _ in range(2):
        again = await run(harness, Case(BATCHES, body, "batch/replay", "ok"))
        assert again.message is not None and not again.stored
        assert _without_time(decode_ack(again.message)) == _without_time(
            decode_ack(first.message))


def _without_time(ack: Ack) -> tuple[Any, ...]:
    return (ack.agent_id, ack.epoch, ack.acked_seq, ack.verdicts, ack.batch,
            ack.sealing_key_id, ack.sealing_key)


@fuzz()
@given(tape=TAPES)
async def test_enrollment_fuzz(harness: Harness, tape: bytes) -> None:
    await run(harness, gen_enroll(TapeDraw(tape), harness.world))


@fuzz()
@given(tape=TAPES)
async def test_cursor_fuzz(harness: Harness, tape: bytes) -> None:
    await run(harness, gen_cursor(TapeDraw(tape), harness.world))


@fuzz()
@given(tape=TAPES)
async def test_document_and_rotation_fuzz(harness: Harness, tape: bytes) -> None:
    d = TapeDraw(tape)
    gen = d.choice((gen_doc_chunk, gen_doc_chunk, gen_doc_status, gen_rotate))
    await run(harness, gen(d, harness.world))


@fuzz(2)
@given(tape=TAPES)
async def test_everything_mixed(harness: Harness, tape: bytes) -> None:
    await run(harness, generate_case(TapeDraw(tape), harness.world))


async def test_the_generators_reach_every_outcome(tmp_path: Path) -> None:
    """A seeded run of the mixed generator sees 200s, refusals, gaps and stores."""
    statuses, labels = set(), set()
    async with Harness.running(tmp_path / "server") as harness:
        draw = RandomDraw(random.Random(1))
        for _ in range(400):
            outcome = await run(harness, generate_case(draw, harness.world))
            statuses.add(outcome.status)
            labels.add(outcome.case.label.split("/")[0])
        assert not await harness.final_checks()
    assert {200, 400, 401, 403, 409, 413} <= statuses, statuses
    assert {"batch", "cursor", "enroll", "doc_chunk", "rotate", "random"} <= labels


# -- small-order Ed25519 keys ------------------------------------------------------------

# The identity point is an Ed25519 "public key" of order 1: with R = identity
# and S = 0, [S]B = R + [k]A holds for every message, and OpenSSL's verify
# does not refuse small-order keys. Whoever enrolls it (or rotates to it)
# gets an agent that anyone can sign for, without any private key.
WEAK_KEY = b"\x01" + bytes(31)
ANY_SIGNATURE = WEAK_KEY + bytes(32)
WEAK_KEY_BUG = ("BUG: /v1/enroll and /v1/rotate accept a small-order Ed25519 key (the identity "
                "point) with a universal proof; every request signed R=identity, S=0 then "
                "verifies as that agent")


async def test_enrollment_refuses_a_small_order_key(tmp_path: Path) -> None:
    async with Harness.running(tmp_path / "server") as harness:
        token = await create_token(harness.store, "04444", None, 72, harness.keys.fingerprint)
        request = EnrollRequest(token, WEAK_KEY, "PC", ANY_SIGNATURE)
        status, message = await harness._post(ENROLL, encode_enroll_request(request))
        if status == 200:  # what it opens: a batch nobody signed is stored
            agent_id = decode_enroll_reply(message).agent_id
            record = pack({"t": "status", "id": str(uuid.UUID(int=1)), "status": "finished",
                           "at": AT})
            fields = batch_fields(harness.world, agent_id, "04444", 1, 1, 1, compress(record))
            forged, reply = await harness._post(BATCHES, pack([1, "batch", agent_id,
                                                               pack(fields), ANY_SIGNATURE]))
            assert (forged, decode_ack(reply).acked_seq) == (200, 1)
    assert 400 <= status < 500


async def test_rotation_refuses_a_small_order_key(tmp_path: Path) -> None:
    async with Harness.running(tmp_path / "server") as harness:
        a = harness.world.agent
        signed = pack({"v": 1, "kind": "rotate", "new_key": WEAK_KEY, "proof": ANY_SIGNATURE})
        status, _ = await harness._post(ROTATE, envelope(a.key, "rotate", a.agent_id, signed))
        if status == 200:  # from now on anyone can sign as the agent
            cursor = pack({"v": 1, "kind": "cursor", "epoch": 1, "agent_clock": None})
            forged, _ = await harness._post(CURSOR, pack([1, "cursor", a.agent_id, cursor,
                                                          ANY_SIGNATURE]))
            assert forged == 200
    assert 400 <= status < 500


# -- a client that hangs up ----------------------------------------------------------------

async def test_a_client_hanging_up_mid_body_is_not_a_server_error(tmp_path: Path) -> None:
    async with Harness.running(tmp_path / "server") as harness:
        server = harness.client.server
        for path in (BATCHES, ENROLL):
            _, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(f"POST {path} HTTP/1.1\r\nHost: syncd\r\nContent-Type: {MEDIA_TYPE}\r\n"
                         "Content-Length: 1000\r\n\r\n".encode() + bytes(10))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()
            await writer.wait_closed()
        for _ in range(100):  # until the server has seen both hang-ups (or 2 s)
            if len(harness.errors.records) >= 2:
                break
            await asyncio.sleep(0.02)
        assert harness.errors.records == [], harness.errors.records[0]
        assert await harness.final_checks() == []
