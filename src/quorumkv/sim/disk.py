"""A simulated disk: what an fsync makes durable, and what a power cut leaves behind.

Writes land in a volatile queue; ``sync`` makes them durable. A crash keeps a
random *prefix* of the unsynced writes (a log is written sequentially, so a
power cut tears off a suffix) and loses the rest, as a real disk may.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from quorumkv.raft.entries import Entry, HardState, SnapshotMeta


@dataclass(slots=True)
class DurableState:
    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta | None = None
    snapshot_data: bytes = b""
    entries: list[Entry] = field(default_factory=list)

    def apply_write(self, write: tuple[str, object]) -> None:
        kind, payload = write
        if kind == "entries":
            assert isinstance(payload, list)
            self._append(payload)
        elif kind == "hard_state":
            assert isinstance(payload, HardState)
            self.hard_state = payload
        elif kind == "snapshot":
            assert isinstance(payload, tuple)
            meta, data = payload
            self.snapshot, self.snapshot_data = meta, data
            # Same rule as the real WAL's recovery: a received snapshot replaces
            # a log whose later entries all have lower terms; a local one keeps
            # the node's own later entries.
            self.entries = [e for e in self.entries
                            if e.index > meta.index and e.term >= meta.term]
            if self.entries and self.entries[0].index != meta.index + 1:
                self.entries = []
        else:
            raise AssertionError(f"unknown write {kind}")

    def _append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        first = entries[0].index
        self.entries = [e for e in self.entries if e.index < first]
        if self.entries and self.entries[-1].index != first - 1:
            raise AssertionError(f"simulated WAL gap before {first}")
        self.entries.extend(entries)

    def live_entries(self) -> list[Entry]:
        base = self.snapshot.index if self.snapshot else 0
        return [e for e in self.entries if e.index > base]


class SimDisk:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.durable = DurableState()
        self._pending: list[tuple[str, object]] = []
        self.syncs = 0

    def write(self, kind: str, payload: object) -> None:
        self._pending.append((kind, payload))

    def sync(self) -> None:
        for w in self._pending:
            self.durable.apply_write(w)
        self._pending.clear()
        self.syncs += 1

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Atomic and durable (temp file, fsync, rename), like the real snapshot store."""
        self.sync()
        self.durable.apply_write(("snapshot", (meta, data)))

    def crash(self) -> int:
        """Power cut: keep a random prefix of unsynced writes. Returns how many were lost."""
        keep = self._rng.randint(0, len(self._pending))
        for w in self._pending[:keep]:
            self.durable.apply_write(w)
        lost = len(self._pending) - keep
        self._pending.clear()
        return lost
