"""``quorumkv check perf``: etcdctl's ``check perf``, the same loads and the same verdict.

A load is a target write rate and a number of clients (etcdctl's table):

    s   150 writes/s from 50 clients      l    8,000 writes/s from 500 clients
    m 1,000 writes/s from 200 clients     xl  15,000 writes/s from 1,000 clients

for 60 seconds. As etcdctl does, the run refuses to start if the prefix
already holds keys; every write is a put of a new random 256-byte key (after
the prefix) with a 1 KiB value; the writes are paced by one rate limiter
that never makes up for lost time (a token bucket of burst 1: when every
client is busy, the rate drops rather than a backlog building up); each
request is timed from its send to its answer, and every request sent during
the run counts, however late it finishes; afterwards the prefix is deleted.
Then it passes when

* no request failed,
* the throughput (answered writes per second, over the run until the last
  answer) is at least 90 % of the target,
* the slowest request took at most 500 ms, and
* the standard deviation of the latencies is at most 100 ms.

Where etcdctl opens one connection per client, quorumkv's clients share a
connection per eight (each connection pipelines), spread over the members,
and a load can be split over several processes (``procs``) when one Python
process cannot issue it: each process paces its share of the rate.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from quorumkv.client import TLSSettings, prefix_end
from quorumkv.errors import InvalidArgument, QuorumKVError
from quorumkv.tools.bench import BenchOptions, BenchReport, BenchRun
from quorumkv.tools.bench_load import connect


@dataclass(frozen=True, slots=True)
class PerfLoad:
    name: str
    limit: int
    """Target writes per second, all clients together."""
    clients: int


LOADS = {load.name: load for load in (PerfLoad("s", 150, 50), PerfLoad("m", 1000, 200),
                                      PerfLoad("l", 8000, 500), PerfLoad("xl", 15000, 1000))}
ALIASES = {"s": "s", "small": "s", "m": "m", "medium": "m", "l": "l", "large": "l",
           "xl": "xl", "xlarge": "xl"}
DEFAULT_PREFIX = "/quorumkv-check-perf/"
DEFAULT_DURATION_S = 60.0
KEY_SUFFIX_SIZE = 256
VALUE_SIZE = 1024
MIN_THROUGHPUT_SHARE = 0.9
MAX_SLOWEST_S = 0.5
MAX_STDDEV_S = 0.1
CLEANUP_TIMEOUT_S = 30.0
"""etcdctl's deadline for deleting the prefix: a large load leaves many keys."""


def resolve_load(name: str) -> PerfLoad:
    try:
        return LOADS[ALIASES[name.lower()]]
    except KeyError:
        raise InvalidArgument(f"unknown load {name!r}: expected s, m, l or xl") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckPerfOptions:
    endpoints: tuple[str, ...]
    load: PerfLoad
    duration: float = DEFAULT_DURATION_S
    prefix: str = DEFAULT_PREFIX
    procs: int = 1
    timeout: float = 5.0
    auto_compact: bool = False
    tls: TLSSettings | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.prefix:
            raise InvalidArgument("the prefix must not be empty: the check deletes it after")

    def bench_options(self) -> BenchOptions:
        prefix = self.prefix.encode()
        return BenchOptions(endpoints=self.endpoints, timeout=self.timeout, workload="put",
                            clients=self.load.clients, rate=float(self.load.limit),
                            duration=self.duration, warmup=0.0, procs=self.procs,
                            key_prefix=prefix, key_size=len(prefix) + KEY_SUFFIX_SIZE,
                            value_size=VALUE_SIZE, fresh_keys=True, catch_up=False,
                            drain=True, consistency="quorum", tls=self.tls,
                            user=self.user, password=self.password)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool
    lines: tuple[str, ...]
    """What etcdctl prints for it (none for "errors" when there were none)."""


def evaluate(report: BenchReport, load: PerfLoad) -> list[Check]:
    """etcdctl's four checks, in its order, with its wording."""
    checks: list[Check] = []
    errors = tuple(f"FAIL: ERROR({code}) -> {n}" for code, n in sorted(report.errors.items()))
    checks.append(Check("errors", not errors, ("FAIL: too many errors", *errors) if errors
                        else ()))
    rate = report.ops_per_s
    ok = rate >= MIN_THROUGHPUT_SHARE * load.limit
    checks.append(Check("throughput", ok, (f"PASS: Throughput is {rate:.0f} writes/s" if ok
                                           else f"FAIL: Throughput too low: {rate:.0f} writes/s",)))
    slowest = report.latency.max / 1000.0
    ok = slowest <= MAX_SLOWEST_S
    checks.append(Check("slowest", ok, (f"PASS: Slowest request took {slowest:.6f}s" if ok else
                                        f"FAIL: Slowest request took too long: {slowest:.6f}s",)))
    stddev = report.latency.stddev / 1000.0
    ok = stddev <= MAX_STDDEV_S
    checks.append(Check("stddev", ok, (f"PASS: Stddev is {stddev:.6f}s" if ok else
                                       f"FAIL: Stddev too high: {stddev:.6f}s",)))
    return checks


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckPerfResult:
    options: CheckPerfOptions
    report: BenchReport
    checks: tuple[Check, ...]
    deleted: int
    """Keys deleted under the prefix afterwards."""

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def lines(self) -> list[str]:
        out = [line for c in self.checks for line in c.lines]
        out.append("PASS" if self.passed else "FAIL")
        return out

    def to_json(self) -> dict[str, Any]:
        o, r = self.options, self.report
        return {"load": o.load.name, "target_writes_per_s": o.load.limit,
                "clients": o.load.clients, "duration_s": o.duration, "prefix": o.prefix,
                "procs": o.procs, "writes": r.ops,
                "throughput_writes_per_s": round(r.ops_per_s, 1),
                "slowest_s": round(r.latency.max / 1000.0, 6),
                "stddev_s": round(r.latency.stddev / 1000.0, 6),
                "errors_by_code": dict(r.errors), "deleted": self.deleted,
                "checks": [{"name": c.name, "passed": c.passed,
                            "message": " ".join(c.lines) or "PASS: no request failed"}
                           for c in self.checks],
                "passed": self.passed, "bench": r.to_json()}


class CheckPerfRun:
    """One check; :meth:`run` it once. ``bench`` shows its progress."""

    def __init__(self, options: CheckPerfOptions) -> None:
        self.options = options
        self.bench = BenchRun(options.bench_options())

    async def run(self) -> CheckPerfResult:
        o = self.options
        prefix = o.prefix.encode()
        async with connect(self.bench.options, o.endpoints) as client:
            found = await client.scan_prefix(prefix, limit=1, keys_only=True)
        if found.kvs:
            raise InvalidArgument(f"prefix {o.prefix!r} has keys: delete them first with "
                                  f"`quorumkv del --prefix {o.prefix}`")
        try:
            report = await self.bench.run()
        except BaseException:
            # Whatever stopped the run, the keys it wrote go; the run's own error is the
            # one to report, not a failure to clean up after it.
            with contextlib.suppress(QuorumKVError, asyncio.CancelledError):
                await self._clean_up(prefix)
            raise
        deleted = await self._clean_up(prefix)
        return CheckPerfResult(options=o, report=report,
                               checks=tuple(evaluate(report, o.load)), deleted=deleted)

    async def _clean_up(self, prefix: bytes) -> int:
        o = self.options
        async with connect(self.bench.options, o.endpoints,
                           timeout=max(o.timeout, CLEANUP_TIMEOUT_S)) as client:
            result = await client.delete(prefix, range_end=prefix_end(prefix))
            if o.auto_compact:
                await client.compact(result.revision)
        return result.deleted
