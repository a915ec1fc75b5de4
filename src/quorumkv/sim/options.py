"""Seed -> options -> sub-seeds: how one integer decides a whole simulated run."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from quorumkv.raft.config import InjectedBug
from quorumkv.raft.lease import lease_ticks_for

TICK_MS = 10
"""Virtual milliseconds per Raft tick."""


TICK_JITTER = 0.1
"""Each simulated tick lasts TICK_MS, give or take this share (node_driver.py): the
clock drift a simulated read lease allows for."""


def sub_rng(seed: int, name: str) -> random.Random:
    """An independent, reproducible random stream for one component of a run."""
    return random.Random(f"quorumkv-sim:{seed}:{name}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SimOptions:
    seed: int
    nodes: int = 3
    # Network faults.
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    min_delay_ms: int = 1
    max_delay_ms: int = 10
    slow_rate: float = 0.0
    """Share of messages that take a long detour (up to ``slow_max_ms``): reordering."""
    slow_max_ms: int = 200
    # Node and disk faults.
    crash_interval_ms: int = 0
    """Mean time between node crashes during the fault phase (0: none)."""
    crash_in_fsync_rate: float = 0.0
    """Chance that a node dies in the middle of persisting a Ready."""
    partition_interval_ms: int = 0
    membership_interval_ms: int = 0
    transfer_interval_ms: int = 0
    restart_min_ms: int = 20
    restart_max_ms: int = 800
    max_msg_bytes: int = 4096
    """Small values force one entry per append, so acks arrive entry by entry."""
    snapshot_threshold: int = 64
    """Applied entries beyond the last snapshot that make a node compact its log."""
    # Workload.
    clients: int = 3
    keys: int = 2
    think_ms: int = 5
    op_timeout_ms: int = 600
    # Phases.
    fault_ms: int = 3_000
    liveness_budget_ms: int = 5_000
    election_tick: int = 10
    lease_ticks: int = 0
    """The leader's read lease (``RaftConfig.lease_ticks``); 0: every read is a round."""
    bugs: frozenset[InjectedBug] = field(default_factory=frozenset)

    @classmethod
    def from_seed(cls, seed: int, nodes: int = 3,
                  bugs: frozenset[InjectedBug] = frozenset()) -> SimOptions:
        r = sub_rng(seed, "options")
        profile = r.random()
        calm = profile < 0.15
        if profile > 0.75:
            return cls._aggressive(seed, nodes, bugs, r)
        return cls(
            seed=seed,
            nodes=nodes,
            drop_rate=0.0 if calm else r.choice([0.0, 0.01, 0.05, 0.1, 0.25]),
            duplicate_rate=0.0 if calm else r.choice([0.0, 0.01, 0.05]),
            min_delay_ms=r.randint(0, 2),
            max_delay_ms=r.choice([3, 8, 20, 40]),
            slow_rate=0.0 if calm else r.choice([0.0, 0.01, 0.05]),
            crash_interval_ms=0 if calm else r.choice([0, 400, 900, 2_000]),
            crash_in_fsync_rate=0.0 if calm else r.choice([0.0, 0.005, 0.02]),
            partition_interval_ms=0 if calm else r.choice([0, 300, 700, 1_500]),
            membership_interval_ms=0 if calm else r.choice([0, 0, 500, 1_200]),
            transfer_interval_ms=0 if calm else r.choice([0, 0, 400, 1_000]),
            restart_min_ms=r.choice([5, 20]),
            restart_max_ms=r.choice([100, 800]),
            max_msg_bytes=r.choice([64, 512, 4096]),
            snapshot_threshold=r.choice([8, 32, 128, 1_000_000]),
            clients=r.randint(2, 8),
            keys=r.randint(1, 4),
            think_ms=r.choice([0, 5, 20]),
            fault_ms=r.choice([1_500, 2_500, 4_000]),
            bugs=bugs,
        ).leased()

    @classmethod
    def _aggressive(cls, seed: int, nodes: int, bugs: frozenset[InjectedBug],
                    r: random.Random) -> SimOptions:
        """Frequent crashes with quick restarts, slow links and tiny appends: the
        conditions under which subtle bugs (Figure 3.7's old-term commit, a
        forgotten vote) become observable."""
        return cls(
            seed=seed, nodes=nodes,
            drop_rate=r.choice([0.0, 0.05]),
            duplicate_rate=r.choice([0.0, 0.05]),
            min_delay_ms=0, max_delay_ms=r.choice([5, 20]),
            slow_rate=r.choice([0.02, 0.1]), slow_max_ms=r.choice([50, 150]),
            crash_interval_ms=r.choice([80, 150, 300]),
            crash_in_fsync_rate=r.choice([0.0, 0.02]),
            restart_min_ms=0, restart_max_ms=r.choice([30, 150]),
            partition_interval_ms=r.choice([0, 200, 500]),
            membership_interval_ms=r.choice([0, 400]),
            transfer_interval_ms=r.choice([0, 150, 300]),
            max_msg_bytes=r.choice([64, 64, 512]),
            snapshot_threshold=r.choice([16, 1_000_000]),
            clients=r.randint(3, 8), keys=r.randint(1, 2), think_ms=r.choice([0, 5]),
            fault_ms=r.choice([2_000, 3_000]),
            election_tick=r.choice([5, 10]),
            bugs=bugs,
        ).leased()

    @classmethod
    def bug_hunt(cls, seed: int, nodes: int, bugs: frozenset[InjectedBug]) -> SimOptions:
        """The aggressive profile, tuned further for split votes and quick restarts."""
        base = cls._aggressive(seed, nodes, bugs, sub_rng(seed, "options"))
        return base.with_(crash_interval_ms=40, restart_min_ms=0, restart_max_ms=20,
                          election_tick=5, slow_rate=0.1, slow_max_ms=100, duplicate_rate=0.05,
                          lease_ticks=lease_ticks_for(5, TICK_JITTER) if base.lease_ticks else 0)

    def leased(self) -> SimOptions:
        """These options with the read lease on or off, as the seed decides: half of all
        runs lease their reads, drawn from a stream of its own so that the other options
        of every seed stay what they were before leases existed."""
        if not sub_rng(self.seed, "lease").getrandbits(1):
            return self
        return self.with_(lease_ticks=lease_ticks_for(self.election_tick, TICK_JITTER))

    def with_(self, **changes: object) -> SimOptions:
        return replace(self, **changes)  # type: ignore[arg-type]
