"""The leader's read lease (raft/lease.py): reads served without a heartbeat round while
a majority's answers vouch that no other leader can exist yet, and never after."""

from __future__ import annotations

from quorumkv.raft.config import InjectedBug
from quorumkv.raft.messages import Heartbeat, HeartbeatResponse
from quorumkv.raft.ready import ReadState, Role

from .harness import ELECTION, Cluster, match

LEASE = ELECTION - 2


def leased_cluster(**options: object) -> Cluster:
    cluster = Cluster(3, lease_ticks=LEASE, **options)
    cluster.elect(1)
    cluster.propose(1, b"x")
    cluster.stabilise()
    cluster.run(1)  # one heartbeat round answered by both followers: the lease begins
    return cluster


def test_a_leased_read_is_served_at_once_without_a_round() -> None:
    cluster = leased_cluster()
    leader = cluster.node(1)
    cluster.read(1, b"r")
    assert cluster.peers[1].read_states[-1] == ReadState(context=b"r", index=leader.log.committed)
    assert not [m for m in cluster.in_flight if isinstance(m, Heartbeat) and m.context == b"r"]


def test_a_follower_forwarded_read_is_leased_too() -> None:
    cluster = leased_cluster()
    sent = len(cluster.sent)
    cluster.read(2, b"f")
    cluster.stabilise()
    assert cluster.peers[2].read_states[-1].context == b"f"
    assert not [m for m in cluster.sent[sent:] if isinstance(m, Heartbeat) and m.context == b"f"]


def test_without_answers_the_lease_runs_out_and_reads_need_a_round_again() -> None:
    cluster = leased_cluster()
    cluster.drop(match(HeartbeatResponse))
    cluster.isolate(1)
    cluster.tick(1, LEASE)  # no follower answers any of these rounds
    cluster.read(1, b"late")
    assert all(rs.context != b"late" for rs in cluster.peers[1].read_states)
    assert [m for m in cluster.in_flight if isinstance(m, Heartbeat) and m.context == b"late"]


def test_no_lease_during_a_leadership_transfer() -> None:
    cluster = leased_cluster()
    cluster.drop(match(HeartbeatResponse))
    cluster.partition([1], [2, 3])  # the transfer cannot finish
    cluster.node(1).transfer_leadership(2)
    cluster.read(1, b"t")
    assert all(rs.context != b"t" for rs in cluster.peers[1].read_states)


def _stalled_leader_reads(bug: bool) -> tuple[int, int, list[ReadState]]:
    """The leader's process stalls; the others elect a new leader and commit a write;
    the old leader wakes, catches its ticks up (as drivers must before any input) and
    is asked for a read. Returns (the read's index if it was served at once, or -1; the
    new commit index; the old leader's read states)."""
    bugs = frozenset({InjectedBug.LEASE_OUTLIVES_ELECTION}) if bug else frozenset()
    cluster = leased_cluster(injected_bugs=bugs)
    cluster.isolate(1)
    elapsed = 0
    while not any(cluster.node(i).role is Role.LEADER for i in (2, 3)):
        for i in (2, 3):
            cluster.tick(i)
        cluster.stabilise()
        elapsed += 1
        assert elapsed < 3 * ELECTION, "nodes 2 and 3 elected nobody"
    new = 2 if cluster.node(2).role is Role.LEADER else 3
    cluster.propose(new, b"y")
    cluster.stabilise()
    committed = cluster.node(new).log.committed
    # The old leader wakes: the time the others spent electing, then the read.
    cluster.tick(1, elapsed)
    old = cluster.node(1)
    assert old.role is Role.LEADER, "the old leader already stepped down: no stale read to try"
    states = cluster.peers[1].read_states
    cluster.read(1, b"stale?")
    served = [rs.index for rs in states if rs.context == b"stale?"]
    return (served[0] if served else -1), committed, states


def test_a_leader_that_stalled_past_its_lease_does_not_serve_a_stale_read() -> None:
    served, _, _ = _stalled_leader_reads(bug=False)
    assert served == -1


def test_a_lease_that_outlives_the_election_timeout_serves_a_stale_read() -> None:
    """The same scenario with the lease stretched past the followers' stickiness: the
    old leader answers at once, at an index older than a committed write."""
    served, committed, _ = _stalled_leader_reads(bug=True)
    assert 0 <= served < committed
