"""The benchmark's arithmetic without a cluster: key choice, pacing, windows, merging, verdicts.

Pacing is checked with a fake clock, so nothing here depends on how busy the
machine is.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from quorumkv.errors import InvalidArgument, Timeout
from quorumkv.tools.bench import BenchOptions, BenchReport
from quorumkv.tools.bench_engine import Done, Schedule, Tally, Window, drive, merge_tallies
from quorumkv.tools.bench_load import shares, worker_rng
from quorumkv.tools.bench_options import split
from quorumkv.tools.check_perf import LOADS, evaluate, resolve_load
from quorumkv.tools.histogram import Histogram
from quorumkv.tools.keyspace import UniformKeys, ZipfianKeys, ZipfSampler, make_keys
from quorumkv.tools.latency import LatencySummary

ROOT = Path(__file__).resolve().parents[2]
EPS = ("127.0.0.1:1",)


# -- keys --------------------------------------------------------------------------------


def test_zipf_rank_frequencies_follow_the_law() -> None:
    s, n, draws = 0.99, 1000, 200_000
    sampler = ZipfSampler(n, s)
    rng = random.Random(42)
    counts = Counter(sampler.sample(rng) for _ in range(draws))
    assert min(counts) >= 1 and max(counts) <= n
    # P(1)/P(10) = 10**s under the law: about 9.8 here. The bounds are generous (the
    # sampling error of the ratio is about 2 %), so only a wrong sampler fails.
    ratio = counts[1] / counts[10]
    assert 10**s * 0.85 <= ratio <= 10**s * 1.15, ratio
    for rank in (1, 2, 5, 10, 100):
        expected = draws * sampler.probability(rank)
        assert abs(counts[rank] - expected) <= 6 * math.sqrt(expected) + 5, (rank, counts[rank],
                                                                           expected)


@pytest.mark.parametrize("s", [0.2, 1.0, 2.5])
def test_zipf_is_exact_for_other_exponents_too(s: float) -> None:
    sampler = ZipfSampler(8, s)
    rng = random.Random(7)
    draws = 60_000
    counts = Counter(sampler.sample(rng) for _ in range(draws))
    assert math.isclose(sum(sampler.probability(k) for k in range(1, 9)), 1.0)
    for rank in range(1, 9):
        expected = draws * sampler.probability(rank)
        assert abs(counts[rank] - expected) <= 6 * math.sqrt(expected) + 5, (rank, s)


def test_zipfian_keys_are_seeded_and_index_zero_is_hottest() -> None:
    keys = ZipfianKeys(50, 1.2)
    a, b = random.Random(3), random.Random(3)
    assert [keys.index(a) for _ in range(500)] == [keys.index(b) for _ in range(500)]
    counts = Counter(keys.index(a) for _ in range(20_000))
    assert counts.most_common(1)[0][0] == 0
    assert set(counts) <= set(range(50))


def test_a_single_key_and_bad_exponents() -> None:
    assert {ZipfSampler(1, 0.99).sample(random.Random(i)) for i in range(50)} == {1}
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(InvalidArgument):
            ZipfSampler(10, bad)


def test_uniform_keys_cover_the_space() -> None:
    rng = random.Random(1)
    assert {UniformKeys(7).index(rng) for _ in range(2000)} == set(range(7))


def test_keys_have_the_size_asked_and_sort_in_index_order() -> None:
    keys = make_keys(b"bench/", 1000, 16)
    assert {len(k) for k in keys} == {16} and sorted(keys) == keys and len(set(keys)) == 1000
    with pytest.raises(InvalidArgument):
        make_keys(b"bench/", 10**12, 16)


def test_worker_seeds_do_not_depend_on_the_process_split() -> None:
    one = [w for _, first in split(10, 1) for w in range(first, first + 10)]
    three = [w for count, first in split(10, 3) for w in range(first, first + count)]
    assert one == three
    assert worker_rng(5, 3).random() == worker_rng(5, 3).random()
    assert worker_rng(5, 3).random() != worker_rng(6, 3).random()


# -- options and shares ------------------------------------------------------------------


def test_options_refuse_what_cannot_run() -> None:
    with pytest.raises(InvalidArgument, match="consistency"):
        BenchOptions(endpoints=EPS, workload="put", consistency="session")
    with pytest.raises(InvalidArgument, match="send time"):
        BenchOptions(endpoints=EPS, workload="watch", value_size=4)
    with pytest.raises(InvalidArgument, match="duration"):
        BenchOptions(endpoints=EPS, workload="watch", duration=None, requests=10)
    with pytest.raises(InvalidArgument, match="processes"):
        BenchOptions(endpoints=EPS, clients=2, procs=3)
    with pytest.raises(InvalidArgument, match="key size"):
        BenchOptions(endpoints=EPS, workload="watch", keys=10**9, key_size=16)
    BenchOptions(endpoints=EPS, workload="txn", consistency="session")  # a stale read is allowed


def test_shares_split_clients_requests_and_connections() -> None:
    o = BenchOptions(endpoints=EPS, workload="watch", clients=20, watchers=5, procs=3)
    parts = shares(o)
    assert [p.clients for p in parts] == [7, 7, 6]
    assert [p.first_client for p in parts] == [0, 7, 14]
    assert [p.watchers for p in parts] == [2, 2, 1]
    # Each process: ceil(workers/8) + ceil(watchers/8) connections, numbered in turn.
    assert [p.first_connection for p in parts] == [0, 2, 4]
    assert o.connections == 6
    r = BenchOptions(endpoints=EPS, clients=9, duration=None, requests=50, procs=3)
    assert sum(p.requests or 0 for p in shares(r)) == 50


# -- histograms and merging --------------------------------------------------------------


def test_tallies_of_several_processes_merge_exactly() -> None:
    rng = random.Random(5)
    together = Tally()
    parts: list[Tally] = []
    for proc in range(3):
        part = Tally(connections=2, elapsed_s=2.0 + proc / 100)
        for _ in range(3000):
            kind = rng.choice(["get", "put"])
            seconds = rng.lognormvariate(-6 + proc, 1.0)
            part.record(kind, seconds)
            together.record(kind, seconds)
        part.errors["timeout"] += proc
        part.conflicts += proc
        # Through JSON, as the load processes send them.
        parts.append(Tally.from_json(json.loads(json.dumps(part.to_json()))))
    merged = merge_tallies(parts)
    assert merged.by_kind == together.by_kind
    assert merged.overall() == together.overall()
    assert merged.ops == 9000 and merged.errors == Counter({"timeout": 3})
    assert merged.conflicts == 3 and merged.connections == 6 and merged.elapsed_s == 2.02
    for p in (50, 90, 99, 99.9, 100):
        assert merged.overall().percentile_ms(p) == together.overall().percentile_ms(p)
    # The p99 of the whole is not the mean of the parts' p99s: why histograms are merged.
    mean_of_p99 = statistics.mean(t.overall().percentile_ms(99) for t in parts)
    assert not math.isclose(merged.overall().percentile_ms(99), mean_of_p99, rel_tol=0.05)


def test_stddev_and_mean_are_exact() -> None:
    rng = random.Random(8)
    micros = [rng.randrange(50, 900_000) for _ in range(5000)]
    h = Histogram()
    for us in micros:
        h.record(us / 1e6)
    assert math.isclose(h.stddev_ms, statistics.pstdev(micros) / 1000, rel_tol=1e-9)
    assert math.isclose(h.mean_ms, statistics.mean(micros) / 1000, rel_tol=1e-12)
    summary = LatencySummary.of_histogram(h)
    assert summary.max == max(micros) / 1000 and summary.p50 <= summary.p99 <= summary.max


def test_the_compare_harness_loads_the_shared_histogram_without_quorumkv() -> None:
    # -S: no site-packages, so quorumkv is not importable, as under the peers' venv.
    script = ("import sys; from bench.compare.histogram import Histogram, merge, Measurement;"
              "assert 'quorumkv' not in sys.modules;"
              "h = Histogram(); h.record(0.002);"
              "m = merge([Measurement(ops=1, histogram=h), Measurement(ops=2, histogram=h)]);"
              "print(m.ops, m.histogram.total, m.histogram.max_us)")
    done = subprocess.run([sys.executable, "-S", "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "2", "2000"]


# -- pacing and the window, on a fake clock ----------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


def run_one_worker(service: list[float], *, schedule: Schedule | None,
                   window: Window) -> Window:
    """One worker against a server that takes ``service[i]`` seconds for request i
    (then 0.05 s each)."""
    clock = FakeClock()
    times = iter(service)

    async def op() -> Done:
        await clock.sleep(next(times, 0.05))
        return Done("put")

    asyncio.run(drive(op, window, schedule=schedule, clock=clock, sleep=clock.sleep))
    window.close(schedule)
    return window


def corrected_latencies(service: list[float], interval: float, end: float) -> list[float]:
    """The reference: request k is due at k*interval, is sent when due or when the
    previous answer arrives, whichever is later; latency runs from its due time."""
    out: list[float] = []
    free = 0.0
    k = 0
    while k * interval < end:
        due = k * interval
        sent = max(due, free)
        if sent >= end:
            break
        free = sent + (service[k] if k < len(service) else 0.05)
        if free <= end:
            out.append(free - due)
        k += 1
    return out


def test_open_loop_latency_runs_from_the_due_time() -> None:
    # A one-second stall on the first request, at 10 requests/s: every request due during
    # the stall waited for it, and each one's latency says so.
    service = [1.0]
    window = run_one_worker(service, schedule=Schedule(0.0, 0.1, catch_up=True),
                            window=Window(start=0.0, end=3.0))
    expected = corrected_latencies(service, 0.1, 3.0)
    h = window.tally.by_kind["put"]
    assert h.total == len(expected) == 30
    assert h.max_us == 1_000_000
    assert abs(h.sum_us - round(sum(expected) * 1e6)) <= len(expected)  # µs rounding only
    assert math.isclose(sum(expected), 11.0, rel_tol=1e-9)  # 1.0 + 0.95 + 0.90 + ... + 0.05s
    assert window.tally.backlog == 0
    # Measured from the send, the same run looks ten times better than what clients saw.
    naive = 1.0 + 29 * 0.05
    assert h.sum_us / 1e6 > 4 * naive


def test_an_overloaded_open_loop_reports_its_backlog() -> None:
    service = [0.25] * 100  # 4 requests/s served, 10 due each second
    window = run_one_worker(service, schedule=Schedule(0.0, 0.1, catch_up=True),
                            window=Window(start=0.0, end=3.0))
    h = window.tally.by_kind["put"]
    assert h.total == 12  # sent at 0, 0.25, ..., 2.75
    assert window.tally.backlog == 30 - 12
    # The queue grows by 0.15 s a request: the last one waited 1.65 s before being sent.
    assert h.min_us == 250_000 and h.max_us == 1_900_000


def test_without_catch_up_the_rate_drops_and_latency_runs_from_the_send() -> None:
    window = run_one_worker([1.0], schedule=Schedule(0.0, 0.1, catch_up=False),
                            window=Window(start=0.0, end=3.0))
    h = window.tally.by_kind["put"]
    # Due at 0, then (the slot moved to when the worker was free) 1.0, 1.1, ..., 2.9.
    assert h.total == 21
    assert h.max_us == 1_000_000 and h.min_us == 50_000
    assert abs(h.sum_us - round((1.0 + 20 * 0.05) * 1e6)) <= 21
    assert window.tally.backlog == 0


def test_warm_up_and_late_answers_are_not_counted() -> None:
    # Closed loop, 0.3 s a request: sent at 0.0 (warm-up), 0.3 (warm-up), 0.6, 0.9,
    # 1.2 (counted: started at or after 0.5, finished by 1.6); the one sent at 1.5
    # finishes at 1.8, after the window, and no request is sent at or after 1.6.
    window = run_one_worker([0.3] * 10, schedule=None, window=Window(start=0.5, end=1.6))
    assert window.tally.ops == 3
    assert window.tally.sent == 4
    assert window.tally.elapsed_s == pytest.approx(1.1)
    drained = run_one_worker([0.3] * 10, schedule=None,
                             window=Window(start=0.5, end=1.6, drain=True))
    assert drained.tally.ops == 4  # drain: every request sent inside the window counts
    assert drained.tally.elapsed_s == pytest.approx(1.3)


def test_errors_are_counted_by_code_and_requests_bound_a_run() -> None:
    clock = FakeClock()
    window = Window(start=0.0, end=None, slots_left=5)
    calls = 0

    async def op() -> Done:
        nonlocal calls
        calls += 1
        await clock.sleep(0.01)
        if calls % 2 == 0:
            raise Timeout("slow")
        return Done("txn", conflict=calls == 3)

    asyncio.run(drive(op, window, clock=clock, sleep=clock.sleep))
    window.close(None)
    assert calls == 5
    assert window.tally.ops == 3 and window.tally.errors == Counter({"timeout": 2})
    assert window.tally.conflicts == 1


# -- check perf's verdict ----------------------------------------------------------------


def report(ops: int, elapsed: float, max_ms: float, stddev_ms: float,
           errors: dict[str, int] | None = None) -> BenchReport:
    latency = LatencySummary(p50=1, p90=1, p99=1, p999=1, max=max_ms, mean=1, stddev=stddev_ms)
    return BenchReport(options=BenchOptions(endpoints=EPS), ops=ops, errors=errors or {},
                       elapsed_s=elapsed, latency=latency)


def test_check_perf_passes_and_fails_as_etcdctl_does() -> None:
    s = resolve_load("small")
    assert (s.limit, s.clients) == (150, 50) and resolve_load("xLarge") is LOADS["xl"]
    passing = evaluate(report(ops=1350, elapsed=10.0, max_ms=500.0, stddev_ms=100.0), s)
    assert all(c.passed for c in passing)
    assert [line for c in passing for line in c.lines] == [
        "PASS: Throughput is 135 writes/s", "PASS: Slowest request took 0.500000s",
        "PASS: Stddev is 0.100000s"]
    failing = evaluate(report(ops=1340, elapsed=10.0, max_ms=500.5, stddev_ms=100.1,
                              errors={"timeout": 2}), s)
    assert not any(c.passed for c in failing)
    assert [line for c in failing for line in c.lines] == [
        "FAIL: too many errors", "FAIL: ERROR(timeout) -> 2",
        "FAIL: Throughput too low: 134 writes/s",
        "FAIL: Slowest request took too long: 0.500500s", "FAIL: Stddev too high: 0.100100s"]
    with pytest.raises(InvalidArgument):
        resolve_load("huge")
