"""Recovery of damaged logs: torn tails are repaired, anything else is CorruptLog.

The files are damaged by hand the way a power cut (a write cut short) or
bit rot (a flipped bit in bytes that were once durable) would damage them.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from quorumkv.errors import CorruptLog, DataDirError
from quorumkv.raft.entries import Entry, HardState
from quorumkv.storage import WriteAheadLog
from quorumkv.storage.payload import ENTRY_HEAD, SegmentHeader, encode_hard_state, entry_head
from quorumkv.storage.record import FRAME_OVERHEAD, RecordType, append_frame
from quorumkv.storage.segment import create_segment

SEGMENT_SIZE = 600


def entry(index: int, term: int = 1, size: int | None = None) -> Entry:
    size = 5 + index % 7 if size is None else size
    return Entry(term=term, index=index, data=bytes([index % 251]) * size)


def frame_size(e: Entry) -> int:
    return FRAME_OVERHEAD + ENTRY_HEAD.size + len(e.data)


HS_FRAME = FRAME_OVERHEAD + len(encode_hard_state(HardState()))
OLD_HS = HardState(term=1, vote=1, commit=20)
NEW_HS = HardState(term=2, vote=2, commit=40)


def build_log(path: Path) -> tuple[list[Path], list[tuple[int, object]]]:
    """A multi-segment log whose last segment ends with: entry, entry, hard state, entry.

    Returns the segment paths and the tail records as (end offset, record)
    pairs in order, where record is an Entry or a HardState.
    """
    with WriteAheadLog.open(path, segment_size=SEGMENT_SIZE) as wal:
        for i in range(1, 41):
            wal.append([entry(i)])
        wal.save_hard_state(OLD_HS)
        wal.append([entry(41), entry(42)])
        wal.save_hard_state(NEW_HS)
        wal.append([entry(43, size=30)])
        segments = wal.segment_paths()
    size = segments[-1].stat().st_size
    tail: list[tuple[int, object]] = []
    end = size
    for rec in reversed([entry(41), entry(42), NEW_HS, entry(43, size=30)]):
        tail.append((end, rec))
        end -= frame_size(rec) if isinstance(rec, Entry) else HS_FRAME
    tail.reverse()
    return segments, tail


def copy_log(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def without_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that cut files by hand check recovery logic, not the disk: skipping fsync
    (milliseconds each on a busy shared disk) keeps them fast."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    monkeypatch.setattr(os, "fdatasync", lambda fd: None)


def test_cut_at_every_offset_of_the_last_records(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever prefix of the last writes reached the disk, recovery returns exactly
    the complete records in it, and the log takes new appends after."""
    without_fsync(monkeypatch)
    original = tmp_path / "original"
    segments, tail = build_log(original)
    assert len(segments) >= 3
    last_name = segments[-1].name
    tail_start = tail[0][0] - frame_size(entry(41))
    full = segments[-1].read_bytes()
    d = copy_log(original, tmp_path / "work")
    original_names = {p.name for p in segments}
    for cut in range(tail_start, len(full) + 1):
        for p in d.iterdir():
            if p.name not in original_names:
                p.unlink()  # a segment the previous round's append created
        (d / last_name).write_bytes(full[:cut])
        complete = [rec for end, rec in tail if end <= cut]
        expected = [entry(i) for i in range(1, 41)] + [r for r in complete
                                                       if isinstance(r, Entry)]
        boundaries = [tail_start] + [end for end, _ in tail]
        with WriteAheadLog.open(d, segment_size=SEGMENT_SIZE) as wal:
            got = wal.recovered
            assert got.entries == expected, cut
            assert got.hard_state == (NEW_HS if NEW_HS in complete else OLD_HS), cut
            if cut in boundaries:
                assert got.torn_tail is None
            else:
                record_start = max(b for b in boundaries if b < cut)
                assert got.torn_tail is not None
                assert (got.torn_tail.offset, got.torn_tail.dropped_bytes) == (
                    record_start, cut - record_start)
                assert (d / last_name).stat().st_size == record_start
            nxt = Entry(term=3, index=expected[-1].index + 1, data=b"after")
            wal.append([nxt])
            wal.sync()
        with WriteAheadLog.open(d, segment_size=SEGMENT_SIZE) as wal:
            assert wal.recovered.entries == [*expected, nxt]
            assert wal.recovered.torn_tail is None


def test_torn_tail_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    segments, tail = build_log(tmp_path)
    last = segments[-1]
    with open(last, "r+b") as f:
        f.truncate(tail[-1][0] - 3)
    with caplog.at_level(logging.WARNING), WriteAheadLog.open(tmp_path,
                                                              segment_size=SEGMENT_SIZE):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(last) in warnings[0]
    assert f"offset {tail[-2][0]}" in warnings[0]
    assert f"dropping {frame_size(entry(43, size=30)) - 3} bytes" in warnings[0]


def test_zero_filled_tail_is_torn(tmp_path: Path) -> None:
    """A file extended by a write whose pages never reached the disk reads as zeros."""
    segments, _ = build_log(tmp_path)
    with open(segments[-1], "ab") as f:
        f.write(bytes(8192))
    with WriteAheadLog.open(tmp_path, segment_size=SEGMENT_SIZE) as wal:
        assert wal.recovered.entries[-1] == entry(43, size=30)
        assert wal.recovered.torn_tail is not None
        assert wal.recovered.torn_tail.dropped_bytes == 8192


def test_frame_inside_user_data_does_not_fake_a_valid_record(tmp_path: Path) -> None:
    """An entry whose value is itself an encoded frame, torn after that inner frame,
    is still a torn tail: frames are only valid with their segment's salt."""
    inner = bytearray()
    append_frame(inner, RecordType.HARD_STATE, 0x1234, encode_hard_state(NEW_HS))
    tricky = Entry(term=1, index=2, data=b"prefix" + bytes(inner) + b"suffix")
    with WriteAheadLog.open(tmp_path) as wal:
        wal.append([entry(1), tricky])
        [seg] = wal.segment_paths()
    data = seg.read_bytes()
    seg.write_bytes(data[:-3])
    with WriteAheadLog.open(tmp_path) as wal:
        assert wal.recovered.entries == [entry(1)]
        assert wal.recovered.torn_tail is not None


def flip(path: Path, offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ (1 << bit)]))


def test_flipped_bit_in_a_record_followed_by_valid_ones_is_corrupt(tmp_path: Path) -> None:
    original = tmp_path / "original"
    segments, tail = build_log(original)
    last_name = segments[-1].name
    start, end = tail[0][0], tail[1][0]  # entry 42, followed by two valid records
    d = copy_log(original, tmp_path / "work")
    for offset in range(start, end):
        flip(d / last_name, offset, bit=offset % 8)
        with pytest.raises(CorruptLog) as info:
            WriteAheadLog.open(d, segment_size=SEGMENT_SIZE)
        assert info.value.path == str(d / last_name)
        assert info.value.offset == start
        assert f"offset {start}" in str(info.value)
        flip(d / last_name, offset, bit=offset % 8)


def test_flipped_bit_in_an_earlier_segment_is_corrupt(tmp_path: Path) -> None:
    original = tmp_path / "original"
    segments, _ = build_log(original)
    first = segments[0]
    size = first.stat().st_size
    # The last record of the first segment, which a torn tail would look like.
    last_entry = max(i for i in range(1, 41) if _record_end(first, i) is not None)
    last_start = size - frame_size(entry(last_entry))
    d = copy_log(original, tmp_path / "work")
    for offset in (last_start, last_start + 4, last_start + 9, size - 1, 60):
        flip(d / first.name, offset)
        with pytest.raises(CorruptLog) as info:
            WriteAheadLog.open(d, segment_size=SEGMENT_SIZE)
        assert info.value.path == str(d / first.name)
        assert info.value.offset <= offset
        assert "not a torn write" in str(info.value)
        flip(d / first.name, offset)


def _record_end(path: Path, index: int) -> int | None:
    """Whether entry ``index`` is stored in ``path`` (by its data bytes), for picking one."""
    e = entry(index)
    pos = path.read_bytes().find(entry_head(e) + e.data)
    return None if pos < 0 else pos + len(e.data)


def test_cut_short_earlier_segment_is_corrupt(tmp_path: Path) -> None:
    segments, _ = build_log(tmp_path)
    first = segments[0]
    data = first.read_bytes()
    first.write_bytes(data[:-5])
    with pytest.raises(CorruptLog) as info:
        WriteAheadLog.open(tmp_path, segment_size=SEGMENT_SIZE)
    assert info.value.path == str(first)


def test_whole_records_missing_from_an_earlier_segment_is_a_gap(tmp_path: Path) -> None:
    segments, _ = build_log(tmp_path)
    first = segments[0]
    last_entry = max(i for i in range(1, 41) if _record_end(first, i) is not None)
    data = first.read_bytes()
    first.write_bytes(data[:-frame_size(entry(last_entry))])
    with pytest.raises(CorruptLog, match="gap"):
        WriteAheadLog.open(tmp_path, segment_size=SEGMENT_SIZE)


def test_garbage_between_records_is_corrupt(tmp_path: Path) -> None:
    segments, tail = build_log(tmp_path)
    last = segments[-1]
    data = last.read_bytes()
    at = tail[0][0]
    last.write_bytes(data[:at] + os.urandom(40) + data[at:])
    with pytest.raises(CorruptLog) as info:
        WriteAheadLog.open(tmp_path, segment_size=SEGMENT_SIZE)
    assert info.value.offset == at


def test_damaged_segment_header(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as wal:
        wal.append([entry(1)])
        [seg] = wal.segment_paths()
    flip(seg, 0)  # the header's checksum
    with pytest.raises(CorruptLog) as info:
        WriteAheadLog.open(tmp_path)
    assert info.value.offset == 0
    flip(seg, 0)
    flip(seg, FRAME_OVERHEAD + 2)  # its magic: not our file at all
    with pytest.raises(DataDirError):
        WriteAheadLog.open(tmp_path)


def _write_segment(directory: Path, records: list[tuple[RecordType, bytes]]) -> Path:
    salt = 0x5EED
    body = bytearray()
    for rtype, payload in records:
        append_frame(body, rtype, salt, payload)
    fd, _ = create_segment(directory, SegmentHeader(seq=1, first_index=1, salt=salt),
                           bytes(body))
    os.close(fd)
    return directory / "0000000000000001-0000000000000001.wal"


def test_gap_between_entries_is_corrupt(tmp_path: Path) -> None:
    records = [(RecordType.ENTRY, entry_head(e) + e.data) for e in map(entry, (1, 2, 4))]
    seg = _write_segment(tmp_path, records)
    with pytest.raises(CorruptLog, match="gap") as info:
        WriteAheadLog.open(tmp_path)
    assert info.value.path == str(seg)
    assert info.value.offset == seg.stat().st_size - frame_size(entry(4))


def test_log_must_start_right_after_the_snapshot(tmp_path: Path) -> None:
    records = [(RecordType.ENTRY, entry_head(e) + e.data) for e in map(entry, (5, 6))]
    _write_segment(tmp_path, records)
    with pytest.raises(CorruptLog, match="missing"):
        WriteAheadLog.open(tmp_path)


def test_valid_checksum_but_undecodable_payload_is_corrupt(tmp_path: Path) -> None:
    _write_segment(tmp_path, [(RecordType.HARD_STATE, b"short")])
    with pytest.raises(CorruptLog, match="undecodable hard_state"):
        WriteAheadLog.open(tmp_path)
