"""Observing a real cluster: /metrics, /v1/events, /v1/stats and the JSON log lines.

One three-node cluster, started with JSON logs, a custom cluster token and a
low snapshot threshold (so snapshots are taken, and a learner added later
is sent one), serves some writes and reads; then every node's metrics are
checked for presence and sanity, a learner is added through the client, and
the leader is killed with SIGKILL. The survivors must show the election in
their metrics, their event feeds and their logs, every log line must be a
JSON object, and the token must appear in none of them. Nothing is timed:
every wait polls with a generous deadline.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cluster_harness import Cluster, NodeProcess, running_cluster, wait_until
from prometheus_client.parser import text_string_to_metric_families

from quorumkv.client import Client
from quorumkv.server.events import ELECTION_KINDS

pytestmark = pytest.mark.timeout(400)

TOKEN = "metrics-test-Secret-7f3a9c"
WRITES = 60
READS = 20
SNAPSHOT_THRESHOLD = 40

Samples = dict[str, list[tuple[dict[str, str], float]]]

EVERY_NODE = (
    "quorumkv_raft_term", "quorumkv_raft_role", "quorumkv_raft_is_leader",
    "quorumkv_raft_leader_changes_total", "quorumkv_raft_commit_index",
    "quorumkv_raft_applied_index", "quorumkv_raft_last_index", "quorumkv_raft_snapshot_index",
    "quorumkv_proposals_committed_total", "quorumkv_proposals_failed_total",
    "quorumkv_proposals_pending",
    "quorumkv_wal_fsync_duration_seconds_bucket", "quorumkv_wal_append_duration_seconds_bucket",
    "quorumkv_apply_duration_seconds_bucket",
    "quorumkv_snapshots_taken_total", "quorumkv_snapshots_installed_total",
    "quorumkv_snapshot_size_bytes", "quorumkv_snapshot_duration_seconds_count",
    "quorumkv_peer_phi", "quorumkv_peer_health",
    "quorumkv_db_size_bytes", "quorumkv_mvcc_revision", "quorumkv_mvcc_versions",
    "quorumkv_watchers", "quorumkv_leases", "quorumkv_client_connections",
    "quorumkv_client_connections_refused_total", "quorumkv_cluster_members",
    "quorumkv_http_request_duration_seconds_count",
)
LEADER_ONLY = (
    "quorumkv_peer_round_trip_seconds_bucket", "quorumkv_peer_round_trip_smoothed_seconds",
    "quorumkv_peer_replication_lag_entries", "quorumkv_client_request_duration_seconds_bucket",
    "quorumkv_errors_total",
)


def _wait(predicate: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    def safe() -> object:
        try:
            return predicate()
        except (OSError, urllib.error.URLError):
            return False
    wait_until(safe, timeout, what)


def _get(node: NodeProcess, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(node.http_url + path, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def _json(node: NodeProcess, path: str) -> Any:
    status, _, body = _get(node, path)
    assert status == 200, (path, status, body[:500])
    return json.loads(body)


def _samples(node: NodeProcess) -> Samples:
    status, content_type, body = _get(node, "/metrics")
    assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def _value(samples: Samples, name: str, **labels: str) -> float:
    matching = [v for lab, v in samples.get(name, []) if labels.items() <= lab.items()]
    assert len(matching) == 1, (name, labels, samples.get(name))
    return matching[0]


def _total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if labels.items() <= lab.items())


def _events(node: NodeProcess, since: int = 0) -> dict[str, Any]:
    body = _json(node, f"/v1/events?since={since}&limit=1000")
    assert set(body) == {"events", "last_seq"}
    return body


def _kinds(node: NodeProcess, since: int = 0) -> list[str]:
    return [e["kind"] for e in _events(node, since)["events"]]


def _leader(cluster: Cluster) -> NodeProcess:
    return cluster.node(cluster.leader_name())


def _check_every_metric(cluster: Cluster, leader: NodeProcess) -> None:
    voters = [n for n in cluster.nodes if n.name in ("n1", "n2", "n3")]

    def one_leader_all_applied() -> bool:
        found = {n.name: _samples(n) for n in voters}
        leaders = [name for name, s in found.items()
                   if _value(s, "quorumkv_raft_is_leader") == 1]
        applied = [_value(s, "quorumkv_raft_applied_index") for s in found.values()]
        # A node that started late may be sent the leader's snapshot instead of taking one.
        snapshots = [_value(s, "quorumkv_snapshots_taken_total")
                     + _value(s, "quorumkv_snapshots_installed_total") for s in found.values()]
        return leaders == [leader.name] and min(applied) >= WRITES and min(snapshots) >= 1

    _wait(one_leader_all_applied, "one leader, every write applied and a snapshot everywhere")
    for node in voters:
        samples = _samples(node)
        wanted = EVERY_NODE + (LEADER_ONLY if node is leader else ())
        missing = [name for name in wanted if name not in samples]
        assert not missing, (node.name, missing)
        assert _value(samples, "quorumkv_raft_term") >= 1
        roles = dict((lab["role"], v) for lab, v in samples["quorumkv_raft_role"])
        assert sum(roles.values()) == 1
        assert roles["leader" if node is leader else "follower"] == 1
        commit = _value(samples, "quorumkv_raft_commit_index")
        assert _value(samples, "quorumkv_raft_last_index") >= commit >= WRITES
        assert _value(samples, "quorumkv_raft_leader_changes_total") >= 1
        assert _total(samples, "quorumkv_wal_fsync_duration_seconds_count") > 0
        assert _total(samples, "quorumkv_apply_duration_seconds_count") > 0
        assert _value(samples, "quorumkv_db_size_bytes") > 0
        assert _value(samples, "quorumkv_mvcc_revision") >= WRITES
        assert _value(samples, "quorumkv_mvcc_versions") >= WRITES
        assert _value(samples, "quorumkv_raft_snapshot_index") >= SNAPSHOT_THRESHOLD
        assert (_value(samples, "quorumkv_snapshots_taken_total")
                + _value(samples, "quorumkv_snapshots_installed_total")) >= 1
        assert _value(samples, "quorumkv_snapshot_size_bytes") > 0
        assert _value(samples, "quorumkv_cluster_members", kind="voter") == 3
        others = {n.name for n in voters if n is not node}
        assert {lab["peer"] for lab, _ in samples["quorumkv_peer_phi"]} == others
        for lab, v in samples["quorumkv_peer_phi"]:
            assert v >= 0, (node.name, lab, v)
        for peer in others:  # exactly one verdict per peer
            assert _total(samples, "quorumkv_peer_health", peer=peer) == 1
    samples = _samples(leader)
    assert _value(samples, "quorumkv_proposals_committed_total") >= WRITES
    assert _value(samples, "quorumkv_proposals_pending") >= 0
    followers = {n.name for n in voters if n is not leader}
    for peer in followers:
        assert _value(samples, "quorumkv_peer_round_trip_seconds_count", peer=peer) > 0
        rtt = _value(samples, "quorumkv_peer_round_trip_smoothed_seconds", peer=peer)
        assert 0 < rtt < 10
        assert _value(samples, "quorumkv_peer_replication_lag_entries", peer=peer) >= 0
    writes = _value(samples, "quorumkv_client_request_duration_seconds_count",
                    op="write", consistency="quorum")
    reads = _total(samples, "quorumkv_client_request_duration_seconds_count", op="read")
    assert writes >= WRITES and reads >= READS
    with Client([leader.client_address], timeout=15.0) as c:
        for i in range(5):
            c.put(f"more/{i}".encode(), b"x")
    later = _samples(leader)
    assert _value(later, "quorumkv_client_request_duration_seconds_count",
                  op="write", consistency="quorum") >= writes + 5
    assert _value(later, "quorumkv_errors_total", api="http", code="invalid_argument") >= 1
    assert _total(later, "quorumkv_http_request_duration_seconds_count",
                  route="/metrics", method="GET") >= 1
    # A path no route matches is one series, whatever the path was.
    assert _total(later, "quorumkv_http_request_duration_seconds_count",
                  route="unmatched") >= 1


def _check_stats(leader: NodeProcess) -> None:
    def all_counted() -> bool:
        body = _json(leader, "/v1/stats")
        assert body["interval_s"] == 1 and len(body["series"]) == 600
        series = body["series"]
        # Only complete seconds are listed: the last requests may still be in this one.
        return (sum(s["writes"] for s in series) >= WRITES
                and sum(s["reads"] for s in series) >= READS)

    _wait(all_counted, "every write and read in /v1/stats")
    series = _json(leader, "/v1/stats")["series"]
    assert [s["t"] for s in series] == list(range(series[0]["t"], series[0]["t"] + 600))
    assert set(series[0]) == {"t", "reads", "writes", "errors", "read_p50_ms", "read_p99_ms",
                              "write_p50_ms", "write_p99_ms"}
    busy = [s for s in series if s["writes"] > 0]
    assert busy and all(s["write_p99_ms"] >= s["write_p50_ms"] > 0 for s in busy), busy
    idle = [s for s in series if s["writes"] == 0]
    assert idle and all(s["write_p50_ms"] is None for s in idle)


def _check_bad_parameters(node: NodeProcess) -> None:
    for query in ("since=-1", "since=abc", "limit=0", "limit=100000", "limit=1.5"):
        status, content_type, body = _get(node, f"/v1/events?{query}")
        assert status == 400, (query, status, body)
        assert content_type.startswith("application/json")
        assert json.loads(body)["error"]["code"] == "invalid_argument"
    status, _, _ = _get(node, "/no/such/path")
    assert status == 404


def _check_ids_are_text(node: NodeProcess) -> None:
    """64-bit ids reach JSON as strings of digits (a JavaScript number would round them),
    the same ids the native client sees as integers."""
    started = _events(node)["events"][0]
    assert started["kind"] == "node_started"
    with Client([node.client_address], timeout=15.0) as c:
        native = c.status(local=True)["node"]
    assert started["fields"]["id"] == str(native["id"])
    assert started["fields"]["cluster_id"] == str(native["cluster_id"])
    raft = _json(node, "/v1/cluster/status?local=true")["node"]
    assert (raft["id"], raft["cluster_id"]) == (str(native["id"]), str(native["cluster_id"]))


def _json_lines(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    parsed = []
    for line in lines:
        obj = json.loads(line)  # every line the node wrote is one JSON object
        assert isinstance(obj, dict) and {"ts", "level", "logger", "msg"} <= set(obj), line
        parsed.append(obj)
    return parsed


def test_metrics_events_and_stats_of_a_live_cluster(tmp_path: Path) -> None:
    extra = ["--log-format", "json", "--cluster-token", TOKEN,
             "--snapshot-threshold", str(SNAPSHOT_THRESHOLD)]
    with running_cluster(tmp_path, extra=extra) as cluster:
        leader = _leader(cluster)
        with cluster.client(timeout=15.0) as c:
            for i in range(WRITES):
                c.put(f"key/{i:03d}".encode(), b"v" * 32)
            for i in range(READS):
                assert c.get(f"key/{i:03d}".encode()) is not None
        _check_bad_parameters(leader)
        _check_every_metric(cluster, leader)
        _check_stats(leader)
        kinds = _kinds(leader)
        assert kinds[0] == "node_started" and "became_leader" in kinds
        _check_ids_are_text(leader)
        _wait(lambda: "snapshot_created" in _kinds(leader), "a snapshot_created event")
        assert _value(_samples(leader), "quorumkv_snapshot_duration_seconds_count") >= 1

        # A learner added through the client: an event on every member.
        before = {n.name: _events(n)["last_seq"] for n in cluster.nodes}
        n4 = cluster.add_joiner(tmp_path, "n4", extra=extra[:4])
        with cluster.client(timeout=30.0) as c:
            c.member_add("n4", f"127.0.0.1:{n4.peer_port}", client_address=n4.client_address,
                         learner=True, token=TOKEN)
        for node in cluster.nodes[:3]:
            _wait(lambda node=node: any(
                e["kind"] == "member_added" and e["fields"]["member"] == "n4"
                and e["fields"]["role"] == "learner"
                for e in _events(node, before[node.name])["events"]),
                f"a member_added event on {node.name}")
        # It joins; the leader's log was compacted, so it is sent a snapshot.
        n4.start()
        _wait(lambda: "snapshot_installed" in _kinds(n4), "n4 to install a snapshot")
        _wait(lambda: "snapshot_sent" in _kinds(leader), "the leader to send a snapshot")
        _wait(lambda: _value(_samples(n4), "quorumkv_snapshots_installed_total") >= 1,
              "n4's snapshots_installed_total")
        # The snapshot predates n4's admission: it is a learner once it applies that too.
        _wait(lambda: _value(_samples(n4), "quorumkv_raft_role", role="learner") == 1,
              "n4 to see itself a learner")

        # Kill the leader: a survivor sees the election.
        survivors = [n for n in cluster.nodes[:3] if n is not leader]
        seen = {n.name: (_events(n)["last_seq"],
                         _value(_samples(n), "quorumkv_raft_leader_changes_total"))
                for n in survivors}
        old_term = _value(_samples(leader), "quorumkv_raft_term")
        leader.kill()

        def new_leader() -> bool:
            return any(_value(_samples(n), "quorumkv_raft_is_leader") == 1 for n in survivors)

        _wait(new_leader, "a new leader among the survivors", timeout=90.0)
        for node in survivors:
            last_seq, changes = seen[node.name]
            _wait(lambda node=node, changes=changes: _value(
                _samples(node), "quorumkv_raft_leader_changes_total") > changes,
                f"{node.name}'s leader changes to grow", timeout=90.0)
            after = _events(node, last_seq)["events"]
            assert any(e["kind"] in ELECTION_KINDS for e in after), after
            assert all(e["seq"] > last_seq for e in after)
        # The peer that died is seen to fail, by the failure detector's verdict.
        _wait(lambda: any(e["kind"] == "peer_health" and e["fields"]["peer"] == leader.name
                          and e["fields"]["state"] in ("inactive", "failed")
                          for e in _events(survivors[0])["events"]),
              "a survivor to judge the dead leader", timeout=90.0)
        for node in [*survivors, n4]:
            assert TOKEN not in json.dumps(_events(node)), node.name
    # Every process has stopped: the logs are complete.
    for node in survivors:
        records = _json_lines(node.log_path)
        elections = [r for r in records if r.get("event") in ELECTION_KINDS
                     and r.get("term", 0) > old_term and r["logger"] == "quorumkv.events"]
        assert elections, node.name
    for node in cluster.nodes:
        if node is not leader:  # killed mid-write, its last line may be cut short
            _json_lines(node.log_path)
        assert TOKEN not in node.log_path.read_text(errors="replace"), node.name
