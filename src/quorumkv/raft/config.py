"""Tunables of one Raft node. Time is counted in ticks; the driver decides a tick's length."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class InjectedBug(enum.Enum):
    """Deliberate safety bugs, switched on only by tests that prove the simulator catches them.

    Production code never sets these; they exist so that "the checker found
    nothing" means something.
    """

    COMMIT_OLD_TERM_BY_COUNTING = "commit_old_term_by_counting"
    VOTE_TWICE_IN_A_TERM = "vote_twice_in_a_term"
    SKIP_LOG_UP_TO_DATE_CHECK = "skip_log_up_to_date_check"
    READ_WITHOUT_QUORUM_CHECK = "read_without_quorum_check"
    FORGET_VOTE_ON_RESTART = "forget_vote_on_restart"
    LEASE_OUTLIVES_ELECTION = "lease_outlives_election"


@dataclass(frozen=True, slots=True, kw_only=True)
class RaftConfig:
    id: int
    election_tick: int = 10
    """A follower that hears no leader for a random time in [election_tick, 2*election_tick)
    ticks starts an election (§3.4)."""
    heartbeat_tick: int = 1
    pre_vote: bool = True
    """Ask for votes without bumping the term first, so a partitioned node that
    rejoins cannot depose a healthy leader (§9.6)."""
    check_quorum: bool = True
    """A leader that hears from no majority for an election timeout steps down (§6.2),
    and a follower that heard a leader recently ignores vote requests (leader stickiness)."""
    lease_ticks: int = 0
    """Serve ReadIndex reads on the leader without a heartbeat round for this many ticks
    after a majority answered one (lease.py); 0: never. Needs ``check_quorum``, and at
    most ``election_tick - 2``: the margin covers the ticks' granularity only, so give
    less to allow for clocks that run at different rates."""
    max_inflight: int = 256
    """Per-follower window of unacknowledged appends (pipelining, §10.2.2)."""
    max_msg_bytes: int = 1 << 20
    """Soft cap on the entries carried by one append."""
    max_apply_bytes: int = 64 << 20
    """Soft cap on committed entries handed out in one Ready."""
    injected_bugs: frozenset[InjectedBug] = field(default_factory=frozenset)
    # Turning off both pre_vote and check_quorum is allowed (the paper's
    # plain Raft) but a removed server that never learns of its removal can
    # then disrupt the cluster with ever higher terms (§4.2.3).

    def __post_init__(self) -> None:
        assert self.id > 0, "node ids start at 1 (0 means nobody)"
        assert self.heartbeat_tick > 0
        assert self.election_tick > self.heartbeat_tick, "election timeout must exceed heartbeat"
        assert self.max_inflight > 0
        assert self.lease_ticks == 0 or (
            self.check_quorum and 0 < self.lease_ticks <= self.election_tick - 2), \
            "a read lease needs check_quorum and must end two ticks before an election"
