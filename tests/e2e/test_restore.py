"""Epochs after a restore: an old copy of the agent's data directory put back.

Restoring a backup of the data directory is a realistic mistake. The restored
queue's sequence numbers (and the dossier ids derived from them) were already
used, on the server, by records the backup never saw. The agent must notice
that the server knows more than it has, move to a new epoch and resend what
the server lacks there: nothing lost, nothing merged into the wrong dossier.

1. restore, then new work: new dossiers and status changes made in the
   restored copy land once each, on the right dossiers; the originals keep
   their own history; an id printed by ``add`` before the move still works;
2. restore, nothing new: sync-now alone moves to epoch 2, and dossiers added
   afterwards never collide with the originals;
3. controls: a normal add/sync sequence, and one whose acks were lost (the
   server ahead of the agent's acked_seq but not of its queue), stay in
   epoch 1.

All through real ``syncd serve`` and ``sync-agent`` processes on loopback.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from tests.support.dossiers import make_dossiers
from tests.support.procs import Server, agent, agent_status, enroll_agent, wait_until
from tests.support.proxy import LossyProxy

Dossier = dict[str, Any]


# --------------------------------------------------------------------------- helpers


def add(agent_dir: Path, dossiers: list[Dossier], tmp_path: Path) -> list[str]:
    """``sync-agent add`` the dossiers; the ids it printed, in order."""
    path = tmp_path / "input.json"
    path.write_text(json.dumps(dossiers, ensure_ascii=False), encoding="utf-8")
    ids = agent("add", "--data-dir", str(agent_dir), str(path)).stdout.split()
    assert len(ids) == len(dossiers)
    return ids


def update(agent_dir: Path, dossier_id: str, status: str) -> None:
    agent("update", "--data-dir", str(agent_dir), dossier_id, "--status", status)


def sync_now(agent_dir: Path, timeout_s: int = 60) -> None:
    result = agent("sync-now", "--data-dir", str(agent_dir), "--timeout", str(timeout_s),
                   check=False)
    assert result.returncode == 0, f"sync-now exited {result.returncode}: {result.stderr}"


def backup(agent_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "backup"
    shutil.copytree(agent_dir, copy)
    return copy


def restore(agent_dir: Path, copy: Path) -> None:
    shutil.rmtree(agent_dir)
    shutil.copytree(copy, agent_dir)


def by_id(dossiers: list[Dossier]) -> dict[str, Dossier]:
    out = {d["id"]: d for d in dossiers}
    assert len(out) == len(dossiers), "the server lists a dossier id twice"
    return out


def applicant_key(dossier: Dossier) -> tuple[str, str]:
    return dossier["applicant"]["id_number"], dossier["applicant"]["name"]


def find_by_content(held: dict[str, Dossier], sent: Dossier) -> Dossier:
    """The one dossier on the server with ``sent``'s applicant, checked field for field."""
    matches = [d for d in held.values() if applicant_key(d) == applicant_key(sent)]
    assert len(matches) == 1, f"{len(matches)} dossiers on the server for {applicant_key(sent)}"
    [stored] = matches
    for key, value in sent.items():
        if key == "applicant":
            for sub, sub_value in value.items():
                assert stored["applicant"][sub] == sub_value, (key, sub)
        else:
            assert stored[key] == value, key
    return stored


def distinct_applicants(*groups: list[Dossier]) -> None:
    keys = [applicant_key(d) for group in groups for d in group]
    assert len(set(keys)) == len(keys), "test data: applicants must differ"


def assert_settled(server: Server, agent_dir: Path, epoch: int) -> dict[str, Any]:
    """The agent is in ``epoch`` with nothing waiting; the server agrees; verify passes."""
    status = agent_status(agent_dir)
    assert status["epoch"] == epoch, status
    assert status["pending"] == 0, status
    assert status["acked_seq"] == status["last_seq"], status
    [row] = server.agents()
    assert (row["epoch"], row["acked_seq"]) == (epoch, status["acked_seq"]), (row, status)
    verify = agent("verify", "--data-dir", str(agent_dir), check=False)
    assert verify.returncode == 0, f"verify exited {verify.returncode}: {verify.stderr}"
    return status


class BatchAckLoss(LossyProxy):
    """A LossyProxy that loses only the answers to ``POST /v1/batches``: the server
    commits the batch, the agent never hears the ack (other requests pass)."""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        request_line = b""

        async def upstream() -> None:
            nonlocal request_line
            while data := await reader.read(65536):
                if data.startswith((b"GET ", b"POST ", b"PUT ", b"HEAD ")):
                    request_line = data.split(b"\r\n", 1)[0]
                self.forwarded_requests += 1
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if request_line.startswith(b"POST /v1/batches") and self.responses_to_drop > 0:
                    self.responses_to_drop -= 1
                    self.dropped += 1
                    return  # committed on the server; lost on the way back
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for w in (writer, up_writer):
                w.close()
                self._writers.discard(w)
            self._tasks.difference_update(tasks)


# --------------------------------------------------------------------------- 1. new work


def test_restore_then_new_work_lands_once_on_the_right_dossiers(
        server: Server, agent_dir: Path, tmp_path: Path) -> None:
    originals = make_dossiers(8, seed=1701)
    fresh = make_dossiers(3, seed=1702)
    distinct_applicants(originals, fresh)

    # The original timeline: 4 dossiers synced, a backup, 4 more and a status change.
    first_ids = add(agent_dir, originals[:4], tmp_path)
    sync_now(agent_dir)
    assert len(server.dossiers()) == 4
    copy = backup(agent_dir, tmp_path)
    later_ids = add(agent_dir, originals[4:], tmp_path)
    update(agent_dir, first_ids[0], "processing")
    sync_now(agent_dir)
    before = by_id(server.dossiers())
    original_ids = first_ids + later_ids
    assert sorted(before) == sorted(original_ids)
    assert before[first_ids[0]]["status"] == "processing"

    # The restored copy knows only the first 4 dossiers; it takes new work.
    restore(agent_dir, copy)
    printed = add(agent_dir, fresh, tmp_path)
    update(agent_dir, first_ids[1], "finished")  # synced before the backup
    update(agent_dir, printed[0], "rejected")  # a new dossier, by the id add printed
    sync_now(agent_dir)

    after = by_id(server.dossiers())
    assert len(after) == 11, sorted(after)
    # The originals: unchanged but for their own status changes.
    for dossier_id in original_ids:
        expected = dict(before[dossier_id])
        if dossier_id == first_ids[1]:
            expected["status"] = "finished"
        assert after[dossier_id] == expected, dossier_id
    assert after[first_ids[0]]["status"] == "processing"  # the lost timeline's change stays
    # The new dossiers: each once, as added, none of them an original.
    stored = [find_by_content(after, sent) for sent in fresh]
    assert not {d["id"] for d in stored} & set(original_ids)
    assert [d["status"] for d in stored] == ["rejected", "received", "received"]
    assert {d["commune_code"] for d in stored} == {"01234"}
    assert len({d["code"] for d in after.values()}) == 11
    status = assert_settled(server, agent_dir, epoch=2)

    # An id printed before the move still names the new dossier.
    update(agent_dir, printed[1], "returned")
    sync_now(agent_dir)
    final = by_id(server.dossiers())
    assert len(final) == 11
    assert find_by_content(final, fresh[1])["status"] == "returned"
    assert find_by_content(final, fresh[0])["status"] == "rejected"
    for dossier_id in original_ids:
        assert final[dossier_id] == after[dossier_id], dossier_id
    assert assert_settled(server, agent_dir, epoch=2)["last_seq"] > status["last_seq"]


# --------------------------------------------------------------------------- 2. nothing new


def test_restore_with_nothing_new_moves_to_a_new_epoch_and_collides_with_nothing(
        server: Server, agent_dir: Path, tmp_path: Path) -> None:
    originals = make_dossiers(6, seed=1801)
    fresh = make_dossiers(2, seed=1802)
    distinct_applicants(originals, fresh)

    add(agent_dir, originals[:3], tmp_path)
    sync_now(agent_dir)
    copy = backup(agent_dir, tmp_path)
    add(agent_dir, originals[3:], tmp_path)
    sync_now(agent_dir)
    before = by_id(server.dossiers())
    assert len(before) == 6

    restore(agent_dir, copy)
    sync_now(agent_dir)
    status = agent_status(agent_dir)
    assert (status["epoch"], status["pending"]) == (2, 0), status
    assert by_id(server.dossiers()) == before

    add(agent_dir, fresh, tmp_path)
    sync_now(agent_dir)
    after = by_id(server.dossiers())
    assert len(after) == 8, sorted(after)
    for dossier_id, dossier in before.items():
        assert after[dossier_id] == dossier, dossier_id
    stored = [find_by_content(after, sent) for sent in fresh]
    assert not {d["id"] for d in stored} & set(before)
    assert [d["status"] for d in stored] == ["received", "received"]
    assert_settled(server, agent_dir, epoch=2)


# --------------------------------------------------------------------------- 3. controls


def test_normal_add_and_sync_stay_in_epoch_one(server: Server, agent_dir: Path,
                                               tmp_path: Path) -> None:
    dossiers = make_dossiers(5, seed=1901)
    ids = add(agent_dir, dossiers[:3], tmp_path)
    sync_now(agent_dir)
    assert agent_status(agent_dir)["epoch"] == 1
    ids += add(agent_dir, dossiers[3:], tmp_path)
    update(agent_dir, ids[0], "processing")
    sync_now(agent_dir)
    sync_now(agent_dir)  # nothing waits: asking the server must not move the epoch
    held = by_id(server.dossiers())
    assert sorted(held) == sorted(ids)
    for dossier_id, sent in zip(ids, dossiers, strict=True):
        assert find_by_content(held, sent)["id"] == dossier_id
    assert [held[i]["status"] for i in ids] == ["processing"] + ["received"] * 4
    assert assert_settled(server, agent_dir, epoch=1)["last_seq"] == 6
    assert server.alerts() == []


def test_lost_acks_are_not_mistaken_for_a_restore(server: Server, tmp_path: Path) -> None:
    """The server holds records whose ack the agent never heard: it is ahead of
    the agent's acked_seq, but not of its queue. Not a restore: epoch 1 stays."""
    dossiers = make_dossiers(5, seed=2001)
    with BatchAckLoss(server.port) as proxy:
        agent_dir = enroll_agent(server, tmp_path / "agent", server_url=proxy.url)
        ids = add(agent_dir, dossiers[:3], tmp_path)
        proxy.drop_next(10_000)
        lost = agent("sync-now", "--data-dir", str(agent_dir), "--timeout", "2", check=False)
        assert lost.returncode == 3, lost.stderr
        assert proxy.dropped >= 1
        wait_until(lambda: len(server.dossiers()) == 3, timeout_s=10,
                   what="the server to hold the batch whose ack was lost")
        status = agent_status(agent_dir)
        assert (status["epoch"], status["acked_seq"], status["last_seq"]) == (1, 0, 3), status

        proxy.drop_next(0)
        wait_until(lambda: proxy.responses_to_drop == 0, timeout_s=5, what="the proxy to heal")
        ids += add(agent_dir, dossiers[3:], tmp_path)
        sync_now(agent_dir)
    held = by_id(server.dossiers())
    assert sorted(held) == sorted(ids)
    for dossier_id, sent in zip(ids, dossiers, strict=True):
        assert find_by_content(held, sent)["id"] == dossier_id
    assert assert_settled(server, agent_dir, epoch=1)["last_seq"] == 5
    assert server.alerts() == []
