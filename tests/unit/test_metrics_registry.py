"""The node's metrics without a node: observations, exposition, the per-second series."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from quorumkv.client.coordination_wire import LeaseKeepAliveRequest
from quorumkv.client.protocol import MemberAddRequest, StatusRequest
from quorumkv.server.client_api import op_name
from quorumkv.server.metrics import SERIES_SECONDS, NodeMetrics, RequestSeries


class _Clock:
    def __init__(self, now: float = 1_700_000_000.5) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _samples(metrics: NodeMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_series_has_one_entry_per_complete_second_of_ten_minutes() -> None:
    clock = _Clock()
    series = RequestSeries(clock)
    entries = series.series()
    now = int(clock.now)
    assert len(entries) == SERIES_SECONDS
    assert [e["t"] for e in entries] == list(range(now - SERIES_SECONDS, now))
    assert entries[-1] == {"t": now - 1, "reads": 0, "writes": 0, "errors": 0,
                           "read_p50_ms": None, "read_p99_ms": None,
                           "write_p50_ms": None, "write_p99_ms": None}


def test_series_counts_and_percentiles() -> None:
    clock = _Clock()
    series = RequestSeries(clock)
    for ms in range(1, 101):  # writes of 1..100 ms
        series.observe("write", ms / 1000, failed=ms > 98)
    series.observe("read", 0.002, failed=False)
    clock.now += 1
    last = series.series()[-1]
    assert (last["reads"], last["writes"], last["errors"]) == (1, 100, 2)
    assert last["read_p50_ms"] == last["read_p99_ms"] == 2.0  # one sample: exact
    assert last["write_p50_ms"] is not None and last["write_p99_ms"] is not None
    # A bucket is 25% wide: the estimate is within it.
    assert 50 / 1.3 <= last["write_p50_ms"] <= 50 * 1.3
    assert 99 / 1.3 <= last["write_p99_ms"] <= 100
    assert last["write_p50_ms"] <= last["write_p99_ms"]


def test_series_forgets_seconds_older_than_its_window() -> None:
    clock = _Clock()
    series = RequestSeries(clock, seconds=10)
    series.observe("read", 0.001, failed=False)
    first = int(clock.now)
    clock.now += 5
    assert next(e for e in series.series() if e["t"] == first)["reads"] == 1
    clock.now += 10  # the slot is reused by a later second
    series.observe("write", 0.001, failed=False)
    clock.now += 1
    entries = series.series()
    assert len(entries) == 10 and all(e["t"] != first for e in entries)
    assert sum(e["reads"] for e in entries) == 0 and entries[-1]["writes"] == 1


def test_latencies_beyond_the_largest_bucket_are_kept() -> None:
    clock = _Clock()
    series = RequestSeries(clock)
    series.observe("write", 600.0, failed=True)
    series.observe("write", 0.00001, failed=False)
    clock.now += 1
    last = series.series()[-1]
    assert last["write_p99_ms"] == 600_000.0 and last["write_p50_ms"] is not None
    assert 0 < last["write_p50_ms"] <= 0.05


def test_observations_are_exposed_in_the_nodes_own_registry() -> None:
    clock = _Clock()
    a, b = NodeMetrics(clock=clock), NodeMetrics(clock=clock)
    a.observe_client_request("write", "quorum", 0.004, None)
    a.observe_client_request("write", "quorum", 0.006, "not_leader")
    a.observe_client_request("status", "", 0.001, None)
    a.observe_http_request("/v1/kv/{key}", "GET", 0.002, None, "read")
    a.observe_http_request("/metrics", "GET", 0.002, "invalid_argument", None)
    a.observe_round_trip(7, 0.001)
    a.observe_round_trip(7, 0.009)
    a.snapshot_saved(4096, 0.5)
    samples = _samples(a)
    assert samples[("quorumkv_client_request_duration_seconds_count",
                    (("consistency", "quorum"), ("op", "write")))] == 2
    assert samples[("quorumkv_client_request_duration_seconds_count",
                    (("consistency", ""), ("op", "status")))] == 1
    assert samples[("quorumkv_http_request_duration_seconds_count",
                    (("method", "GET"), ("route", "/v1/kv/{key}")))] == 1
    assert samples[("quorumkv_errors_total", (("api", "client"), ("code", "not_leader")))] == 1
    assert samples[("quorumkv_errors_total",
                    (("api", "http"), ("code", "invalid_argument")))] == 1
    assert samples[("quorumkv_peer_round_trip_seconds_count", (("peer", "7"),))] == 2
    assert samples[("quorumkv_snapshots_taken_total", ())] == 1
    assert math.isclose(a.round_trip(7) or 0, 0.001 + 0.125 * 0.008)
    assert a.snapshot_size == 4096
    # Only reads and writes feed the series (status does not; the HTTP read does).
    clock.now += 1
    last = a.series()[-1]
    assert (last["reads"], last["writes"], last["errors"]) == (1, 2, 1)
    # Another node's registry saw none of it.
    assert ("quorumkv_client_request_duration_seconds_count",
            (("consistency", "quorum"), ("op", "write"))) not in _samples(b)
    a.forget_peer(7)
    assert ("quorumkv_peer_round_trip_seconds_count", (("peer", "7"),)) not in _samples(a)
    assert a.round_trip(7) is None


def test_openmetrics_when_asked() -> None:
    body, content_type = NodeMetrics().exposition("application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_operation_names() -> None:
    assert op_name(StatusRequest(local=True)) == "status"
    assert op_name(MemberAddRequest(name="n4", peer_address="h:1", client_address=None,
                                    learner=True, token="t")) == "member_add"
    assert op_name(LeaseKeepAliveRequest(id=1)) == "lease_keep_alive"
