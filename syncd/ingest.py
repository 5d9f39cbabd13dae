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

import hashlib
from datetime import UTC, datetime

from protocol import (
    Ack,
    BatchBody,
    DecodeError,
    DossierCreated,
    ErrorCode,
    Heartbeat,
    ValidationError,
    Verdict,
    apply_event,
    decode_event,
    derive_dossier_id,
)

from .errors import RequestError, StoreError
from .store import AgentRow, Store, Txn

__all__ = ["ingest_batch", "read_cursor", "utc_now"]


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


async def _apply_new(txn: Txn, agent: AgentRow, epoch: int, seq: int, data: bytes, now: str
                     ) -> tuple[tuple[str, str] | None, str | None]:
    """Apply one new record; return (verdict or None, dossier id)."""
    try:
        event = decode_event(data, derived_id=derive_dossier_id(agent.agent_id, epoch, seq))
    except (DecodeError, ValidationError) as exc:
        return (str(ErrorCode.INVALID_RECORD), str(exc)[:500]), None
    current = await txn.dossier(event.dossier_id)
    if isinstance(event, DossierCreated):
        if current is not None:
            return (str(ErrorCode.DUPLICATE_DOSSIER),
                    "a dossier with this id already exists"), event.dossier_id
    elif current is None or current[2] != agent.commune_code:
        return (str(ErrorCode.UNKNOWN_DOSSIER), "no such dossier for this commune"), \
            event.dossier_id
    try:
        state = apply_event(current[0] if current else None, event)
    except ValidationError as exc:
        return (str(ErrorCode.INVALID_RECORD), str(exc)[:500]), event.dossier_id
    owner = current[1] if current else agent.agent_id
    await txn.put_dossier(state, owner, agent.commune_code, now)
    return None, event.dossier_id


async def ingest_batch(store: Store, agent: AgentRow, body: BatchBody,
                       digest: bytes, now: str | None = None) -> Ack:
    """Apply ``body`` from ``agent`` (already authenticated) and return the ack.

    Raises:
        RequestError: 409 ``gap`` carrying the server's position.
    """
    now = now or utc_now()
    epoch = body.epoch
    verdicts: list[Verdict] = []
    async with store.write() as txn:
        await txn.lock("agent", agent.agent_id)  # the same batch at two processes: once
        hwm = await txn.position(agent.agent_id, epoch)
        if body.first_seq > hwm + 1:
            raise RequestError(409, ErrorCode.GAP,
                               f"batch starts at {body.first_seq}; server holds up to {hwm}",
                               epoch=epoch, acked_seq=hwm)
        for offset, data in enumerate(body.records):
            seq = body.first_seq + offset
            digest_record = hashlib.sha256(data).digest()
            if seq <= hwm:
                stored = await txn.record(agent.agent_id, epoch, seq)
                if stored is None:  # a position without its record: the store is damaged
                    raise StoreError(f"record {seq} missing below position {hwm}")
                if stored.hash != digest_record:
                    verdicts.append(Verdict(seq, ErrorCode.CONFLICT,
                                            "same seq already held with different content"))
                    await txn.add_alert(
                        ErrorCode.CONFLICT, agent.agent_id, epoch, seq,
                        "record resent with different content; stored record kept",
                        hashlib.sha256(b"conflict" + agent.agent_id.encode() +
                                       epoch.to_bytes(8) + seq.to_bytes(8) +
                                       digest_record).digest(), now)
                    # The agent's records from here on are not the ones held
                    # (a restored or cloned queue): apply none of them, so an
                    # event never lands on the dossier another record created.
                    break
                if stored.verdict_code is not None:
                    verdicts.append(Verdict(seq, stored.verdict_code,
                                            stored.verdict_message or ""))
                continue
            verdict, dossier_id = await _apply_new(txn, agent, epoch, seq, data, now)
            await txn.insert_record(agent.agent_id, epoch, seq, digest_record, data, now,
                                    verdict, dossier_id)
            if verdict is not None:
                verdicts.append(Verdict(seq, *verdict))
            hwm = seq
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
