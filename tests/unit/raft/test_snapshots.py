"""Log compaction and InstallSnapshot (thesis §5.1, Figure 5.3) and restart from disk (§3.8)."""

from __future__ import annotations

from quorumkv.raft.entries import ConfState, SnapshotMeta
from quorumkv.raft.messages import AppendRequest, InstallSnapshot
from quorumkv.raft.progress import ProgressState

from .harness import Cluster, match

SNAPSHOTS = match(InstallSnapshot)


def follower_3_behind_a_compacted_log() -> tuple[Cluster, SnapshotMeta]:
    """Node 3 is down while the leader commits a, b, c, compacts at c and commits d."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.crash(3)
    for data in (b"a", b"b", b"c"):
        cluster.propose(1, data)
    cluster.stabilise()
    meta = cluster.compact(1)
    cluster.propose(1, b"d")
    cluster.stabilise()
    cluster.start(3)
    return cluster, meta


def state_of_3(cluster: Cluster) -> ProgressState:
    return cluster.node(1).progress[3].state


def test_compaction_drops_the_log_up_to_the_snapshot() -> None:
    """§5.1: once the state machine's image is saved at the applied index, the log up to
    it is dropped; the snapshot keeps the last entry's index and term and the membership."""
    cluster = Cluster(3)
    cluster.elect(1)
    for data in (b"a", b"b", b"c"):
        cluster.propose(1, data)
    cluster.stabilise()

    meta = cluster.compact(1)

    assert meta == SnapshotMeta(index=7, term=2, conf=ConfState(voters=frozenset({1, 2, 3})))
    log = cluster.node(1).log
    assert (log.first_index, log.last_index, log.entries) == (8, 7, [])
    assert log.term(7) == 2 and log.term(6) is None
    assert cluster.peers[1].storage.snapshot == meta
    assert cluster.peers[1].storage.entries == []
    assert cluster.propose(1, b"d") == (2, 8)
    cluster.stabilise()
    assert cluster.applied(2) == [b"a", b"b", b"c", b"d"]


def test_lagging_follower_installs_a_snapshot_then_catches_up_with_appends() -> None:
    """§5.1, Figure 5.3: a follower that needs entries the leader compacted away gets
    InstallSnapshot; it persists and installs it (``Ready.snapshot``), acknowledges its
    index, and the leader continues with ordinary appends from there."""
    cluster, meta = follower_3_behind_a_compacted_log()

    cluster.tick(1)
    delivered = cluster.stabilise()

    assert [(m.dst, m.snapshot) for m in delivered if isinstance(m, InstallSnapshot)] == [
        (3, meta)]
    installs = [rd for rd in cluster.peers[3].readies if rd.snapshot is not None]
    assert [rd.snapshot for rd in installs] == [meta]
    assert installs[0].committed_entries == [], "the image replaces applying the entries"
    after = [m for m in delivered if isinstance(m, AppendRequest) and m.dst == 3 and m.entries]
    assert after and after[-1].prev_index == meta.index
    assert cluster.peers[3].storage.snapshot == meta
    assert cluster.node(3).log.snapshot == meta
    assert cluster.applied(3) == [b"a", b"b", b"c", b"d"]
    assert cluster.node(1).progress[3].state is ProgressState.REPLICATE


def test_report_snapshot_failure_returns_the_follower_to_probing() -> None:
    """§5.1: while a snapshot is streaming the leader sends that follower nothing else;
    if the driver reports the transfer failed, the leader probes again and, finding
    the follower still behind its log, sends a fresh snapshot."""
    cluster, _ = follower_3_behind_a_compacted_log()
    cluster.tick(1)
    cluster.stabilise(drop=SNAPSHOTS)
    assert state_of_3(cluster) is ProgressState.SNAPSHOT

    cluster.tick(1)
    cluster.stabilise()
    assert state_of_3(cluster) is ProgressState.SNAPSHOT
    assert len([m for m in cluster.sent if isinstance(m, InstallSnapshot)]) == 1

    cluster.node(1).report_snapshot(3, success=False)
    assert state_of_3(cluster) is ProgressState.PROBE
    cluster.tick(1)
    cluster.stabilise()

    assert len([m for m in cluster.sent if isinstance(m, InstallSnapshot)]) == 2
    assert cluster.applied(3) == [b"a", b"b", b"c", b"d"]


def test_restarted_node_rebuilds_from_snapshot_and_log_and_applies_only_after_applied() -> None:
    """§3.8, §5.1: after a restart the node is rebuilt from its snapshot and the entries
    after it; the Ready stream hands out only entries after the ``applied`` index it was
    given, whether that is the snapshot (state machine rebuilt from the image) or
    further (a durable state machine)."""
    cluster = Cluster(3)
    cluster.elect(1)
    for data in (b"a", b"b"):
        cluster.propose(1, data)
    cluster.stabilise()
    meta = cluster.compact(2)
    for data in (b"c", b"d"):
        cluster.propose(1, data)
    cluster.stabilise()
    assert meta.index == 6 and cluster.node(2).log.applied == 8

    peer = cluster.peers[2]
    seen = len(peer.readies)
    cluster.restart(2)
    node = cluster.node(2)
    assert node.log.snapshot == meta and node.log.first_index == 7
    assert node.conf.voters == {1, 2, 3}
    replayed = [e.index for rd in peer.readies[seen:] for e in rd.committed_entries]
    assert replayed == [7, 8]
    assert cluster.applied(2) == [b"a", b"b", b"c", b"d"]

    seen = len(peer.readies)
    cluster.restart(2, keep_state_machine=True)
    assert [e for rd in peer.readies[seen:] for e in rd.committed_entries] == []
    assert cluster.node(2).log.applied == 8
    assert cluster.applied(2) == [b"a", b"b", b"c", b"d"]
