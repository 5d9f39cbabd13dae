"""Fitting requests to the link: batch budgets, timeouts and waits.

Pure logic; time and measurements are arguments (no clock is read here).

The model: a request of ``n`` bytes takes about ``rtt + n / rate`` seconds.
``rate`` (uplink bytes per second) and ``rtt`` are smoothed from completed
requests. Each request should carry ``target_airtime_s`` of data, so the
budget grows while requests succeed quickly and halves after a timeout or a
reset (additive-increase/multiplicative-decrease would be too slow to find a
link that changes from 2G to DSL; this grows by half each time instead).
Timeouts follow the payload size and the observed rate, with generous slack,
because a timeout on a slow link wastes everything sent so far.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["LinkPacer", "PacingConfig", "full_jitter"]


@dataclass(frozen=True)
class PacingConfig:
    target_airtime_s: float = 3.0
    min_budget_bytes: int = 1_500
    max_budget_bytes: int = 1_000_000
    initial_budget_bytes: int = 12_000
    initial_rate_bps: float = 6_000.0  # bytes/s: a 48 kbit/s uplink, the worst case we serve
    initial_rtt_s: float = 0.6
    min_timeout_s: float = 15.0
    max_timeout_s: float = 600.0
    timeout_slack: float = 3.0  # allow the link to be this many times slower than measured
    smoothing: float = 0.3


class LinkPacer:
    """Per-link state: how big the next batch may be and how long to wait for it."""

    def __init__(self, config: PacingConfig | None = None) -> None:
        self.config = config or PacingConfig()
        self.rate_bps = self.config.initial_rate_bps
        self.rtt_s = self.config.initial_rtt_s
        self.budget_bytes = self.config.initial_budget_bytes
        self.compression_ratio = 0.08  # compressed / raw, learned from batches

    def raw_budget_bytes(self) -> int:
        """Uncompressed record bytes to put in the next batch."""
        return max(1, int(self.budget_bytes / max(self.compression_ratio, 0.01)))

    def timeout_s(self, request_bytes: int) -> float:
        """How long to wait for the answer to a request of ``request_bytes``."""
        expected = 2 * self.rtt_s + request_bytes / self.rate_bps
        cfg = self.config
        return min(cfg.max_timeout_s, max(cfg.min_timeout_s, expected * cfg.timeout_slack + 5))

    def on_success(self, request_bytes: int, elapsed_s: float, raw_bytes: int = 0) -> None:
        """A request of ``request_bytes`` was answered after ``elapsed_s``."""
        cfg, a = self.config, self.config.smoothing
        if raw_bytes > 0:
            self.compression_ratio += a * (request_bytes / raw_bytes - self.compression_ratio)
        if request_bytes < 600:  # a tiny request measures the round trip
            self.rtt_s += a * (elapsed_s - self.rtt_s)
        else:
            transfer_s = max(elapsed_s - self.rtt_s, elapsed_s * 0.2, 1e-3)
            self.rate_bps += a * (request_bytes / transfer_s - self.rate_bps)
        target = self.rate_bps * cfg.target_airtime_s
        if elapsed_s < cfg.target_airtime_s * 1.5:
            self.budget_bytes = int(min(self.budget_bytes * 1.5, max(target, self.budget_bytes)))
        else:
            self.budget_bytes = int(min(self.budget_bytes, target))
        self.budget_bytes = min(cfg.max_budget_bytes, max(cfg.min_budget_bytes, self.budget_bytes))

    def on_failure(self) -> None:
        """A timeout or reset: halve the budget (a smaller request may get through)."""
        self.budget_bytes = max(self.config.min_budget_bytes, self.budget_bytes // 2)


def full_jitter(attempt: int, base_s: float, cap_s: float, rng: random.Random,
                retry_after_s: float | None = None) -> float:
    """Full-jitter exponential backoff, or, when the server said when to come
    back (``Retry-After``, capped), that time plus up to 20 % jitter.

    A server that answers with ``Retry-After`` is up and spreading its callers
    itself (``503 busy`` in a reconnection storm): growing the wait on top of
    it would only leave it idle while agents sleep. ``attempt`` counts from 1.
    """
    if retry_after_s is not None:
        return float(min(retry_after_s, cap_s) * rng.uniform(1.0, 1.2))
    ceiling = min(cap_s, base_s * 2 ** min(attempt - 1, 32))
    return float(rng.uniform(0, ceiling))
