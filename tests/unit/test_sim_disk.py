"""The simulated disk keeps exactly what fsync made durable, plus a prefix of the rest."""

from __future__ import annotations

import random

from quorumkv.raft.entries import Entry, HardState, SnapshotMeta
from quorumkv.sim.disk import SimDisk


def _entries(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [Entry(term=term, index=i, data=f"e{i}".encode()) for i in range(lo, hi + 1)]


def test_synced_writes_survive_a_crash() -> None:
    disk = SimDisk(random.Random(1))
    disk.write("entries", _entries(1, 3))
    disk.write("hard_state", HardState(term=2, vote=1, commit=3))
    disk.sync()
    assert disk.crash() == 0
    assert [e.index for e in disk.durable.entries] == [1, 2, 3]
    assert disk.durable.hard_state == HardState(term=2, vote=1, commit=3)


def test_a_crash_keeps_a_prefix_of_unsynced_writes() -> None:
    kept_counts = set()
    for seed in range(40):
        disk = SimDisk(random.Random(seed))
        disk.write("entries", _entries(1, 1))
        disk.write("entries", _entries(2, 2))
        disk.write("hard_state", HardState(term=1, vote=0, commit=2))
        lost = disk.crash()
        kept = 3 - lost
        kept_counts.add(kept)
        # Whatever survived is a prefix: never the hard state without the entries before it.
        assert [e.index for e in disk.durable.entries] == [1, 2][: min(kept, 2)]
        assert (disk.durable.hard_state.commit == 2) == (kept == 3)
    assert kept_counts == {0, 1, 2, 3}


def test_appends_truncate_a_conflicting_suffix() -> None:
    disk = SimDisk(random.Random(0))
    disk.write("entries", _entries(1, 5, term=1))
    disk.write("entries", _entries(3, 4, term=2))
    disk.sync()
    assert [(e.index, e.term) for e in disk.durable.entries] == [(1, 1), (2, 1), (3, 2), (4, 2)]


def test_a_snapshot_drops_the_entries_it_covers() -> None:
    disk = SimDisk(random.Random(0))
    disk.write("entries", _entries(1, 6))
    disk.save_snapshot(SnapshotMeta(index=4, term=1), b"image")
    assert [e.index for e in disk.durable.live_entries()] == [5, 6]
    assert disk.durable.snapshot_data == b"image"
