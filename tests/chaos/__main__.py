"""``python -m tests.chaos``: a chaos run as long as you like.

    .venv/bin/python -m tests.chaos --seed 7 --dossiers 10000 --agent-kills 200

starts a real ``syncd serve`` and ``sync-agent run`` daemons, feeds dossiers and
status changes while faults hit them (see :mod:`tests.chaos.runner`), lets
everything drain, checks exactly-once delivery and prints the figures. On a
failure it prints the seed, shrinks the fault list (``--shrink-budget``) and
prints the shortest list that still fails with the command that replays it;
the exit code is then 1.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from tests.support.link import PROFILES

from .runner import (
    ChaosConfig,
    faults_from_json,
    figures_json,
    format_failure,
    format_figures,
    make_schedule,
    run_and_shrink,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.chaos", description=(
        "Run syncd and sync-agent daemons under a seeded schedule of faults and check that "
        "every saved dossier reaches the server exactly once."))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dossiers", type=int, default=10_000)
    p.add_argument("--agents", type=int, default=3)
    p.add_argument("--agent-kills", type=int, default=200, help="SIGKILLs of agent daemons")
    p.add_argument("--agent-restarts", type=int, default=None,
                   help="SIGTERM restarts of agent daemons (default: agent kills / 8)")
    p.add_argument("--clock-jumps", type=int, default=None,
                   help="agent restarts with a shifted clock (default: agent kills / 10)")
    p.add_argument("--server-kills", type=int, default=None,
                   help="SIGKILLs of syncd (default: agent kills / 4)")
    p.add_argument("--server-restarts", type=int, default=None,
                   help="SIGTERM restarts of syncd (default: server kills / 3)")
    p.add_argument("--outages", type=int, default=None,
                   help="forced link outages (default: agent kills / 2)")
    p.add_argument("--lost-responses", type=int, default=None,
                   help="lose-the-next-responses events (default: agent kills / 3)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of feeding and faults (default: from the counts)")
    p.add_argument("--stop-at", type=float, default=None,
                   help="stop feeding and faulting here (replays of shrunk lists)")
    p.add_argument("--batch", type=int, nargs=2, default=(10, 50), metavar=("MIN", "MAX"),
                   help="dossiers per `add`")
    p.add_argument("--updates-per-dossier", type=float, default=0.06)
    p.add_argument("--profile", choices=["fast", *sorted(PROFILES)], default="fast")
    p.add_argument("--drain-timeout", type=float, default=180.0)
    p.add_argument("--faults", default=None,
                   help="replay this fault list (JSON, as a failing run prints it)")
    p.add_argument("--faults-file", type=Path, default=None, help="the same, from a file")
    p.add_argument("--print-schedule", action="store_true",
                   help="print the seed's fault list and exit")
    p.add_argument("--shrink-budget", type=float, default=1800.0,
                   help="seconds to spend shrinking a failing fault list (0 = do not)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the data directories go (default: a temporary directory, "
                        "removed after a passing run)")
    p.add_argument("--json", action="store_true", help="also print the figures as JSON")
    return p


def config_from(args: argparse.Namespace) -> ChaosConfig:
    kills = args.agent_kills

    def default(value: int | None, derived: int) -> int:
        return derived if value is None else value

    server_kills = default(args.server_kills, max(1, kills // 4))
    return ChaosConfig(
        seed=args.seed, dossiers=args.dossiers, agents=args.agents, agent_kills=kills,
        agent_restarts=default(args.agent_restarts, kills // 8),
        clock_jumps=default(args.clock_jumps, max(1, kills // 10)),
        server_kills=server_kills,
        server_restarts=default(args.server_restarts, server_kills // 3),
        outages=default(args.outages, kills // 2),
        lost_responses=default(args.lost_responses, kills // 3),
        duration_s=args.duration, stop_at_s=args.stop_at,
        batch_min=args.batch[0], batch_max=args.batch[1],
        updates_per_dossier=args.updates_per_dossier, drain_timeout_s=args.drain_timeout,
        profile=args.profile)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so every process the run started is stopped on the way out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    config = config_from(args)
    faults = None
    if args.faults is not None:
        faults = faults_from_json(args.faults)
    elif args.faults_file is not None:
        faults = faults_from_json(args.faults_file.read_text(encoding="utf-8"))
    if args.print_schedule:
        for fault in faults if faults is not None else make_schedule(config):
            print(fault.to_json())
        return 0
    if faults is not None and args.duration is None:
        config = replace(config, duration_s=config.planned_s)
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="chaos-")) if temporary else args.workdir
    started = time.monotonic()

    def log(line: str) -> None:
        print(line, flush=True)

    result, shrunk = run_and_shrink(config, workdir=workdir, faults=faults,
                                    shrink_budget_s=args.shrink_budget, log=log)
    print(f"\nchaos seed {config.seed}: {'PASSED' if result.ok else 'FAILED'} in "
          f"{time.monotonic() - started:.0f} s")
    print(format_figures(result.figures))
    if args.json:
        print(figures_json(result))
    if result.ok:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
        return 0
    print(format_failure(result, shrunk), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
