"""Latency histograms that several load processes can merge without losing accuracy.

A measurement may run in several processes (one Python process cannot load
a cluster much beyond 12-15k requests/s), and percentiles cannot be averaged:
the p99 of two processes is not the mean of their p99s. So each process
records every latency into a histogram with fixed bucket boundaries, ships
the bucket counts as JSON, and the coordinator adds the counts and reads the
percentiles off the sum. Because every process uses the same boundaries, the
merged histogram is exactly the histogram of all the samples together.

The buckets are log-linear, as in HdrHistogram: one bucket per microsecond
below 256 us, then 128 buckets per power of two, so any latency is known to
within 1/128 (under 0.8 %) however long it is, in a few hundred buckets.
The sum and the sum of squares are kept exactly (whole microseconds), so the
mean and the standard deviation are exact too, not read off the buckets.

Standard library only, and nothing else of quorumkv: ``bench/compare`` loads
this file by path under the other systems' interpreters, where quorumkv is
not installed.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

SUB_BUCKET_BITS = 8
LINEAR_LIMIT = 1 << SUB_BUCKET_BITS
"""Below this many microseconds every microsecond has its own bucket."""
HALF = LINEAR_LIMIT >> 1


def bucket_of(micros: int) -> int:
    """The bucket holding a latency of ``micros`` whole microseconds."""
    if micros < LINEAR_LIMIT:
        return max(micros, 0)
    shift = micros.bit_length() - SUB_BUCKET_BITS
    top = micros >> shift  # in [HALF, LINEAR_LIMIT)
    return LINEAR_LIMIT + (shift - 1) * HALF + (top - HALF)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The smallest and largest latency (microseconds) that fall into bucket ``index``."""
    if index < LINEAR_LIMIT:
        return index, index
    shift, offset = divmod(index - LINEAR_LIMIT, HALF)
    shift += 1
    top = HALF + offset
    return top << shift, ((top + 1) << shift) - 1


@dataclass(slots=True)
class Histogram:
    counts: Counter[int] = field(default_factory=Counter)
    total: int = 0
    min_us: int = 0
    max_us: int = 0
    sum_us: int = 0
    sum_sq_us: int = 0
    """Sum of squared microseconds: Python integers do not overflow, so it stays exact."""

    def record(self, seconds: float) -> None:
        micros = max(round(seconds * 1e6), 0)
        self.counts[bucket_of(micros)] += 1
        if self.total == 0 or micros < self.min_us:
            self.min_us = micros
        self.max_us = max(self.max_us, micros)
        self.total += 1
        self.sum_us += micros
        self.sum_sq_us += micros * micros

    def merge(self, other: Histogram) -> None:
        if other.total == 0:
            return
        self.counts.update(other.counts)
        self.min_us = other.min_us if self.total == 0 else min(self.min_us, other.min_us)
        self.max_us = max(self.max_us, other.max_us)
        self.total += other.total
        self.sum_us += other.sum_us
        self.sum_sq_us += other.sum_sq_us

    def percentile_ms(self, p: float) -> float:
        """Nearest rank, reported as the largest latency its bucket can hold.

        Rounding up, never down, means a percentile is never better than
        some request really saw by more than the bucket width; it is clipped
        to the recorded maximum so that p100 is the true maximum.
        """
        if self.total == 0:
            return 0.0
        rank = min(max(1, math.ceil(p / 100.0 * self.total)), self.total)
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                _, high = bucket_bounds(index)
                return min(max(high, self.min_us), self.max_us) / 1000.0
        raise AssertionError("bucket counts do not add up to the total")

    @property
    def mean_ms(self) -> float:
        return self.sum_us / self.total / 1000.0 if self.total else 0.0

    @property
    def stddev_ms(self) -> float:
        """The population standard deviation (as etcd's report computes it)."""
        if self.total == 0:
            return 0.0
        # Integer arithmetic until the last step: n*sum(x^2) - sum(x)^2 is exact and >= 0.
        spread = self.total * self.sum_sq_us - self.sum_us * self.sum_us
        return math.sqrt(max(spread, 0)) / self.total / 1000.0

    def to_json(self) -> dict[str, Any]:
        # JSON object keys are strings; bucket indexes come back as ints in from_json.
        return {"counts": {str(k): v for k, v in sorted(self.counts.items())},
                "total": self.total, "min_us": self.min_us, "max_us": self.max_us,
                "sum_us": self.sum_us, "sum_sq_us": self.sum_sq_us}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Histogram:
        counts: Counter[int] = Counter({int(k): int(v) for k, v in data["counts"].items()})
        h = cls(counts=counts, total=int(data["total"]), min_us=int(data["min_us"]),
                max_us=int(data["max_us"]), sum_us=int(data["sum_us"]),
                sum_sq_us=int(data["sum_sq_us"]))
        if sum(counts.values()) != h.total:
            raise ValueError("histogram counts do not add up to its total")
        return h
