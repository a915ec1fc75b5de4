"""A node's metrics: Prometheus exposition and the dashboard's per-second series.

Each node owns a :class:`NodeMetrics` (``Node.metrics``) with a registry of its
own, never prometheus_client's global one: several nodes in one process (the
tests) must not share or collide on series.

Two kinds of values:

- **Observations** the drivers make as things happen: request latencies
  (client port and HTTP), WAL append and fsync times, apply batches, peer
  round trips, proposals resolved, snapshots, errors. These are counters and
  histograms, updated on the event loop with nothing more than an observe.
- **State** read when Prometheus scrapes (:class:`_NodeCollector`): the Raft
  term, role and indexes, each peer's phi, health and replication lag, the
  database size, watches, leases, connections. Updating these on every change
  would cost the hot path for values nobody reads between scrapes.

The per-second series (:meth:`NodeMetrics.series`, ``GET /v1/stats``) is fed
by the same request observations: for each of the last ten minutes' seconds,
how many reads and writes finished, how many failed, and latency percentiles
estimated from a small fixed-bucket histogram per second, so memory stays
bounded whatever the request rate.

Nothing here is imported by the pure core (``raft/``, ``kv/``) or by
``storage/``: the drivers measure around their calls and report here.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from quorumkv.errors import QuorumKVError
from quorumkv.kv.environment import DATA_FILE
from quorumkv.raft.ready import Role

if TYPE_CHECKING:
    from quorumkv.server.node import Node

SERIES_SECONDS: Final = 600
"""How far back the per-second series goes: ten minutes."""

REQUEST_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5, 5.0, 10.0, 30.0)
DISK_BUCKETS: Final = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                       0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
NETWORK_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                          0.1, 0.25, 0.5, 1.0, 2.5)
SNAPSHOT_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                           120.0, 300.0)

RTT_SMOOTHING: Final = 0.125
"""Weight of a new round trip in the smoothed value (TCP's SRTT gain, RFC 6298)."""

READ: Final = "read"
WRITE: Final = "write"

# The series' latency histogram: bounds growing by 25% from 50 µs to past a minute.
# A percentile read from it is off by at most a bucket's width (and is clamped to the
# second's true minimum and maximum), which is plenty for a dashboard's graph.
_SERIES_BOUNDS: Final = tuple(0.00005 * 1.25 ** i for i in range(65))


class _Latencies:
    """One second's latencies of one kind: a count per bucket, the extremes."""

    __slots__ = ("counts", "high", "low", "n")

    def __init__(self) -> None:
        self.counts = array("I", bytes(4 * (len(_SERIES_BOUNDS) + 1)))
        self.n = 0
        self.low = math.inf
        self.high = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(_SERIES_BOUNDS, seconds)] += 1
        self.n += 1
        self.low = min(self.low, seconds)
        self.high = max(self.high, seconds)

    def quantile_ms(self, q: float) -> float | None:
        if self.n == 0:
            return None
        rank = max(1, math.ceil(q * self.n))
        # The extremes are known exactly: no need to estimate them from a bucket.
        if rank >= self.n:
            return round(self.high * 1000, 3)
        if rank == 1:
            return round(self.low * 1000, 3)
        seen = 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                upper = _SERIES_BOUNDS[i] if i < len(_SERIES_BOUNDS) else self.high
                lower = _SERIES_BOUNDS[i - 1] if i > 0 else upper / 2
                estimate = math.sqrt(lower * upper)
                return round(min(self.high, max(self.low, estimate)) * 1000, 3)
        return round(self.high * 1000, 3)  # pragma: no cover - the counts add up to n


class _Second:
    __slots__ = ("errors", "read", "t", "write")

    def __init__(self, t: int) -> None:
        self.t = t
        self.errors = 0
        self.read = _Latencies()
        self.write = _Latencies()


class RequestSeries:
    """Reads, writes and errors per second over the last :data:`SERIES_SECONDS` seconds.

    A ring of one slot per second: a slot is reused once its second is ten minutes
    old, so memory is bounded by the window, not by the request rate.
    """

    def __init__(self, clock: Callable[[], float] = time.time,
                 seconds: int = SERIES_SECONDS) -> None:
        self._clock = clock
        self._size = seconds
        self._slots: list[_Second | None] = [None] * seconds

    def _slot(self, t: int) -> _Second:
        i = t % self._size
        slot = self._slots[i]
        if slot is None or slot.t != t:
            slot = self._slots[i] = _Second(t)
        return slot

    def observe(self, kind: str, seconds: float, failed: bool) -> None:
        """One finished read or write (``kind``); a failed one counts as an error too."""
        slot = self._slot(int(self._clock()))
        (slot.read if kind == READ else slot.write).add(seconds)
        if failed:
            slot.errors += 1

    def series(self) -> list[dict[str, Any]]:
        """One entry per second, oldest first, for every complete second of the window
        (the current second is still filling and would read as a dip)."""
        now = int(self._clock())
        out: list[dict[str, Any]] = []
        for t in range(now - self._size, now):
            slot = self._slots[t % self._size]
            if slot is None or slot.t != t:
                out.append({"t": t, "reads": 0, "writes": 0, "errors": 0,
                            "read_p50_ms": None, "read_p99_ms": None,
                            "write_p50_ms": None, "write_p99_ms": None})
                continue
            out.append({"t": t, "reads": slot.read.n, "writes": slot.write.n,
                        "errors": slot.errors,
                        "read_p50_ms": slot.read.quantile_ms(0.5),
                        "read_p99_ms": slot.read.quantile_ms(0.99),
                        "write_p50_ms": slot.write.quantile_ms(0.5),
                        "write_p99_ms": slot.write.quantile_ms(0.99)})
        return out


class NodeMetrics:
    """The node's metrics registry, its observations and its per-second series."""

    def __init__(self, node: Node | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.node = node
        """Read at scrape time for the state metrics; None exposes observations only."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.leader_changes = Counter(
            "quorumkv_raft_leader_changes", "Times this node saw the Raft leader change to "
            "another known member (the first leader it learns of included).", registry=r)
        self.proposals_committed = Counter(
            "quorumkv_proposals_committed", "Proposals made on this node that committed and "
            "were applied (whatever the command's own result).", registry=r)
        self.proposals_failed = Counter(
            "quorumkv_proposals_failed", "Proposals made on this node that were refused, "
            "dropped or overwritten, or whose outcome became unknown.", registry=r)
        self.wal_append = Histogram(
            "quorumkv_wal_append_duration_seconds", "Time to append one Ready's entries and "
            "hard state to the write-ahead log (buffered writes, before the fsync).",
            registry=r, buckets=DISK_BUCKETS)
        self.wal_fsync = Histogram(
            "quorumkv_wal_fsync_duration_seconds", "Time of one write-ahead log sync (the "
            "group commit's fsync).", registry=r, buckets=DISK_BUCKETS)
        self.heartbeats_late = Counter(
            "quorumkv_raft_heartbeats_late", "Times this node, leading, ticked at least a "
            "heartbeat interval late (its log warns, naming the slowest steps): a sign of a "
            "slow disk or an overloaded node, and the usual cause of needless elections.",
            registry=r)
        self.loop_lag = Histogram(
            "quorumkv_event_loop_lag_seconds", "How late the event loop ran a timer it was "
            "asked to run: time the node's one thread spent on other work first.",
            registry=r, buckets=DISK_BUCKETS)
        self.apply_duration = Histogram(
            "quorumkv_apply_duration_seconds", "Time to apply one batch of committed entries "
            "to the state machine (one LMDB transaction).", registry=r, buckets=DISK_BUCKETS)
        self.snapshots_taken = Counter(
            "quorumkv_snapshots_taken", "Snapshots this node wrote of its state machine "
            "(each followed by a log compaction).", registry=r)
        self.snapshots_installed = Counter(
            "quorumkv_snapshots_installed", "Snapshots received from the leader and installed "
            "in place of the state machine.", registry=r)
        self.snapshots_sent = Counter(
            "quorumkv_snapshots_sent", "Snapshot transfers to followers, by result (ok: every "
            "byte written to the peer; failed: cut short or impossible).", ["result"],
            registry=r)
        self.snapshot_duration = Histogram(
            "quorumkv_snapshot_duration_seconds", "Time to write a snapshot of the state "
            "machine (copy, checksum, atomic save).", registry=r, buckets=SNAPSHOT_BUCKETS)
        self.peer_rtt = Histogram(
            "quorumkv_peer_round_trip_seconds", "Leader-side round trip to each peer: from "
            "sending a heartbeat until that peer's answer arrives.", ["peer"], registry=r,
            buckets=NETWORK_BUCKETS)
        self.client_requests = Histogram(
            "quorumkv_client_request_duration_seconds", "Client-port requests served, by "
            "operation and consistency level (empty where the operation has none): time "
            "from decoding a request to having its answer.", ["op", "consistency"],
            registry=r, buckets=REQUEST_BUCKETS)
        self.http_requests = Histogram(
            "quorumkv_http_request_duration_seconds", "HTTP requests served, by route "
            "template and method: time until the handler returned its response (watch "
            "streams, which last as long as their client listens, are left out).",
            ["route", "method"], registry=r, buckets=REQUEST_BUCKETS)
        self.errors = Counter(
            "quorumkv_errors", "Requests answered with an error, by API (client, http) and "
            "error code (the client protocol's codes).", ["api", "code"], registry=r)
        self._snapshot_size = 0
        self._rtt: dict[int, float] = {}
        """Smoothed round trip (seconds) per peer id."""
        self._rtt_peers: set[str] = set()
        self._client_children: dict[str, dict[str, Any]] = {}
        self._http_children: dict[str, dict[str, Any]] = {}
        self.requests = RequestSeries(clock)
        r.register(_NodeCollector(self))

    # -- observations -----------------------------------------------------------------

    def observe_client_request(self, op: str, consistency: str, seconds: float,
                               error: str | None) -> None:
        by_level = self._client_children.get(op)
        if by_level is None:
            by_level = self._client_children[op] = {}
        child = by_level.get(consistency)
        if child is None:
            child = by_level[consistency] = self.client_requests.labels(op, consistency)
        child.observe(seconds)
        if error is not None:
            self.errors.labels("client", error).inc()
        if op in (READ, WRITE):
            self.requests.observe(op, seconds, error is not None)

    def observe_http_request(self, route: str, method: str, seconds: float,
                             error: str | None, kind: str | None) -> None:
        """``kind`` is READ or WRITE for a key-value request (it then feeds the series)."""
        by_method = self._http_children.get(route)
        if by_method is None:
            by_method = self._http_children[route] = {}
        child = by_method.get(method)
        if child is None:
            child = by_method[method] = self.http_requests.labels(route, method)
        child.observe(seconds)
        if error is not None:
            self.count_error("http", error)
        if kind is not None:
            self.requests.observe(kind, seconds, error is not None)

    def count_error(self, api: str, code: str) -> None:
        """A request on ``api`` (client, http) answered with error ``code``, untimed (an
        HTTP watch refused before its stream began)."""
        self.errors.labels(api, code).inc()

    def observe_round_trip(self, peer: int, seconds: float) -> None:
        old = self._rtt.get(peer)
        self._rtt[peer] = seconds if old is None else old + RTT_SMOOTHING * (seconds - old)
        name = self._peer_name(peer)
        self._rtt_peers.add(name)
        self.peer_rtt.labels(name).observe(seconds)

    def forget_peer(self, peer: int) -> None:
        """A removed member: stop exporting its series."""
        self._rtt.pop(peer, None)
        name = self._peer_name(peer)
        if name in self._rtt_peers:
            self._rtt_peers.discard(name)
            self.peer_rtt.remove(name)

    def snapshot_saved(self, size: int, seconds: float) -> None:
        self.snapshots_taken.inc()
        self.snapshot_duration.observe(seconds)
        self._snapshot_size = size

    def snapshot_installed(self, size: int) -> None:
        self.snapshots_installed.inc()
        self._snapshot_size = size

    @property
    def snapshot_size(self) -> int:
        """Bytes of the latest snapshot this node took or installed (0: none yet)."""
        return self._snapshot_size

    def round_trip(self, peer: int) -> float | None:
        """The smoothed round trip to ``peer`` in seconds, if one was measured."""
        return self._rtt.get(peer)

    # -- reading -----------------------------------------------------------------------

    def series(self) -> list[dict[str, Any]]:
        return self.requests.series()

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The registry in the format ``accept`` asks for (Prometheus text by default)
        and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def _peer_name(self, peer: int) -> str:
        return self.node.name_of(peer) if self.node is not None else str(peer)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class _NodeCollector(Collector):
    """The node's state, read when scraped."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        node = self._metrics.node
        if node is None:
            return []
        return list(self._collect(node))

    def _collect(self, node: Node) -> Iterator[Metric]:
        m = self._metrics
        yield _gauge("quorumkv_snapshot_size_bytes", "Size of the latest snapshot this node "
                     "took or installed (0 before the first).", m.snapshot_size)
        server = node.client_server
        if server is not None:
            yield _gauge("quorumkv_client_connections", "Client-port connections open.",
                         server.connection_count)
            yield CounterMetricFamily(
                "quorumkv_client_connections_refused", "Client connections turned away "
                "because max_client_connections were open (or max_connections_per_address "
                "from their address).", value=server.refused_connections)
        yield _gauge("quorumkv_watchers", "Watches open on this node.", node.watches.count)
        group = node.group
        if group is None:
            return
        yield from self._raft(node)
        yield from self._peers(node)
        yield from self._store(node)

    def _raft(self, node: Node) -> Iterator[Metric]:
        group = node.group
        assert group is not None
        raft = group.raft
        yield _gauge("quorumkv_raft_term", "The current Raft term.", raft.term)
        role = "learner" if node.node_id in raft.conf.learners else raft.role.value
        roles = GaugeMetricFamily("quorumkv_raft_role", "1 for this node's current Raft "
                                  "role, 0 for the others.", labels=["role"])
        for name in [r.value for r in Role] + ["learner"]:
            roles.add_metric([name], 1.0 if name == role else 0.0)
        yield roles
        yield _gauge("quorumkv_raft_is_leader", "1 if this node is the leader, else 0.",
                     1.0 if raft.role is Role.LEADER else 0.0)
        yield _gauge("quorumkv_raft_commit_index", "Highest log index known committed.",
                     raft.log.committed)
        yield _gauge("quorumkv_raft_applied_index", "Highest log index applied to the state "
                     "machine.", group.kv.applied_index)
        yield _gauge("quorumkv_raft_last_index", "Index of the last entry in this node's log.",
                     raft.log.last_index)
        yield _gauge("quorumkv_raft_snapshot_index", "Log index the latest compaction "
                     "covers.", raft.log.snapshot.index)
        yield _gauge("quorumkv_proposals_pending", "Proposals made on this node and not "
                     "resolved yet.", group.pending_proposals())
        members = GaugeMetricFamily("quorumkv_cluster_members", "Members of the applied "
                                    "configuration, by kind.", labels=["kind"])
        members.add_metric(["voter"], len(raft.conf.voters))
        members.add_metric(["learner"], len(raft.conf.learners))
        yield members

    def _peers(self, node: Node) -> Iterator[Metric]:
        group = node.group
        assert group is not None
        raft = group.raft
        now = asyncio.get_running_loop().time()
        phi = GaugeMetricFamily("quorumkv_peer_phi", "Phi-accrual suspicion of each peer "
                                "(how unlikely its silence is: 1 = 10%, 8 = 1e-8).",
                                labels=["peer"])
        health = GaugeMetricFamily("quorumkv_peer_health", "1 for each peer's current "
                                   "failure-detector verdict, 0 for the others.",
                                   labels=["peer", "state"])
        rtt = GaugeMetricFamily("quorumkv_peer_round_trip_smoothed_seconds", "Smoothed "
                                "leader-side round trip to each peer (heartbeat to answer).",
                                labels=["peer"])
        lag = GaugeMetricFamily("quorumkv_peer_replication_lag_entries", "Entries each peer's "
                                "log is behind the leader's last index (exported by the "
                                "leader only).", labels=["peer"])
        leading = raft.role is Role.LEADER
        for peer in sorted(raft.conf.members()):
            if peer == node.node_id:
                continue
            name = node.name_of(peer)
            value = node.detector.phi(peer, now)
            if value is not None:
                phi.add_metric([name], value)
            verdict = node.peer_health(peer)
            for state in ("active", "inactive", "failed"):
                health.add_metric([name, state], 1.0 if state == verdict else 0.0)
            smoothed = self._metrics.round_trip(peer)
            if smoothed is not None:
                rtt.add_metric([name], smoothed)
            pr = raft.progress.get(peer)
            if leading and pr is not None:
                lag.add_metric([name], max(0, raft.log.last_index - pr.match))
        yield from (phi, health, rtt, lag)

    def _store(self, node: Node) -> Iterator[Metric]:
        kv = node.kv
        if kv is None:
            return
        try:
            size = (kv.path / DATA_FILE).stat().st_size
        except OSError:
            size = 0
        yield _gauge("quorumkv_db_size_bytes", "Size of the state machine's LMDB data file.",
                     size)
        yield _gauge("quorumkv_mvcc_revision", "The state machine's current revision.",
                     kv.revision)
        try:
            versions, leases = kv.history_size(), len(kv.leases())
        except QuorumKVError:
            return  # closing: the store is gone, the rest of the scrape is still good
        yield _gauge("quorumkv_mvcc_versions", "Key versions stored (every revision of every "
                     "key not yet compacted, deletions included).", versions)
        yield _gauge("quorumkv_leases", "Leases granted and not yet revoked or expired.",
                     leases)
