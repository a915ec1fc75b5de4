"""The leader's commit rule (thesis §3.6.2, Figure 3.7; Figure 8 of the Raft paper).

A leader commits by counting replicas only entries of its *current* term. An
entry of an older term stored on a majority can still be overwritten by a
later leader that never saw it, so it becomes committed only indirectly, when
an entry of the current term after it commits.

The script below is the paper's Figure 8 on five servers S1..S5 (the leaders'
no-op entries take the place of the figure's client entries). Each append
carries a single entry (``max_msg_bytes=1``) so the script decides exactly
which entries reach whom.
"""

from __future__ import annotations

from quorumkv.raft.config import InjectedBug
from quorumkv.raft.messages import AppendRequest, Message

from .harness import Cluster, carries, match

OLD = 7
"""The index of the term-2 entry that ends up on a majority."""


def figure_8_cluster(*bugs: InjectedBug) -> Cluster:
    return Cluster(5, max_msg_bytes=1, strict=not bugs, injected_bugs=frozenset(bugs))


def store_old_term_entry_on_a_majority(cluster: Cluster) -> None:
    """Figure 3.7 (a)-(c): leave S1 leading term 4 with (7, term 2) on S1, S2, S3."""
    # (a) S1 leads term 2 and replicates index 7 to S2 only.
    cluster.elect(1)
    cluster.partition([1, 2], [3, 4, 5])
    assert cluster.propose(1, b"x") == (2, OLD)
    cluster.stabilise()
    # (b) S1 crashes. S5 wins term 3 with S3 and S4 and appends at index 7 an
    # entry of term 3 (its no-op) that reaches nobody before S5 crashes too.
    cluster.crash(1)
    cluster.heal()
    cluster.partition([2], [3, 4, 5])
    cluster.expire_leases(3, 4)
    cluster.elect(5, drop=match(AppendRequest))
    assert cluster.node(5).log.entry(OLD).term == 3
    cluster.crash(5)
    # (c) S1 restarts and wins term 4 with S2 and S3. It replicates (7, term 2)
    # to S3, but S3 loses every append that would give it S1's no-op (8, term 4).
    cluster.restart(1)
    cluster.heal()
    cluster.partition([1, 2, 3], [4, 5])
    cluster.expire_leases(2)

    def noop_for_s3(m: Message) -> bool:
        return carries(OLD + 1, dst=3)(m) and cluster.node(3).log.last_index >= OLD

    cluster.elect(1, drop=noop_for_s3)
    assert cluster.node(1).term == 4
    for i in (1, 2, 3):
        assert cluster.node(i).log.entry(OLD).term == 2, f"S{i} stores the old entry"


def crash_s1_and_elect_s5(cluster: Cluster) -> None:
    """Figure 3.7 (d): S1 crashes; S5 (last term 3) wins term 5 with S3 and S4 and
    replicates its log, overwriting index 7 on S3."""
    cluster.crash(1)
    cluster.drop()
    cluster.restart(5)
    cluster.heal()
    cluster.partition([2], [3, 4, 5])
    cluster.expire_leases(3, 4)
    cluster.elect(5)
    cluster.stabilise()


def test_commit_rule_old_term_entry_on_a_majority_is_not_committed_by_counting() -> None:
    """§3.6.2: S1 (term 4) sees (7, term 2) on a majority but must not commit it; it
    commits index 7 only together with its no-op (8, term 4), once that is on a majority."""
    cluster = figure_8_cluster()
    store_old_term_entry_on_a_majority(cluster)
    s1 = cluster.node(1)
    assert s1.progress[3].match == OLD
    assert s1.log.committed == OLD - 1
    assert cluster.applied(1) == []

    cluster.tick(1)  # a heartbeat: S3's answer makes S1 resend the no-op
    cluster.stabilise()

    assert s1.log.committed == OLD + 1
    applied_together = [[e.index for e in rd.committed_entries]
                        for rd in cluster.peers[1].readies
                        if any(e.index == OLD for e in rd.committed_entries)]
    assert applied_together == [[OLD, OLD + 1]]
    assert cluster.applied(1) == cluster.applied(3) == [b"x"]


def test_commit_rule_uncommitted_old_term_entry_is_overwritten_safely() -> None:
    """§3.6.2, Figure 3.7 (d1): because the correct S1 did not commit (7, term 2), S5
    may be elected and overwrite it; no server ever applied it, and the safety monitor
    (strict here) sees nothing wrong."""
    cluster = figure_8_cluster()
    store_old_term_entry_on_a_majority(cluster)
    crash_s1_and_elect_s5(cluster)

    assert cluster.leader() == 5
    for i in (3, 4, 5):
        assert cluster.node(i).log.entry(OLD).term == 3
        assert cluster.node(i).log.committed == OLD + 1
        assert cluster.applied(i) == []
    assert cluster.violations == []


def test_commit_old_term_by_counting_bug_is_caught_by_the_safety_monitor() -> None:
    """§3.6.2, Figure 3.7 (c)-(d1) with the rule broken: a core that commits an old-term
    entry by counting replicas commits and applies (7, term 2) on S1; S5 is then
    elected and overwrites it. The SafetyMonitor must report Leader Completeness (S5
    lacks a committed entry) and State Machine Safety (index 7 applied twice,
    differently). This is how the simulator is shown to catch this bug."""
    cluster = figure_8_cluster(InjectedBug.COMMIT_OLD_TERM_BY_COUNTING)
    store_old_term_entry_on_a_majority(cluster)
    assert cluster.node(1).log.committed == OLD, "the broken rule committed by counting"
    assert cluster.applied(1) == [b"x"]
    assert cluster.violations == []

    crash_s1_and_elect_s5(cluster)

    assert cluster.leader() == 5
    assert cluster.node(3).log.entry(OLD).term == 3, "S3's copy was overwritten"
    assert cluster.applied(5) == []
    reports = [str(v) for v in cluster.violations]
    assert any(r.startswith("leader completeness: leader 5 of term 5") for r in reports)
    assert any(r.startswith("state machine safety") and "index 7" in r for r in reports)
