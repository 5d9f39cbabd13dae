"""The chaos runner in CI: a bounded run, and proof that its checker can fail.

``test_chaos_run_delivers_every_dossier_exactly_once`` runs real daemons (a
``syncd serve``, three ``sync-agent run``) for about a minute and a half: over
1,000 dossiers and status changes fed in while agents are SIGKILLed (20+
times), the server is SIGKILLed (5+ times), both are restarted, links go down
and lose responses, and an agent's clock jumps. Set ``CHAOS_SEED`` to run
another seed and ``CHAOS_SHRINK_BUDGET_S`` to bound the shrinking of a failing
fault list (the assertion message carries the seed, the shortest failing list
found and the command that replays it). Longer runs: ``python -m tests.chaos``.
"""

from __future__ import annotations

import copy
import os
import random
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.runner import (
    AgentReport,
    ChaosConfig,
    Fault,
    Observed,
    RunResult,
    SavedDossier,
    check_exactly_once,
    format_failure,
    format_figures,
    make_schedule,
    replay_command,
    run_and_shrink,
    shrink,
)
from tests.support.dossiers import make_dossier

SEED = int(os.environ.get("CHAOS_SEED", "20261126"))
SHRINK_BUDGET_S = float(os.environ.get("CHAOS_SHRINK_BUDGET_S", "240"))


# --------------------------------------------------------------------------- the checker


def server_view(item: dict[str, Any], dossier_id: str, code: str, status: str,
                agent_id: str) -> dict[str, Any]:
    """What `syncd dossiers --json` shows for ``item`` (as the server normalises it)."""
    held = {key: value for key, value in copy.deepcopy(item).items() if key != "status"}
    held.update(id=dossier_id, code=code, status=status, channel="direct", notes=None,
                processing_unit=None, submitted_at=None, summary=None, agent_id=agent_id,
                commune_code="01234")
    return held


def clean_observation() -> Observed:
    rng = random.Random(7)
    observed = Observed()
    for index, agent_id in enumerate(("ag-0000000000000001", "ag-0000000000000002")):
        for n in range(3):
            item = make_dossier(rng, n)
            dossier_id = f"00000000-0000-4000-8000-0000000000{index}{n}"
            status = "processing" if n == 1 else "received"
            observed.saved[dossier_id] = SavedDossier(index, item, status)
            day = item["received_at"][2:10].replace("-", "")
            observed.held.append(server_view(item, dossier_id, f"01234-{day}-{index + 1}00{n}",
                                             status, agent_id))
        observed.server_agents.append({"agent_id": agent_id, "epoch": 1, "acked_seq": 4})
        observed.agents.append(AgentReport(
            index, agent_id, {"pending": 0, "acked_seq": 4, "last_seq": 4, "epoch": 1,
                              "refused": 0, "agent_id": agent_id},
            0, "Checked 4 records", records_written=4))
    return observed


def plant(observed: Observed, what: str) -> Observed:
    """``observed`` with one discrepancy planted."""
    bad = copy.deepcopy(observed)
    first = bad.held[0]
    if what == "lost":
        bad.held.pop(0)
    elif what == "duplicated id":
        bad.held.append(copy.deepcopy(first))
    elif what == "duplicated content":
        twin = copy.deepcopy(first)
        twin.update(id="00000000-0000-4000-8000-00000000ffff", code="01234-261101-9999")
        bad.held.append(twin)
    elif what == "never saved":
        del bad.saved[first["id"]]
    elif what == "failed add on server":
        bad.unsaved.append(bad.saved.pop(first["id"]).item)
    elif what == "status":
        first["status"] = "finished"
    elif what == "content":
        first["applicant"]["name"] = "Someone Else"
    elif what == "invented field":
        first["summary"] = "never entered"
    elif what == "owner":
        first["agent_id"] = bad.agents[1].agent_id
    elif what == "verify":
        bad.agents[0].verify_code = 4
    elif what == "pending":
        bad.agents[0].status = {**(bad.agents[0].status or {}), "acked_seq": 3, "pending": 1}
    elif what == "server position":
        bad.server_agents[1]["acked_seq"] = 3
    elif what == "epoch":
        bad.server_agents[1]["epoch"] = 2
    elif what == "records":
        bad.agents[1].records_written = 5
    elif what == "alert":
        bad.alerts.append({"kind": "conflict", "detail": "seq 3 held with other content"})
    else:
        raise AssertionError(what)
    return bad


PLANTED = {
    "lost": "lost", "duplicated id": "duplicated", "duplicated content": "duplicated",
    "never saved": "never_saved", "failed add on server": "never_saved",
    "status": "wrong_status", "content": "wrong_content", "invented field": "wrong_content",
    "owner": "wrong_owner", "verify": "verify_failures", "pending": "position_mismatches",
    "server position": "position_mismatches", "epoch": "position_mismatches",
    "records": "position_mismatches", "alert": "alerts",
}


def test_checker_passes_a_clean_observation() -> None:
    report = check_exactly_once(clean_observation())
    assert report.ok, report.problems
    assert report.figures["saved"] == report.figures["on_server"] == 6


@pytest.mark.parametrize("what", sorted(PLANTED))
def test_checker_catches_a_planted_discrepancy(what: str) -> None:
    report = check_exactly_once(plant(clean_observation(), what))
    assert not report.ok, f"the checker missed: {what}"
    assert report.figures[PLANTED[what]] >= 1, (what, report.figures, report.problems)


# --------------------------------------------------------------------------- shrinking


def test_shrinking_finds_the_two_faults_that_fail_together(tmp_path: Path) -> None:
    config = ChaosConfig(seed=3, dossiers=100, agent_kills=9, server_kills=4)
    faults = make_schedule(config)
    culprits = [next(f for f in faults if f.kind == "server_kill"),
                next(f for f in reversed(faults) if f.kind == "agent_kill")]
    replays: list[int] = []

    def replay(cfg: ChaosConfig, subset: list[Fault], where: Path) -> RunResult:
        replays.append(len(subset))
        failing = all(f in subset for f in culprits)
        return RunResult(cfg, subset, ["planted"] if failing else [], {}, Observed(), 0.0,
                         where)

    shrunk = shrink(config, faults, budget_s=60, workdir=tmp_path, replay=replay)
    assert shrunk.reproduced
    assert sorted(shrunk.faults) == sorted(culprits), shrunk.faults
    assert len(replays) < len(faults) * 3, replays
    command = replay_command(config, shrunk.faults)
    assert f"--seed {config.seed}" in command and "--faults '[[" in command, command


# --------------------------------------------------------------------------- the run


@pytest.mark.slow
@pytest.mark.timeout(240 + SHRINK_BUDGET_S)
def test_chaos_run_delivers_every_dossier_exactly_once(tmp_path: Path) -> None:
    config = ChaosConfig(seed=SEED, dossiers=1000, agents=3, agent_kills=22, agent_restarts=4,
                         server_kills=6, server_restarts=2, outages=10, lost_responses=8,
                         clock_jumps=3, duration_s=45.0)
    result, shrunk = run_and_shrink(config, workdir=tmp_path, shrink_budget_s=SHRINK_BUDGET_S,
                                    log=print)
    print(f"chaos seed {SEED} in {result.seconds:.1f} s:\n{format_figures(result.figures)}")
    if not result.ok:
        pytest.fail(format_failure(result, shrunk), pytrace=False)
    figures = result.figures
    assert figures["saved"] >= 1000 and figures["on_server"] == figures["saved"], figures
    assert figures["agent_sigkills"] >= 20, figures
    assert figures["server_sigkills"] >= 5, figures
    assert figures["link_outages"] >= 5 and figures["lost_responses"] >= 1, figures
    assert figures["clock_jumps"] >= 1, figures
    assert figures["agent_sigterm_restarts"] >= 1, figures
    assert figures["server_sigterm_restarts"] >= 1, figures
    assert figures["update_calls"] >= 30, figures

    # The same checker, on this run's real data, fails once anything is off.
    observed = result.observed
    for what in ("lost", "duplicated content", "status", "never saved", "server position"):
        report = check_exactly_once(plant(observed, what))
        assert report.figures[PLANTED[what]] >= 1, (what, report.problems)
