"""Leader election: timeouts, votes, the election restriction (thesis §3.4, §3.6.1)."""

from __future__ import annotations

import pytest

from quorumkv.raft.config import InjectedBug
from quorumkv.raft.entries import NONE, EntryType, HardState
from quorumkv.raft.messages import AppendRequest, VoteRequest, VoteResponse
from quorumkv.raft.ready import Role
from quorumkv.sim.safety import SafetyViolation

from .harness import ELECTION, Cluster, match

VOTES = match((VoteRequest, VoteResponse))


def test_follower_campaigns_after_randomized_election_timeout() -> None:
    """§3.4: a follower that hears from no leader for an election timeout starts an
    election. The timeout is drawn from [election_tick, 2*election_tick) so that
    candidates rarely collide."""
    timeouts = []
    for seed in range(20):
        cluster = Cluster(3, seed=seed)
        node = cluster.node(2)
        ticks = 0
        while node.role is Role.FOLLOWER:
            assert not cluster.in_flight, "a follower is silent until its timer fires"
            cluster.tick(2)
            ticks += 1
        assert ELECTION <= ticks < 2 * ELECTION
        assert node.role is Role.PRE_CANDIDATE
        assert sorted(m.dst for m in cluster.in_flight if isinstance(m, VoteRequest)) == [1, 3]
        timeouts.append(ticks)
    assert len(set(timeouts)) > 1, "election timeouts must be randomized"


def test_candidate_with_votes_from_a_majority_wins() -> None:
    """§3.4: a candidate becomes leader once a majority of the voters granted their vote;
    the minority that is down does not matter."""
    cluster = Cluster(5)
    cluster.crash(4)
    cluster.crash(5)
    while cluster.node(1).role is Role.FOLLOWER:
        cluster.tick(1)
    cluster.stabilise()

    assert cluster.leader() == 1
    assert cluster.node(1).term == 2
    for i in (2, 3):
        assert cluster.node(i).role is Role.FOLLOWER
        assert cluster.node(i).leader == 1
        assert cluster.peers[i].storage.hard_state.vote == 1


def test_new_leader_appends_a_noop_of_its_term() -> None:
    """§6.4 (paper §8): a new leader appends an empty entry of its own term, which commits
    every earlier entry once it commits."""
    cluster = Cluster(3)
    cluster.elect(1)

    leader = cluster.node(1)
    noop = leader.log.entry(leader.log.last_index)
    assert (noop.index, noop.term, noop.type, noop.data) == (4, 2, EntryType.NORMAL, b"")
    for i in (1, 2, 3):
        assert cluster.node(i).log.committed == 4
        assert cluster.peers[i].state[-1] == noop
        assert cluster.applied(i) == [], "a no-op is not a client command"


@pytest.mark.parametrize("pre_vote", [True, False])
def test_vote_refused_to_candidate_with_less_up_to_date_log(pre_vote: bool) -> None:
    """§3.6.1 (election restriction): a voter refuses a candidate whose log is less
    up to date than its own, so a leader always holds every committed entry."""
    cluster = Cluster(3, pre_vote=pre_vote)
    cluster.elect(1)
    cluster.isolate(3)
    cluster.propose(1, b"x")
    cluster.stabilise()
    assert cluster.node(1).log.committed == 5, "committed by nodes 1 and 2"
    cluster.crash(1)
    cluster.heal()
    cluster.expire_leases(2)
    vote_before = cluster.node(2).vote

    cluster.campaign(3)
    delivered = cluster.stabilise()

    answers = [m for m in delivered if isinstance(m, VoteResponse) and m.src == 2]
    assert answers and not any(m.granted for m in answers)
    assert cluster.node(3).role is not Role.LEADER
    if pre_vote:
        assert cluster.node(2).vote == vote_before, "a refused pre-vote changes nothing"
    # The voter with the complete log can still win, and brings node 3 up to date.
    cluster.elect(2)
    cluster.stabilise()
    assert cluster.applied(3) == [b"x"]


def test_election_safety_one_vote_per_term_even_across_restart() -> None:
    """§3.4 and §3.8 (Election Safety): a server votes for at most one candidate per term,
    and persists the vote before answering, so a restart cannot make it vote twice."""
    cluster = Cluster(3, pre_vote=False)
    cluster.campaign(1)
    cluster.campaign(2)
    request_1, request_2 = cluster.take(match(VoteRequest, dst=3))
    assert (request_1.src, request_1.term, request_2.src, request_2.term) == (1, 2, 2, 2)

    cluster.send(request_1)
    cluster.deliver(match(VoteRequest, dst=3))
    assert cluster.peers[3].storage.hard_state == HardState(term=2, vote=1, commit=3)
    cluster.restart(3)
    cluster.send(request_2, request_2)
    cluster.deliver(match(VoteRequest, dst=3))

    answers = [(m.dst, m.granted) for m in cluster.take(match(VoteResponse, src=3))
               if isinstance(m, VoteResponse)]
    assert answers == [(1, True), (2, False), (2, False)]
    assert cluster.node(3).vote == 1


def test_forgetting_the_vote_on_restart_is_caught_as_two_leaders_in_one_term() -> None:
    """§3.8: the same script with a core that forgets its vote on restart elects two
    leaders in term 2; the safety monitor must report it (Election Safety)."""
    cluster = Cluster(3, pre_vote=False,
                      injected_bugs=frozenset({InjectedBug.FORGET_VOTE_ON_RESTART}))
    cluster.campaign(1)
    cluster.campaign(2)
    request_1, request_2 = cluster.take(match(VoteRequest, dst=3))
    cluster.send(request_1)
    cluster.stabilise(VOTES)
    assert cluster.node(1).role is Role.LEADER
    cluster.restart(3)

    cluster.send(request_2)
    with pytest.raises(SafetyViolation, match="election safety: nodes 1 and 2 both lead term 2"):
        cluster.stabilise(VOTES)


def test_voting_twice_in_a_term_is_caught_as_two_leaders_in_one_term() -> None:
    """§3.4: two simultaneous candidates, and voters that do not remember whom they
    voted for in this term: both win, and the monitor reports Election Safety."""
    cluster = Cluster(3, pre_vote=False,
                      injected_bugs=frozenset({InjectedBug.VOTE_TWICE_IN_A_TERM}))
    cluster.campaign(1)
    cluster.campaign(2)
    with pytest.raises(SafetyViolation, match="election safety"):
        cluster.stabilise(VOTES)


def test_skipping_the_up_to_date_check_is_caught_as_a_leader_missing_a_commit() -> None:
    """§3.6.1, the election restriction broken: a voter grants its vote to a candidate
    that lacks a committed entry; the monitor reports Leader Completeness."""
    cluster = Cluster(3, injected_bugs=frozenset({InjectedBug.SKIP_LOG_UP_TO_DATE_CHECK}))
    cluster.elect(1)
    cluster.isolate(3)
    cluster.propose(1, b"x")
    cluster.stabilise()
    cluster.crash(1)
    cluster.heal()
    cluster.expire_leases(2)

    with pytest.raises(SafetyViolation, match="leader completeness: leader 3"):
        cluster.elect(3)


def test_candidate_that_loses_steps_down() -> None:
    """§3.4: a candidate refused by a majority returns to follower; it keeps its term and
    its own vote, and follows the winner when it hears from it."""
    cluster = Cluster(3, pre_vote=False)
    cluster.campaign(1)
    cluster.campaign(2)
    # Node 3 hears from node 1 first and votes for it.
    cluster.send(*cluster.take(match(VoteRequest, src=2)))
    cluster.stabilise(VOTES)

    loser = cluster.node(2)
    assert cluster.node(1).role is Role.LEADER
    assert (loser.role, loser.term, loser.vote, loser.leader) == (Role.FOLLOWER, 2, 2, NONE)

    cluster.stabilise()
    assert loser.leader == 1


def test_pre_candidate_that_loses_steps_down_without_changing_term() -> None:
    """§9.6: a pre-candidate refused by a majority returns to follower in the same term."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(3)
    cluster.propose(1, b"x")
    cluster.stabilise()
    cluster.crash(1)
    cluster.heal()
    cluster.expire_leases(2)
    cluster.restart(1)  # back, with the same log as node 2: neither votes for node 3

    cluster.campaign(3)
    assert cluster.node(3).role is Role.PRE_CANDIDATE
    cluster.stabilise(VOTES)
    node = cluster.node(3)
    assert (node.role, node.term) == (Role.FOLLOWER, 2)


def test_heartbeats_keep_followers_from_campaigning() -> None:
    """§3.4: as long as followers hear the leader's heartbeats, no election starts."""
    cluster = Cluster(5)
    cluster.elect(3)
    cluster.run(10 * ELECTION)
    assert cluster.leader() == 3
    assert {cluster.node(i).term for i in cluster.up()} == {2}
    assert not [m for m in cluster.sent if isinstance(m, VoteRequest) and m.term > 2]
    assert not [m for m in cluster.sent if isinstance(m, AppendRequest) and m.term != 2]
