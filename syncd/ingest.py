"""Applying a verified batch: one transaction, a cumulative ack, verdicts.

For records of one (agent, epoch), with the server's position ``hwm``:

* ``first_seq > hwm + 1``: a gap; nothing is written, the answer carries ``hwm``.
* ``seq <= hwm``: already held. Same SHA-256 → nothing changes (a replay);
  the stored verdict, if any, is repeated. Different content → ``conflict``
  verdict and an alert; the stored record and dossier stay as they were.
* ``seq == hwm + 1``: stored and the position advances. A record that does
  not decode or does not fit the dossier is stored quarantined with a
  verdict; it never blocks the records after it.

The ack is built from committed state only, so a repeated batch gets the
same answer.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime

from protocol import (
    Ack,
    BatchBody,
    DecodeError,
    DossierCreated,
    ErrorCode,
    Event,
    Heartbeat,
    ValidationError,
    Verdict,
    apply_event,
    decode_event,
    derive_dossier_id,
)

from .errors import RequestError, StoreError
from .store import AgentRow, HeldDossier, NewRecord, Store

__all__ = ["ingest_batch", "read_cursor", "utc_now"]


_DECODE_SLICE = 8  # records decoded between two turns of the event loop


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _decode(agent_id: str, epoch: int, seq: int, data: bytes) -> Event | tuple[str, str]:
    """Record bytes to an event, or the verdict refusing them (pure: done
    before the transaction, so no lock is held while it runs)."""
    try:
        return decode_event(data, derived_id=derive_dossier_id(agent_id, epoch, seq))
    except (DecodeError, ValidationError) as exc:
        return str(ErrorCode.INVALID_RECORD), str(exc)[:500]


def _apply(agent: AgentRow, event: Event, dossiers: dict[str, HeldDossier | None]
           ) -> tuple[str, str] | None:
    """Apply ``event`` to ``dossiers`` (this batch's view); return its verdict, if refused."""
    current = dossiers.get(event.dossier_id)
    if isinstance(event, DossierCreated):
        if current is not None:
            return str(ErrorCode.DUPLICATE_DOSSIER), "a dossier with this id already exists"
    elif current is None or current.commune_code != agent.commune_code:
        return str(ErrorCode.UNKNOWN_DOSSIER), "no such dossier for this commune"
    try:
        state = apply_event(current.state if current else None, event)
    except ValidationError as exc:
        return str(ErrorCode.INVALID_RECORD), str(exc)[:500]
    dossiers[event.dossier_id] = HeldDossier(state, current.owner if current else agent.agent_id,
                                             agent.commune_code)
    return None


async def ingest_batch(store: Store, agent: AgentRow, body: BatchBody,
                       digest: bytes, now: str | None = None) -> Ack:
    """Apply ``body`` from ``agent`` (already authenticated) and return the ack.

    A handful of statements per batch, whatever its size: the position, the
    records held in the batch's range and the dossiers its records touch are
    read together (the dossiers locked), and each table is written in one
    statement.

    Raises:
        RequestError: 409 ``gap`` carrying the server's position.
    """
    now = now or utc_now()
    epoch, first = body.epoch, body.first_seq
    hashes = [hashlib.sha256(data).digest() for data in body.records]
    # Decoded before the transaction, so this CPU work overlaps another batch's
    # commit instead of holding the store (a replayed record is decoded for nothing).
    decoded: list[Event | tuple[str, str]] = []
    for seq, data in enumerate(body.records, start=first):
        decoded.append(_decode(agent.agent_id, epoch, seq, data))
        if len(decoded) % _DECODE_SLICE == 0:
            await asyncio.sleep(0)  # let a transaction waiting on the loop go on
    verdicts: list[Verdict] = []
    touched = {e.dossier_id for e in decoded if not isinstance(e, tuple)}
    last = first + len(body.records) - 1
    async with store.write() as txn:
        await txn.lock("agent", agent.agent_id)  # the same batch at two processes: once
        view = await txn.batch_view(agent.agent_id, epoch, first, last, touched)
        hwm, held = view.position, view.held
        if first > hwm + 1:
            raise RequestError(409, ErrorCode.GAP,
                               f"batch starts at {first}; server holds up to {hwm}",
                               epoch=epoch, acked_seq=hwm)
        for seq in range(first, min(hwm, last) + 1):
            stored = held.get(seq)
            if stored is None:  # a position without its record: the store is damaged
                raise StoreError(f"record {seq} missing below position {hwm}")
            if stored.hash != hashes[seq - first]:
                verdicts.append(Verdict(seq, ErrorCode.CONFLICT,
                                        "same seq already held with different content"))
                await txn.add_alert(
                    ErrorCode.CONFLICT, agent.agent_id, epoch, seq,
                    "record resent with different content; stored record kept",
                    hashlib.sha256(b"conflict" + agent.agent_id.encode() +
                                   epoch.to_bytes(8) + seq.to_bytes(8) +
                                   hashes[seq - first]).digest(), now)
                # The agent's records from here on are not the ones held (a
                # restored or cloned queue): apply none of them, so an event
                # never lands on the dossier another record created.
                last = hwm
                break
            if stored.verdict_code is not None:
                verdicts.append(Verdict(seq, stored.verdict_code, stored.verdict_message or ""))
        if last > hwm:
            fresh = decoded[hwm + 1 - first:last + 1 - first]
            dossiers: dict[str, HeldDossier | None] = dict(view.dossiers)
            changed: dict[str, None] = {}
            rows: list[NewRecord] = []
            for seq, event in enumerate(fresh, start=hwm + 1):
                dossier_id = None
                if isinstance(event, tuple):
                    verdict: tuple[str, str] | None = event
                else:
                    dossier_id = event.dossier_id
                    verdict = _apply(agent, event, dossiers)
                    if verdict is None:
                        changed[dossier_id] = None
                if verdict is not None:
                    verdicts.append(Verdict(seq, *verdict))
                code, message = verdict or (None, None)
                rows.append(NewRecord(agent.agent_id, epoch, seq, hashes[seq - first],
                                      body.records[seq - first], now, code, message, dossier_id))
            await txn.insert_records(rows)
            await txn.put_dossiers([d for i in changed if (d := dossiers[i]) is not None], now)
            hwm = last
        await txn.set_position(agent.agent_id, epoch, hwm, now)
        await txn.touch_agent(agent.agent_id, now, body.heartbeat, body.agent_clock)
    return Ack(agent.agent_id, epoch, hwm, tuple(verdicts), digest, now)


async def read_cursor(store: Store, agent: AgentRow, epoch: int,
                      heartbeat: Heartbeat | None = None, agent_clock: str | None = None) -> Ack:
    now = utc_now()
    async with store.write() as txn:
        hwm = await txn.position(agent.agent_id, epoch)
        await txn.touch_agent(agent.agent_id, now, heartbeat, agent_clock)
    return Ack(agent.agent_id, epoch, hwm, (), None, now)
