"""What the leader knows about each follower's log (thesis §3.5, etcd's Progress).

A follower is in one of three states:

* PROBE: the leader does not know where the follower's log matches; it sends
  at most one append per heartbeat interval and backs ``next`` up on rejection.
* REPLICATE: the logs match up to ``match``; the leader streams appends
  optimistically (pipelining), bounded by an in-flight window.
* SNAPSHOT: the follower needs entries the leader compacted away; appends
  pause until the snapshot is acknowledged or reported failed.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """A bounded window of appends sent but not yet acknowledged, by last index."""

    __slots__ = ("_capacity", "_last_indexes")

    def __init__(self, capacity: int) -> None:
        assert capacity > 0
        self._capacity = capacity
        self._last_indexes: deque[int] = deque()

    def add(self, last_index: int) -> None:
        assert not self.full(), "in-flight window overflow"
        self._last_indexes.append(last_index)

    def free_le(self, index: int) -> None:
        """An ack up to ``index`` acknowledges every append ending at or before it."""
        while self._last_indexes and self._last_indexes[0] <= index:
            self._last_indexes.popleft()

    def free_first(self) -> None:
        if self._last_indexes:
            self._last_indexes.popleft()

    def reset(self) -> None:
        self._last_indexes.clear()

    def full(self) -> bool:
        return len(self._last_indexes) >= self._capacity

    def __len__(self) -> int:
        return len(self._last_indexes)


class Progress:
    __slots__ = (
        "inflights", "is_learner", "match", "next", "pending_snapshot",
        "probe_sent", "recent_active", "state",
    )

    def __init__(self, *, next_index: int, max_inflight: int, is_learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.recent_active = False
        self.is_learner = is_learner
        self.inflights = Inflights(max_inflight)

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        # Leaving SNAPSHOT, the follower has at least the snapshot: resume after it.
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, index: int) -> bool:
        """Record an acknowledgement of ``index``; False if it tells us nothing new."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decrease_to(self, rejected: int, hint: int) -> bool:
        """Back ``next`` up after a rejection of an append whose prev_index was ``rejected``.

        Returns False for stale rejections (reordered or duplicated messages),
        which must not move ``next`` backwards past what is known to match.
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def sent_entries(self, last_index: int) -> None:
        if self.state is ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflights.add(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def __repr__(self) -> str:
        return (f"Progress(state={self.state.value}, match={self.match}, next={self.next}, "
                f"inflight={len(self.inflights)}, learner={self.is_learner})")
