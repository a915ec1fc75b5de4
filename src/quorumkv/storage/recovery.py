"""Rebuilding the log's state from its records, in the order they were written.

The rules (the live log in wal.py obeys the same ones when it writes):

* A hard-state record replaces the previous one: the latest wins.
* A snapshot marker at index S and term T says the state machine image
  covers the log up to S: entries <= S are dropped. Later entries are kept
  only if their term is at least T. A snapshot taken locally is followed by
  the node's own later entries (terms never decrease along a log), which
  stay; a snapshot received from a leader replaces a log that disagreed with
  it at S, and every entry after S in such a log has a term below T (a
  leader of term >= T holds the committed entry at S and could not have
  appended after a different one). Keeping those would give the restarted
  node a last term below T and let it vote for a candidate missing the
  committed entry at S. Markers never go backwards, but one may repeat an
  older index (a segment header, a snapshot saved twice) after entries that
  begin beyond it because their predecessors were released: those entries
  stand.
* An entry record at index i replaces every entry >= i (Raft's conflict
  resolution, thesis §3.5) and must land right after the last live entry;
  anything else is a gap, hence corruption.

Segments whose entries are all covered by a snapshot may have been deleted
(``release_before``), so the first entry record read may follow entries that
no longer exist: the live log may start anywhere while it is empty, and the
end of replay checks it begins no later than just after the snapshot.
Every segment starts with copies of the hard state and snapshot marker in
force when it was created, so no fact is lost with the segments before it.
"""

from __future__ import annotations

from dataclasses import dataclass

from quorumkv.errors import CorruptLog
from quorumkv.raft.entries import Entry, HardState, SnapshotMeta
from quorumkv.storage.payload import decode_entry, decode_hard_state, decode_snapshot_meta
from quorumkv.storage.record import Record, RecordType
from quorumkv.storage.segment import TornTail


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveredState:
    """What :meth:`WriteAheadLog.open` found on disk."""

    hard_state: HardState
    snapshot: SnapshotMeta | None
    """The latest snapshot marker, if any."""
    entries: list[Entry]
    """The live log after the snapshot, conflicts already resolved, contiguous."""
    torn_tail: TornTail | None
    """Set when a torn write at the end of the log was cut away (also logged)."""

    @property
    def last_index(self) -> int:
        if self.entries:
            return self.entries[-1].index
        return self.snapshot.index if self.snapshot else 0


class LogReplay:
    """Applies records one by one; :meth:`finish` returns the recovered state."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot: SnapshotMeta | None = None
        self.entries: list[Entry] = []
        self._first_origin = ("", -1)
        """File and offset of the record that holds ``entries[0]``, for error messages."""

    @property
    def snapshot_index(self) -> int:
        return self.snapshot.index if self.snapshot else 0

    def apply(self, path: str, rec: Record) -> int | None:
        """Apply one record; return the entry index if it was an entry record."""
        try:
            if rec.type is RecordType.ENTRY:
                entry = decode_entry(rec.payload)
                self._apply_entry(path, rec.offset, entry)
                return entry.index
            if rec.type is RecordType.HARD_STATE:
                self.hard_state = decode_hard_state(rec.payload)
            elif rec.type is RecordType.SNAPSHOT:
                self._apply_snapshot(path, rec.offset, decode_snapshot_meta(rec.payload))
        except ValueError as e:
            raise CorruptLog(f"undecodable {rec.type.name.lower()} record in {path} at offset "
                             f"{rec.offset}: {e}", path=path, offset=rec.offset) from None
        return None

    def _apply_entry(self, path: str, offset: int, entry: Entry) -> None:
        i = entry.index
        if i <= self.snapshot_index:
            raise CorruptLog(f"entry {i} in {path} at offset {offset} is at or below the "
                             f"snapshot index {self.snapshot_index}", path=path, offset=offset)
        entries = self.entries
        if not entries or i < entries[0].index:
            entries.clear()
            self._first_origin = (path, offset)
        elif i <= entries[-1].index:
            del entries[i - entries[0].index:]
        elif i != entries[-1].index + 1:
            raise CorruptLog(f"gap in the log: entry {i} in {path} at offset {offset} follows "
                             f"entry {entries[-1].index}", path=path, offset=offset)
        entries.append(entry)

    def _apply_snapshot(self, path: str, offset: int, meta: SnapshotMeta) -> None:
        if meta.index < self.snapshot_index:
            raise CorruptLog(f"snapshot marker at index {meta.index} in {path} at offset {offset} "
                             f"goes back from {self.snapshot_index}", path=path, offset=offset)
        self.snapshot = meta
        entries = self.entries
        if entries and entries[0].index <= meta.index:
            del entries[:meta.index - entries[0].index + 1]
        if entries and entries[0].index == meta.index + 1 and entries[0].term < meta.term:
            # A log the leader's snapshot replaced (see the module docstring).
            entries.clear()
        # Entries that start further on are not contradicted: the segments before
        # them were released under a later marker, which a later record repeats
        # (here we only met an older copy, e.g. a segment's header); finish()
        # still refuses a log that really starts after a gap.

    def finish(self, torn: TornTail | None) -> RecoveredState:
        if self.entries and self.entries[0].index > self.snapshot_index + 1:
            path, offset = self._first_origin
            raise CorruptLog(f"the log starts at entry {self.entries[0].index} ({path} at offset "
                             f"{offset}) but the snapshot only covers up to "
                             f"{self.snapshot_index}: entries in between are missing",
                             path=path, offset=offset)
        return RecoveredState(hard_state=self.hard_state, snapshot=self.snapshot,
                              entries=self.entries, torn_tail=torn)
