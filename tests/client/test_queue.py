"""The encrypted queue on real SQLite files."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from client.errors import QueueCorrupt, SetupError
from client.queue import Queue

KEY = bytes(range(32))
AGENT = "ag-test"


async def open_queue(tmp_path: Path, key: bytes = KEY, agent: str = AGENT) -> Queue:
    return await Queue.open(tmp_path / "queue.db", key, agent, create=True)


async def append(queue: Queue, *plaintexts: bytes) -> list[int]:
    _, seqs = await queue.append(lambda *_: [(p, None) for p in plaintexts])
    return seqs


async def test_seq_is_contiguous_and_records_read_back(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    assert await append(queue, b"a", b"b") == [1, 2]
    assert await append(queue, b"c") == [3]
    pending = await queue.read_pending(max_records=10, max_bytes=1 << 20)
    assert (pending.first_seq, pending.records, pending.damaged) == (1, (b"a", b"b", b"c"), None)
    assert await queue.verify() == 3
    await queue.close()
    await queue.close()  # idempotent


async def test_settings_are_wal_and_full(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    await append(queue, b"x")
    await queue.close()
    with sqlite3.connect(tmp_path / "queue.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_ack_moves_forward_only_and_limits_what_is_read(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    await append(queue, b"1", b"2", b"3", b"4")
    await queue.apply_ack(1, 3, [(2, "invalid_record", "bad")], "now")
    await queue.apply_ack(1, 1, [], "later")  # an old ack arriving late
    status = await queue.status()
    assert (status.acked_seq, status.pending, status.refused) == (3, 1, 1)
    pending = await queue.read_pending(max_records=10, max_bytes=1 << 20)
    assert (pending.first_seq, pending.records) == (4, (b"4",))
    await queue.close()


async def test_batch_respects_byte_budget_but_always_sends_one(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    await append(queue, b"x" * 100, b"y" * 100, b"z" * 100)
    pending = await queue.read_pending(max_records=10, max_bytes=150)
    assert pending.records == (b"x" * 100,)
    pending = await queue.read_pending(max_records=10, max_bytes=10)
    assert pending.records == (b"x" * 100,)
    await queue.close()


@pytest.mark.parametrize("column", ["ciphertext", "nonce", "chain"])
async def test_altered_record_is_named_and_never_read(tmp_path: Path, column: str) -> None:
    queue = await open_queue(tmp_path)
    await append(queue, b"one", b"two", b"three", b"four")
    await queue.close()
    with sqlite3.connect(tmp_path / "queue.db") as db:
        [value] = db.execute(f"SELECT {column} FROM records WHERE seq = 3").fetchone()
        db.execute(f"UPDATE records SET {column} = ? WHERE seq = 3",
                   (bytes([value[0] ^ 0x80]) + value[1:],))
    queue = await Queue.open(tmp_path / "queue.db", KEY, AGENT)
    with pytest.raises(QueueCorrupt) as info:
        await queue.verify()
    assert info.value.seq == 3
    pending = await queue.read_pending(max_records=10, max_bytes=1 << 20)
    assert pending.records == (b"one", b"two")
    assert pending.damaged is not None and pending.damaged.seq == 3
    await queue.close()


async def test_swapped_and_deleted_records_are_detected(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    await append(queue, b"one", b"two", b"three")
    await queue.close()
    with sqlite3.connect(tmp_path / "queue.db") as db:
        rows = {seq: (n, c, h) for seq, n, c, h in
                db.execute("SELECT seq, nonce, ciphertext, chain FROM records")}
        db.execute("UPDATE records SET nonce = ?, ciphertext = ?, chain = ? WHERE seq = 1",
                   rows[2])
        db.execute("UPDATE records SET nonce = ?, ciphertext = ?, chain = ? WHERE seq = 2",
                   rows[1])
    queue = await Queue.open(tmp_path / "queue.db", KEY, AGENT)
    with pytest.raises(QueueCorrupt) as info:
        await queue.verify()
    assert info.value.seq == 1
    await queue.close()
    with sqlite3.connect(tmp_path / "queue.db") as db:
        db.execute("UPDATE records SET nonce = ?, ciphertext = ?, chain = ? WHERE seq = 1",
                   rows[1])
        db.execute("UPDATE records SET nonce = ?, ciphertext = ?, chain = ? WHERE seq = 2",
                   rows[2])
        db.execute("DELETE FROM records WHERE seq = 2")
    queue = await Queue.open(tmp_path / "queue.db", KEY, AGENT)
    with pytest.raises(QueueCorrupt) as info:
        await queue.verify()
    assert info.value.seq == 2
    await queue.close()


async def test_wrong_key_or_agent_cannot_read(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    await append(queue, b"secret")
    await queue.close()
    queue = await Queue.open(tmp_path / "queue.db", os.urandom(32), AGENT)
    with pytest.raises(QueueCorrupt):
        await queue.verify()
    await queue.close()
    with pytest.raises(SetupError):
        await Queue.open(tmp_path / "queue.db", KEY, "ag-other")


async def test_missing_database_is_a_setup_error(tmp_path: Path) -> None:
    with pytest.raises(SetupError):
        await Queue.open(tmp_path / "nope.db", KEY, AGENT)


async def test_no_plaintext_in_any_file(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    marker = "Giàng Seo Páo 0912345678".encode()
    await append(queue, b"applicant " + marker)
    # Look while the queue is still open (WAL file present) and after closing.
    for _ in range(2):
        for path in tmp_path.iterdir():
            assert marker not in path.read_bytes(), path.name
            assert b"Gi" + "àng".encode() not in path.read_bytes(), path.name
        await queue.close()


async def test_erased_ciphertext_leaves_no_residue_on_disk(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    await append(queue, b"first dossier " * 20, b"second dossier " * 20)
    with sqlite3.connect(tmp_path / "queue.db") as db:
        ciphertexts = [row[0] for row in db.execute("SELECT ciphertext FROM records")]
    await queue.apply_ack(1, 2, [], "now", "2026-01-01T00:00:00+00:00")
    await queue.apply_ack(1, 2, [], "now", "2026-05-01T00:00:00+00:00")  # server time moves on
    assert await queue.erase_acknowledged(90) == 2
    assert await queue.verify() == 2  # the chain still holds
    for path in tmp_path.iterdir():  # the queue is still open: WAL included
        data = path.read_bytes()
        for ciphertext in ciphertexts:
            assert ciphertext[:32] not in data, path.name
    await queue.close()


async def test_retention_follows_the_server_clock_not_the_pc(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    await append(queue, b"a", b"b", b"c")
    await queue.apply_ack(1, 2, [], "2001-01-01T00:00:00+07:00", "2026-11-01T00:00:00+00:00")
    assert await queue.erase_acknowledged(90) == 0  # only 0 days old by server time
    await queue.apply_ack(1, 3, [], "2001-01-01T00:00:00+07:00", "2027-03-01T00:00:00+00:00")
    assert await queue.erase_acknowledged(90) == 2  # seqs 1-2 are now 120 days old
    assert [seq for seq, _ in await queue.iter_plaintexts()] == [3]
    await queue.close()


async def test_moving_to_a_new_epoch_keeps_the_held_prefix_and_renumbers_the_rest(
        tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    await append(queue, b"1", b"2", b"3", b"4", b"5")
    await queue.apply_ack(1, 2, [], "now")
    seen: list[tuple[bytes, int, int, int, int]] = []

    def rewrite(plaintext: bytes, old_epoch: int, old_seq: int, new_epoch: int,
                new_seq: int) -> tuple[bytes, None]:
        seen.append((plaintext, old_epoch, old_seq, new_epoch, new_seq))
        return plaintext + b"'", None

    assert await queue.move_to_new_epoch(1, 3, rewrite) == 2
    assert seen == [(b"4", 1, 4, 2, 1), (b"5", 1, 5, 2, 2)]
    status = await queue.status()
    assert (status.epoch, status.last_seq, status.acked_seq) == (2, 2, 0)
    pending = await queue.read_pending(max_records=10, max_bytes=1 << 20)
    assert (pending.epoch, pending.first_seq, pending.records) == (2, 1, (b"4'", b"5'"))
    assert await queue.verify() == 5  # epoch 1 keeps 1..3, epoch 2 holds 2
    assert await append(queue, b"6") == [3]
    # A second call for the old epoch (another process got there first) moves nothing.
    assert await queue.move_to_new_epoch(1, 3, rewrite) == 0
    await queue.close()


async def test_a_damaged_record_stops_the_move_and_changes_nothing(tmp_path: Path) -> None:
    queue = await open_queue(tmp_path)
    await append(queue, b"1", b"2", b"3")
    await queue.close()
    with sqlite3.connect(tmp_path / "queue.db") as db:
        db.execute("UPDATE records SET ciphertext = randomblob(length(ciphertext)) WHERE seq = 3")
    queue = await open_queue(tmp_path)
    with pytest.raises(QueueCorrupt):
        await queue.move_to_new_epoch(1, 1, lambda p, *_: (p, None))
    status = await queue.status()
    assert (status.epoch, status.last_seq) == (1, 3)
    await queue.close()


async def test_reidentified_dossiers_keep_answering_to_the_id_first_given(
        tmp_path: Path) -> None:
    from client.epochs import Reidentify
    from protocol import (
        DossierCreated,
        StatusChanged,
        decode_event,
        derive_dossier_id,
        encode_event,
    )
    from tests.support.dossiers import make_dossiers

    queue = await open_queue(tmp_path)
    dossiers = make_dossiers(2, seed=5)
    own_id = "0b6f1c52-4cb5-4ad6-9a57-3bd3a1c0b8a1"

    def build(numbers: list[int], epoch: int, first: int) -> list[tuple[bytes, str]]:
        derived = derive_dossier_id(AGENT, epoch, first)
        dossiers[0].update(id=derived, code="01234-261126-0001", status="received")
        dossiers[1].update(id=own_id, code="01234-261126-0002", status="received")
        return [(encode_event(DossierCreated(dossiers[0], derived_id=True)), derived),
                (encode_event(DossierCreated(dossiers[1])), own_id)]

    await queue.append(build)
    first_id = derive_dossier_id(AGENT, 1, 1)
    change = StatusChanged(first_id, "processing", "2026-11-26T10:00:00+07:00")
    await append(queue, encode_event(change))

    assert await queue.move_to_new_epoch(1, 0, Reidentify(AGENT)) == 3
    new_id = derive_dossier_id(AGENT, 2, 1)
    assert await queue.resolve_dossier(first_id) == new_id
    assert await queue.resolve_dossier(new_id) == new_id
    assert await queue.resolve_dossier(own_id) == own_id
    assert await queue.resolve_dossier(derive_dossier_id(AGENT, 9, 9)) is None
    records = [plaintext for _, plaintext in await queue.iter_plaintexts()]
    created = decode_event(records[0], derived_id=new_id)
    assert isinstance(created, DossierCreated) and created.derived_id
    assert {k: v for k, v in created.dossier.items() if k != "id"} == {
        k: v for k, v in decode_event(
            encode_event(DossierCreated(dossiers[0], derived_id=True)),
            derived_id=first_id).dossier.items() if k != "id"}
    assert decode_event(records[1]).dossier_id == own_id  # an id of its own stays
    moved_change = decode_event(records[2])
    assert isinstance(moved_change, StatusChanged) and moved_change.dossier_id == new_id
    await queue.close()
