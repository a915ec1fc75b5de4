"""Membership changes one server at a time (thesis §4.1), learners (§4.2.1) and
removing servers, the leader included (§4.2.2, §4.2.3)."""

from __future__ import annotations

import pytest

from quorumkv.errors import ConfChangeInProgress, InvalidArgument
from quorumkv.raft.entries import ConfChange, ConfChangeType
from quorumkv.raft.messages import AppendRequest, VoteRequest
from quorumkv.raft.ready import Role

from .harness import ELECTION, Cluster, match

ADD_VOTER = ConfChangeType.ADD_VOTER
ADD_LEARNER = ConfChangeType.ADD_LEARNER
REMOVE = ConfChangeType.REMOVE_NODE


def with_learner_4() -> Cluster:
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.add_node(4)
    cluster.change(1, ADD_LEARNER, 4)
    cluster.stabilise()
    return cluster


def test_only_one_membership_change_in_flight() -> None:
    """§4.1: a change is admitted only once the previous one is applied, so consecutive
    configurations differ by one server and their majorities always overlap."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.add_node(4)
    cluster.add_node(5)
    cluster.change(1, ADD_LEARNER, 4)

    with pytest.raises(ConfChangeInProgress):
        cluster.change(1, ADD_LEARNER, 5)
    cluster.stabilise()
    cluster.change(1, ADD_LEARNER, 5)
    cluster.stabilise()

    for i in range(1, 6):
        conf = cluster.node(i).conf
        assert conf.voters == {1, 2, 3} and conf.learners == {4, 5}


def test_new_leader_accepts_a_change_only_after_its_noop_is_applied() -> None:
    """§4.1 (the fix Ongaro posted to raft-dev in 2015): a new leader must commit an entry
    of its term before changing the membership, or its change could race with an
    uncommitted change of an earlier leader."""
    cluster = Cluster(3)
    cluster.campaign(1)
    cluster.stabilise(drop=match(AppendRequest))
    leader = cluster.node(1)
    assert leader.role is Role.LEADER
    cluster.add_node(4)

    with pytest.raises(ConfChangeInProgress):
        cluster.change(1, ADD_LEARNER, 4)
    cluster.tick(1)
    cluster.stabilise()
    assert leader.log.applied == leader.log.last_index, "the no-op is applied"
    cluster.change(1, ADD_LEARNER, 4)
    cluster.stabilise()
    assert cluster.node(4).conf.learners == {4}


def test_learner_receives_the_log_but_neither_votes_nor_counts_for_commit() -> None:
    """§4.2.1: a learner gets every entry, but is not part of any majority: its
    acknowledgements commit nothing, it never campaigns and nobody asks for its vote."""
    cluster = with_learner_4()
    cluster.propose(1, b"x")
    cluster.stabilise()
    assert cluster.applied(4) == [b"x"]

    cluster.partition([1, 4], [2, 3])
    _, index = cluster.propose(1, b"y")
    cluster.stabilise()
    assert cluster.node(4).log.last_index == index
    assert cluster.node(1).progress[4].match == index
    assert cluster.node(1).log.committed < index, "leader + learner is no majority of 3"

    cluster.heal()
    cluster.crash(1)
    cluster.run_until(lambda: any(cluster.node(i).role is Role.LEADER for i in (2, 3)))
    cluster.run(5 * ELECTION)
    assert cluster.node(4).role is Role.FOLLOWER
    assert not [m for m in cluster.sent if isinstance(m, VoteRequest) and 4 in (m.src, m.dst)]
    # y was never committed: the new leader lacks it, and the learner's copy is replaced.
    assert cluster.log_terms(4) == cluster.log_terms(cluster.leader())
    assert cluster.applied(4) == [b"x"]


def test_promote_a_learner_to_voter() -> None:
    """§4.2.1: once caught up, a learner is promoted by an ordinary change; it then counts
    toward majorities and may lead."""
    cluster = with_learner_4()
    cluster.change(1, ADD_VOTER, 4)
    cluster.stabilise()
    for i in range(1, 5):
        conf = cluster.node(i).conf
        assert conf.voters == {1, 2, 3, 4} and not conf.learners
    assert not cluster.node(1).progress[4].is_learner

    # With four voters a majority is three: 1, 2 and 4 commit without 3.
    cluster.isolate(3)
    _, index = cluster.propose(1, b"x")
    cluster.stabilise()
    assert cluster.node(1).log.committed == index

    cluster.node(1).transfer_leadership(4)
    cluster.process(1)
    cluster.stabilise()
    assert cluster.leader() == 4


def test_remove_a_follower() -> None:
    """§4.1: after the removal is applied the leader stops replicating to the server and
    majorities are counted over the smaller configuration."""
    cluster = Cluster(4)
    cluster.elect(1)
    cluster.change(1, REMOVE, 4)
    cluster.stabilise()
    assert cluster.node(1).conf.voters == {1, 2, 3}
    assert 4 not in cluster.node(1).progress
    sent_before = len(cluster.sent)

    cluster.partition([1, 2], [3, 4])
    _, index = cluster.propose(1, b"x")
    cluster.stabilise()
    assert cluster.node(1).log.committed == index, "two of three voters suffice now"
    cluster.heal()
    cluster.run(5 * ELECTION)
    assert cluster.leader() == 1 and cluster.node(1).term == 2
    assert not [m for m in cluster.sent[sent_before:] if m.src == 1 and m.dst == 4]


def test_remove_the_leader_which_steps_down_once_the_removal_is_applied() -> None:
    """§4.2.2: a leader removed from the configuration keeps leading until the change is
    committed and applied, then steps down; the remaining servers elect a leader among
    themselves and the removed one never campaigns."""
    cluster = Cluster(3)
    cluster.elect(1)
    _, index = cluster.change(1, REMOVE, 1)
    cluster.stabilise()

    readies = cluster.peers[1].readies
    k = next(k for k, rd in enumerate(readies)
             if any(e.index == index for e in rd.committed_entries))
    assert readies[k].soft_state is None, "still the leader while applying the removal"
    stepped_down = readies[k + 1].soft_state
    assert stepped_down is not None and stepped_down.role is Role.FOLLOWER
    sent_before = len(cluster.sent)

    cluster.run_until(lambda: any(cluster.node(i).role is Role.LEADER for i in (2, 3)))
    new = cluster.leader()
    assert cluster.node(new).conf.voters == {2, 3}
    assert not [m for m in cluster.sent[sent_before:] if isinstance(m, VoteRequest)
                and m.src == 1]
    cluster.propose(new, b"x")
    cluster.stabilise()
    assert cluster.applied(2) == cluster.applied(3) == [b"x"]


def test_removing_the_last_voter_is_refused() -> None:
    """§4.1: a configuration needs at least one voter; invalid changes are refused."""
    cluster = Cluster(1)
    cluster.campaign(1)
    leader = cluster.node(1)
    for cc in (ConfChange(type=REMOVE, node_id=1), ConfChange(type=ADD_LEARNER, node_id=1),
               ConfChange(type=REMOVE, node_id=7), ConfChange(type=ADD_VOTER, node_id=1)):
        with pytest.raises(InvalidArgument):
            leader.propose_conf_change(cc)
    assert leader.conf.voters == {1}
