"""The comparison's arithmetic: histogram buckets, percentiles, merging processes, the table."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from bench.compare import report
from bench.compare.histogram import (
    Histogram,
    Measurement,
    bucket_bounds,
    bucket_of,
    merge,
)
from bench.compare.loadgen import assign, make_keys
from bench.compare.run import split


def exact_percentile_us(samples_us: list[int], p: float) -> int:
    ordered = sorted(samples_us)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def histogram_of(samples_us: list[int]) -> Histogram:
    h = Histogram()
    for us in samples_us:
        h.record(us / 1e6)
    return h


def test_every_latency_falls_inside_its_bucket_and_buckets_do_not_overlap() -> None:
    previous_high = -1
    for index in range(bucket_of(10**8) + 1):
        low, high = bucket_bounds(index)
        assert low == previous_high + 1, index  # contiguous, in order
        assert bucket_of(low) == index and bucket_of(high) == index
        previous_high = high
    for us in [0, 1, 255, 256, 257, 511, 512, 1000, 123_456, 9_999_999]:
        low, high = bucket_bounds(bucket_of(us))
        assert low <= us <= high
        assert (high - low) <= max(1, us / 128)  # under 0.8 % wide


def test_percentiles_match_exact_nearest_rank_within_bucket_width() -> None:
    rng = random.Random(7)
    samples = [int(rng.lognormvariate(7, 1.2)) for _ in range(20_000)]
    h = histogram_of(samples)
    for p in (1, 50, 90, 99, 99.9, 100):
        exact = exact_percentile_us(samples, p)
        got = h.percentile_ms(p) * 1000
        assert exact <= got <= exact * (1 + 1 / 128) + 1, (p, exact, got)
    assert h.percentile_ms(100) * 1000 == max(samples)
    assert h.mean_ms * 1000 == pytest.approx(sum(samples) / len(samples))


def test_small_latencies_are_exact() -> None:
    h = histogram_of([100, 120, 130, 200])
    assert h.percentile_ms(50) == 0.12
    assert h.percentile_ms(75) == 0.13
    assert h.percentile_ms(0) == 0.1  # the lowest rank is the minimum


def test_an_empty_histogram_reports_zero() -> None:
    h = Histogram()
    assert h.percentile_ms(99) == 0.0 and h.mean_ms == 0.0 and h.total == 0


def test_merging_processes_equals_recording_everything_in_one() -> None:
    rng = random.Random(11)
    parts = [[int(rng.expovariate(1 / (500 * (i + 1)))) for _ in range(3000)]
             for i in range(3)]
    merged = Histogram()
    for part in parts:
        merged.merge(histogram_of(part))
    together = histogram_of([us for part in parts for us in part])
    assert merged == together
    # The p99 of the whole is not the mean of the parts' p99s: the reason for merging buckets.
    mean_of_p99s = sum(histogram_of(p).percentile_ms(99) for p in parts) / 3
    assert together.percentile_ms(99) != pytest.approx(mean_of_p99s, rel=0.05)


def test_merging_into_and_from_empty_keeps_min_and_max() -> None:
    h = Histogram()
    h.merge(Histogram())
    h.merge(histogram_of([300, 5000]))
    h.merge(Histogram())
    assert (h.min_us, h.max_us, h.total) == (300, 5000, 2)


def test_measurements_survive_json_and_add_up_over_the_shared_window() -> None:
    a = Measurement(ops=3, errors=Counter({"TimeoutError": 1}), window_s=2.0, workers=2,
                    histogram=histogram_of([100, 200, 300]))
    b = Measurement(ops=1, errors=Counter({"TimeoutError": 2, "NotLeader": 1}), window_s=2.0,
                    workers=1, histogram=histogram_of([400]))
    a2 = Measurement.from_json(a.to_json())
    assert a2 == a
    m = merge([a2, Measurement.from_json(b.to_json())])
    assert m.ops == 4 and m.workers == 3
    assert m.ops_per_s == 2.0  # operations add over the one window; rates are not averaged
    assert m.errors == Counter({"TimeoutError": 3, "NotLeader": 1}) and m.error_count == 4
    assert m.histogram.total == 4 and m.histogram.percentile_ms(100) == 0.4


def test_a_corrupt_histogram_is_refused() -> None:
    data = histogram_of([1, 2]).to_json()
    data["total"] = 3
    with pytest.raises(ValueError, match="add up"):
        Histogram.from_json(data)


@pytest.mark.parametrize(("clients", "procs", "expected"), [
    (1, 4, [(1, 0)]),
    (16, 1, [(16, 0)]),
    (64, 3, [(22, 0), (21, 22), (21, 43)]),
    (5, 2, [(3, 0), (2, 3)]),
])
def test_clients_split_over_load_processes(clients: int, procs: int,
                                           expected: list[tuple[int, int]]) -> None:
    assert split(clients, procs) == expected


def test_workers_spread_evenly_over_members_whatever_the_split() -> None:
    members = [m for workers, offset in split(64, 3) for m in assign(workers, offset, 3)]
    assert Counter(members) == Counter({0: 22, 1: 21, 2: 21})


def test_keys_have_the_requested_size_and_are_distinct() -> None:
    keys = make_keys(1000, 16)
    assert {len(k) for k in keys} == {16} and len(set(keys)) == 1000
    with pytest.raises(ValueError):
        make_keys(10**12, 16)


def test_the_table_puts_ratios_on_quorumkvs_rows_and_parses_back() -> None:
    rows = [report.Row(system=s, workload="put", clients=16, ops_per_s=ops, p50_ms=1.0,
                       p99_ms=2.0, errors=0)
            for s, ops in (("quorumkv", 1000.0), ("quorumkv-lease", 2000.0),
                           ("etcd", 4000.0), ("pysyncobj", 500.0))]
    parsed = report.parse_table("header line\n" + report.render_table(rows) + "\n\nnotes")
    assert [r["system"] for r in parsed] == ["quorumkv", "quorumkv-lease", "etcd", "pysyncobj"]
    assert parsed[0]["quorumkv/etcd"] == "0.25"
    assert parsed[0]["quorumkv/pysyncobj"] == "2.00"
    # A configuration of quorumkv is divided too, and gets no column of its own.
    assert parsed[1]["quorumkv/etcd"] == "0.50"
    assert "quorumkv/quorumkv-lease" not in parsed[0]
    assert parsed[2]["quorumkv/etcd"] == ""


def test_the_generated_block_is_replaced_and_hand_written_text_kept() -> None:
    first = report.replace_block("# Title\n\nHand-written.\n", "run 1")
    assert first.startswith("# Title\n\nHand-written.\n")
    second = report.replace_block(first + "\nAfter the block.\n", "run 2")
    assert "run 1" not in second and "run 2" in second
    assert second.startswith("# Title\n\nHand-written.\n")
    assert second.endswith("After the block.\n")
    assert second.count(report.BEGIN) == 1 and second.count(report.END) == 1
