"""What an operator sees of a running server: request ids, JSON logs, metrics.

:func:`install_observability` adds to an app:

* an outermost middleware that gives every request an id: the client's
  ``X-Request-Id`` if it is short and plain, else a new one. The id is handed
  down as that header (so ``errors_middleware`` logs a failure under it),
  returned in the response, and stamped on every log line written while the
  request runs. One access line per request goes to ``syncd.access``.
* ``GET /metrics`` in the Prometheus text format, from a registry of the
  app's own, so several apps in one process never share a counter.

Invariants: metrics are counts and durations, nothing else. Label values
come from fixed sets or from the server itself (route patterns, status
classes, alert kinds), never from what a request carries: no dossier field,
key or token can reach the page, and a scanner cannot make it grow. A log
line carries a request's method, path (without query), status and time,
never its body or headers.

Batches are counted by outcome, decided from the server's own reply (``ok``,
``conflict``: an ack with a conflict verdict; ``gap``; ``busy``: turned away
by admission; ``refused``: any other 4xx; ``error``: any other 5xx). Their
records are counted only when the batch was authenticated and opened (ok,
conflict, gap), since a refused batch's header is the sender's word.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import secrets
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from protocol import Ack, ErrorCode, ProtocolError
from protocol.messages import Limits, decode_envelope, decode_error

from .store import Store

__all__ = ["METRICS", "OUTCOMES", "STALENESS", "Fleet", "JsonFormatter", "Metrics",
           "install_observability", "json_log_handler", "record_outcomes", "summarize_fleet"]

access_log = logging.getLogger("syncd.access")

REQUEST_ID_HEADER = "X-Request-Id"
OUTCOMES = ("ok", "gap", "conflict", "refused", "busy", "error")
STALENESS = ("<1h", "1h-24h", ">24h", "never")
_BATCHES = "/v1/batches"
_INGEST_ROUTES = frozenset({_BATCHES, "/v1/documents/chunk"})
# A batch on a 2G link may take most of a minute to arrive at the slowest allowed pace.
_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_PLAIN_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_current_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "syncd_request_id", default=None)


# -- logs ------------------------------------------------------------------------------------

_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, None, None, None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, then the
    fields given with ``extra=``; a traceback, if any, under ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        request_id = getattr(record, "request_id", None) or _current_id.get()
        if request_id:
            line["request_id"] = request_id
        line.update((k, v) for k, v in vars(record).items()
                    if k not in _RECORD_FIELDS and k not in line)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def json_log_handler(stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing JSON lines to ``stream`` (default: stderr), for the CLI."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    return handler


# -- what the fleet reported, summed at scrape time ---------------------------------------------

@dataclass(frozen=True)
class Fleet:
    """Agents and alerts as counts; revoked agents are counted apart only."""

    staleness: Mapping[str, int]
    revoked: int
    alerts: Mapping[str, int]
    queued_records: int
    queued_records_max: int
    oldest_unsent_s_max: float


def _staleness(last_seen: str | datetime | None, now: datetime) -> str:
    if last_seen is None:
        return "never"
    seen = last_seen if isinstance(last_seen, datetime) else datetime.fromisoformat(last_seen)
    age_s = (now - (seen if seen.tzinfo else seen.replace(tzinfo=UTC))).total_seconds()
    return "<1h" if age_s < 3600 else "1h-24h" if age_s < 86400 else ">24h"


def summarize_fleet(agents: list[dict[str, Any]], alerts: list[dict[str, Any]],
                    now: datetime) -> Fleet:
    """Count ``Store.agents()`` and ``Store.alerts()`` rows as of ``now`` (server clock).

    A revoked agent is left out of staleness and queues: it will never catch
    up, and would otherwise hold those gauges up for ever.
    """
    staleness = dict.fromkeys(STALENESS, 0)
    depths: list[int] = []
    oldest: list[float] = []
    for agent in agents:
        if agent["revoked"]:
            continue
        staleness[_staleness(agent["last_seen"], now)] += 1
        depths.append(int(agent.get("queue_depth") or 0))
        oldest.append(float(agent.get("oldest_unsent_s") or 0))
    return Fleet(staleness, sum(1 for a in agents if a["revoked"]),
                 dict(Tally(str(a["kind"]) for a in alerts)), sum(depths),
                 max(depths, default=0), max(oldest, default=0.0))


class _FleetCollector(Collector):
    """Serves the last :class:`Fleet` the /metrics handler computed."""

    def __init__(self) -> None:
        self.fleet = Fleet(dict.fromkeys(STALENESS, 0), 0, {}, 0, 0, 0.0)

    def collect(self) -> Iterator[Metric]:
        fleet = self.fleet
        agents = GaugeMetricFamily("syncd_agents", "Agents not revoked, by how long ago the "
                                   "server last heard from them (server clock)",
                                   labels=["staleness"])
        for bucket in STALENESS:
            agents.add_metric([bucket], fleet.staleness[bucket])
        yield agents
        yield GaugeMetricFamily("syncd_agents_revoked", "Agents revoked by an operator",
                                value=fleet.revoked)
        alerts = GaugeMetricFamily("syncd_alerts", "Alerts held for operators, by kind",
                                   labels=["kind"])
        for kind, count in sorted(fleet.alerts.items()):
            alerts.add_metric([kind], count)
        yield alerts
        yield GaugeMetricFamily("syncd_agent_queued_records", "Records waiting in the queues "
                                "of agents not revoked, summed, as last reported",
                                value=fleet.queued_records)
        yield GaugeMetricFamily("syncd_agent_queued_records_max", "The longest queue an agent "
                                "not revoked last reported", value=fleet.queued_records_max)
        yield GaugeMetricFamily("syncd_agent_oldest_unsent_seconds_max", "The oldest unsent "
                                "record's age an agent not revoked last reported",
                                value=fleet.oldest_unsent_s_max)


# -- what the server answered ------------------------------------------------------------------

def record_outcomes(outcome: str, first_seq: int, count: int, ack: Ack | None
                    ) -> dict[str, int]:
    """What became of the records of one authenticated batch, by outcome.

    ``refused`` records are those held with a verdict (quarantined). From a
    conflict on, the batch's records are not applied: they count as
    ``conflict``. A resent batch counts again.
    """
    if outcome == "gap":
        return {"gap": count}
    if ack is None or outcome not in ("ok", "conflict"):
        return {}
    end = first_seq + count  # one past the last record
    conflicts = [v.seq for v in ack.verdicts if v.code == ErrorCode.CONFLICT]
    applied_end = max(first_seq, min([end, *conflicts]))
    refused = sum(1 for v in ack.verdicts
                  if v.code != ErrorCode.CONFLICT and first_seq <= v.seq < applied_end)
    counts = {"ok": applied_end - first_seq - refused, "refused": refused}
    if conflicts:
        counts["conflict"] = end - applied_end
    return counts


# What the batch handler saw, left on the request for :meth:`Metrics.observe`.
BATCH_HEADER = web.RequestKey("batch_header", tuple)  # (first_seq, count), once authenticated
BATCH_ACK = web.RequestKey("batch_ack", Ack)


def _reply(response: web.StreamResponse | None) -> bytes | None:
    """The message inside one of the server's own signed replies."""
    body = getattr(response, "body", None)
    if not isinstance(body, bytes):
        return None
    try:
        return decode_envelope(body, Limits(max_body_bytes=max(1, len(body)))).signed
    except ProtocolError:
        return None


def _batch_outcome(request: web.Request, status: int,
                   response: web.StreamResponse | None) -> tuple[str, Ack | None]:
    ack = request.get(BATCH_ACK)
    if status == 200 and ack is not None:
        conflict = any(v.code == ErrorCode.CONFLICT for v in ack.verdicts)
        return ("conflict" if conflict else "ok"), ack
    reply = _reply(response) if status != 200 else None
    try:
        code = decode_error(reply).code if reply is not None else None
    except ProtocolError:
        code = None
    if code == ErrorCode.GAP:
        return "gap", None
    if code == ErrorCode.BUSY:
        return "busy", None
    return ("refused" if 400 <= status < 500 else "error"), None


class Metrics:
    """The app's registry and instruments."""

    def __init__(self, store: Store, clock: Callable[[], datetime]) -> None:
        self._store, self._clock = store, clock
        self.registry = CollectorRegistry()
        self.batches = Counter("syncd_ingest_batches", "Batches answered, by outcome",
                               ["outcome"], registry=self.registry)
        self.records = Counter("syncd_ingest_records", "Records of authenticated batches, by "
                               "outcome (refused: held with a verdict)", ["outcome"],
                               registry=self.registry)
        for outcome in OUTCOMES:
            self.batches.labels(outcome)
            if outcome in ("ok", "gap", "conflict", "refused"):
                self.records.labels(outcome)
        self.latency = Histogram("syncd_ingest_duration_seconds", "Time to answer an ingest "
                                 "request, body included", ["route"],
                                 buckets=_LATENCY_BUCKETS_S, registry=self.registry)
        self.responses = Counter("syncd_http_responses", "HTTP responses, by route pattern "
                                 "and status class", ["route", "status_class"],
                                 registry=self.registry)
        self._fleet = _FleetCollector()
        self.registry.register(self._fleet)

    async def refresh(self) -> None:
        """Read the store's agents and alerts into the scrape-time gauges."""
        agents, alerts = await self._store.agents(), await self._store.alerts()
        self._fleet.fleet = summarize_fleet(agents, alerts, self._clock())

    async def observe(self, request: web.Request, status: int, elapsed_s: float,
                      response: web.StreamResponse | None) -> None:
        route = _route(request)
        self.responses.labels(route, f"{status // 100}xx").inc()
        if route in _INGEST_ROUTES:
            self.latency.labels(route).observe(elapsed_s)
        if route != _BATCHES or status == 499:
            return
        outcome, ack = _batch_outcome(request, status, response)
        self.batches.labels(outcome).inc()
        if outcome in ("ok", "conflict", "gap") and (header := request.get(BATCH_HEADER)):
            for label, count in record_outcomes(outcome, *header, ack).items():
                self.records.labels(label).inc(max(0, count))


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


METRICS = web.AppKey("metrics", Metrics)


# -- the middleware and the page ---------------------------------------------------------------

def _request_id(offered: str | None) -> str:
    return offered if offered and _PLAIN_ID.fullmatch(offered) else secrets.token_hex(6)


def _log_request(request: web.Request, request_id: str, status: int, elapsed_s: float) -> None:
    path = request.rel_url.raw_path[:200]  # still percent-encoded; never the query
    ms = round(elapsed_s * 1000, 1)
    access_log.log(logging.WARNING if status >= 500 else logging.INFO, "%s %s %d %.1f ms",
                   request.method, path, status, ms,
                   extra={"request_id": request_id, "method": request.method, "path": path,
                          "status": status, "ms": ms})


@web.middleware
async def observe_requests(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                           ) -> web.StreamResponse:
    offered = request.headers.get(REQUEST_ID_HEADER)
    request_id = _request_id(offered)
    if offered != request_id:
        headers = CIMultiDict(request.headers)
        headers[REQUEST_ID_HEADER] = request_id
        request = request.clone(headers=headers)
    token = _current_id.set(request_id)
    started = time.perf_counter()
    response: web.StreamResponse | None = None
    status = 500  # unless an answer or an HTTP exception says otherwise
    try:
        response = await handler(request)
        status = response.status
        response.headers[REQUEST_ID_HEADER] = request_id
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers[REQUEST_ID_HEADER] = request_id
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away first (nginx's convention)
        raise
    finally:
        elapsed_s = time.perf_counter() - started
        _current_id.reset(token)
        _log_request(request, request_id, status, elapsed_s)
        await request.config_dict[METRICS].observe(request, status, elapsed_s, response)


async def get_metrics(request: web.Request) -> web.Response:
    metrics = request.config_dict[METRICS]
    await metrics.refresh()
    return web.Response(body=generate_latest(metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def _utc_now() -> datetime:
    return datetime.now(UTC)


def install_observability(app: web.Application, store: Store, *,
                          clock: Callable[[], datetime] = _utc_now) -> None:
    """Add request ids, access logs and ``GET /metrics`` to ``app``.

    Call it at the end of ``make_app``: its middleware goes in front of the
    others, so it sees every answer, refusals and ``busy`` included.

    Args:
        app: the application, not yet started.
        store: where agents and alerts are read at scrape time.
        clock: the server's wall clock, for how long ago agents were seen.
    """
    app[METRICS] = Metrics(store, clock)
    app.middlewares.insert(0, observe_requests)
    app.router.add_get("/metrics", get_metrics)
