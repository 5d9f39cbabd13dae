"""Pacing decisions, with time as an argument."""

from __future__ import annotations

import random

from client.pacing import LinkPacer, PacingConfig, full_jitter


def test_budget_grows_while_requests_are_quick_and_halves_on_failure() -> None:
    pacer = LinkPacer(PacingConfig(initial_budget_bytes=10_000, initial_rate_bps=6_000))
    pacer.on_success(10_000, 2.0)
    assert pacer.budget_bytes > 10_000
    grown = pacer.budget_bytes
    pacer.on_failure()
    assert pacer.budget_bytes == grown // 2


def test_budget_settles_near_a_few_seconds_of_airtime() -> None:
    pacer = LinkPacer(PacingConfig(target_airtime_s=3.0))
    rate = 12_500.0  # EDGE uplink, bytes/s
    for _ in range(30):
        size = pacer.budget_bytes
        pacer.on_success(size, 0.4 + size / rate)
    assert 0.5 * 3.0 * rate <= pacer.budget_bytes <= 1.6 * 3.0 * rate
    assert abs(pacer.rate_bps - rate) / rate < 0.35


def test_timeouts_follow_payload_and_rate() -> None:
    pacer = LinkPacer()
    small, big = pacer.timeout_s(1_000), pacer.timeout_s(600_000)
    assert small >= pacer.config.min_timeout_s
    assert big > small
    assert big >= 600_000 / pacer.rate_bps  # never shorter than the airtime itself
    pacer.rate_bps = 1_000_000.0
    assert pacer.timeout_s(600_000) < big


def test_learns_the_compression_ratio() -> None:
    pacer = LinkPacer()
    for _ in range(20):
        pacer.on_success(5_000, 1.0, raw_bytes=100_000)
    assert abs(pacer.compression_ratio - 0.05) < 0.01
    assert pacer.raw_budget_bytes() > pacer.budget_bytes


def test_full_jitter_stays_within_its_ceiling_and_cap() -> None:
    rng = random.Random(1)
    for attempt in range(1, 12):
        waits = [full_jitter(attempt, 1.0, 60.0, rng) for _ in range(200)]
        ceiling = min(60.0, 2 ** (attempt - 1))
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling * 0.7  # jitter spreads over the whole range


def test_retry_after_is_honoured_and_capped() -> None:
    rng = random.Random(2)
    assert all(full_jitter(1, 1.0, 60.0, rng, retry_after_s=20) >= 20 for _ in range(100))
    assert all(full_jitter(1, 1.0, 60.0, rng, retry_after_s=3600) <= 72 for _ in range(100))
    # Many failures in a row do not stretch a server's Retry-After (a storm
    # drains at the pace the server sets), but the jitter still spreads callers.
    waits = [full_jitter(30, 1.0, 60.0, rng, retry_after_s=3) for _ in range(200)]
    assert all(3 <= w <= 3.6 for w in waits) and max(waits) - min(waits) > 0.3
