"""Pre-vote (thesis §9.6), check-quorum (§6.2) and leader stickiness (§4.2.3)."""

from __future__ import annotations

import pytest

from quorumkv.errors import NotLeader
from quorumkv.raft.entries import NONE
from quorumkv.raft.messages import VoteRequest, VoteResponse
from quorumkv.raft.ready import Role

from .harness import ELECTION, Cluster, match


def test_prevote_partitioned_node_rejoining_does_not_disrupt_the_leader() -> None:
    """§9.6: a node cut off from the cluster keeps timing out, but a pre-vote that
    nobody grants never raises its term; when it rejoins, the cluster's term and
    leader are unchanged and it simply catches up."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(3)
    cluster.run(5 * ELECTION)
    cluster.propose(1, b"x")
    cluster.stabilise()
    assert [m for m in cluster.sent if isinstance(m, VoteRequest) and m.src == 3], (
        "node 3 kept campaigning while partitioned")
    assert cluster.node(3).term == 2

    cluster.heal()
    cluster.run(2 * ELECTION)

    assert cluster.leader() == 1
    assert [cluster.node(i).term for i in (1, 2, 3)] == [2, 2, 2]
    assert cluster.applied(3) == [b"x"]


def test_without_prevote_a_rejoining_node_deposes_the_leader() -> None:
    """§9.6, the problem pre-vote solves: the same partition with pre-vote off lets the
    isolated node inflate its term, and its return forces a needless election."""
    cluster = Cluster(3, pre_vote=False)
    cluster.elect(1)
    cluster.isolate(3)
    cluster.run(5 * ELECTION)
    assert cluster.node(3).term > 2

    cluster.heal()
    cluster.run(3 * ELECTION)

    assert cluster.node(cluster.leader()).term > 2, "the leader of term 2 was deposed"


def test_prevote_does_not_change_the_voters_term_or_vote() -> None:
    """§9.6: granting a pre-vote is only an opinion: the voter's term and vote (and so
    its disk) stay as they were. Only the real election that follows changes them."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.crash(1)
    cluster.expire_leases(2, 3)
    durable_before = cluster.peers[3].storage.hard_state
    assert (cluster.node(3).term, cluster.node(3).vote) == (2, 1)

    cluster.campaign(2)
    assert cluster.node(2).term == 2, "a pre-candidate does not bump its own term"
    cluster.deliver(match(VoteRequest, dst=3))

    (answer,) = cluster.take(match(VoteResponse, src=3))
    assert isinstance(answer, VoteResponse)
    assert (answer.pre_vote, answer.granted, answer.term) == (True, True, 3)
    assert (cluster.node(3).term, cluster.node(3).vote) == (2, 1)
    assert cluster.peers[3].storage.hard_state == durable_before

    cluster.send(answer)
    cluster.stabilise()
    assert cluster.leader() == 2
    assert (cluster.node(3).term, cluster.node(3).vote) == (3, 2)


@pytest.mark.parametrize("check_quorum", [True, False])
def test_check_quorum_leader_that_hears_no_majority_steps_down(check_quorum: bool) -> None:
    """§6.2: a leader that has not heard from a majority within an election timeout
    steps down, so clients stop waiting on a leader that cannot commit. Without
    check-quorum the isolated leader would stay leader forever."""
    cluster = Cluster(3, check_quorum=check_quorum)
    cluster.elect(1)
    cluster.run(3)
    cluster.isolate(1)
    leader = cluster.node(1)

    if not check_quorum:
        cluster.run(5 * ELECTION)
        assert leader.role is Role.LEADER
        return
    ticks = cluster.run_until(lambda: leader.role is not Role.LEADER)
    assert ELECTION <= ticks <= 2 * ELECTION
    assert (leader.role, leader.leader, leader.term) == (Role.FOLLOWER, NONE, 2)
    with pytest.raises(NotLeader):
        leader.propose(b"x")


def test_leader_with_a_majority_survives_check_quorum() -> None:
    """§6.2: losing a minority does not depose the leader."""
    cluster = Cluster(5)
    cluster.elect(1)
    cluster.isolate(4)
    cluster.isolate(5)
    cluster.run(5 * ELECTION)
    assert cluster.node(1).role is Role.LEADER
    assert cluster.node(1).term == 2


@pytest.mark.parametrize("pre_vote", [True, False])
def test_leader_stickiness_followers_that_hear_a_leader_ignore_vote_requests(
        pre_vote: bool) -> None:
    """§4.2.3 (with check-quorum, §6.2): a server that heard a leader within the minimum
    election timeout ignores (pre-)vote requests, so a server whose timer fired on a
    lossy link, or a removed one, cannot depose a healthy leader. Once the leader
    falls silent for an election timeout, votes are granted again."""
    cluster = Cluster(3, pre_vote=pre_vote)
    cluster.elect(1)
    cluster.run(3)

    cluster.campaign(3)
    ignored = cluster.deliver(match(VoteRequest, src=3))
    assert sorted(m.dst for m in ignored) == [1, 2]
    assert not [m for m in cluster.in_flight if isinstance(m, VoteResponse)], "no answer at all"
    assert cluster.node(1).role is Role.LEADER
    assert [(cluster.node(i).term, cluster.node(i).vote) for i in (1, 2)] == [(2, 1), (2, 1)]

    cluster.drop()
    cluster.crash(1)
    cluster.expire_leases(2)
    cluster.elect(3)
    assert cluster.node(2).leader == 3
