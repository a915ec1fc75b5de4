"""The phi-accrual failure detector: suspicion grows with silence, adapts to jitter."""

from __future__ import annotations

import math
import random

import pytest

from quorumkv.cluster.failure_detector import (
    PHI_CAP,
    DetectorConfig,
    FailureDetector,
    Health,
    phi,
)


def _feed(fd: FailureDetector, peer: int, interval: float, count: int, *,
          jitter: float = 0.0, seed: int = 1, start: float = 0.0) -> float:
    rng = random.Random(seed)
    now = start
    for _ in range(count):
        now += max(0.001, interval + rng.uniform(-jitter, jitter))
        fd.heartbeat(peer, now)
    return now


def test_phi_grows_with_silence() -> None:
    values = [phi(t, mean=0.1, std=0.02) for t in (0.05, 0.1, 0.15, 0.2, 0.3)]
    assert values == sorted(values)
    assert values[1] == pytest.approx(-math.log10(0.5))
    assert phi(100.0, mean=0.1, std=0.01) == PHI_CAP


def test_a_regular_peer_is_active_then_inactive_then_failed_as_it_falls_silent() -> None:
    fd = FailureDetector(DetectorConfig(acceptable_pause=0.0, min_std=0.01, max_silence=60))
    last = _feed(fd, 2, interval=0.1, count=100, jitter=0.01)
    assert fd.health(2, last + 0.1) is Health.ACTIVE
    states = [fd.health(2, last + 0.1 + step * 0.002) for step in range(500)]
    first_inactive = states.index(Health.INACTIVE)
    first_failed = states.index(Health.FAILED)
    assert 0 < first_inactive < first_failed
    # Suspicion only grows with silence.
    order = [Health.ACTIVE, Health.INACTIVE, Health.FAILED]
    ranks = [order.index(s) for s in states]
    assert ranks == sorted(ranks)
    # A heartbeat brings it back.
    fd.heartbeat(2, last + 1.0)
    fd.heartbeat(2, last + 1.1)
    assert fd.health(2, last + 1.15) is Health.ACTIVE


def test_a_jittery_peer_is_given_more_slack_than_a_regular_one() -> None:
    steady, jittery = FailureDetector(), FailureDetector()
    t1 = _feed(steady, 1, interval=0.1, count=200, jitter=0.0)
    t2 = _feed(jittery, 1, interval=0.1, count=200, jitter=0.09)
    silence = 0.6
    steady_phi = steady.phi(1, t1 + silence)
    jittery_phi = jittery.phi(1, t2 + silence)
    assert steady_phi is not None and jittery_phi is not None
    assert jittery_phi < steady_phi


def test_long_silence_fails_a_peer_whatever_phi_says() -> None:
    fd = FailureDetector(DetectorConfig(max_silence=5.0, suspect_phi=500, failed_phi=900))
    last = _feed(fd, 3, interval=2.0, count=10, jitter=1.5)
    assert fd.health(3, last + 5.0) is Health.FAILED


def test_unknown_peers_are_failed_and_forgotten_peers_unknown() -> None:
    fd = FailureDetector()
    assert fd.phi(9, 1.0) is None and fd.health(9, 1.0) is Health.FAILED
    fd.heartbeat(9, 1.0)
    assert fd.health(9, 1.1) is Health.ACTIVE
    fd.forget(9)
    assert fd.last_seen(9, 2.0) is None


def test_no_false_suspicion_under_normal_jitter() -> None:
    """Heartbeats every 100 ms with +-40 ms jitter for 10 minutes: never suspected."""
    fd = FailureDetector()
    rng = random.Random(7)
    now = 0.0
    worst = 0.0
    for _ in range(6000):
        gap = 0.1 + rng.uniform(-0.04, 0.04)
        # Look just before the next heartbeat lands: the most suspicious moment.
        value = fd.phi(1, now + gap - 1e-6)
        if value is not None:
            worst = max(worst, value)
        now += gap
        fd.heartbeat(1, now)
    assert worst < fd.config.suspect_phi


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError):
        DetectorConfig(suspect_phi=10, failed_phi=5)
    with pytest.raises(ValueError):
        DetectorConfig(window=1)
