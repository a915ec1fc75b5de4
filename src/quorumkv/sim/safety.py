"""Raft's safety properties (thesis Figure 3.2), checked from outside the nodes after every event.

The monitor holds the one canonical record of what happened: who led each
term, which entry every (index, term) names, and which entry was applied at
each index. A node that disagrees with that record is a violation.
"""

from __future__ import annotations

from collections.abc import Iterable

from quorumkv.raft.entries import Entry
from quorumkv.raft.log import RaftLog


class SafetyViolation(Exception):
    """A Raft safety property does not hold: the implementation is wrong."""


class SafetyMonitor:
    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}
        self.applied: dict[int, tuple[int, bytes]] = {}
        self.committed_by: dict[int, int] = {}
        """For each applied index, an upper bound on the term of the leader that
        committed it: the highest term any leader had when it was first applied."""
        self._named: dict[tuple[int, int], bytes] = {}
        self.max_applied = 0

    def on_leader(self, node_id: int, term: int, log: RaftLog) -> None:
        # Election Safety: at most one leader per term.
        prev = self.leaders.get(term)
        if prev is not None and prev != node_id:
            raise SafetyViolation(
                f"election safety: nodes {prev} and {node_id} both lead term {term}")
        self.leaders[term] = node_id
        # Leader Completeness: a leader holds every entry committed in an earlier
        # term. An entry first applied while some leader of term >= ours existed
        # may have been committed in a later term than ours (a stale candidate can
        # still win an old term with delayed votes), so only entries known to be
        # committed before our term are required.
        for index in range(log.snapshot.index + 1, self.max_applied + 1):
            record = self.applied.get(index)
            if record is None or self.committed_by[index] >= term:
                continue
            if log.term(index) != record[0]:
                raise SafetyViolation(
                    f"leader completeness: leader {node_id} of term {term} has term "
                    f"{log.term(index)} at index {index}, where term {record[0]} was committed")

    def on_persist(self, node_id: int, entries: Iterable[Entry]) -> None:
        # Log Matching, first half: an (index, term) pair names exactly one entry.
        for e in entries:
            key = (e.index, e.term)
            known = self._named.get(key)
            if known is None:
                self._named[key] = e.data
            elif known != e.data:
                raise SafetyViolation(
                    f"log matching: node {node_id} holds a different entry at index "
                    f"{e.index} term {e.term}")

    def on_apply(self, node_id: int, entry: Entry) -> None:
        # State Machine Safety: no two nodes apply different entries at one index.
        record = (entry.term, entry.data)
        known = self.applied.get(entry.index)
        if known is None:
            self.applied[entry.index] = record
            self.committed_by[entry.index] = max(self.leaders, default=0)
            self.max_applied = max(self.max_applied, entry.index)
        elif known != record:
            raise SafetyViolation(
                f"state machine safety: node {node_id} applied term {entry.term} at index "
                f"{entry.index}, another node applied term {known[0]} there")

    def check_log_matching(self, logs: dict[int, RaftLog]) -> None:
        """Log Matching, second half: logs that agree at an index agree on everything before."""
        ids = sorted(logs)
        for i, a in enumerate(ids):
            for b in ids[i + 1:]:
                la, lb = logs[a], logs[b]
                lo = max(la.first_index, lb.first_index)
                hi = min(la.last_index, lb.last_index)
                agreed = False
                for index in range(hi, lo - 1, -1):
                    ea, eb = la.entry(index), lb.entry(index)
                    if ea.term == eb.term:
                        agreed = True
                    if agreed and (ea.term != eb.term or ea.data != eb.data):
                        raise SafetyViolation(
                            f"log matching: nodes {a} and {b} agree on a later entry but "
                            f"differ at index {index}")
