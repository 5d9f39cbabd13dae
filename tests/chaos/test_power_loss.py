"""Power cuts under the queue's append path, on a simulated disk.

The real :class:`client.queue.Queue` runs on :mod:`tests.support.crashvfs` (a
SQLite VFS that loses, tears and reorders unsynced sectors at a power cut; see
its docstring for the model and what it leaves out). A *chain* is one queue
living through a series of cuts, every choice drawn from one seed:

1. open the queue on the disk image the last cut left (SQLite recovers the
   WAL), check that it reads back exactly what the previous check saw, and arm
   a cut at a random VFS write/sync call (1..``MAX_OPS``) from now;
2. append realistic dossier records (new dossiers with official codes, status
   changes, sometimes a document), one to several records per append, until
   the cut falls; the append during which it fell has not returned;
3. write the image to real files and open them with the default connection
   (aiosqlite): ``verify`` must pass; every record of every append that
   returned must be there, unchanged; the unreturned append is there whole or
   not at all (records, dossier index, document, code counters), and nothing
   else is.

With ``synchronous=NORMAL`` (a WAL commit is then not synced) the same chain
must lose returned records: the negative control shows the check can fail.
A failure names the seed and cut, and the command that replays it; the
replay is deterministic in the I/O sequence and the fates of sectors (record
nonces and WAL salts are random, so bytes differ).
"""

from __future__ import annotations

import hashlib
import random
import shutil
import sqlite3
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from client.errors import QueueCorrupt
from client.queue import Queue
from protocol.dossier import STATUSES
from protocol.events import DossierCreated, StatusChanged, derive_dossier_id, encode_event
from tests.support.crashvfs import ApswConnection, CrashDisk, CrashVFS, SimFile, connector
from tests.support.dossiers import make_dossier

KEY = bytes(range(32))
AGENT = "ag-power"
COMMUNE = "02647"
DB_NAME = "queue.db"
SIM_PATH = Path("/crashvfs") / DB_NAME  # the name on the simulated disk
MAX_OPS = 400  # a cut falls within this many write/truncate/sync calls of arming
CHECKPOINT_PAGES = (16, 100, 1000)  # wal_autocheckpoint, drawn per reopen
CUTS_PER_CHAIN = 25
SYNC_LEVELS = {"FULL": 2, "NORMAL": 1, "OFF": 0}


@dataclass
class Batch:
    """One append call, as drawn; ``seqs`` and ``plaintexts`` once ``build`` ran."""

    dossiers: list[dict[str, Any]]
    days: list[str]
    status_changes: list[StatusChanged]
    documents: list[tuple[str, int]]
    seqs: list[int] = field(default_factory=list)
    plaintexts: list[bytes] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    def build(self, numbers: list[int], epoch: int, first_seq: int
              ) -> list[tuple[bytes, str | None]]:
        """As the agent's ``add`` does: codes from the counters, ids from the seq."""
        records: list[tuple[bytes, str | None]] = []
        for seq, (dossier, day, number) in enumerate(
                zip(self.dossiers, self.days, numbers, strict=True), start=first_seq):
            dossier["code"] = f"{COMMUNE}-{day}-{number:04d}"
            dossier["id"] = derive_dossier_id(AGENT, epoch, seq)
            records.append((encode_event(DossierCreated(dossier, derived_id=True)), dossier["id"]))
        records += [(encode_event(event), None) for event in self.status_changes]
        self.seqs = list(range(first_seq, first_seq + len(records)))
        self.plaintexts = [plaintext for plaintext, _ in records]
        self.created = [dossier_id for _, dossier_id in records if dossier_id is not None]
        return records


class ChainBroken(Exception):
    """The queue left by a cut does not open or verify: its chain ends there."""


@dataclass
class Tally:
    """Figures over all cuts; ``problems`` are the failures, each replayable."""

    cuts: int = 0
    appends: int = 0  # appends that returned
    records: int = 0  # records of appends that returned
    lost: int = 0  # records of returned appends missing or changed after a cut
    verify_failures: int = 0
    unreturned_kept: int = 0  # cut appends whose records survived whole
    unreturned_dropped: int = 0
    broken_chains: int = 0  # ended early: the queue did not open or verify
    disk: Counter[str] = field(default_factory=Counter)  # sector and size fates
    problems: list[str] = field(default_factory=list)


class Chain:
    """One queue through a series of power cuts, every choice from ``seed``."""

    def __init__(self, seed: int, workdir: Path, *, synchronous: str | None = None,
                 sector_size: int = 512) -> None:
        self.seed = seed
        self.workdir = workdir
        self.synchronous = synchronous
        self.sector_size = sector_size
        self.rng = random.Random(seed)
        self.image: dict[str, bytes] = {}  # the disk as the last cut left it
        self.truth: dict[int, bytes] = {}  # seq -> plaintext, as the last check saw
        self.codes: Counter[str] = Counter()  # day -> last code number, as saved
        self.documents: set[str] = set()
        self.dossier_ids: list[str] = []
        self.drawn = 0

    def replay(self, cut: int) -> str:
        option = f" --synchronous {self.synchronous}" if self.synchronous else ""
        return (f"seed {self.seed} cut {cut} (replay: .venv/bin/python bench/power_cuts.py "
                f"--seed {self.seed} --cuts {cut} --per-chain {cut} "
                f"--sector-size {self.sector_size}{option})")

    def draw(self) -> Batch:
        rng = self.rng
        new = rng.choice((0, 1, 1, 1, 2, 3, 5)) if self.dossier_ids else rng.randint(1, 3)
        dossiers = [make_dossier(rng, self.drawn + i) for i in range(new)]
        self.drawn += new
        changes = [StatusChanged(dossier_id, rng.choice(STATUSES), "2026-11-20T10:00:00+07:00",
                                 "cán bộ một cửa")
                   for dossier_id in rng.sample(self.dossier_ids,
                                                min(len(self.dossier_ids),
                                                    rng.choice((0, 0, 1, 2))))]
        if not dossiers and not changes:
            changes = [StatusChanged(rng.choice(self.dossier_ids), "processing",
                                     "2026-11-20T10:00:00+07:00")]
        documents = []
        if rng.random() < 0.25:
            body = rng.randbytes(64)
            documents.append((hashlib.sha256(body).hexdigest(), rng.randrange(1, 1 << 20)))
        days = [d["received_at"][2:4] + d["received_at"][5:7] + d["received_at"][8:10]
                for d in dossiers]
        return Batch(dossiers, days, changes, documents)

    async def run(self, cuts: int, tally: Tally) -> None:
        """Up to ``cuts`` cuts; fewer if the queue stops opening or verifying."""
        for number in range(1, cuts + 1):
            try:
                await self.cut(number, tally)
            except ChainBroken:
                tally.broken_chains += 1
                return

    async def cut(self, number: int, tally: Tally) -> None:
        """Open the last image, append until the power goes, check what is left."""
        disk = CrashDisk(self.image, seed=self.rng.getrandbits(64),
                         sector_size=self.sector_size)
        returned: list[Batch] = []
        opened: list[ApswConnection] = []
        with CrashVFS(disk) as vfs:
            on_disk = connector(vfs, synchronous=self.synchronous,
                                wal_autocheckpoint=self.rng.choice(CHECKPOINT_PAGES))

            async def connect(path: Path) -> ApswConnection:
                opened.append(await on_disk(path))
                return opened[-1]

            queue = await Queue.open(SIM_PATH, KEY, AGENT, create=True, connect=connect)
            try:
                self._check_settings(opened[0], number)
                if dict(await queue.iter_plaintexts()) != self.truth:
                    tally.problems.append(f"{self.replay(number)}: reopened on the simulated "
                                          "disk, the queue differs from the last check")
                disk.arm(self.rng.randint(1, MAX_OPS))
                while True:
                    batch = self.draw()
                    try:
                        await queue.append(batch.build, batch.days, batch.documents)
                    except Exception as exc:
                        if not disk.cut:
                            raise AssertionError(f"{self.replay(number)}: append failed "
                                                 "with the power on") from exc
                    if disk.cut:
                        cut_batch = batch
                        break
                    returned.append(batch)
            finally:
                await queue.close()
        tally.cuts += 1
        tally.appends += len(returned)
        tally.records += sum(len(b.seqs) for b in returned)
        tally.disk.update(disk.stats)
        assert disk.image is not None
        self.image = disk.image
        directory = self.workdir / f"seed-{self.seed}-cut-{number}"
        disk.export(directory)
        try:
            await self.check(directory, returned, cut_batch, number, tally)
        finally:
            shutil.rmtree(directory)

    def _check_settings(self, db: ApswConnection, number: int) -> None:
        """The queue asked for WAL and FULL, and got WAL (and FULL unless overridden)."""
        mode = db.raw.execute("PRAGMA journal_mode").fetchall()[0][0]
        level = db.raw.execute("PRAGMA synchronous").fetchall()[0][0]
        expected = ("wal", SYNC_LEVELS[self.synchronous or "FULL"], ["FULL"])
        assert (mode, level, db.synchronous_requested) == expected, self.replay(number)

    async def check(self, directory: Path, returned: list[Batch], unreturned: Batch,
                    number: int, tally: Tally) -> None:
        """What the real files hold after the cut, against what was appended.

        Losses are counted against the returned appends; the dossier index,
        documents and code counters are checked against the appends that
        survived (each append is all or nothing), so a loss is reported once.

        Raises:
            ChainBroken: the queue does not open or verify; the chain cannot go on.
        """
        where = self.replay(number)
        try:
            queue = await Queue.open(directory / DB_NAME, KEY, AGENT)
        except sqlite3.DatabaseError as exc:
            tally.verify_failures += 1
            tally.problems.append(f"{where}: the queue does not open: {exc!r}")
            raise ChainBroken from exc
        try:
            try:
                await queue.verify()
                present = dict(await queue.iter_plaintexts())
            except (QueueCorrupt, sqlite3.DatabaseError) as exc:
                tally.verify_failures += 1
                tally.problems.append(f"{where}: verify failed: {exc!r}")
                self._count_lost(await _readable_prefix(queue), returned, where, tally)
                raise ChainBroken from exc
            self._count_lost(present, returned, where, tally)
            survived = self._survivors([*returned, unreturned], present, where, tally)
            if unreturned in survived:
                tally.unreturned_kept += 1
            else:
                tally.unreturned_dropped += 1
            known = set(self.truth).union(*(b.seqs for b in [*returned, unreturned]))
            extra = sorted(set(present) - known)
            if extra:
                tally.problems.append(f"{where}: records nobody appended, seqs {extra[:10]}")
            status = await queue.status()
            if (status.last_seq, status.pending) != (max(present, default=0), len(present)):
                tally.problems.append(f"{where}: status {status} disagrees with the records")
            codes, documents = Counter(self.codes), set(self.documents)
            for batch in survived:
                codes.update(batch.days)
                documents.update(sha for sha, _ in batch.documents)
            for batch in [*returned, unreturned]:
                for dossier_id in batch.created:
                    if await queue.has_dossier(dossier_id) != (batch in survived):
                        tally.problems.append(f"{where}: dossier index and records disagree "
                                              f"on {dossier_id}")
            on_disk = {sha for sha, _ in await queue.all_documents()}
            if on_disk != documents:
                tally.problems.append(f"{where}: {len(on_disk)} documents on disk, "
                                      f"{len(documents)} expected")
        finally:
            await queue.close()
        with closing(sqlite3.connect(directory / DB_NAME)) as db:
            counters = dict(db.execute("SELECT day, last FROM code_counters").fetchall())
        if counters != dict(codes):
            tally.problems.append(f"{where}: code counters {counters} != {dict(codes)}")
        self.truth, self.codes, self.documents = present, codes, documents
        self.dossier_ids += [i for batch in survived for i in batch.created]

    def _count_lost(self, present: dict[int, bytes], returned: list[Batch], where: str,
                    tally: Tally) -> None:
        """Records of returned appends (this run's and earlier) not there unchanged."""
        must = dict(self.truth)
        for batch in returned:
            must.update(zip(batch.seqs, batch.plaintexts, strict=True))
        lost = [seq for seq, plaintext in sorted(must.items()) if present.get(seq) != plaintext]
        if lost:
            tally.lost += len(lost)
            tally.problems.append(f"{where}: {len(lost)} records of returned appends "
                                  f"lost or changed, seqs {lost[:10]}")

    @staticmethod
    def _survivors(batches: list[Batch], present: dict[int, bytes], where: str,
                   tally: Tally) -> list[Batch]:
        """The appends whose records are all there; one there in part is a problem."""
        survived = []
        for batch in batches:
            kept = [present.get(seq) == plaintext
                    for seq, plaintext in zip(batch.seqs, batch.plaintexts, strict=True)]
            if kept and all(kept):
                survived.append(batch)
            elif any(kept):
                tally.problems.append(f"{where}: an append survived in part: seqs "
                                      f"{batch.seqs}, kept {kept}")
        return survived


async def _readable_prefix(queue: Queue) -> dict[int, bytes]:
    """The records before the first damaged one (none if the database fails)."""
    try:
        batch = await queue.read_pending(max_records=1 << 30, max_bytes=1 << 40)
    except sqlite3.DatabaseError:
        return {}
    return dict(enumerate(batch.records, start=batch.first_seq))


async def run_chains(seeds: list[int], cuts: int, workdir: Path, *,
                     synchronous: str | None = None, sector_size: int = 512) -> Tally:
    tally = Tally()
    for seed in seeds:
        await Chain(seed, workdir, synchronous=synchronous,
                    sector_size=sector_size).run(cuts, tally)
    return tally


# --------------------------------------------------------------------------- the model itself

def test_synced_writes_survive_every_cut() -> None:
    for seed in range(50):
        disk = CrashDisk(seed=seed)
        file = disk.files["f"] = SimFile()
        file.write(b"a" * 2000, 0)
        file.sync()
        file.write(b"b" * 100, 3000)  # unsynced: anything goes, but only there
        image = disk.power_cut()["f"]
        assert image[:2000] == b"a" * 2000
        assert len(image) in {2000, 2048, 2560, 3072, 3100}


def test_unsynced_sectors_are_lost_torn_or_reordered() -> None:
    seen: Counter[str] = Counter()
    for seed in range(200):
        disk = CrashDisk(seed=seed)
        file = disk.files["f"] = SimFile(b"\0" * 2048)
        file.write(b"1" * 512, 0)  # first write
        file.write(b"2" * 512, 1024)  # a later write
        image = disk.power_cut()["f"]
        first, second = image[:512], image[1024:1536]
        if first == b"\0" * 512 and second == b"2" * 512:
            seen["later survives, earlier lost"] += 1
        if first not in (b"\0" * 512, b"1" * 512):
            seen["torn"] += 1
            assert set(first) == {0, ord("1")}
        assert image[512:1024] == b"\0" * 512  # never written: never damaged
    assert seen["later survives, earlier lost"] > 0 and seen["torn"] > 0


def test_size_changes_since_the_sync_can_be_lost() -> None:
    sizes = set()
    for seed in range(100):
        disk = CrashDisk(seed=seed)
        file = disk.files["f"] = SimFile(b"x" * 4096)
        file.truncate(1024)
        sizes.add(len(disk.power_cut()["f"]))
    assert sizes == {1024, 4096}


# --------------------------------------------------------------------------- the queue

async def test_queue_runs_unchanged_on_the_simulated_disk(tmp_path: Path) -> None:
    """The adapter covers what the queue uses; a clean close leaves nothing unsynced."""
    disk = CrashDisk(seed=0)
    with CrashVFS(disk) as vfs:
        queue = await Queue.open(SIM_PATH, KEY, AGENT, create=True, connect=connector(vfs))
        await queue.append(lambda *_: [(b"one " * 50, "d-1"), (b"two " * 50, None)],
                           ["261101"], [("ab" * 32, 10)])
        await queue.append(lambda *_: [(b"three", None)])
        await queue.apply_ack(1, 2, [(2, "invalid_record", "bad")], "now",
                              "2026-01-01T00:00:00+00:00")
        await queue.apply_ack(1, 2, [], "now", "2026-06-01T00:00:00+00:00")
        await queue.set_document_state("ab" * 32, 10, True)
        assert await queue.erase_acknowledged(90) == 2  # rowcount, execute_fetchall
        assert await queue.erased_documents() == ["ab" * 32]
        assert await queue.verify() == 3
        assert await queue.has_dossier("d-1")
        assert await queue.verdicts() == [(2, "invalid_record", "bad")]
        pending = await queue.read_pending(max_records=10, max_bytes=1 << 20)
        assert pending.records == (b"three",) and pending.damaged is None
        await queue.close()
    assert disk.pending() == []
    disk.power_cut()
    disk.export(tmp_path)
    queue = await Queue.open(tmp_path / DB_NAME, KEY, AGENT)
    assert await queue.verify() == 3
    assert [seq for seq, _ in await queue.iter_plaintexts()] == [3]
    assert (await queue.status()).refused == 1
    await queue.close()


@pytest.mark.parametrize(("seed", "sector_size"), [(1, 512), (2, 512), (3, 512), (4, 4096)])
async def test_no_returned_append_is_lost_at_a_power_cut(tmp_path: Path, seed: int,
                                                         sector_size: int) -> None:
    """WAL + synchronous=FULL, as the queue sets it: 25 cuts per seed, 100 in all."""
    tally = await run_chains([seed], CUTS_PER_CHAIN, tmp_path, sector_size=sector_size)
    assert tally.problems == []
    assert (tally.cuts, tally.lost, tally.verify_failures) == (CUTS_PER_CHAIN, 0, 0)
    assert tally.appends > CUTS_PER_CHAIN  # the cuts fell among many appends
    assert tally.disk["sectors lost"] and tally.disk["sectors torn"]


async def test_negative_control_synchronous_normal_loses_returned_appends(
        tmp_path: Path) -> None:
    """Unsynced WAL commits (synchronous=NORMAL) must be caught losing records."""
    tally = await run_chains([1], CUTS_PER_CHAIN, tmp_path, synchronous="NORMAL")
    assert tally.lost > 0, tally
    assert tally.verify_failures == 0, tally.problems  # lost commits, never a broken chain
    assert any("lost or changed" in problem and "--synchronous NORMAL" in problem
               for problem in tally.problems)
