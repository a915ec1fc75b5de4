"""Log replication (thesis §3.5), pipelining (§10.2.2) and term handling (§3.3)."""

from __future__ import annotations

from quorumkv.raft.messages import AppendRequest, AppendResponse, Heartbeat, Message
from quorumkv.raft.progress import ProgressState
from quorumkv.raft.ready import Role

from .harness import Cluster, match

APPENDS_TO_2 = match(AppendRequest, dst=2)


def appends_with_entries(messages: list[Message], dst: int) -> list[list[int]]:
    """The entry indexes carried by each non-empty append to ``dst``."""
    return [[e.index for e in m.entries] for m in messages
            if isinstance(m, AppendRequest) and m.dst == dst and m.entries]


def test_log_matching_conflicting_uncommitted_entries_are_overwritten() -> None:
    """§3.5: a deposed leader's uncommitted entries (older term) conflict with the new
    leader's log; the new leader overwrites them and they are never applied."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(1)
    for data in (b"a", b"b", b"c"):
        cluster.propose(1, data)
    assert cluster.log_terms(1) == [1, 1, 1, 2, 2, 2, 2]
    cluster.expire_leases(2, 3)
    cluster.elect(2)
    cluster.propose(2, b"x")
    cluster.stabilise()

    cluster.heal()
    cluster.tick(2)  # a heartbeat of term 3 reaches the old leader
    cluster.stabilise()

    assert cluster.node(1).role is Role.FOLLOWER
    assert cluster.log_terms(1) == cluster.log_terms(2) == [1, 1, 1, 2, 3, 3]
    assert cluster.peers[1].storage.entries == cluster.peers[2].storage.entries
    for i in (1, 2, 3):
        assert cluster.applied(i) == [b"x"]


def test_conflict_hint_skips_a_whole_term_per_round_trip() -> None:
    """§5.3 of the paper (the optimisation §3.5 of the thesis mentions): a follower that
    rejects an append hints at the last entry of the conflicting term, so the leader
    backs up over a whole divergent term in one round trip instead of one entry each."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(1)
    for k in range(10):  # indexes 5..14, term 2: node 1's divergent suffix
        cluster.propose(1, b"old%d" % k)
    cluster.expire_leases(2, 3)
    cluster.elect(2)  # no-op at 5, term 3
    for k in range(8):  # indexes 6..13, term 3
        cluster.propose(2, b"new%d" % k)
    cluster.stabilise()
    # A leader of term 4 whose log is longer than the divergence: node 3.
    cluster.node(2).transfer_leadership(3)
    cluster.process(2)
    cluster.stabilise()
    assert cluster.leader() == 3
    assert cluster.log_terms(3)[-10:] == [3] * 9 + [4]

    cluster.heal()
    cluster.tick(3)
    delivered = cluster.stabilise()

    rejections = [m for m in delivered if isinstance(m, AppendResponse) and m.reject]
    divergent = 10
    assert len(rejections) == 1 < divergent
    assert (rejections[0].index, rejections[0].hint_index, rejections[0].hint_term) == (13, 13, 2)
    probes = [m.prev_index for m in delivered if isinstance(m, AppendRequest) and m.dst == 1]
    assert probes[:2] == [13, 4], "after one rejection the leader skipped all of term 3"
    assert cluster.log_terms(1) == cluster.log_terms(3)
    assert cluster.applied(1) == [b"new%d" % k for k in range(8)]


def test_pipelining_replicate_state_sends_appends_without_waiting_up_to_max_inflight() -> None:
    """§10.2.2: in REPLICATE state the leader streams appends without waiting for
    acknowledgements, bounded by the in-flight window; acknowledgements reopen it."""
    cluster = Cluster(3, max_inflight=3)
    cluster.elect(1)
    assert cluster.node(1).progress[2].state is ProgressState.REPLICATE

    for k in range(5):  # indexes 5..9, each in its own Ready
        cluster.propose(1, b"p%d" % k)

    assert appends_with_entries(cluster.in_flight, 2) == [[5], [6], [7]]
    assert cluster.node(1).progress[2].inflights.full()
    cluster.deliver(match(AppendRequest))
    cluster.deliver(match(AppendResponse))
    assert appends_with_entries(cluster.in_flight, 2) == [[8, 9]], (
        "the held entries leave together once the window reopens")
    cluster.stabilise()
    assert cluster.applied(2) == [b"p%d" % k for k in range(5)]


def test_lost_appends_in_a_full_window_recover_on_the_next_heartbeat() -> None:
    """§10.2.2: if every append in a full window is lost, the follower's heartbeat answer
    frees a slot; the next append is rejected and the leader falls back to probing
    from the follower's last match, so replication resumes without a new election."""
    cluster = Cluster(3, max_inflight=2)
    cluster.elect(1)
    cluster.propose(1, b"a")
    cluster.propose(1, b"b")
    assert cluster.drop(APPENDS_TO_2) == 2
    cluster.propose(1, b"c")
    assert not [m for m in cluster.in_flight if APPENDS_TO_2(m)], "the window is full"
    cluster.stabilise()
    assert cluster.node(1).log.committed == 7, "node 3 acknowledged all three"
    assert cluster.applied(2) == []

    cluster.tick(1)
    cluster.stabilise()

    assert cluster.applied(2) == [b"a", b"b", b"c"]
    assert cluster.node(1).progress[2].state is ProgressState.REPLICATE


def test_probe_state_sends_one_append_per_heartbeat() -> None:
    """§3.5 (etcd's probe state): while the leader does not know where a follower's log
    matches, it sends at most one append per heartbeat answer, whatever is proposed."""
    cluster = Cluster(3)
    cluster.elect(1, drop=match(AppendRequest, dst=3))
    assert cluster.node(1).progress[3].state is ProgressState.PROBE

    for k in range(3):
        cluster.propose(1, b"p%d" % k)
    assert appends_with_entries(cluster.in_flight, 3) == []

    for _ in range(3):
        sent_before = len(cluster.sent)
        cluster.tick(1)
        cluster.stabilise(drop=match(AppendRequest, dst=3))
        assert appends_with_entries(cluster.sent[sent_before:], 3) == [[4, 5, 6, 7]]

    cluster.tick(1)
    cluster.stabilise()
    assert cluster.node(1).progress[3].state is ProgressState.REPLICATE
    assert cluster.applied(3) == [b"p0", b"p1", b"p2"]


def test_duplicated_and_reordered_appends_are_harmless() -> None:
    """§3.5: appends are idempotent and a stale one never truncates entries that match,
    so duplication and reordering by the network leave the logs identical."""
    cluster = Cluster(3)
    cluster.elect(1)
    for data in (b"a", b"b", b"c"):
        cluster.propose(1, data)
    a, b, c = cluster.take(APPENDS_TO_2)

    cluster.send(c, b, a, a, c, b)
    cluster.stabilise()
    cluster.send(a, b, c)  # stale duplicates after the fact
    cluster.stabilise()

    assert cluster.log_terms(2) == cluster.log_terms(1)
    assert cluster.applied(2) == [b"a", b"b", b"c"]


def test_messages_with_a_stale_term_are_ignored() -> None:
    """§3.3: a message from an older term is ignored (its sender is told the newer term),
    so a delayed append from a deposed leader cannot change anyone's log."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.propose(1, b"late")
    delayed = cluster.take(match(AppendRequest, src=1))
    cluster.crash(1)
    cluster.expire_leases(2, 3)
    cluster.elect(2)
    cluster.propose(2, b"x")
    cluster.stabilise()
    logs_before = [cluster.log_terms(i) for i in (2, 3)]

    cluster.send(*delayed)
    cluster.deliver()

    assert [cluster.log_terms(i) for i in (2, 3)] == logs_before
    assert cluster.node(3).leader == 2
    replies = cluster.take(match(AppendResponse, dst=1))
    assert sorted((m.src, m.term) for m in replies) == [(2, 3), (3, 3)]
    assert cluster.applied(3) == [b"x"]


def test_a_higher_term_makes_a_leader_step_down() -> None:
    """§3.3: a leader that sees a newer term becomes a follower of that term; here the
    stale leader's own heartbeats bring back the news."""
    cluster = Cluster(3)
    cluster.elect(1)
    cluster.isolate(1)
    cluster.expire_leases(2, 3)
    cluster.elect(2)
    cluster.heal()
    old = cluster.node(1)
    assert (old.role, old.term) == (Role.LEADER, 2)

    cluster.tick(1)
    cluster.stabilise(match((Heartbeat, AppendResponse)))

    assert (old.role, old.term) == (Role.FOLLOWER, 3)
    cluster.tick(2)
    cluster.stabilise()
    assert old.leader == 2
    assert cluster.log_terms(1) == cluster.log_terms(2)
