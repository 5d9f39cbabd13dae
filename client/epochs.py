"""Moving records to a new epoch: re-identifying what they create.

A restored (or cloned) data directory numbers new records with seqs the
server already holds for other records. When the server reveals this (a
``conflict`` verdict, or an ack above everything this queue ever had), the
agent keeps what the server holds of its own and moves the rest to a new
epoch (:meth:`client.queue.Queue.move_to_new_epoch`).

A ``created`` record whose dossier id was derived from its old (epoch, seq)
would name, on the server, the dossier the *other* record at that seq
created. So a moved dossier takes the derived id of its new position, and
every later moved event about it follows; the queue remembers the old id so
that ``update`` with the id the officer was given still works. The official
code printed on the receipt is content and does not change.
"""

from __future__ import annotations

from dataclasses import replace

from protocol import (
    DecodeError,
    DossierCreated,
    ValidationError,
    decode_event,
    derive_dossier_id,
    encode_event,
)

__all__ = ["Reidentify"]


class Reidentify:
    """The ``rewrite`` for :meth:`client.queue.Queue.move_to_new_epoch`."""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.renamed: dict[str, str] = {}

    def __call__(self, plaintext: bytes, old_epoch: int, old_seq: int, new_epoch: int,
                 new_seq: int) -> tuple[bytes, tuple[str, str] | None]:
        old_derived = derive_dossier_id(self.agent_id, old_epoch, old_seq)
        try:
            event = decode_event(plaintext, derived_id=old_derived)
        except (DecodeError, ValidationError):
            return plaintext, None  # moved as it is; the server will judge it
        if isinstance(event, DossierCreated):
            if not event.derived_id:
                return plaintext, (event.dossier_id, event.dossier_id)  # an id of its own
            new_id = derive_dossier_id(self.agent_id, new_epoch, new_seq)
            self.renamed[old_derived] = new_id
            dossier = dict(event.dossier, id=new_id)
            return encode_event(DossierCreated(dossier, derived_id=True)), (old_derived, new_id)
        new_id = self.renamed.get(event.dossier_id)
        if new_id is None:
            return plaintext, None
        return encode_event(replace(event, dossier_id=new_id)), None
