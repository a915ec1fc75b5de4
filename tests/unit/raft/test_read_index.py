"""ReadIndex: linearizable reads without writing to the log (thesis §6.4)."""

from __future__ import annotations

from quorumkv.raft.config import InjectedBug
from quorumkv.raft.messages import (
    AppendRequest,
    Heartbeat,
    HeartbeatResponse,
    ReadIndexRequest,
    ReadIndexResponse,
)
from quorumkv.raft.ready import ReadState, Role

from .harness import Cluster, match


def test_read_waits_until_the_leader_commits_an_entry_of_its_term() -> None:
    """§6.4 step 1: until its no-op commits, a new leader does not know the latest commit
    index, so a read waits (it is neither served nor dropped) and is confirmed after."""
    cluster = Cluster(3)
    cluster.campaign(1)
    cluster.stabilise(drop=match(AppendRequest))
    leader = cluster.node(1)
    assert leader.role is Role.LEADER and leader.log.committed == 3

    cluster.read(1, b"r")
    assert not [m for m in cluster.in_flight if isinstance(m, Heartbeat) and m.context]
    assert cluster.peers[1].read_states == []
    assert cluster.peers[1].dropped_reads == []

    cluster.tick(1)
    cluster.stabilise()
    assert leader.log.committed == 4
    assert cluster.peers[1].read_states == [ReadState(context=b"r", index=4)]


def test_read_is_released_only_after_a_majority_answers_its_heartbeat() -> None:
    """§6.4 step 3: the leader serves a read at its commit index only once a majority has
    answered a heartbeat sent after the read arrived: it was still the leader then.
    An answer for a later read confirms the earlier ones too."""
    cluster = Cluster(5)
    cluster.elect(1)
    cluster.propose(1, b"x")
    cluster.stabilise()
    reads = cluster.peers[1].read_states

    cluster.read(1, b"r1")
    cluster.read(1, b"r2")
    assert sorted(m.dst for m in cluster.in_flight
                  if isinstance(m, Heartbeat) and m.context == b"r2") == [2, 3, 4, 5]
    cluster.drop(match(Heartbeat, dst=4))
    cluster.drop(match(Heartbeat, dst=5))
    cluster.deliver(lambda m: isinstance(m, Heartbeat) and m.context == b"r2" and m.dst == 2)
    cluster.deliver(match(HeartbeatResponse))
    assert reads == [], "the leader and one follower are not a majority of five"

    cluster.deliver(lambda m: isinstance(m, Heartbeat) and m.context == b"r2" and m.dst == 3)
    cluster.deliver(match(HeartbeatResponse))
    assert reads == [ReadState(context=b"r1", index=7), ReadState(context=b"r2", index=7)]


def test_partitioned_leader_never_releases_a_read() -> None:
    """§6.4: a leader cut off from the majority cannot confirm it still leads, so it never
    serves a read (which could miss writes of the new leader); when it learns of the
    newer term it steps down and fails the read, for the client to retry."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(1)
    cluster.expire_leases(2, 3)
    cluster.elect(2)
    cluster.propose(2, b"x")
    cluster.stabilise()
    old = cluster.peers[1]
    assert cluster.node(1).role is Role.LEADER

    cluster.read(1, b"stale")
    cluster.tick(1, 3)
    cluster.stabilise()
    assert old.read_states == []

    cluster.heal()
    cluster.tick(1)
    cluster.stabilise()
    assert cluster.node(1).role is Role.FOLLOWER
    assert old.read_states == []
    assert old.dropped_reads == [b"stale"]


def test_read_without_quorum_check_bug_serves_a_stale_read() -> None:
    """§6.4, the same partition with the quorum check skipped: the old leader answers at
    its own commit index, missing the write the new leader committed."""
    cluster = Cluster(3, injected_bugs=frozenset({InjectedBug.READ_WITHOUT_QUORUM_CHECK}))
    cluster.elect(1)
    cluster.isolate(1)
    cluster.expire_leases(2, 3)
    cluster.elect(2)
    cluster.propose(2, b"x")
    cluster.stabilise()

    cluster.read(1, b"stale")

    assert cluster.peers[1].read_states == [ReadState(context=b"stale", index=4)]
    assert cluster.node(2).log.committed == 6, "x, at index 6, is committed and not seen"


def test_follower_read_is_forwarded_to_the_leader_and_comes_back_as_a_read_state() -> None:
    """§6.4: a follower asks the leader for its read index, and serves the read itself
    once its own state machine has applied that index."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.propose(1, b"x")
    cluster.stabilise()

    cluster.read(2, b"f")
    assert [(m.src, m.dst, m.context) for m in cluster.in_flight
            if isinstance(m, ReadIndexRequest)] == [(2, 1, b"f")]
    delivered = cluster.stabilise()

    assert [(m.dst, m.index) for m in delivered if isinstance(m, ReadIndexResponse)] == [(2, 5)]
    assert cluster.peers[2].read_states == [ReadState(context=b"f", index=5)]
    assert cluster.peers[1].read_states == []
    assert cluster.node(2).log.applied >= 5


def test_read_without_a_leader_is_dropped() -> None:
    """§6.4: with no known leader there is nobody to confirm a read: it is listed in
    ``dropped_reads`` at once so the client retries elsewhere or later."""
    cluster = Cluster(3)
    cluster.read(2, b"nobody")
    cluster.campaign(1)
    cluster.read(1, b"pre-candidate")

    assert cluster.peers[2].dropped_reads == [b"nobody"]
    assert cluster.peers[1].dropped_reads == [b"pre-candidate"]
    assert not [m for m in cluster.in_flight if isinstance(m, ReadIndexRequest)]


def test_deposed_leader_fails_a_forwarded_read() -> None:
    """§6.4: a leader that loses leadership before confirming a forwarded read tells the
    follower, which fails the read instead of leaving it hanging."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.read(2, b"f")
    cluster.deliver(match(ReadIndexRequest))
    cluster.drop(match(Heartbeat))

    cluster.node(1).transfer_leadership(3)
    cluster.process(1)
    cluster.stabilise()

    assert cluster.leader() == 3
    assert cluster.peers[2].read_states == []
    assert cluster.peers[2].dropped_reads == [b"f"]
