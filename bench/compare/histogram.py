"""What a load process measured, and merging several processes' measurements.

The latency histogram itself (fixed log-linear buckets that several
processes can merge exactly) lives in ``src/quorumkv/tools/histogram.py``,
shared with ``quorumkv bench``. That file is standard library only, so the
load generator can use it under the other systems' interpreters too, where
quorumkv is not installed: there it is loaded by its path in this checkout.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from quorumkv.tools.histogram import Histogram, bucket_bounds, bucket_of
except ImportError:
    _PATH = Path(__file__).resolve().parents[2] / "src" / "quorumkv" / "tools" / "histogram.py"
    _spec = importlib.util.spec_from_file_location("_quorumkv_tools_histogram", _PATH)
    if _spec is None or _spec.loader is None:
        raise
    _module = importlib.util.module_from_spec(_spec)
    # Registered before it runs: dataclasses look their module up in sys.modules.
    sys.modules[_spec.name] = _module
    _spec.loader.exec_module(_module)
    Histogram = _module.Histogram
    bucket_bounds = _module.bucket_bounds
    bucket_of = _module.bucket_of

__all__ = ["Histogram", "Measurement", "bucket_bounds", "bucket_of", "merge"]


@dataclass(slots=True)
class Measurement:
    """What one measured window produced, in one load process or merged over several."""

    ops: int = 0
    """Requests that started and finished inside the window."""
    errors: Counter[str] = field(default_factory=Counter)
    """Failed requests inside the window, by exception type."""
    window_s: float = 0.0
    workers: int = 0
    histogram: Histogram = field(default_factory=Histogram)
    client_cpu_s: float = 0.0
    """CPU time the load processes used inside the window: what the client library costs."""

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.window_s if self.window_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_json(self) -> dict[str, Any]:
        return {"ops": self.ops, "errors": dict(self.errors), "window_s": self.window_s,
                "workers": self.workers, "histogram": self.histogram.to_json(),
                "client_cpu_s": self.client_cpu_s}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Measurement:
        return cls(ops=int(data["ops"]), errors=Counter(data["errors"]),
                   window_s=float(data["window_s"]), workers=int(data["workers"]),
                   histogram=Histogram.from_json(data["histogram"]),
                   client_cpu_s=float(data.get("client_cpu_s", 0.0)))


def merge(parts: Iterable[Measurement]) -> Measurement:
    """Processes that measured the same window side by side, as one measurement.

    The window is shared (every process was given the same wall-clock start
    and end), so operations add up over it rather than averaging rates; a
    process that measured a shorter window would make the sum overstate the
    rate, so the longest window reported is used.
    """
    out = Measurement()
    for part in parts:
        out.ops += part.ops
        out.errors.update(part.errors)
        out.window_s = max(out.window_s, part.window_s)
        out.workers += part.workers
        out.histogram.merge(part.histogram)
        out.client_cpu_s += part.client_cpu_s
    return out
