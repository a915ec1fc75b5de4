"""The write-ahead log's API: round trips, rotation, truncation, release, bad directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quorumkv.errors import DataDirError, StorageError
from quorumkv.raft.entries import ConfState, Entry, EntryType, HardState, SnapshotMeta
from quorumkv.storage import WriteAheadLog, fsutil, payload, segment
from quorumkv.storage.record import checksum
from quorumkv.storage.segment import parse_segment_name


def ents(first: int, last: int, *, term: int = 1, size: int = 8) -> list[Entry]:
    return [Entry(term=term, index=i, data=f"{term}:{i}:".encode().ljust(size, b"."))
            for i in range(first, last + 1)]


def reopen(path: Path, **kw: int) -> WriteAheadLog:
    return WriteAheadLog.open(path, **kw)


def test_missing_or_empty_dir_gives_an_empty_log(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for directory in (tmp_path / "new" / "wal", tmp_path / "empty"):
        with WriteAheadLog.open(directory) as wal:
            assert wal.recovered.entries == []
            assert wal.recovered.hard_state == HardState()
            assert wal.recovered.snapshot is None
            assert wal.recovered.torn_tail is None
            assert wal.last_index == wal.durable_index == 0
        with WriteAheadLog.open(directory) as wal:
            assert wal.recovered.entries == []


def test_round_trip(tmp_path: Path) -> None:
    entries = [
        Entry(term=1, index=1),
        Entry(term=1, index=2, data=b"put k v"),
        Entry(term=2, index=3, type=EntryType.CONF_CHANGE, data=b"\x00" * 9),
        Entry(term=2, index=4, data=os.urandom(100_000)),
    ]
    hs = HardState(term=2, vote=3, commit=3)
    with WriteAheadLog.open(tmp_path) as wal:
        wal.append(entries[:2])
        wal.save_hard_state(HardState(term=1, vote=1, commit=1))
        wal.append(entries[2:])
        wal.save_hard_state(hs)
        wal.sync()
    with reopen(tmp_path) as wal:
        assert wal.recovered.entries == entries
        assert wal.recovered.hard_state == hs
        assert wal.last_index == wal.durable_index == 4
        assert wal.hard_state == hs


def test_close_syncs_what_is_buffered(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as wal:
        wal.append(ents(1, 3))
    with reopen(tmp_path) as wal:
        assert [e.index for e in wal.recovered.entries] == [1, 2, 3]


def test_durable_index_advances_only_on_sync(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as wal:
        wal.append(ents(1, 5))
        assert (wal.last_index, wal.durable_index) == (5, 0)
        wal.sync()
        assert wal.durable_index == 5
        wal.append(ents(6, 8))
        assert wal.durable_index == 5
        wal.append(ents(4, 4, term=2))  # truncates 4..8
        assert (wal.last_index, wal.durable_index) == (4, 3)
        wal.sync()
        assert wal.durable_index == 4


def test_rotation_names_segments_in_order_and_reads_back(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_size=1024) as wal:
        for first in range(1, 200, 10):
            wal.append(ents(first, first + 9, size=40))
            wal.sync()
        paths = wal.segment_paths()
    assert len(paths) > 5
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [p.name for p in paths]
    parsed = [parse_segment_name(n) for n in names]
    assert [p[0] for p in parsed if p] == list(range(1, len(names) + 1))
    firsts = [p[1] for p in parsed if p]
    assert firsts[0] == 1 and firsts == sorted(firsts)
    assert all(os.path.getsize(p) < 1024 + 200 for p in paths)
    with reopen(tmp_path, segment_size=1024) as wal:
        assert wal.recovered.entries == ents(1, 200, size=40)


def test_oversized_entry_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    big = Entry(term=1, index=2, data=b"x" * 5000)
    with WriteAheadLog.open(tmp_path, segment_size=1000) as wal:
        wal.append([*ents(1, 1), big, *ents(3, 4)])
    with reopen(tmp_path, segment_size=1000) as wal:
        assert wal.recovered.entries == [*ents(1, 1), big, *ents(3, 4)]


@pytest.mark.parametrize("segment_size", [64 << 20, 300])
def test_conflicting_append_truncates_and_survives_reopen(tmp_path: Path,
                                                          segment_size: int) -> None:
    with WriteAheadLog.open(tmp_path, segment_size=segment_size) as wal:
        wal.append(ents(1, 20))
        wal.sync()
        wal.append(ents(8, 12, term=2))
        wal.sync()
        assert wal.last_index == 12
    with reopen(tmp_path, segment_size=segment_size) as wal:
        assert wal.recovered.entries == ents(1, 7) + ents(8, 12, term=2)
        wal.append(ents(13, 14, term=2))
        wal.append(ents(3, 3, term=3))
    with reopen(tmp_path, segment_size=segment_size) as wal:
        assert wal.recovered.entries == ents(1, 2) + ents(3, 3, term=3)


def test_hard_state_latest_wins_across_segments(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_size=200) as wal:
        for term in range(1, 30):
            wal.save_hard_state(HardState(term=term, vote=term % 3 + 1, commit=term))
            wal.append(ents(term, term, term=term))
        wal.sync()
        assert len(wal.segment_paths()) > 3
    with reopen(tmp_path, segment_size=200) as wal:
        assert wal.recovered.hard_state == HardState(term=29, vote=29 % 3 + 1, commit=29)


def test_snapshot_marker_compacts_the_log(tmp_path: Path) -> None:
    meta = SnapshotMeta(index=6, term=1, conf=ConfState(voters=frozenset({1, 2, 3}),
                                                        learners=frozenset({9})))
    with WriteAheadLog.open(tmp_path) as wal:
        wal.append(ents(1, 10))
        wal.save_snapshot_marker(meta)
        assert wal.last_index == 10
        with pytest.raises(ValueError, match="snapshot covers"):
            wal.append(ents(6, 6))
        with pytest.raises(ValueError, match="older"):
            wal.save_snapshot_marker(SnapshotMeta(index=5, term=1))
    with reopen(tmp_path) as wal:
        assert wal.recovered.snapshot == meta
        assert wal.recovered.entries == ents(7, 10)
        assert wal.snapshot == meta


def test_snapshot_marker_past_the_log_empties_it(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as wal:
        wal.append(ents(1, 3))
        wal.save_snapshot_marker(SnapshotMeta(index=100, term=5))
        assert wal.last_index == 100
        with pytest.raises(ValueError, match="gap"):
            wal.append(ents(102, 102))
        wal.append(ents(101, 102, term=5))
    with reopen(tmp_path) as wal:
        assert wal.recovered.entries == ents(101, 102, term=5)
        assert wal.last_index == 102


def test_append_rejects_gaps_and_unordered_batches(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as wal:
        with pytest.raises(ValueError, match="gap"):
            wal.append(ents(2, 3))
        with pytest.raises(ValueError, match="contiguous"):
            wal.append([*ents(1, 1), *ents(3, 3)])
        wal.append([])
        assert wal.last_index == 0


def test_release_before_deletes_only_fully_covered_segments(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_size=500) as wal:
        for i in range(1, 101):
            wal.append(ents(i, i, size=40))
        wal.sync()
        paths = wal.segment_paths()
        firsts = [parse_segment_name(p.name) for p in paths]
        wal.save_snapshot_marker(SnapshotMeta(index=50, term=1))
        wal.release_before(50)
        kept = wal.segment_paths()
        # A segment is deleted iff the next one starts at or below 50, i.e. all its
        # entries are below 50.
        expected = [p for p, nxt in zip(paths, [*firsts[1:], None], strict=True)
                    if nxt is None or nxt[1] > 50]
        assert kept == expected
        assert sorted(tmp_path.iterdir()) == kept
        first_kept = parse_segment_name(kept[0].name)
        assert first_kept is not None and first_kept[1] <= 50
        wal.append(ents(101, 101, size=40))
    with reopen(tmp_path, segment_size=500) as wal:
        assert wal.recovered.snapshot == SnapshotMeta(index=50, term=1)
        assert wal.recovered.entries == ents(51, 101, size=40)


def test_release_keeps_hard_state_and_marker_written_in_deleted_segments(tmp_path: Path) -> None:
    hs = HardState(term=4, vote=2, commit=30)
    meta = SnapshotMeta(index=30, term=4, conf=ConfState(voters=frozenset({1, 2})))
    with WriteAheadLog.open(tmp_path, segment_size=300) as wal:
        wal.append(ents(1, 30, term=4))
        wal.save_hard_state(hs)
        wal.save_snapshot_marker(meta)
        for i in range(31, 80):
            wal.append(ents(i, i, term=4))
        wal.release_before(31)
        assert len(wal.segment_paths()) < 10
    with reopen(tmp_path, segment_size=300) as wal:
        assert wal.recovered.hard_state == hs
        assert wal.recovered.snapshot == meta
        assert wal.recovered.entries == ents(31, 79, term=4)


def test_release_never_deletes_the_active_segment(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_size=300) as wal:
        wal.append(ents(1, 40))
        wal.save_snapshot_marker(SnapshotMeta(index=40, term=1))
        wal.release_before(41)
        assert len(wal.segment_paths()) == 1
    with reopen(tmp_path, segment_size=300) as wal:
        assert wal.recovered.entries == []
        assert wal.last_index == 40


def test_release_needs_a_snapshot_that_covers_it(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_size=300) as wal:
        wal.append(ents(1, 40))
        with pytest.raises(ValueError, match="no snapshot"):
            wal.release_before(10)
        wal.save_snapshot_marker(SnapshotMeta(index=9, term=1))
        wal.release_before(10)


def test_second_open_of_the_same_directory_is_refused(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path), pytest.raises(DataDirError, match="in use"):
        WriteAheadLog.open(tmp_path)
    WriteAheadLog.open(tmp_path).close()


def test_foreign_files_are_data_dir_errors(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataDirError, match=r"notes\.txt"):
        WriteAheadLog.open(tmp_path)
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "0000000000000001-0000000000000001.wal").write_bytes(b"garbage" * 100)
    with pytest.raises(DataDirError, match="not a quorumkv WAL segment"):
        WriteAheadLog.open(tmp_path)


def test_a_file_where_the_directory_should_be(tmp_path: Path) -> None:
    (tmp_path / "wal").write_text("x")
    with pytest.raises(DataDirError):
        WriteAheadLog.open(tmp_path / "wal")


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    header = payload.SegmentHeader(seq=1, first_index=1, salt=7)
    raw = bytearray(segment.header_frame(header))
    # Rewrite the version field and fix the checksum, as a future release would.
    body = bytearray(raw[4:])
    body[5 + len(payload.SEGMENT_MAGIC):7 + len(payload.SEGMENT_MAGIC)] = (2).to_bytes(2, "big")
    raw = bytearray(checksum(body).to_bytes(4, "big")) + body
    (tmp_path / "0000000000000001-0000000000000001.wal").write_bytes(raw)
    with pytest.raises(DataDirError, match="version 2"):
        WriteAheadLog.open(tmp_path)


def test_leftover_tmp_segment_is_removed(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as wal:
        wal.append(ents(1, 2))
    (tmp_path / "0000000000000002-0000000000000003.wal.tmp").write_bytes(b"half")
    with reopen(tmp_path) as wal:
        assert wal.recovered.entries == ents(1, 2)
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_middle_segment_is_a_data_dir_error(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, segment_size=200) as wal:
        wal.append(ents(1, 30))
        paths = wal.segment_paths()
    paths[1].unlink()
    with pytest.raises(DataDirError, match="missing"):
        WriteAheadLog.open(tmp_path, segment_size=200)


def test_closed_log_refuses_use(tmp_path: Path) -> None:
    wal = WriteAheadLog.open(tmp_path)
    wal.close()
    wal.close()
    with pytest.raises(StorageError, match="closed"):
        wal.append(ents(1, 1))


def test_failed_fsync_poisons_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal = WriteAheadLog.open(tmp_path)
    wal.append(ents(1, 2))

    def failing_sync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fsutil, "sync_data", failing_sync)
    with pytest.raises(StorageError, match="Input/output error"):
        wal.sync()
    monkeypatch.undo()
    assert wal.durable_index == 0
    with pytest.raises(StorageError, match="failed earlier"):
        wal.sync()
    wal.close()
    with reopen(tmp_path) as again:
        assert again.recovered.entries == ents(1, 2)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fds")
def test_open_syncs_what_a_dead_process_left_unsynced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records written but never synced are readable after a process crash; open must
    make them durable before calling them durable."""
    with WriteAheadLog.open(tmp_path, segment_size=300) as wal:
        wal.append(ents(1, 30))
        last = wal.segment_paths()[-1]
    synced: list[str] = []
    real = fsutil.sync_data

    def recording_sync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(fsutil, "sync_data", recording_sync)
    with reopen(tmp_path, segment_size=300) as wal:
        assert synced == [str(last)]
        assert wal.durable_index == 30


def test_a_received_snapshot_discards_the_older_terms_after_it(tmp_path: Path) -> None:
    """A leader's snapshot at (S, T) replaces a log whose entries after S have terms < T."""
    wal = WriteAheadLog.open(tmp_path / "wal")
    wal.append([Entry(term=1, index=i, data=b"x") for i in range(1, 6)])
    wal.save_snapshot_marker(SnapshotMeta(index=3, term=2))
    wal.sync()
    wal.close()
    again = WriteAheadLog.open(tmp_path / "wal")
    assert again.recovered.entries == []
    assert again.recovered.snapshot == SnapshotMeta(index=3, term=2)
    again.close()


def test_a_local_snapshot_keeps_the_nodes_later_entries(tmp_path: Path) -> None:
    wal = WriteAheadLog.open(tmp_path / "wal")
    wal.append([Entry(term=1, index=1, data=b"a"), Entry(term=1, index=2, data=b"b"),
                Entry(term=2, index=3, data=b"c"), Entry(term=2, index=4, data=b"d")])
    wal.save_snapshot_marker(SnapshotMeta(index=2, term=1))
    wal.sync()
    wal.close()
    again = WriteAheadLog.open(tmp_path / "wal")
    assert [(e.index, e.term) for e in again.recovered.entries] == [(3, 2), (4, 2)]
    again.close()
