"""The built-in load generator behind ``quorumkv bench`` (and ``quorumkv check perf``).

A run has up to four phases:

1. *prefill* (workloads that read: get, mixed, txn, range): every key of
   the key space is written once, in batches, so reads find values;
2. *start*: the load processes open and check their connections (and the
   watch workload its watches);
3. *warm-up* (1 s by default): the workers already run, the leader's caches
   fill, but nothing is counted;
4. *measure*: for ``duration`` seconds, or until ``requests`` requests.

The workloads (bench_load.py): ``put``; ``get``; ``mixed`` (gets and puts,
``read_ratio`` of them gets); ``txn`` (compare-and-swap: read a key's
mod_revision, then put only if it is unchanged; a lost race is a conflict,
counted apart from errors); ``range`` (a scan of ``range_limit`` keys from a
chosen key); ``watch`` (``watchers`` watches on a prefix while the workers
put values stamped with their send time; each delivery is timed from the
stamp). Keys are drawn uniformly or from a Zipf law (keyspace.py); the
loop is closed (``clients`` workers each with one request in flight) or
open (``rate`` requests per second, latency corrected for coordinated
omission; bench_engine.py); ``procs`` load processes share one window
(bench_procs.py). The engine shows nothing: :meth:`BenchRun.progress` lets
a front end draw.
"""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from quorumkv.tools.bench_engine import Tally, merge_tallies
from quorumkv.tools.bench_load import LoadProcess, prefill, run_value, shares
from quorumkv.tools.bench_options import (
    GET_LEVELS,
    KEY_PREFIX,
    PUT_LEVELS,
    WORKERS_PER_CONNECTION,
    WORKLOADS,
    BenchOptions,
)
from quorumkv.tools.bench_procs import ProcessGroup
from quorumkv.tools.latency import LatencySummary

__all__ = ["GET_LEVELS", "KEY_PREFIX", "PUT_LEVELS", "WORKERS_PER_CONNECTION", "WORKLOADS",
           "BenchOptions", "BenchReport", "BenchRun", "OpSummary", "Phase"]


@dataclass(frozen=True, slots=True, kw_only=True)
class OpSummary:
    ops: int
    latency: LatencySummary

    def to_json(self, elapsed_s: float) -> dict[str, Any]:
        return {"ops": self.ops,
                "ops_per_s": round(self.ops / elapsed_s, 1) if elapsed_s > 0 else 0.0,
                "latency_ms": self.latency.to_json()}


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchReport:
    options: BenchOptions
    ops: int
    """Requests that succeeded inside the measured window (watch: deliveries)."""
    errors: dict[str, int]
    """Failed requests inside the window, by error code."""
    elapsed_s: float
    latency: LatencySummary
    seed: int = 0
    connections: int = 0
    conflicts: int = 0
    """txn: answered compare-and-swaps whose compare failed (part of ``ops``)."""
    backlog: int = 0
    """Open loop: requests due inside the window that no worker was free to send."""
    by_op: dict[str, OpSummary] = field(default_factory=dict)
    writes: OpSummary | None = None
    """watch: the puts the deliveries came from."""

    @classmethod
    def of(cls, options: BenchOptions, tally: Tally, seed: int) -> BenchReport:
        writes = (OpSummary(ops=tally.writes.total,
                            latency=LatencySummary.of_histogram(tally.writes))
                  if options.workload == "watch" else None)
        return cls(options=options, ops=tally.ops, errors=dict(tally.errors),
                   elapsed_s=tally.elapsed_s,
                   latency=LatencySummary.of_histogram(tally.overall()), seed=seed,
                   connections=tally.connections, conflicts=tally.conflicts,
                   backlog=tally.backlog,
                   by_op={k: OpSummary(ops=h.total, latency=LatencySummary.of_histogram(h))
                          for k, h in sorted(tally.by_kind.items())},
                   writes=writes)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_json(self) -> dict[str, Any]:
        o = self.options
        return {"workload": o.workload, "consistency": o.consistency, "clients": o.clients,
                "connections": self.connections or o.connections, "procs": o.procs,
                "mode": "open" if o.open_loop else "closed", "rate": o.rate,
                "key_size": o.key_size, "value_size": o.value_size, "keys": o.keys,
                "key_dist": o.key_dist,
                "zipf_s": o.zipf_s if o.key_dist == "zipfian" else None,
                "seed": self.seed, "warmup_s": o.warmup,
                "read_ratio": o.read_ratio if o.workload == "mixed" else None,
                "range_limit": o.range_limit if o.workload == "range" else None,
                "watchers": o.watchers if o.workload == "watch" else None,
                "elapsed_s": round(self.elapsed_s, 3), "ops": self.ops,
                "ops_per_s": round(self.ops_per_s, 1), "errors": self.error_count,
                "errors_by_code": dict(self.errors), "conflicts": self.conflicts,
                "backlog": self.backlog if o.open_loop else None,
                "latency_ms": self.latency.to_json(),
                "by_op": {k: s.to_json(self.elapsed_s) for k, s in self.by_op.items()},
                "writes": (self.writes.to_json(self.elapsed_s) if self.writes is not None
                           else None)}


class Phase(enum.Enum):
    PREFILL = "prefill"
    START = "start"
    WARMUP = "warm-up"
    MEASURE = "measure"
    DONE = "done"


class BenchRun:
    """One benchmark run; :meth:`run` it once."""

    def __init__(self, options: BenchOptions) -> None:
        self.options = options
        self.seed = options.seed if options.seed is not None else secrets.randbits(63)
        self.prefilled = 0
        self._prefilling = False
        self._go: float | None = None
        """The shared start of the warm-up (perf_counter)."""
        self._done = False
        self._local: LoadProcess | None = None
        self._group: ProcessGroup | None = None

    @property
    def phase(self) -> Phase:
        if self._done:
            return Phase.DONE
        if self._prefilling:
            return Phase.PREFILL
        if self._go is None:
            return Phase.START
        now = time.perf_counter()
        return Phase.WARMUP if now < self._go + self.options.warmup else Phase.MEASURE

    def progress(self) -> tuple[Phase, float, float | None]:
        """(phase, done, total): keys for prefill, seconds or requests otherwise; no total
        while the load processes start."""
        o = self.options
        phase = self.phase
        if phase is Phase.PREFILL:
            return phase, float(self.prefilled), float(o.keys)
        if phase is Phase.START or self._go is None:
            return phase, 0.0, None
        elapsed = time.perf_counter() - self._go
        if phase is Phase.WARMUP:
            return phase, min(elapsed, o.warmup), o.warmup
        if o.requests is not None:
            return phase, float(min(self.measured_ops, o.requests)), float(o.requests)
        assert o.duration is not None
        return phase, min(max(elapsed - o.warmup, 0.0), o.duration), o.duration

    @property
    def measured_ops(self) -> int:
        if self._local is not None:
            return self._local.measured_ops
        if self._group is not None:
            return self._group.measured_ops
        return 0

    async def run(self) -> BenchReport:
        o = self.options
        if o.prefilled:
            self._prefilling = True
            await prefill(o, run_value(o, self.seed), self._prefill_progress)
            self._prefilling = False
        parts = shares(o)
        if o.procs == 1:
            self._local = LoadProcess(o, parts[0], self.seed)
            tallies = [await self._local.run(self._ready_now)]
        else:
            self._group = ProcessGroup(o, parts, self.seed)
            tallies = await self._group.run(self._set_go)
        self._done = True
        return BenchReport.of(o, merge_tallies(tallies), self.seed)

    def _prefill_progress(self, n: int) -> None:
        self.prefilled += n

    async def _ready_now(self) -> float:
        self._set_go(time.perf_counter())
        assert self._go is not None
        return self._go

    def _set_go(self, go: float) -> None:
        self._go = go
