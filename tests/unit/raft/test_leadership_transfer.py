"""Leadership transfer (thesis §3.10)."""

from __future__ import annotations

import pytest

from quorumkv.errors import InvalidArgument, LeadershipTransferInProgress, NotLeader
from quorumkv.raft.entries import ConfChange, ConfChangeType
from quorumkv.raft.messages import AppendResponse, TimeoutNow, VoteRequest
from quorumkv.raft.ready import Role

from .harness import ELECTION, Cluster


def test_transfer_to_an_up_to_date_follower_sends_timeout_now() -> None:
    """§3.10: when the target's log matches, the leader sends TimeoutNow at once; the
    target campaigns without pre-vote, is heard despite leader stickiness, and wins
    the next term."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.propose(1, b"x")
    cluster.stabilise()

    cluster.node(1).transfer_leadership(2)
    cluster.process(1)
    assert [(type(m), m.dst, m.term) for m in cluster.in_flight] == [(TimeoutNow, 2, 2)]
    delivered = cluster.stabilise()

    requests = [m for m in delivered if isinstance(m, VoteRequest)]
    assert requests and all(m.transfer and not m.pre_vote and m.term == 3 for m in requests)
    assert cluster.leader() == 2
    assert cluster.node(2).term == 3
    assert cluster.node(1).role is Role.FOLLOWER
    cluster.propose(2, b"y")
    cluster.stabilise()
    assert cluster.applied(1) == [b"x", b"y"]


def test_transfer_to_a_lagging_follower_catches_it_up_first() -> None:
    """§3.10 step 2: the leader first brings the target's log up to date, and sends
    TimeoutNow only once the target has acknowledged the leader's last entry."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(3)
    for data in (b"a", b"b"):
        cluster.propose(1, data)
    cluster.stabilise()
    cluster.heal()
    last = cluster.node(1).log.last_index

    cluster.node(1).transfer_leadership(3)
    cluster.process(1)
    assert not [m for m in cluster.in_flight if isinstance(m, TimeoutNow)]
    sent_before = len(cluster.sent)
    cluster.stabilise()

    sent = cluster.sent[sent_before:]
    timeout_at = next(k for k, m in enumerate(sent) if isinstance(m, TimeoutNow))
    assert any(isinstance(m, AppendResponse) and m.src == 3 and m.index == last
               and not m.reject for m in sent[:timeout_at])
    assert cluster.leader() == 3
    assert cluster.applied(3) == [b"a", b"b"]


def test_proposals_are_refused_during_a_transfer() -> None:
    """§3.10: the leader stops accepting client requests while it hands over, so the
    target can catch up with a log that no longer grows."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(3)
    cluster.propose(1, b"a")
    cluster.stabilise()
    leader = cluster.node(1)

    leader.transfer_leadership(3)

    with pytest.raises(LeadershipTransferInProgress):
        leader.propose(b"b")
    with pytest.raises(LeadershipTransferInProgress):
        leader.propose_conf_change(ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=2))


def test_transfer_is_abandoned_after_an_election_timeout() -> None:
    """§3.10: if the target does not take over within an election timeout, the leader
    aborts the transfer and resumes accepting requests."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.crash(3)
    leader = cluster.node(1)
    leader.transfer_leadership(3)
    cluster.process(1)

    cluster.run(ELECTION - 1)
    with pytest.raises(LeadershipTransferInProgress):
        leader.propose(b"x")
    cluster.run(1)

    assert leader.role is Role.LEADER and leader.term == 2
    cluster.propose(1, b"x")
    cluster.stabilise()
    assert cluster.applied(2) == [b"x"]


def test_transfer_only_from_a_leader_to_a_voter() -> None:
    """§3.10: only the leader can hand over, and only to a server that may lead."""
    cluster = Cluster(3)
    cluster.elect(1)
    with pytest.raises(NotLeader):
        cluster.node(2).transfer_leadership(3)
    with pytest.raises(InvalidArgument):
        cluster.node(1).transfer_leadership(9)
