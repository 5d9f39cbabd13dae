"""A long run of simulated power cuts under the queue's append path.

    .venv/bin/python bench/power_cuts.py --cuts 1000 [--seed N]

The harness is tests/chaos/test_power_loss.py (see its docstring; the disk
model is tests/support/crashvfs.py): chains of ``--per-chain`` cuts, chain k
seeded ``--seed + k``, each a fresh queue appending realistic dossier records
until the power goes at a random VFS write or sync, then reopened on real files
with aiosqlite and checked. At the end: cuts, chains ended early because the
queue no longer opened or verified (their remaining cuts are not run), appends
that returned (and their records), records of returned appends lost, verify
failures, problem reports, what became of the append each cut interrupted, the
fates of unsynced sectors and where the cuts fell, time. Exit status 1 on any
loss, verify failure or other problem: expected with ``--synchronous NORMAL``
(the negative control) or ``OFF``.
A problem names its chain seed and cut, and the command that replays it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos.test_power_loss import CUTS_PER_CHAIN, Chain, Tally


async def run(cuts: int, seed: int, per_chain: int, sector_size: int,
              synchronous: str | None, show: int) -> int:
    tally = Tally()
    chains = [per_chain] * (cuts // per_chain) + ([cuts % per_chain] if cuts % per_chain else [])
    mode = f"synchronous={synchronous} (overriding the queue's FULL)" if synchronous else \
        "synchronous=FULL (as the queue sets it)"
    print(f"power cuts under queue appends: {cuts} cuts in {len(chains)} chains of up to "
          f"{per_chain}, seeds {seed}..{seed + len(chains) - 1}, {sector_size}-byte sectors, "
          f"WAL, {mode}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for index, length in enumerate(chains):
            await Chain(seed + index, Path(tmp), synchronous=synchronous,
                        sector_size=sector_size).run(length, tally)
            print(f"{tally.cuts:>6} cuts  {time.perf_counter() - started:6.1f} s  "
                  f"{tally.appends} appends returned  {tally.lost} lost  "
                  f"{tally.verify_failures} verify failures", flush=True)
    elapsed = time.perf_counter() - started
    fates = tally.disk
    rows = [
        ("power cuts", f"{tally.cuts}"),
        ("chains ended (queue unreadable)", f"{tally.broken_chains}"),
        ("appends returned", f"{tally.appends} ({tally.records} records)"),
        ("records lost (returned)", f"{tally.lost}"),
        ("verify failures", f"{tally.verify_failures}"),
        ("problem reports", f"{len(tally.problems)}"),
        ("interrupted appends", f"kept whole {tally.unreturned_kept}, "
                                f"dropped whole {tally.unreturned_dropped}"),
        ("unsynced sectors at the cuts", "  ".join(
            f"{fate} {fates[f'sectors {fate}']}" for fate in ("written", "lost", "torn"))),
        ("size changes at the cuts", f"kept {fates['size kept']}, lost {fates['size lost']}"),
        ("cuts fell", ", ".join(f"{key[4:]} {n}" for key, n in sorted(fates.items())
                                if key.startswith("cut "))),
        ("elapsed", f"{elapsed:.1f} s, {tally.cuts / elapsed:.0f} cuts/s"),
    ]
    print()
    for label, value in rows:
        print(f"{label + ':':<33}{value}")
    for problem in tally.problems[:show]:
        print(f"\n{problem}")
    return 1 if tally.problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cuts", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1, help="seed of the first chain")
    parser.add_argument("--per-chain", type=int, default=CUTS_PER_CHAIN,
                        help="cuts a queue lives through before a fresh one starts")
    parser.add_argument("--sector-size", type=int, default=512)
    parser.add_argument("--synchronous", choices=["NORMAL", "FULL", "OFF"],
                        help="override the queue's PRAGMA synchronous (negative control)")
    parser.add_argument("--show", type=int, default=10, help="problems to print in full")
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args.cuts, args.seed, args.per_chain, args.sector_size,
                             args.synchronous, args.show)))


if __name__ == "__main__":
    main()
