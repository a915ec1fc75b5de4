"""Request rate limits: a token bucket, and one bucket per key (a client address).

Pure: the caller passes the time (any monotonic clock, in seconds), so the
arithmetic is tested without sleeping. The client port keeps one bucket per
connection (client_api.py); the HTTP port, whose clients may open a
connection per request, one per client address (http_server.py).

A bucket holds at most ``capacity`` tokens and gains ``rate`` a second; a
request takes one. A request finding none is refused at once with how long
until one is there, never queued: a queued request would hold memory and a
task for a client that is already sending too much.
"""

from __future__ import annotations

from typing import Final

from quorumkv.errors import RateLimited


class TokenBucket:
    __slots__ = ("_stamp", "_tokens", "capacity", "rate")

    def __init__(self, rate: float, capacity: int, now: float) -> None:
        if not rate > 0 or capacity < 1:
            raise ValueError("a token bucket needs a positive rate and capacity")
        self.rate = rate
        self.capacity = capacity
        self._tokens = float(capacity)  # a new client may start with a burst
        self._stamp = now

    def _refill(self, now: float) -> None:
        elapsed = now - self._stamp
        if elapsed > 0:  # a clock that steps back refills nothing rather than draining
            self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
            self._stamp = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 if there was one, else the seconds until there will be
        (nothing is taken then)."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def full(self, now: float) -> bool:
        """Whether the bucket is as a new one would be (so it can be forgotten)."""
        self._refill(now)
        return self._tokens >= self.capacity


def rate_limited(retry_after: float, rate: float, burst: int, who: str) -> RateLimited:
    """The error for a request refused by a bucket of ``rate``/``burst``."""
    return RateLimited(f"more requests than the rate limit for {who} (max_requests_per_s "
                       f"{rate:g}, max_request_burst {burst}); retry after "
                       f"{retry_after:.3f} s", retry_after_s=round(retry_after, 3),
                       limit=rate)


class KeyedBuckets:
    """One token bucket per key, forgetting full ones so memory follows the keys active
    within the last ``capacity / rate`` seconds, not every key ever seen."""

    _MIN_SWEEP: Final = 1024

    def __init__(self, rate: float, capacity: int) -> None:
        self.rate = rate
        self.capacity = capacity
        self._buckets: dict[str, TokenBucket] = {}
        self._sweep_at = self._MIN_SWEEP

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> float:
        """As :meth:`TokenBucket.take`, from ``key``'s bucket."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._sweep_at:
                self._sweep(now)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.capacity, now)
        return bucket.take(now)

    def _sweep(self, now: float) -> None:
        self._buckets = {k: b for k, b in self._buckets.items() if not b.full(now)}
        # Doubling keeps the sweeps' cost constant per new key however many stay active.
        self._sweep_at = max(self._MIN_SWEEP, 2 * len(self._buckets))
