"""The leader's read lease: linearizable reads without a heartbeat round (thesis §6.4.1).

A ReadIndex read waits for a majority to answer a heartbeat sent after it
arrived. With ``RaftConfig.lease_ticks`` set, the leader may skip that round
while it holds a lease, which a heartbeat round earns: once a majority
(itself included) has answered heartbeats sent at tick ``T`` or later, no
other leader can exist before tick ``T + election_tick`` or so. Each voter
that answered heard from this leader after ``T`` and, by leader stickiness
(``check_quorum``), grants no vote, nor campaigns, for an election timeout
after; any majority that elects a new leader includes one of them.

So the lease ends ``lease_ticks`` after ``T``, with ``lease_ticks`` below
``election_tick`` by a margin for the ticks' granularity (a follower's first
tick after the heartbeat may come at once) and for clocks running at
different rates: the server derives it from a stated drift bound
(``server/config.py``, docs/consistency.md). A leader whose process stalls
catches its ticks up before it steps any input (the driver's contract), so
a stall shortens the lease and never stretches it.

Rounds are matched by their ``context``, which followers echo: a round
that confirms a pending ReadIndex read carries that read's context, any
other round a context of the leader's own that cannot be a read's (it
begins with a zero byte and is 14 bytes long; drivers' read contexts are 8
or 16). A context sent in several rounds counts from the first.

Leadership transfer lets voters ignore stickiness for the transferee, so no
round sent while a transfer is pending counts, and a lease earned before
has ended by the time the transfer gives up (it takes an election timeout).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from quorumkv.raft.config import InjectedBug
from quorumkv.raft.entries import NONE

if TYPE_CHECKING:
    from quorumkv.raft.node import RaftNode

LEASE_CONTEXT_PREFIX: Final = b"\x00lease"
"""Begins the leader's own heartbeat contexts (then its tick, 8 bytes)."""


def lease_ticks_for(election_tick: int, drift: float) -> int:
    """The longest safe lease when each node's clock may run up to ``drift`` (a share)
    fast or slow: a follower refuses votes for ``election_tick - 1`` of its ticks at
    least, and the lease, counted on the leader's clock, must end a tick before that.
    0 when no lease is safe."""
    if not 0 <= drift < 1:
        raise ValueError("the clock drift bound is a share between 0 and 1")
    return max(0, int((election_tick - 1) * (1 - drift) / (1 + drift)) - 1)


class ReadLease:
    """One leader term's lease bookkeeping; a new one is made for every term led."""

    __slots__ = ("_acked", "_sent")

    def __init__(self) -> None:
        self._sent: dict[bytes, int] = {}
        """The tick each recent heartbeat context was first sent at."""
        self._acked: dict[int, int] = {}
        """Per follower, the send tick of the latest round it answered."""

    def round_context(self, node: RaftNode, read_context: bytes | None) -> bytes:
        """The context of a heartbeat round sent now (a pending read's, if any)."""
        context = read_context or LEASE_CONTEXT_PREFIX + node.ticks.to_bytes(8, "big")
        if node.lead_transferee == NONE:
            self._sent.setdefault(context, node.ticks)
        return context

    def answered(self, node: RaftNode, follower: int, context: bytes) -> None:
        sent = self._sent.get(context)
        if sent is not None and sent > self._acked.get(follower, -1):
            self._acked[follower] = sent
        # Forget rounds too old to matter, so the map stays small.
        horizon = node.ticks - node.config.election_tick
        if len(self._sent) > 4 * node.config.election_tick:
            self._sent = {c: t for c, t in self._sent.items() if t >= horizon}

    def transfer_started(self) -> None:
        self._acked.clear()

    def valid(self, node: RaftNode) -> bool:
        """Whether a read may be served now at the commit index without a round."""
        lease_ticks = node.config.lease_ticks
        if InjectedBug.LEASE_OUTLIVES_ELECTION in node.config.injected_bugs:
            lease_ticks = 3 * node.config.election_tick
        if lease_ticks <= 0 or node.lead_transferee != NONE:
            return False
        voters = node.conf.voters
        if node.id not in voters:
            return False
        ticks = sorted((node.ticks if v == node.id else self._acked.get(v, -1)
                        for v in voters), reverse=True)
        earned = ticks[len(voters) // 2]  # the newest round a majority has answered
        return earned >= 0 and node.ticks < earned + lease_ticks
