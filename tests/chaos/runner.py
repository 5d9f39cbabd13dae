"""The chaos runner: real daemons, a seeded schedule of faults, an exactly-once check.

One run (:func:`run_chaos`):

1. starts a real ``syncd serve`` and, for each of ``agents`` commune PCs, a
   :class:`~tests.support.link.ThreadedLink` in front of the server and a real
   ``sync-agent run`` daemon enrolled *through* that link (so outages and lost
   responses are per agent);
2. feeds dossiers (``sync-agent add``, 10–50 per call) and status changes
   (``sync-agent update``) from one thread per agent, at seeded times, whether
   the agent's daemon is alive or not; only an ``add`` that exits 0 counts as
   saved, and its printed ids are what the server must hold;
3. applies a seeded list of :class:`Fault` at their offsets: SIGKILL of an agent
   daemon (restarted after a short delay), SIGTERM restart of an agent,
   SIGKILL of the server (restarted on the same port), SIGTERM restart of the
   server, link outages, lost responses, and a clock jump on an agent (the
   daemon and the agent's later CLIs run with ``SYNC_AGENT_CLOCK_OFFSET_S``);
4. lets everything drain (a condition with a deadline), stops every process
   cleanly, collects what the server and the agents report, and checks it with
   :func:`check_exactly_once`.

The schedule is a plain list of faults, so a failing run can be replayed with
the same seed and any sub-list; :func:`shrink` delta-debugs it down to the
shortest list that still fails (:func:`run_and_shrink`).

Waiting is on conditions with deadlines. The only deliberate sleeps are the
schedule's own offsets (when to feed, when to fault): they *are* the scenario.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
import traceback
import unicodedata
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import ExitStack, closing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from protocol.dossier import STATUSES
from tests.support.dossiers import make_dossier
from tests.support.link import PROFILES, LinkProfile, ThreadedLink
from tests.support.procs import AGENT, SYNCD, Server, cli_env, free_port, wait_until

__all__ = [
    "FAULT_KINDS",
    "ChaosConfig",
    "CheckReport",
    "Fault",
    "Observed",
    "RunResult",
    "SavedDossier",
    "ShrinkResult",
    "check_exactly_once",
    "faults_from_json",
    "faults_to_json",
    "figures_json",
    "format_failure",
    "format_figures",
    "make_schedule",
    "replay_command",
    "replay_config",
    "run_and_shrink",
    "run_chaos",
    "shrink",
]

COMMUNE = "01234"
FAST = LinkProfile("chaos-fast", 4_000_000, 8_000_000, 0.005)
"""A fast link: the faults are the point, not the bandwidth."""

FAULT_KINDS = ("agent_kill", "agent_kill_in_flight", "agent_restart", "clock_jump",
               "server_kill", "server_restart", "outage", "lose_responses")
AGENT_FAULTS = ("agent_kill", "agent_kill_in_flight", "agent_restart", "clock_jump")
HUNT_S = 3.0  # how long an in-flight kill waits for an ack to be in flight
CLOCK_JUMPS_S = (-3 * 86400.0, 400 * 86400.0, -7200.0, 30 * 86400.0, -365 * 86400.0, 0.0)
SERVER_ADDED = ("id", "code", "status", "agent_id", "commune_code")
CODE = re.compile(r"(?P<commune>\d{5})-(?P<day>\d{6})-(?P<serial>\d{4,6})")
EXAMPLES = 5  # examples named per kind of problem


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ChaosConfig:
    """What one run does; with the fault list, everything a replay needs."""

    seed: int = 1
    dossiers: int = 1000
    agents: int = 3
    agent_kills: int = 22
    agent_restarts: int = 4
    server_kills: int = 6
    server_restarts: int = 2
    outages: int = 10
    lost_responses: int = 8  # events; each loses the next 1-4 responses on one link
    clock_jumps: int = 3
    duration_s: float | None = None  # the planned feed/fault phase; None = from the counts
    stop_at_s: float | None = None  # a replay may stop feeding and faulting earlier
    batch_min: int = 10
    batch_max: int = 50
    updates_per_dossier: float = 0.06
    drain_timeout_s: float = 90.0
    profile: str = "fast"

    @property
    def planned_s(self) -> float:
        """Length of the feed/fault phase the schedule and the feed are planned on."""
        if self.duration_s is not None:
            return self.duration_s
        per_agent_kills = (self.agent_kills + self.agent_restarts + self.clock_jumps) / max(
            1, self.agents)
        return round(max(20.0, self.dossiers * 0.05, per_agent_kills * 8.0,
                         (self.server_kills + self.server_restarts) * 7.0), 1)

    @property
    def end_s(self) -> float:
        return self.planned_s if self.stop_at_s is None else min(self.planned_s, self.stop_at_s)

    def link_profile(self) -> LinkProfile:
        return FAST if self.profile == "fast" else PROFILES[self.profile]


@dataclass(frozen=True, order=True)
class Fault:
    """One fault: at ``t`` seconds into the run, ``kind`` against ``target``.

    ``arg`` is the down time in seconds for ``agent_kill``,
    ``agent_kill_in_flight`` (which first waits up to :data:`HUNT_S` for the
    server to hold more than the agent has recorded as acknowledged: an ack in
    flight), ``server_kill`` and ``outage``; the number of responses for
    ``lose_responses``; the clock offset in seconds for ``clock_jump``; unused
    (0) otherwise. ``target`` is an agent index (its daemon or its link); 0 for
    the server's faults.
    """

    t: float
    kind: str
    target: int = 0
    arg: float = 0.0

    def to_json(self) -> list[Any]:
        arg: float | int = int(self.arg) if float(self.arg).is_integer() else self.arg
        return [self.t, self.kind, self.target, arg]

    @classmethod
    def from_json(cls, item: Any) -> Fault:
        if isinstance(item, dict):
            return cls(float(item["t"]), str(item["kind"]), int(item.get("target", 0)),
                       float(item.get("arg", 0.0)))
        t, kind, target, arg = item
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        return cls(float(t), str(kind), int(target), float(arg))


def faults_to_json(faults: Iterable[Fault]) -> str:
    return json.dumps([f.to_json() for f in faults], separators=(",", ":"))


def faults_from_json(text: str) -> list[Fault]:
    return sorted(Fault.from_json(item) for item in json.loads(text))


def _resource(fault: Fault) -> str:
    if fault.kind in AGENT_FAULTS:
        return f"agent{fault.target}"
    if fault.kind in ("server_kill", "server_restart"):
        return "server"
    if fault.kind == "outage":
        return f"link{fault.target}"
    return f"lose{fault.target}"


def _busy_s(fault: Fault) -> float:
    """How long a fault keeps its resource busy (down time plus a restart)."""
    if fault.kind in ("agent_kill", "server_kill"):
        return fault.arg + 2.0
    if fault.kind == "agent_kill_in_flight":
        return HUNT_S + fault.arg + 2.0
    if fault.kind in ("agent_restart", "clock_jump", "server_restart"):
        return 2.0
    if fault.kind == "outage":
        return fault.arg + 0.5
    return 1.0


def make_schedule(config: ChaosConfig) -> list[Fault]:
    """The seeded fault list for ``config`` (the same seed gives the same list).

    Faults on one resource (an agent's daemon, the server, a link) are spread
    so that each starts after the previous one is over: every kill hits a
    running process. The list is sorted by time.
    """
    rng = random.Random(f"chaos-faults/{config.seed}")
    span = config.planned_s
    agents = config.agents
    raw: list[Fault] = []

    def at() -> float:
        return rng.uniform(1.0, span * 0.95)

    for n in range(config.agent_kills):  # every third waits for an ack in flight
        kind = "agent_kill_in_flight" if n % 3 == 2 else "agent_kill"
        raw.append(Fault(at(), kind, rng.randrange(agents), rng.uniform(0.05, 2.0)))
    for _ in range(config.agent_restarts):
        raw.append(Fault(at(), "agent_restart", rng.randrange(agents)))
    for _ in range(config.clock_jumps):
        raw.append(Fault(at(), "clock_jump", rng.randrange(agents), rng.choice(CLOCK_JUMPS_S)))
    for _ in range(config.server_kills):
        raw.append(Fault(at(), "server_kill", 0, rng.uniform(0.1, 3.0)))
    for _ in range(config.server_restarts):
        raw.append(Fault(at(), "server_restart", 0))
    for _ in range(config.outages):
        raw.append(Fault(at(), "outage", rng.randrange(agents), rng.uniform(0.3, 6.0)))
    for _ in range(config.lost_responses):
        raw.append(Fault(at(), "lose_responses", rng.randrange(agents), rng.randint(1, 4)))
    free_at: dict[str, float] = {}
    spread: list[Fault] = []
    for fault in sorted(raw):
        key = _resource(fault)
        t = max(fault.t, free_at.get(key, 0.0))
        arg = round(fault.arg, 2) if fault.kind != "clock_jump" else fault.arg
        placed = Fault(round(t, 2), fault.kind, fault.target, arg)
        free_at[key] = placed.t + _busy_s(placed)
        spread.append(placed)
    return sorted(spread)


# --------------------------------------------------------------------------- the feed


@dataclass(frozen=True)
class FeedStep:
    t: float
    kind: str  # "add" or "update"
    items: tuple[dict[str, Any], ...] = ()
    pick: float = 0.0  # update: which saved dossier (fraction of the saved list)
    status: str = ""


def make_feed(config: ChaosConfig, agent: int) -> list[FeedStep]:
    """Agent ``agent``'s seeded feed: batches of dossiers and status changes."""
    rng = random.Random(f"chaos-feed/{config.seed}/{agent}")
    share = config.dossiers // config.agents + (1 if agent < config.dossiers % config.agents
                                                else 0)
    batches: list[list[dict[str, Any]]] = []
    made = 0
    while made < share:
        size = min(share - made, rng.randint(config.batch_min, config.batch_max))
        batch = []
        for _ in range(size):
            item = make_dossier(rng, made)
            if rng.random() < 0.1:  # an id given at intake instead of a derived one
                item["id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            if rng.random() < 0.05:
                item["status"] = rng.choice(("registered", "processing"))
            batch.append(item)
            made += 1
        batches.append(batch)
    updates = round(share * config.updates_per_dossier)
    span = config.planned_s * 0.85
    steps = [FeedStep(round(span * i / max(1, len(batches)) + rng.uniform(0, 0.5), 2), "add",
                      tuple(batch)) for i, batch in enumerate(batches)]
    for _ in range(updates):
        steps.append(FeedStep(round(rng.uniform(1.0, span + 0.5), 2), "update",
                              pick=rng.random(), status=rng.choice(STATUSES)))
    return sorted(steps, key=lambda s: (s.t, s.kind))


# --------------------------------------------------------------------------- observations


@dataclass
class SavedDossier:
    agent: int  # index of the agent whose `add` printed its id
    item: dict[str, Any]  # exactly what was given to `add`
    status: str  # the latest status the runner set (intake status, then updates)


@dataclass
class AgentReport:
    index: int
    agent_id: str
    status: dict[str, Any] | None  # `sync-agent status --json`
    verify_code: int
    verify_output: str
    records_written: int  # records the runner's `add`s and `update`s committed


@dataclass
class Observed:
    """Everything the checker compares: what was saved and what everyone reports."""

    saved: dict[str, SavedDossier] = field(default_factory=dict)
    unsaved: list[dict[str, Any]] = field(default_factory=list)  # items of failed `add`s
    held: list[dict[str, Any]] = field(default_factory=list)  # `syncd dossiers --json`
    server_agents: list[dict[str, Any]] = field(default_factory=list)  # `syncd agents --json`
    alerts: list[dict[str, Any]] = field(default_factory=list)  # `syncd alerts --json`
    agents: list[AgentReport] = field(default_factory=list)


@dataclass
class CheckReport:
    problems: list[str]
    figures: dict[str, int]

    @property
    def ok(self) -> bool:
        return not self.problems


def _nfc(value: Any) -> Any:
    """What validation makes of an input value: strings in NFC, trimmed."""
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value).strip()
    if isinstance(value, dict):
        return {k: _nfc(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nfc(v) for v in value]
    return value


def content_differences(held: dict[str, Any], given: dict[str, Any], path: str = ""
                        ) -> list[str]:
    """Where the server's dossier differs from what was given to ``add``.

    The server adds ``id``, ``code``, ``status``, ``agent_id`` and
    ``commune_code``, fills ``channel`` with ``direct`` and the optional
    fields nobody entered with empty values; anything else must be exactly
    what was entered (after NFC normalisation, which validation applies).
    """
    diffs: list[str] = []
    if isinstance(given, dict) and isinstance(held, dict):
        for key, value in held.items():
            if key in given or (not path and key in SERVER_ADDED):
                continue
            if key == "channel" and value == "direct":
                continue
            if value not in (None, [], {}):
                diffs.append(f"{path}{key}={value!r} was never entered")
        for key, value in given.items():
            if not path and key in ("id", "status"):
                continue
            if key not in held:
                diffs.append(f"{path}{key} missing")
            else:
                diffs += content_differences(held[key], value, f"{path}{key}.")
        return diffs
    if isinstance(given, list) and isinstance(held, list) and len(given) == len(held):
        for i, (h, g) in enumerate(zip(held, given, strict=True)):
            diffs += content_differences(h, g, f"{path}[{i}].")
        return diffs
    if _nfc(given) != held:
        diffs.append(f"{path.rstrip('.')}: {held!r} != {given!r}")
    return diffs


def intake_key(dossier: dict[str, Any]) -> tuple[Any, ...]:
    """Fields that single out one generated dossier (random 12-digit id number and phone)."""
    applicant = dossier.get("applicant") or {}
    return (_nfc(applicant.get("id_number")), _nfc(applicant.get("phone")),
            _nfc(applicant.get("name")), dossier.get("received_at"))


def _examples(items: Iterable[Any]) -> str:
    items = list(items)
    more = f" (+{len(items) - EXAMPLES} more)" if len(items) > EXAMPLES else ""
    return ", ".join(str(i) for i in items[:EXAMPLES]) + more


def _check_held(observed: Observed, problems: list[str], figures: Counter[str]) -> None:
    held = observed.held
    ids = Counter(d.get("id") for d in held)
    codes = Counter(d.get("code") for d in held)
    keys = Counter(intake_key(d) for d in held)
    doubled_ids = [i for i, n in ids.items() if n > 1]
    doubled_codes = [c for c, n in codes.items() if n > 1]
    doubled_content = [k for k, n in keys.items() if n > 1]
    ids_by_key: dict[tuple[Any, ...], set[Any]] = {}
    for dossier in held:
        ids_by_key.setdefault(intake_key(dossier), set()).add(dossier.get("id"))
    # a dossier held twice under one id, or the same intake under a second id
    figures["duplicated"] = (sum(n - 1 for n in ids.values() if n > 1)
                             + sum(len(group) - 1 for group in ids_by_key.values()))
    if doubled_ids:
        problems.append(f"dossier ids held more than once: {_examples(doubled_ids)}")
    if doubled_codes:
        problems.append(f"dossier codes held more than once: {_examples(doubled_codes)}")
    if doubled_content:
        doubled = [sorted(d["id"] for d in held if intake_key(d) == k) for k in doubled_content]
        problems.append(f"the same intake held under more than one record: {_examples(doubled)}")
    missing = sorted(set(observed.saved) - set(ids))
    extra = sorted(set(ids) - set(observed.saved))
    figures["lost"] = len(missing)
    figures["never_saved"] = len(extra)
    if missing:
        problems.append(f"{len(missing)} saved dossiers are not on the server: "
                        f"{_examples(missing)}")
    if extra:
        problems.append(f"{len(extra)} dossiers on the server were never saved by an add: "
                        f"{_examples(extra)}")
    unsaved_keys = {intake_key(item) for item in observed.unsaved}
    from_failed = [d["id"] for d in held if intake_key(d) in unsaved_keys]
    if from_failed:
        problems.append(f"{len(from_failed)} dossiers of adds that failed are on the server: "
                        f"{_examples(from_failed)}")


def _check_content(observed: Observed, problems: list[str], figures: Counter[str]) -> None:
    agent_ids = {a.index: a.agent_id for a in observed.agents}
    wrong_content: list[str] = []
    wrong_status: list[str] = []
    wrong_owner: list[str] = []
    codes_by_agent: dict[str, set[str]] = {}
    for dossier in observed.held:
        saved = observed.saved.get(dossier.get("id", ""))
        if saved is None:
            continue
        diffs = content_differences(dossier, saved.item)
        match = CODE.fullmatch(str(dossier.get("code")))
        day = str(saved.item.get("received_at", ""))[2:10].replace("-", "")
        if "code" in saved.item:
            if dossier.get("code") != saved.item["code"]:
                diffs.append(f"code {dossier.get('code')} != {saved.item['code']}")
        elif match is None or match["commune"] != COMMUNE or match["day"] != day:
            diffs.append(f"code {dossier.get('code')!r} does not fit {COMMUNE} and day {day}")
        if diffs:
            wrong_content.append(f"{dossier['id']} ({'; '.join(diffs[:3])})")
        if dossier.get("status") != saved.status:
            wrong_status.append(f"{dossier['id']} ({dossier.get('status')} != {saved.status})")
        owner = agent_ids.get(saved.agent)
        if dossier.get("agent_id") != owner or dossier.get("commune_code") != COMMUNE:
            wrong_owner.append(f"{dossier['id']} ({dossier.get('agent_id')}/"
                               f"{dossier.get('commune_code')} != {owner}/{COMMUNE})")
        codes_by_agent.setdefault(str(dossier.get("agent_id")), set()).add(
            str(dossier.get("code")))
    figures["wrong_content"] = len(wrong_content)
    figures["wrong_status"] = len(wrong_status)
    figures["wrong_owner"] = len(wrong_owner)
    if wrong_content:
        problems.append(f"{len(wrong_content)} dossiers differ from what was entered: "
                        f"{_examples(wrong_content)}")
    if wrong_status:
        problems.append(f"{len(wrong_status)} dossiers have another status than the last one "
                        f"set: {_examples(wrong_status)}")
    if wrong_owner:
        problems.append(f"{len(wrong_owner)} dossiers are held for the wrong agent: "
                        f"{_examples(wrong_owner)}")


def _check_agents(observed: Observed, problems: list[str], figures: Counter[str]) -> None:
    rows: dict[str, list[dict[str, Any]]] = {}
    for row in observed.server_agents:
        rows.setdefault(str(row.get("agent_id")), []).append(row)
    for report in observed.agents:
        name = f"agent {report.index} ({report.agent_id})"
        if report.verify_code != 0:
            figures["verify_failures"] += 1
            problems.append(f"{name}: verify exited {report.verify_code}: "
                            f"{report.verify_output.strip()[-300:]}")
        status = report.status
        if status is None:
            problems.append(f"{name}: status --json failed")
            continue
        bad = []
        if status.get("pending") != 0 or status.get("acked_seq") != status.get("last_seq"):
            bad.append(f"pending {status.get('pending')}, acked {status.get('acked_seq')} of "
                       f"{status.get('last_seq')}")
        if status.get("refused"):
            bad.append(f"{status['refused']} records refused")
        if status.get("last_seq") != report.records_written:
            bad.append(f"queue holds {status.get('last_seq')} records, the runner committed "
                       f"{report.records_written}")
        if status.get("agent_id") != report.agent_id:
            bad.append(f"status names agent {status.get('agent_id')}")
        server_rows = rows.get(report.agent_id, [])
        if len(server_rows) != 1:
            bad.append(f"the server lists it {len(server_rows)} times")
        else:
            row = server_rows[0]
            if row.get("epoch") != status.get("epoch") or row.get("acked_seq") != status.get(
                    "acked_seq"):
                bad.append(f"server position epoch {row.get('epoch')} seq {row.get('acked_seq')}"
                           f" != agent's epoch {status.get('epoch')} seq "
                           f"{status.get('acked_seq')}")
        if bad:
            figures["position_mismatches"] += 1
            problems.append(f"{name}: {'; '.join(bad)}")
    if observed.alerts:
        figures["alerts"] = len(observed.alerts)
        kinds = Counter(str(a.get("kind")) for a in observed.alerts)
        problems.append(f"the server raised {len(observed.alerts)} alerts {dict(kinds)}: "
                        f"{_examples(a.get('detail') for a in observed.alerts)}")


def check_exactly_once(observed: Observed) -> CheckReport:
    """Every saved dossier on the server exactly once, as entered, at its latest
    status, for the agent that saved it; nothing else; every queue verifies;
    every agent's position is fully acknowledged and equals the server's."""
    problems: list[str] = []
    figures: Counter[str] = Counter()
    figures["saved"] = len(observed.saved)
    figures["on_server"] = len(observed.held)
    for key in ("verify_failures", "position_mismatches", "alerts"):
        figures[key] = 0
    _check_held(observed, problems, figures)
    _check_content(observed, problems, figures)
    _check_agents(observed, problems, figures)
    return CheckReport(problems, dict(figures))


# --------------------------------------------------------------------------- processes


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


class AgentDaemon:
    """One commune PC: a data directory, its link, its `sync-agent run`."""

    def __init__(self, index: int, data_dir: Path, link: ThreadedLink) -> None:
        self.index = index
        self.data_dir = data_dir
        self.link = link
        self.log = data_dir.parent / f"agent{index}-run.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.clock_offset_s = 0.0
        self.log_offset = 0
        self.kills = 0
        self.agent_id = ""
        self.lock = threading.Lock()  # guards clock_offset_s

    def env(self) -> dict[str, str]:
        env = cli_env()
        with self.lock:
            if self.clock_offset_s:
                env["SYNC_AGENT_CLOCK_OFFSET_S"] = f"{self.clock_offset_s:g}"
            else:
                env.pop("SYNC_AGENT_CLOCK_OFFSET_S", None)
        return env

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.log_offset = log.tell()
            self.proc = subprocess.Popen([AGENT, "run", "--data-dir", str(self.data_dir)],
                                         stdout=log, stderr=log, env=self.env())

    def ready(self) -> bool:
        """Whether this process has logged that it runs (its SIGTERM handler is set)."""
        try:
            with open(self.log, "rb") as log:
                log.seek(self.log_offset)
                return b"daemon running for agent" in log.read()
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self, timeout_s: float = 20.0) -> str | None:
        """SIGTERM and wait; a problem sentence unless it exited 0 in time."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is not None:
            return f"agent {self.index} daemon had exited with {proc.returncode}"
        # A process still starting up has no SIGTERM handler yet (it would die of
        # the signal, rightly): a clean stop is asked of a running daemon.
        try:
            wait_until(lambda: self.ready() or proc.poll() is not None, timeout_s=timeout_s,
                       interval_s=0.02, what=f"agent {self.index} daemon to start")
        except AssertionError:
            proc.kill()
            proc.wait(timeout=30)
            return f"agent {self.index} daemon did not start within {timeout_s:g} s"
        if proc.poll() is not None:
            return f"agent {self.index} daemon exited with {proc.returncode} at start-up"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
            return f"agent {self.index} daemon ignored SIGTERM for {timeout_s:g} s"
        if code != 0:
            return (f"agent {self.index} daemon exited {code} on SIGTERM after "
                    f"{time.monotonic() - started:.1f} s: {_tail(self.log, 600)}")
        return None

    def position(self) -> tuple[int, int, int]:
        """(epoch, last_seq, acked_seq) straight from queue.db (cheap to poll)."""
        with closing(sqlite3.connect(self.data_dir / "queue.db", timeout=10,
                                     isolation_level=None)) as db:
            row = db.execute(
                "SELECT m.value, (SELECT coalesce(max(seq), 0) FROM records "
                "WHERE epoch = m.value), (SELECT acked_seq FROM sync_state "
                "WHERE epoch = m.value) FROM meta m WHERE m.key = 'epoch'").fetchone()
        return int(row[0]), int(row[1]), int(row[2] or 0)


def server_position(server: Server, agent_id: str, epoch: int) -> int:
    with closing(sqlite3.connect(server.data_dir / "syncd.db", timeout=10,
                                 isolation_level=None)) as db:
        row = db.execute("SELECT acked_seq FROM positions WHERE agent_id = ? AND epoch = ?",
                         (agent_id, epoch)).fetchone()
    return int(row[0]) if row else 0


def _cli(cmd: list[str], env: dict[str, str] | None = None, input: str | None = None,
         timeout_s: float = 180.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout_s,
                          env=env or cli_env(), check=False)


# --------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    config: ChaosConfig
    faults: list[Fault]
    problems: list[str]
    figures: dict[str, Any]
    observed: Observed
    seconds: float
    workdir: Path

    @property
    def ok(self) -> bool:
        return not self.problems


class _Run:
    def __init__(self, config: ChaosConfig, faults: list[Fault], workdir: Path,
                 log: Callable[[str], None]) -> None:
        self.config = config
        self.faults = sorted(faults)
        self.workdir = workdir
        self.say = log
        self.problems: list[str] = []
        self.figures: Counter[str] = Counter()
        self.observed = Observed()
        self.mutex = threading.Lock()  # guards problems, figures, observed.saved/unsaved
        self.records: list[int] = [0] * config.agents
        self.saved_by_agent: list[list[str]] = [[] for _ in range(config.agents)]
        self.events: list[tuple[float, int, str, Callable[[], None]]] = []
        self.order = 0
        self.stop_feeding = threading.Event()
        self.t0 = 0.0
        self.server: Server | None = None
        self.server_expected_down = False
        self.server_kills = 0
        self.agents: list[AgentDaemon] = []
        self.expected_down: set[int] = set()
        self.link_up_at: dict[int, float] = {}

    # ----------------------------------------------------------------- helpers

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def problem(self, text: str) -> None:
        with self.mutex:
            self.problems.append(text)
        self.say(f"[{self.elapsed():7.1f}s] PROBLEM {text}")

    def count(self, key: str, n: int = 1) -> None:
        with self.mutex:
            self.figures[key] += n

    def at(self, t: float, what: str, action: Callable[[], None]) -> None:
        self.order += 1
        heapq.heappush(self.events, (t, self.order, what, action))

    # ----------------------------------------------------------------- set-up

    def setup(self, stack: ExitStack) -> None:
        config = self.config
        self.server = Server(self.workdir / "server", free_port()).init().start()
        stack.callback(self._stop_server_finally)
        for i in range(config.agents):
            link = stack.enter_context(ThreadedLink("127.0.0.1", self.server.port,
                                                    config.link_profile(), seed=config.seed + i))
            daemon = AgentDaemon(i, self.workdir / f"agent{i}", link)
            token = _cli([SYNCD, "enroll", "--data-dir", str(self.server.data_dir),
                          "--commune", COMMUNE, "--name", f"may-{i}"])
            if token.returncode != 0:
                raise RuntimeError(f"syncd enroll failed: {token.stderr}")
            init = _cli([AGENT, "init", "--data-dir", str(daemon.data_dir), "--server",
                         link.url, "--token", token.stdout.strip()])
            if init.returncode != 0:
                raise RuntimeError(f"sync-agent init failed: {init.stderr}")
            daemon.agent_id = json.loads(
                (daemon.data_dir / "agent.json").read_text(encoding="utf-8"))["agent_id"]
            self.agents.append(daemon)
        stack.callback(self._kill_agents_finally)
        for daemon in self.agents:
            daemon.start()

    def _stop_server_finally(self) -> None:
        if self.server is not None:
            self.server.stop(signal.SIGKILL)

    def _kill_agents_finally(self) -> None:
        for daemon in self.agents:
            daemon.kill()

    # ----------------------------------------------------------------- feeding

    def feed(self, index: int) -> None:
        daemon = self.agents[index]
        steps = make_feed(self.config, index)
        folder = self.workdir / f"feed{index}"
        folder.mkdir(exist_ok=True)
        try:
            for n, step in enumerate(steps):
                if step.t > self.config.end_s:
                    break
                delay = step.t - self.elapsed()
                if delay > 0 and self.stop_feeding.wait(delay):
                    break
                if step.kind == "add":
                    self._add(daemon, folder / f"add-{n}.json", list(step.items))
                else:
                    self._update(daemon, step)
        except Exception:
            self.problem(f"feeder {index} crashed: {traceback.format_exc()}")

    def _add(self, daemon: AgentDaemon, path: Path, items: list[dict[str, Any]]) -> None:
        path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
        proc = _cli([AGENT, "add", "--data-dir", str(daemon.data_dir), str(path)],
                    env=daemon.env())
        ids = proc.stdout.split()
        self.count("add_calls")
        if proc.returncode != 0:
            with self.mutex:
                self.observed.unsaved.extend(items)
                self.figures["failed_adds"] += 1
            self.problem(f"agent {daemon.index}: add of {len(items)} dossiers exited "
                         f"{proc.returncode}: {proc.stderr.strip()[-400:]}")
            return
        if len(ids) != len(items):
            self.problem(f"agent {daemon.index}: add printed {len(ids)} ids for "
                         f"{len(items)} dossiers")
        with self.mutex:
            for dossier_id, item in zip(ids, items, strict=False):
                if dossier_id in self.observed.saved:
                    self.problems.append(f"add printed id {dossier_id} twice")
                status = str(item.get("status", "received"))
                self.observed.saved[dossier_id] = SavedDossier(daemon.index, item, status)
                self.saved_by_agent[daemon.index].append(dossier_id)
            self.records[daemon.index] += len(items)

    def _update(self, daemon: AgentDaemon, step: FeedStep) -> None:
        with self.mutex:
            saved = self.saved_by_agent[daemon.index]
            if not saved:
                return
            dossier_id = saved[min(len(saved) - 1, int(step.pick * len(saved)))]
        proc = _cli([AGENT, "update", "--data-dir", str(daemon.data_dir), dossier_id,
                     "--status", step.status, "--by", "chaos"], env=daemon.env())
        self.count("update_calls")
        if proc.returncode != 0:
            self.count("failed_updates")
            self.problem(f"agent {daemon.index}: update {dossier_id} -> {step.status} exited "
                         f"{proc.returncode}: {proc.stderr.strip()[-400:]}")
            return
        with self.mutex:
            self.observed.saved[dossier_id].status = step.status
            self.records[daemon.index] += 1

    # ----------------------------------------------------------------- faults

    def apply(self, fault: Fault) -> None:
        agent_fault = fault.kind in (*AGENT_FAULTS, "outage", "lose_responses")
        if agent_fault and not 0 <= fault.target < len(self.agents):
            self.count("skipped_faults")
            return
        getattr(self, f"_fault_{fault.kind}")(fault)

    def _in_flight(self, daemon: AgentDaemon) -> tuple[bool, bool]:
        """(records pending, the server holds more than the agent recorded as acked)."""
        assert self.server is not None
        epoch, last, acked = daemon.position()
        return last > acked, server_position(self.server, daemon.agent_id, epoch) > acked

    def _ensure_agent_up(self, daemon: AgentDaemon) -> None:
        """A fault for a daemon still down from an earlier kill (the scheduler ran
        late) first does that kill's restart, so every listed fault happens."""
        if not daemon.alive:
            self.expected_down.discard(daemon.index)
            daemon.start()
            self.count("early_restarts")

    def _fault_agent_kill(self, fault: Fault) -> None:
        daemon = self.agents[fault.target]
        self._ensure_agent_up(daemon)
        if fault.kind == "agent_kill_in_flight":
            deadline = time.monotonic() + HUNT_S
            while (daemon.alive and not self._in_flight(daemon)[1]
                   and time.monotonic() < deadline):
                time.sleep(0.001)  # polling for the moment to strike, not for a result
        pending, in_flight = self._in_flight(daemon)
        daemon.kill()
        self.count("agent_sigkills")
        self.count("agent_sigkills_pending", int(pending))
        self.count("agent_sigkills_ack_in_flight", int(in_flight))
        self.expected_down.add(daemon.index)
        daemon.kills += 1
        self.at(self.elapsed() + fault.arg, f"restart agent {daemon.index}",
                lambda kills=daemon.kills: self._restart_agent(daemon, kills))

    _fault_agent_kill_in_flight = _fault_agent_kill

    def _restart_agent(self, daemon: AgentDaemon, kills: int) -> None:
        if kills != daemon.kills:  # a later kill has its own restart
            return
        self.expected_down.discard(daemon.index)
        if not daemon.alive:
            daemon.start()

    def _fault_agent_restart(self, fault: Fault) -> None:
        daemon = self.agents[fault.target]
        self._ensure_agent_up(daemon)
        if (err := daemon.stop()) is not None:
            self.problem(err)
        daemon.start()
        self.count("agent_sigterm_restarts")

    def _fault_clock_jump(self, fault: Fault) -> None:
        daemon = self.agents[fault.target]
        with daemon.lock:
            daemon.clock_offset_s = fault.arg
        self.count("clock_jumps")
        self._ensure_agent_up(daemon)
        if (err := daemon.stop()) is not None:
            self.problem(err)
        daemon.start()

    def _ensure_server_up(self) -> None:
        assert self.server is not None
        if self.server.proc is None or self.server.proc.poll() is not None:
            self._start_server()
            self.count("early_restarts")

    def _fault_server_kill(self, fault: Fault) -> None:
        assert self.server is not None
        self._ensure_server_up()
        self.server.stop(signal.SIGKILL)
        self.server_expected_down = True
        self.count("server_sigkills")
        self.server_kills += 1

        def restart(kills: int = self.server_kills) -> None:
            if kills == self.server_kills:  # else a later kill has its own restart
                self._start_server()
        self.at(self.elapsed() + fault.arg, "restart syncd", restart)

    def _start_server(self) -> None:
        assert self.server is not None
        self.server_expected_down = False
        if self.server.proc is not None and self.server.proc.poll() is None:
            return
        self.server.proc = None
        try:
            self.server.start()
        except AssertionError as exc:
            self.problem(f"syncd did not start again: {exc}")
            raise

    def _fault_server_restart(self, fault: Fault) -> None:
        assert self.server is not None
        self._ensure_server_up()
        code = self.server.stop(signal.SIGTERM)
        if code != 0:
            self.problem(f"syncd exited {code} on SIGTERM: {_tail(self.server.log, 600)}")
        self._start_server()
        self.count("server_sigterm_restarts")

    def _fault_outage(self, fault: Fault) -> None:
        link = self.agents[fault.target].link
        link.go_down()
        self.count("outages")
        self.count("outage_ms", int(fault.arg * 1000))
        until = self.elapsed() + fault.arg
        self.link_up_at[fault.target] = max(self.link_up_at.get(fault.target, 0.0), until)

        def up() -> None:
            if self.elapsed() + 1e-3 >= self.link_up_at.get(fault.target, 0.0):
                link.go_up()
        self.at(until, f"link {fault.target} up", up)

    def _fault_lose_responses(self, fault: Fault) -> None:
        self.agents[fault.target].link.lose_responses(int(fault.arg))
        self.count("lose_response_events")

    # ----------------------------------------------------------------- watching

    def watch(self) -> None:
        """A process that exits by itself is a crash: note it and start it again."""
        for daemon in self.agents:
            proc = daemon.proc
            if proc is not None and proc.poll() is not None:
                daemon.proc = None
                self.problem(f"agent {daemon.index} daemon exited by itself with "
                             f"{proc.returncode}: {_tail(daemon.log, 800)}")
                daemon.start()
            elif proc is None and daemon.index not in self.expected_down:
                daemon.start()
        server = self.server
        if server is not None and server.proc is not None and server.proc.poll() is not None:
            code = server.proc.returncode
            server.proc = None
            self.problem(f"syncd exited by itself with {code}: {_tail(server.log, 800)}")
            self._start_server()
        elif server is not None and server.proc is None and not self.server_expected_down:
            self._start_server()

    def progress(self) -> None:
        with self.mutex:
            saved = len(self.observed.saved)
        acked = []
        for daemon in self.agents:
            try:
                _, last, done = daemon.position()
                acked.append(f"{done}/{last}")
            except sqlite3.Error:
                acked.append("?")
        kills = self.figures["agent_sigkills"] + self.figures["server_sigkills"]
        self.say(f"[{self.elapsed():7.1f}s] saved {saved}, acked {' '.join(acked)}, "
                 f"{kills} SIGKILLs, {len(self.problems)} problems")

    # ----------------------------------------------------------------- phases

    def chaos(self) -> None:
        for fault in self.faults:
            if fault.t <= self.config.end_s:
                self.at(fault.t, fault.kind, lambda fault=fault: self.apply(fault))
        feeders = [threading.Thread(target=self.feed, args=(i,), name=f"feed-{i}", daemon=True)
                   for i in range(len(self.agents))]
        for thread in feeders:
            thread.start()
        next_report = 30.0
        try:
            while self.events or any(t.is_alive() for t in feeders):
                now = self.elapsed()
                if self.events and self.events[0][0] <= now:
                    _, _, _, action = heapq.heappop(self.events)
                    action()
                    continue
                self.watch()
                if now >= next_report:
                    self.progress()
                    next_report += 30.0
                wait = 0.05 if not self.events else min(0.05, self.events[0][0] - now)
                time.sleep(max(0.0, wait))  # the schedule's clock, not a wait for a result
        finally:
            self.stop_feeding.set()
            for thread in feeders:
                thread.join(300)

    def drain(self) -> None:
        assert self.server is not None
        for daemon in self.agents:
            daemon.link.go_up()
            daemon.link.lose_responses(0)
        self.expected_down.clear()
        self.watch()
        started = time.monotonic()

        def drained() -> bool:
            self.watch()
            for daemon in self.agents:
                epoch, last, acked = daemon.position()
                if not (last == acked == server_position(self.server, daemon.agent_id, epoch)):
                    return False
            return True

        try:
            wait_until(drained, timeout_s=self.config.drain_timeout_s, interval_s=0.1,
                       what="every agent to drain")
        except AssertionError:
            positions = [(d.index, d.position()) for d in self.agents]
            self.problem(f"not drained after {self.config.drain_timeout_s:g} s: (agent, "
                         f"(epoch, last, acked)) {positions}; last error lines: "
                         + " | ".join(_tail(d.log, 300) for d in self.agents))
        self.figures["drain_ms"] = int((time.monotonic() - started) * 1000)

    def stop_all(self) -> None:
        assert self.server is not None
        for daemon in self.agents:
            if (err := daemon.stop()) is not None:
                self.problem(err)
        code = self.server.stop(signal.SIGTERM)
        if code not in (0, None):
            self.problem(f"syncd exited {code} on SIGTERM: {_tail(self.server.log, 600)}")
        for daemon in self.agents:
            stats = daemon.link.stats()
            self.figures["link_outages"] += stats.outages
            self.figures["lost_responses"] += stats.lost_responses

    def collect(self) -> None:
        assert self.server is not None
        data = ["--data-dir", str(self.server.data_dir), "--json"]
        for name, key in (("dossiers", "held"), ("agents", "server_agents"),
                          ("alerts", "alerts")):
            proc = _cli([SYNCD, name, *data])
            if proc.returncode != 0:
                self.problem(f"syncd {name} exited {proc.returncode}: {proc.stderr}")
                continue
            setattr(self.observed, key, json.loads(proc.stdout))
        for daemon in self.agents:
            args = ["--data-dir", str(daemon.data_dir)]
            verify = _cli([AGENT, "verify", *args], env=daemon.env())
            status_proc = _cli([AGENT, "status", *args, "--json"], env=daemon.env())
            status = json.loads(status_proc.stdout) if status_proc.returncode == 0 else None
            self.observed.agents.append(AgentReport(
                daemon.index, daemon.agent_id, status, verify.returncode,
                verify.stdout + verify.stderr, self.records[daemon.index]))


def run_chaos(config: ChaosConfig, faults: list[Fault] | None = None, *,
              workdir: Path, log: Callable[[str], None] = lambda _: None) -> RunResult:
    """One run with ``faults`` (default: the seed's schedule) in ``workdir``."""
    faults = make_schedule(config) if faults is None else sorted(faults)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "faults.json").write_text(faults_to_json(faults), encoding="utf-8")
    run = _Run(config, faults, workdir, log)
    started = time.monotonic()
    log(f"chaos seed {config.seed}: {config.dossiers} dossiers, {config.agents} agents, "
        f"{len(faults)} faults over {config.end_s:g} s in {workdir}")
    try:
        with ExitStack() as stack:
            run.setup(stack)
            run.t0 = time.monotonic()
            run.chaos()
            run.drain()
            run.stop_all()
        run.collect()
    except Exception:
        run.problem(f"the run itself failed: {traceback.format_exc()}")
    report = check_exactly_once(run.observed)
    seconds = time.monotonic() - started
    figures: dict[str, Any] = {**report.figures, **run.figures, "faults": len(faults),
                               "seconds": round(seconds, 1)}
    for kind in ("agent_sigkills", "agent_sigkills_pending", "agent_sigkills_ack_in_flight",
                 "agent_sigterm_restarts", "clock_jumps", "server_sigkills",
                 "server_sigterm_restarts", "outages", "lose_response_events",
                 "lost_responses", "failed_adds", "failed_updates", "early_restarts"):
        figures.setdefault(kind, 0)
    return RunResult(config, faults, run.problems + report.problems, figures, run.observed,
                     seconds, workdir)


# --------------------------------------------------------------------------- shrinking


@dataclass
class ShrinkResult:
    faults: list[Fault]
    reproduced: bool  # some replay failed again (else: faults is the original list)
    replays: int
    seconds: float
    problems: list[str]  # of the shortest failing replay


def ddmin(items: list[Fault], fails: Callable[[list[Fault]], bool],
          out_of_time: Callable[[], bool]) -> list[Fault]:
    """Zeller's delta debugging: a 1-minimal failing sub-list, within the time allowed.

    ``fails(items)`` is assumed true for the list given.
    """
    n = 2
    while len(items) >= 2 and not out_of_time():
        chunk = math.ceil(len(items) / n)
        parts = [items[i:i + chunk] for i in range(0, len(items), chunk)]
        for part in parts:
            if out_of_time():
                return items
            if fails(part):
                items, n = part, 2
                break
        else:
            for i in range(len(parts)):
                if out_of_time():
                    return items
                rest = [f for j, p in enumerate(parts) if j != i for f in p]
                if fails(rest):
                    items, n = rest, max(n - 1, 2)
                    break
            else:
                if n >= len(items):
                    return items
                n = min(len(items), 2 * n)
    if len(items) == 1 and not out_of_time() and fails([]):
        return []
    return items


def shrink(config: ChaosConfig, faults: list[Fault], *, budget_s: float, workdir: Path,
           log: Callable[[str], None] = lambda _: None, tail_s: float = 8.0,
           replay: Callable[[ChaosConfig, list[Fault], Path], RunResult] | None = None,
           ) -> ShrinkResult:
    """The shortest sub-list of ``faults`` that still fails when replayed.

    A replay uses the same seed (so the same feed), and stops feeding
    ``tail_s`` seconds after its last fault is over: a shorter replay, whose
    command line (:func:`replay_command`) says so with ``--stop-at``.
    """
    started = time.monotonic()
    deadline = started + budget_s
    tried: dict[tuple[Fault, ...], bool] = {}
    best: dict[str, Any] = {"faults": faults, "problems": [], "reproduced": False}
    replays = 0

    def run_one(cfg: ChaosConfig, subset: list[Fault], where: Path) -> RunResult:
        return run_chaos(cfg, subset, workdir=where)

    replay = replay or run_one

    def fails(subset: list[Fault]) -> bool:
        nonlocal replays
        key = tuple(subset)
        if key in tried:
            return tried[key]
        replays += 1
        cfg = replay_config(config, subset, tail_s)
        where = workdir / f"replay-{replays}"
        result = replay(cfg, subset, where)
        tried[key] = not result.ok
        log(f"shrink: replay {replays} with {len(subset)} faults (stop at {cfg.end_s:g} s) "
            f"{'FAILS' if tried[key] else 'passes'} [{time.monotonic() - started:.0f} s]")
        if tried[key]:
            if len(subset) <= len(best["faults"]):
                best.update(faults=subset, problems=result.problems, reproduced=True)
        else:
            shutil.rmtree(where, ignore_errors=True)
        return tried[key]

    ddmin(list(faults), fails, lambda: time.monotonic() >= deadline)
    return ShrinkResult(list(best["faults"]), bool(best["reproduced"]), replays,
                        time.monotonic() - started, list(best["problems"]))


def replay_config(config: ChaosConfig, faults: list[Fault], tail_s: float = 8.0
                  ) -> ChaosConfig:
    """``config`` pinned for a replay: the planned length fixed, feeding cut short."""
    end = max((f.t + _busy_s(f) for f in faults), default=0.0) + tail_s
    return replace(config, duration_s=config.planned_s,
                   stop_at_s=round(min(config.end_s, end), 1))


def replay_command(config: ChaosConfig, faults: list[Fault]) -> str:
    """The command line that replays ``faults`` with ``config``."""
    args = ["python", "-m", "tests.chaos", "--seed", str(config.seed),
            "--dossiers", str(config.dossiers), "--agents", str(config.agents),
            "--duration", f"{config.planned_s:g}", "--profile", config.profile,
            "--batch", str(config.batch_min), str(config.batch_max),
            "--updates-per-dossier", f"{config.updates_per_dossier:g}"]
    if config.stop_at_s is not None:
        args += ["--stop-at", f"{config.stop_at_s:g}"]
    args += ["--faults", faults_to_json(faults)]
    return " ".join(shlex.quote(a) for a in args)


def format_figures(figures: dict[str, Any]) -> str:
    order = ["saved", "on_server", "lost", "duplicated", "never_saved", "wrong_content",
             "wrong_status", "wrong_owner", "verify_failures", "position_mismatches", "alerts",
             "agent_sigkills", "agent_sigkills_pending", "agent_sigkills_ack_in_flight",
             "agent_sigterm_restarts", "clock_jumps", "server_sigkills",
             "server_sigterm_restarts", "outages", "link_outages", "outage_ms",
             "lose_response_events", "lost_responses", "add_calls", "update_calls",
             "failed_adds", "failed_updates", "early_restarts", "faults", "drain_ms",
             "seconds"]
    keys = [k for k in order if k in figures] + sorted(k for k in figures if k not in order)
    return "\n".join(f"  {k:24} {figures[k]}" for k in keys)


def format_failure(result: RunResult, shrunk: ShrinkResult | None) -> str:
    lines = [f"CHAOS RUN FAILED: seed {result.config.seed}, {len(result.faults)} faults, "
             f"run directory {result.workdir}", "problems:"]
    lines += [f"  - {p}" for p in result.problems[:20]]
    lines += ["figures:", format_figures(result.figures)]
    if shrunk is None:
        faults, config = result.faults, result.config
        lines.append(f"fault list (not shrunk), {len(faults)} faults:")
    else:
        faults = shrunk.faults
        config = replay_config(result.config, faults) if shrunk.reproduced else result.config
        state = ("shortest failing fault list" if shrunk.reproduced
                 else "the failure did not reproduce in any replay; the original fault list")
        lines.append(f"{state} ({len(faults)} of {len(result.faults)} faults, "
                     f"{shrunk.replays} replays in {shrunk.seconds:.0f} s):")
        if shrunk.reproduced and shrunk.problems:
            lines += [f"  replay problem: {p}" for p in shrunk.problems[:5]]
    lines.append(faults_to_json(faults))
    lines.append("replay: " + replay_command(config, faults))
    return "\n".join(lines)


def run_and_shrink(config: ChaosConfig, *, workdir: Path, shrink_budget_s: float,
                   faults: list[Fault] | None = None,
                   log: Callable[[str], None] = lambda _: None
                   ) -> tuple[RunResult, ShrinkResult | None]:
    """Run; on failure, shrink the fault list within ``shrink_budget_s``."""
    result = run_chaos(config, faults, workdir=workdir / "run", log=log)
    if result.ok:
        return result, None
    log("\n".join(f"PROBLEM {p}" for p in result.problems[:20]))
    shrunk = None
    if shrink_budget_s > 0 and result.faults:
        log(f"shrinking {len(result.faults)} faults for up to {shrink_budget_s:g} s")
        shrunk = shrink(result.config, result.faults,
                        budget_s=shrink_budget_s, workdir=workdir / "shrink", log=log)
    return result, shrunk


def figures_json(result: RunResult) -> str:
    return json.dumps({"seed": result.config.seed, "config": asdict(result.config),
                       "figures": result.figures, "problems": result.problems},
                      ensure_ascii=False)

