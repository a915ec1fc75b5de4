"""Latency percentiles for the benchmark."""

from __future__ import annotations

from dataclasses import dataclass

from quorumkv.tools.histogram import Histogram

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencySummary:
    """Milliseconds."""

    p50: float
    p90: float
    p99: float
    p999: float
    max: float
    mean: float
    stddev: float = 0.0

    @classmethod
    def of_histogram(cls, h: Histogram) -> LatencySummary:
        """Percentiles within a bucket's width (0.8 %), rounded up; max, mean, stddev exact."""
        p50, p90, p99, p999 = (h.percentile_ms(p) for p in PERCENTILES)
        return cls(p50=p50, p90=p90, p99=p99, p999=p999, max=h.max_us / 1000.0,
                   mean=h.mean_ms, stddev=h.stddev_ms)

    def to_json(self) -> dict[str, float]:
        return {"p50": round(self.p50, 3), "p90": round(self.p90, 3), "p99": round(self.p99, 3),
                "p99.9": round(self.p999, 3), "max": round(self.max, 3),
                "mean": round(self.mean, 3), "stddev": round(self.stddev, 3)}
