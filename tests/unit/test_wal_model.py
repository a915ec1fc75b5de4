"""Random operation sequences against a plain in-memory model of the log.

Appends (with conflicts), hard states, snapshot markers, syncs, releases and
reopens in any order, with tiny segments so rotation and release happen
often: whatever is reopened must equal the model.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from quorumkv.raft.entries import ConfState, Entry, HardState, SnapshotMeta
from quorumkv.storage import WriteAheadLog


@dataclass
class Model:
    entries: dict[int, Entry] = field(default_factory=dict)
    snapshot: SnapshotMeta | None = None
    hard_state: HardState = field(default_factory=HardState)
    last_index: int = 0

    @property
    def snap_index(self) -> int:
        return self.snapshot.index if self.snapshot else 0

    def live(self) -> list[Entry]:
        return [self.entries[i] for i in sorted(self.entries)]


ops = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(0, 6), st.integers(1, 5), st.integers(1, 9),
              st.integers(0, 60)),
    st.tuples(st.just("hard_state"), st.integers(0, 9), st.integers(0, 5), st.integers(0, 50)),
    st.tuples(st.just("snapshot"), st.integers(0, 12), st.integers(1, 9)),
    st.tuples(st.just("sync")),
    st.tuples(st.just("release"), st.integers(0, 3)),
    st.tuples(st.just("reopen")),
), max_size=60)

SEGMENT_SIZE = 256


def check(wal: WriteAheadLog, model: Model) -> None:
    got = wal.recovered
    assert got.entries == model.live()
    assert got.hard_state == model.hard_state
    assert got.snapshot == model.snapshot
    assert got.torn_tail is None
    assert wal.last_index == model.last_index


# Found by this test: a repeated older snapshot marker (a segment header's copy) after
# entries whose predecessors were released must not wipe them on recovery.
_RELEASED_UNDER_A_LATER_MARKER = [
    *[("append", 0, 1, 1, 0)] * 4, ("snapshot", 0, 1), *[("append", 0, 1, 1, 0)] * 5,
    ("snapshot", 0, 1), ("snapshot", 7, 1), ("append", 0, 1, 1, 0), ("snapshot", 0, 1),
    ("release", 0)]


@settings(max_examples=100, deadline=None)
@given(ops)
@example(_RELEASED_UNDER_A_LATER_MARKER)
@example([*_RELEASED_UNDER_A_LATER_MARKER[:-2], ("release", 0)])
def test_log_matches_model(operations: list[tuple[object, ...]]) -> None:
    with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as mp:
        # What is checked here is the log's logic; fsync would only add disk time.
        mp.setattr(os, "fsync", lambda fd: None)
        mp.setattr(os, "fdatasync", lambda fd: None)
        model = Model()
        wal = WriteAheadLog.open(d, segment_size=SEGMENT_SIZE)
        try:
            for op in operations:
                wal = apply(wal, model, d, op)
            wal.close()
            wal = WriteAheadLog.open(d, segment_size=SEGMENT_SIZE)
            check(wal, model)
        finally:
            wal.close()


def apply(wal: WriteAheadLog, model: Model, d: str, op: tuple[object, ...]) -> WriteAheadLog:
    kind = op[0]
    if kind == "append":
        _, back, count, term, size = op
        assert isinstance(back, int) and isinstance(count, int)
        assert isinstance(term, int) and isinstance(size, int)
        first = max(model.last_index + 1 - back, model.snap_index + 1)
        batch = [Entry(term=term, index=i, data=bytes([i % 256]) * size)
                 for i in range(first, first + count)]
        wal.append(batch)
        for i in [i for i in model.entries if i >= first]:
            del model.entries[i]
        model.entries.update((e.index, e) for e in batch)
        model.last_index = batch[-1].index
    elif kind == "hard_state":
        _, term, vote, commit = op
        assert isinstance(term, int) and isinstance(vote, int) and isinstance(commit, int)
        model.hard_state = HardState(term=term, vote=vote, commit=commit)
        wal.save_hard_state(model.hard_state)
    elif kind == "snapshot":
        _, ahead, voter = op
        assert isinstance(ahead, int) and isinstance(voter, int)
        index = model.snap_index + ahead
        meta = SnapshotMeta(index=index, term=1, conf=ConfState(voters=frozenset({voter})))
        wal.save_snapshot_marker(meta)
        model.snapshot = meta
        model.entries = {i: e for i, e in model.entries.items() if i > index}
        model.last_index = max(model.last_index, index)
    elif kind == "sync":
        wal.sync()
        assert wal.durable_index == model.last_index
    elif kind == "release":
        _, back = op
        assert isinstance(back, int)
        wal.release_before(max(1, model.snap_index + 1 - back))
    elif kind == "reopen":
        wal.close()
        wal = WriteAheadLog.open(d, segment_size=SEGMENT_SIZE)
        check(wal, model)
    assert wal.last_index == model.last_index
    return wal
