"""The token bucket and the per-key buckets of server/rate_limit.py, at chosen times."""

from __future__ import annotations

import pytest

from quorumkv.errors import RateLimited, ResourceExhausted, from_dict
from quorumkv.server.rate_limit import KeyedBuckets, TokenBucket, rate_limited


def test_a_new_bucket_allows_a_burst_then_refuses() -> None:
    bucket = TokenBucket(rate=2.0, capacity=5, now=100.0)
    assert [bucket.take(100.0) for _ in range(5)] == [0.0] * 5
    # Empty: the next token is half a second away at 2 a second.
    assert bucket.take(100.0) == pytest.approx(0.5)
    # A refusal takes nothing: the wait shrinks with time, not with retries.
    assert bucket.take(100.0) == pytest.approx(0.5)
    assert bucket.take(100.25) == pytest.approx(0.25)


def test_tokens_come_back_at_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, capacity=5, now=0.0)
    for _ in range(5):
        bucket.take(0.0)
    assert bucket.take(0.5) == 0.0  # one token after 1/rate seconds
    assert bucket.take(0.5) > 0
    assert bucket.take(1.5) == 0.0  # two more by now (0.5 s -> 1.5 s at 2/s)
    assert bucket.take(1.5) == 0.0
    assert bucket.take(1.5) > 0


def test_an_idle_bucket_fills_to_its_capacity_only() -> None:
    bucket = TokenBucket(rate=10.0, capacity=3, now=0.0)
    bucket.take(0.0)
    assert not bucket.full(0.0)
    assert bucket.full(3600.0)
    assert [bucket.take(3600.0) for _ in range(3)] == [0.0] * 3
    assert bucket.take(3600.0) == pytest.approx(0.1)


def test_a_clock_stepping_back_neither_refills_nor_breaks() -> None:
    bucket = TokenBucket(rate=1.0, capacity=1, now=50.0)
    assert bucket.take(50.0) == 0.0
    assert bucket.take(10.0) == pytest.approx(1.0)  # earlier than before: nothing gained
    assert bucket.take(51.0) == 0.0  # and the original timeline still refills


def test_fractional_rates() -> None:
    bucket = TokenBucket(rate=0.5, capacity=1, now=0.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(2.0)
    assert bucket.take(1.0) == pytest.approx(1.0)
    assert bucket.take(2.0) == 0.0


@pytest.mark.parametrize(("rate", "capacity"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_nonsense_settings_are_refused(rate: float, capacity: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=rate, capacity=capacity, now=0.0)


def test_keyed_buckets_are_independent() -> None:
    buckets = KeyedBuckets(rate=1.0, capacity=2)
    assert buckets.take("a", 0.0) == 0.0
    assert buckets.take("a", 0.0) == 0.0
    assert buckets.take("a", 0.0) == pytest.approx(1.0)
    assert buckets.take("b", 0.0) == 0.0  # another key has its own burst
    assert buckets.take("a", 1.0) == 0.0


def test_keyed_buckets_forget_full_buckets_but_keep_active_ones() -> None:
    buckets = KeyedBuckets(rate=1.0, capacity=2)
    buckets.take("busy", 0.0)
    buckets.take("busy", 0.0)
    for i in range(KeyedBuckets._MIN_SWEEP - 1):
        buckets.take(f"once-{i}", 0.0)
    assert len(buckets) == KeyedBuckets._MIN_SWEEP
    # 1.5 s later every bucket that lost one token is full again; "busy" lost two.
    buckets.take("newcomer", 1.5)
    assert len(buckets) == 2
    # "busy" kept its state: half a token short of a second request.
    assert buckets.take("busy", 1.5) == 0.0
    assert buckets.take("busy", 1.5) == pytest.approx(0.5)


def test_keyed_buckets_sweep_rarely_when_every_key_stays_active() -> None:
    buckets = KeyedBuckets(rate=1.0, capacity=1)
    n = 3 * KeyedBuckets._MIN_SWEEP
    for i in range(n):
        buckets.take(str(i), 0.0)  # each bucket left empty: nothing can be forgotten
    assert len(buckets) == n
    assert buckets._sweep_at >= n  # the threshold grew instead of sweeping on every key


def test_the_error_names_the_settings_and_survives_the_wire() -> None:
    err = rate_limited(0.2504, 1.0, 5, "one connection")
    assert isinstance(err, ResourceExhausted) and err.code == "rate_limited"
    assert "max_requests_per_s 1" in err.message and "max_request_burst 5" in err.message
    assert err.retry_after_s == 0.25
    remote = from_dict(err.to_dict())
    assert isinstance(remote, RateLimited) and remote.remote
    assert remote.details["retry_after_s"] == 0.25
