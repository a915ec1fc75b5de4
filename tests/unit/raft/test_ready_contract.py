"""The Ready contract (``quorumkv.raft.ready``): what may leave before the persist and
what only after it (thesis §3.8, §10.2.1)."""

from __future__ import annotations

from quorumkv.raft.entries import NONE
from quorumkv.raft.messages import (
    AppendRequest,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    VoteRequest,
    VoteResponse,
)
from quorumkv.raft.ready import Role

from .harness import Cluster, carries, match


def test_follower_acks_and_votes_are_sent_only_after_the_persist() -> None:
    """§3.8: a vote and an append acknowledgement promise that something is on disk, so
    they are ``persisted_messages``, never ``messages``; the Ready carrying a vote also
    carries the hard state recording it, and one carrying an ack the entries it acks.
    The leader's appends and heartbeats promise nothing and are ``messages``."""
    cluster = Cluster(3)
    cluster.elect(1)
    for data in (b"a", b"b"):
        cluster.propose(1, data)
    cluster.stabilise()
    cluster.run(3)

    votes = acks = appends = 0
    for peer in cluster.peers.values():
        for rd in peer.readies:
            assert not [m for m in rd.messages
                        if isinstance(m, (AppendResponse, HeartbeatResponse))
                        or (isinstance(m, VoteResponse) and m.granted)]
            assert not [m for m in rd.persisted_messages
                        if isinstance(m, (AppendRequest, Heartbeat))]
            appends += sum(isinstance(m, AppendRequest) for m in rd.messages)
            for m in rd.persisted_messages:
                if isinstance(m, VoteResponse) and m.granted and not m.pre_vote:
                    votes += 1
                    assert rd.hard_state is not None and rd.hard_state.vote == m.dst
                    assert rd.must_sync
                elif isinstance(m, AppendResponse) and rd.entries:
                    acks += 1
                    assert rd.entries[-1].index == m.index
                    assert rd.must_sync
    assert votes == 2 and acks >= 4 and appends >= 4, "the scenario exercised the contract"


def test_leader_appends_leave_before_its_own_persist() -> None:
    """§10.2.1: the leader sends its appends in parallel with writing its own log."""
    cluster = Cluster(3)
    cluster.elect(1)
    _, index = cluster.node(1).propose(b"x")

    rd = cluster.begin_ready(1)

    assert [e.index for e in rd.entries] == [index]
    assert [m.dst for m in cluster.in_flight if carries(index)(m)] == [2, 3]
    assert cluster.peers[1].storage.entries[-1].index == index - 1, "not yet on the disk"
    cluster.finish_ready(1, rd)
    assert cluster.peers[1].storage.entries[-1].index == index


def test_leader_own_entry_counts_toward_commit_only_after_advance() -> None:
    """§10.2.1: the leader is one of the majority only for entries on its own disk: with
    one follower's ack in hand, the entry commits when ``advance()`` reports the persist."""
    cluster = Cluster(3)
    cluster.elect(1)
    leader = cluster.node(1)
    _, index = leader.propose(b"x")
    rd = cluster.begin_ready(1)
    cluster.drop(match(AppendRequest, dst=3))
    cluster.deliver(match(AppendRequest, dst=2))
    cluster.deliver(match(AppendResponse, src=2))
    assert leader.progress[2].match == index
    assert leader.log.committed == index - 1

    cluster.finish_ready(1, rd)

    assert leader.log.committed == index
    cluster.process(1)
    assert cluster.applied(1) == [b"x"]


def test_single_node_cluster_commits_only_after_advance() -> None:
    """§10.2.1: alone, the leader is its own majority, so an entry commits exactly when
    its persist is reported, and is handed out to apply in the Ready after that."""
    cluster = Cluster(1)
    cluster.campaign(1)
    node = cluster.node(1)
    assert node.role is Role.LEADER
    _, index = node.propose(b"x")

    rd = cluster.begin_ready(1)
    assert [e.data for e in rd.entries] == [b"x"]
    assert rd.committed_entries == []
    assert node.log.committed == index - 1
    cluster.finish_ready(1, rd)
    assert node.log.committed == index

    rd = cluster.begin_ready(1)
    assert [e.data for e in rd.committed_entries] == [b"x"]
    cluster.finish_ready(1, rd)
    assert cluster.applied(1) == [b"x"]


def test_a_node_that_crashes_before_its_persist_has_promised_nothing() -> None:
    """§3.8: a voter that crashes between taking its Ready and persisting it sent no
    vote, so forgetting the unpersisted vote on restart is safe."""
    cluster = Cluster(3, pre_vote=False)
    cluster.campaign(1)
    (request,) = cluster.take(match(VoteRequest, dst=3))
    cluster.node(3).step(request)
    rd = cluster.begin_ready(3)
    assert [(type(m), m.dst) for m in rd.persisted_messages] == [(VoteResponse, 1)]
    assert rd.hard_state is not None and rd.hard_state.vote == 1
    assert not [m for m in cluster.in_flight if m.src == 3], "nothing left before the persist"

    cluster.crash(3)
    cluster.start(3)

    assert cluster.peers[3].storage.hard_state.vote == NONE
    assert cluster.node(3).vote == NONE
    assert not [m for m in cluster.in_flight if m.src == 3]
