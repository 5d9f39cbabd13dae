"""A long fuzz run against syncd in process: hostile bodies on every endpoint.

    .venv/bin/python bench/fuzz.py --cases 100000 [--seed N]

The generators and checks are those of tests/syncd/test_fuzz_ingest.py (see
its docstring for the properties), drawn from a seeded ``random.Random``
instead of Hypothesis, without an example limit. One server (SQLite file in a
temporary directory, aiohttp on loopback) and one set of enrolled agents
serve the whole run. Progress every ``--every`` cases; at the end: cases,
answers by status, answers by generator, cases that stored something, 5xx
answers, property violations, the store's final consistency check, time.
Exit status 1 if anything was violated.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.syncd.test_fuzz_ingest import Harness, Outcome, RandomDraw, generate_case


def _statuses(counter: Counter[int]) -> str:
    return " ".join(f"{status}:{n}" for status, n in sorted(counter.items()))


async def run(cases: int, seed: int, every: int, show: int) -> int:
    draw = RandomDraw(random.Random(seed))
    statuses: Counter[int] = Counter()
    by_label: defaultdict[str, Counter[int]] = defaultdict(Counter)
    stored: defaultdict[str, Counter[int]] = defaultdict(Counter)
    codes: Counter[str] = Counter()
    failures: list[tuple[int, Outcome]] = []
    crashes: list[tuple[int, str]] = []
    print(f"fuzzing syncd in process: {cases} cases, seed {seed}", flush=True)
    started = last = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        async with Harness.running(Path(tmp) / "server") as harness:
            for index in range(1, cases + 1):
                try:
                    case = generate_case(draw, harness.world)
                    outcome = await harness.check(case)
                except Exception:  # a bug in the harness or a dropped connection
                    crashes.append((index, traceback.format_exc()))
                    continue
                status = outcome.status
                statuses[status] += 1
                by_label[case.label][status] += 1
                codes[outcome.code or str(status)] += 1
                if outcome.stored:
                    stored[case.label][status] += 1
                if outcome.problems:
                    failures.append((index, outcome))
                if index % every == 0:
                    now = time.perf_counter()
                    print(f"{index:>8} cases  {now - started:7.1f} s  "
                          f"{every / (now - last):6.0f} cases/s  {_statuses(statuses)}  "
                          f"violations {len(failures)}", flush=True)
                    last = now
            final = await harness.final_checks()
            positions = len(harness.world.positions)
            counts = await harness.snapshot()
    elapsed = time.perf_counter() - started
    done = sum(statuses.values())
    server_errors = sum(n for status, n in statuses.items() if status >= 500)

    print("\nanswers by generator:")
    for label in sorted(by_label):
        print(f"  {label:<42} {sum(by_label[label].values()):>7}  {_statuses(by_label[label])}")
    print("\nanswers by error code:")
    print("  " + "  ".join(f"{code}:{n}" for code, n in sorted(codes.items())))
    print("\ncases that stored something (rows or files): all must be 200, except that an "
          "authentic\ndocument chunk answered 409 registers its document (allowed by the checks)")
    for label in sorted(stored):
        print(f"  {label:<42} {sum(stored[label].values()):>7}  {_statuses(stored[label])}")
    stored_not_200 = sum(n for c in stored.values() for s, n in c.items() if s != 200)
    print(f"\nstore at the end: {counts['records']} records, {counts['dossiers']} dossiers, "
          f"{counts['alerts']} alerts, {counts['documents']} documents, "
          f"{positions} (agent, epoch) positions")
    print(f"\ntotal cases:         {done} (+{len(crashes)} harness crashes)")
    print(f"answers by status:   {_statuses(statuses)}")
    print(f"stored something:    {sum(sum(c.values()) for c in stored.values())} "
          f"(of which not 200: {stored_not_200})")
    print(f"5xx answers:         {server_errors}")
    print(f"property violations: {len(failures)}")
    print(f"final store check:   {'ok' if not final else f'{len(final)} problems'}")
    print(f"elapsed:             {elapsed:.1f} s, {done / elapsed:.0f} cases/s")
    for index, outcome in failures[:show]:
        print(f"\nviolation at case {index}: {outcome.report()}")
    for index, text in crashes[:show]:
        print(f"\nharness crash at case {index}:\n{text}")
    for problem in final[:show]:
        print(f"\nfinal check: {problem}")
    return 1 if failures or crashes or final or server_errors else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--every", type=int, default=10_000, help="progress interval")
    parser.add_argument("--show", type=int, default=10, help="violations to print in full")
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args.cases, args.seed, args.every, args.show)))


if __name__ == "__main__":
    main()
