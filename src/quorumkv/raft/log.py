"""The replicated log as one node sees it.

Layout (indexes grow to the right)::

    snapshot.index | first_index ........ stable ........ last_index
    (compacted)    |<- persisted entries ->|<- unstable  ->|

Invariants:

* ``entries[k].index == snapshot.index + 1 + k``: the log is contiguous.
* ``applied <= committed <= last_index``, and ``snapshot.index <= committed``.
* ``stable`` is the last index the driver has made durable; entries after it
  appear in the next Ready for persisting. Truncating below ``stable`` (a
  conflicting append) pulls ``stable`` back, so the rewritten suffix is
  persisted again.
* A committed entry is never truncated (Log Matching + Leader Completeness);
  an attempt is an assertion failure, not an error to handle.

The node keeps every entry since the last snapshot in memory, as etcd's
MemoryStorage does: snapshots bound the log's size, and the write-ahead log
holds the durable copy.
"""

from __future__ import annotations

from collections.abc import Sequence

from quorumkv.raft.entries import Entry, SnapshotMeta


class RaftLog:
    __slots__ = ("applied", "committed", "entries", "pending_snapshot", "snapshot", "stable")

    def __init__(
        self,
        *,
        snapshot: SnapshotMeta | None = None,
        entries: Sequence[Entry] = (),
        committed: int = 0,
        applied: int = 0,
        stable: int | None = None,
    ) -> None:
        self.snapshot = snapshot or SnapshotMeta()
        self.entries: list[Entry] = list(entries)
        for k, e in enumerate(self.entries):
            assert e.index == self.snapshot.index + 1 + k, "log entries must be contiguous"
        self.committed = max(committed, self.snapshot.index)
        self.applied = max(applied, self.snapshot.index)
        self.stable = self.last_index if stable is None else stable
        self.pending_snapshot: SnapshotMeta | None = None
        assert self.applied <= self.committed <= self.last_index, (
            f"applied {self.applied} <= committed {self.committed} <= last {self.last_index}")

    # -- positions -----------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self.snapshot.index + 1

    @property
    def last_index(self) -> int:
        return self.snapshot.index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot.term

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; None if compacted away or beyond the end."""
        if index == self.snapshot.index:
            return self.snapshot.term
        if index < self.snapshot.index or index > self.last_index:
            return None
        return self.entries[index - self.first_index].term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """The election restriction (§3.6.1): is a candidate's log at least as current?"""
        return last_term > self.last_term or (
            last_term == self.last_term and last_index >= self.last_index)

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.first_index]

    def slice(self, lo: int, hi: int, max_bytes: int) -> list[Entry] | None:
        """Entries in [lo, hi), at least one, at most about ``max_bytes``; None if compacted."""
        if lo <= self.snapshot.index:
            return None
        hi = min(hi, self.last_index + 1)
        out: list[Entry] = []
        size = 0
        for i in range(lo, hi):
            e = self.entries[i - self.first_index]
            size += e.size()
            if out and size > max_bytes:
                break
            out.append(e)
        return out

    # -- follower side -------------------------------------------------------------

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first new entry that is missing or disagrees on term; 0 if none."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest index <= ``index`` whose term is <= ``term``.

        Used by both sides of a rejected append to skip over a whole term of
        divergent entries at once instead of one entry per round trip.
        """
        index = min(index, self.last_index)
        while index > self.snapshot.index:
            t = self.term(index)
            if t is not None and t <= term:
                return index
            index -= 1
        return index

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: Sequence[Entry]
    ) -> int | None:
        """Apply an AppendEntries request; the new last matching index, or None on mismatch."""
        if not self.match_term(prev_index, prev_term):
            return None
        new_last = prev_index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            assert conflict > self.committed, (
                f"entry {conflict} conflicts with committed entry (committed {self.committed})")
            self.append(entries[conflict - prev_index - 1:])
        self.commit_to(min(commit, new_last))
        return new_last

    def append(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        after = entries[0].index - 1
        assert after >= self.committed, f"append after {after} would rewrite committed entries"
        assert after <= self.last_index, f"gap: append after {after}, last {self.last_index}"
        del self.entries[after - self.snapshot.index:]
        self.entries.extend(entries)
        self.stable = min(self.stable, after)

    # -- commitment ---------------------------------------------------------------

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            assert index <= self.last_index, f"commit {index} beyond last index {self.last_index}"
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Leader commit rule (§3.6.2): only an entry of the current term commits by counting."""
        if index > self.committed and self.term(index) == term:
            self.committed = index
            return True
        return False

    # -- driver hand-off ----------------------------------------------------------

    def unstable_entries(self) -> list[Entry]:
        if self.stable >= self.last_index:
            return []
        return self.entries[max(0, self.stable - self.snapshot.index):]

    def committed_to_apply(self, max_bytes: int) -> list[Entry]:
        if self.pending_snapshot is not None:
            return []
        lo = self.applied + 1
        hi = self.committed + 1
        if lo >= hi:
            return []
        return self.slice(lo, hi, max_bytes) or []

    def stable_to(self, index: int, term: int) -> None:
        # The entry may have been overwritten since the Ready that carried it;
        # only a matching term proves that what was persisted is still ours.
        if index > self.stable and self.match_term(index, term):
            self.stable = index

    def applied_to(self, index: int) -> None:
        assert index <= self.committed, f"applied {index} beyond committed {self.committed}"
        self.applied = max(self.applied, index)

    # -- snapshots ----------------------------------------------------------------

    def compact(self, meta: SnapshotMeta) -> None:
        """Drop entries up to ``meta.index``: the state machine image now holds them."""
        assert meta.index <= self.applied, "snapshot must not be ahead of the state machine"
        if meta.index <= self.snapshot.index:
            return
        term = self.term(meta.index)
        assert term == meta.term, f"snapshot term {meta.term} != log term {term}"
        del self.entries[: meta.index - self.snapshot.index]
        self.snapshot = meta

    def restore(self, meta: SnapshotMeta) -> None:
        """Replace the whole log with a snapshot received from the leader (§5.3)."""
        assert meta.index > self.committed
        self.entries = []
        self.snapshot = meta
        self.committed = meta.index
        self.pending_snapshot = meta
        # Nothing after the snapshot is ours any more; the snapshot itself is
        # persisted through Ready.snapshot, and acknowledged only after that.
        self.stable = meta.index

    def snapshot_installed(self, meta: SnapshotMeta) -> None:
        if self.pending_snapshot == meta:
            self.pending_snapshot = None
            self.applied = max(self.applied, meta.index)
