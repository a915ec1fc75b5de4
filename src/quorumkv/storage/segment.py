"""One WAL segment file: its name, its creation, and reading it back.

A segment is a file named ``<seq>-<first index>.wal`` (16 hex digits each, so
names sort in log order) holding a segment-header record followed by log
records (record.py). The header carries a magic string and format version,
so a file that is not ours is reported as such rather than as damage, and a
random salt that seeds every record checksum in the segment.

Creation is atomic: the header (and any records the caller wants at the
start) go to ``<name>.tmp``, which is fsynced and then renamed, and the
directory is fsynced. A segment that exists under its final name therefore
always starts with a complete, durable header; a ``.tmp`` left by a crash was
never used and is deleted at open.

Segments are not preallocated. Preallocating (fallocate, or writing zeros)
can spare fdatasync a metadata update per commit on some file systems, but
bench runs on our disk showed no steady gain, and a preallocated file ends
in zeros that recovery would have to tell apart from a torn write. Without
it, a file ends where its last write ended.

Reading tells two kinds of bad record apart. After a power cut the last
writes before it may be missing or half there, so a partial or failing
record at the very end of the *last* segment, with nothing valid after it, is
a torn tail: expected, and repaired by the caller. Anything else (a bad
record in an earlier segment, which was fsynced before the next one was
created, or one followed by valid records) means bytes that were once
durable have changed: corruption, reported with the file and offset.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from quorumkv.errors import CorruptLog, DataDirError
from quorumkv.storage import fsutil
from quorumkv.storage.payload import (
    SEGMENT_HEADER_SIZE,
    SEGMENT_VERSION,
    SegmentHeader,
    decode_segment_header,
    encode_segment_header,
    has_segment_magic,
)
from quorumkv.storage.record import (
    FRAME_OVERHEAD,
    BadRecord,
    Record,
    RecordType,
    append_frame,
    find_valid_record,
    parse_record,
)

SEGMENT_SUFFIX = ".wal"
TMP_SUFFIX = ".tmp"
_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")
_TMP_NAME = re.compile(r"^[0-9a-f]{16}-[0-9a-f]{16}\.wal\.tmp$")

HEADER_SALT = 0
"""The header record's checksum seed: the segment's own salt is not known until it is read."""


def segment_name(seq: int, first_index: int) -> str:
    return f"{seq:016x}-{first_index:016x}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    """(seq, first index) for a segment file name, or None if it is not one."""
    m = _NAME.match(name)
    return (int(m.group(1), 16), int(m.group(2), 16)) if m else None


def is_leftover_tmp(name: str) -> bool:
    return _TMP_NAME.match(name) is not None


def new_salt() -> int:
    return secrets.randbits(32)


def header_frame(header: SegmentHeader) -> bytearray:
    out = bytearray()
    append_frame(out, RecordType.SEGMENT_HEADER, HEADER_SALT, encode_segment_header(header))
    return out


def create_segment(directory: Path, header: SegmentHeader, first_records: bytes) -> tuple[int, int]:
    """Durably create a segment holding its header then ``first_records``.

    Returns (fd open for appending, file size). ``first_records`` must be
    framed with ``header.salt``.
    """
    final = directory / segment_name(header.seq, header.first_index)
    tmp = final.with_name(final.name + TMP_SUFFIX)
    data = header_frame(header) + first_records
    fd = fsutil.open_for_create(tmp)
    try:
        fsutil.write_all(fd, data)
        fsutil.publish(tmp, final, fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return fd, len(data)


@dataclass(frozen=True, slots=True, kw_only=True)
class TornTail:
    """A torn write found at the end of the last segment and cut away at open."""

    path: str
    offset: int
    dropped_bytes: int
    reason: str


class SegmentReader:
    """Reads one segment's records in order, deciding torn tail versus corruption.

    Iterate :meth:`records`; when it is exhausted, ``valid_end`` is the offset
    after the last good record and ``torn`` says whether bytes after it form
    a torn tail (only ever set on the last segment).
    """

    def __init__(self, path: Path, *, last: bool) -> None:
        self.path = path
        self.last = last
        self._data = path.read_bytes()
        self.header = self._read_header()
        self.valid_end = FRAME_OVERHEAD + SEGMENT_HEADER_SIZE
        self.torn: TornTail | None = None

    @property
    def size(self) -> int:
        return len(self._data)

    def _read_header(self) -> SegmentHeader:
        buf = memoryview(self._data)
        path = str(self.path)
        if (len(buf) < FRAME_OVERHEAD + SEGMENT_HEADER_SIZE
                or not has_segment_magic(buf[FRAME_OVERHEAD:])):
            raise DataDirError(f"{path} is not a quorumkv WAL segment (no segment header); "
                               "is this the right data directory?", path=path)
        rec = parse_record(buf, 0, HEADER_SALT)
        if isinstance(rec, BadRecord) or rec.type is not RecordType.SEGMENT_HEADER:
            reason = rec.reason if isinstance(rec, BadRecord) else "wrong record type"
            raise CorruptLog(f"damaged segment header in {path} at offset 0: {reason}",
                             path=path, offset=0)
        try:
            version, header = decode_segment_header(rec.payload)
        except ValueError as e:
            raise CorruptLog(f"damaged segment header in {path} at offset 0: {e}",
                             path=path, offset=0) from None
        if version != SEGMENT_VERSION:
            raise DataDirError(f"{path} has WAL format version {version}; this version of "
                               f"quorumkv reads version {SEGMENT_VERSION}", path=path)
        if parse_segment_name(self.path.name) != (header.seq, header.first_index):
            raise DataDirError(f"{path}: its header says segment {header.seq} starting at index "
                               f"{header.first_index}, which does not match its name", path=path)
        return header

    def records(self) -> Iterator[Record]:
        buf = memoryview(self._data)
        salt = self.header.salt
        offset = self.valid_end
        size = len(buf)
        while offset < size:
            rec = parse_record(buf, offset, salt)
            if isinstance(rec, BadRecord):
                self._bad_record(rec)
                return
            if rec.type is RecordType.SEGMENT_HEADER:
                raise CorruptLog(f"segment header record in the middle of {self.path} at offset "
                                 f"{offset}", path=str(self.path), offset=offset)
            yield rec
            offset = rec.end
            self.valid_end = offset

    def _bad_record(self, bad: BadRecord) -> None:
        path = str(self.path)
        where = f"{path} at offset {bad.offset}"
        if not self.last:
            raise CorruptLog(f"corrupt WAL record in {where} ({bad.reason}); a later segment "
                             "exists, so this is not a torn write", path=path, offset=bad.offset)
        following = find_valid_record(self._data, bad.offset + 1, self.header.salt)
        if following is not None:
            raise CorruptLog(f"corrupt WAL record in {where} ({bad.reason}), followed by a "
                             f"valid record at offset {following}", path=path, offset=bad.offset)
        self.torn = TornTail(path=path, offset=bad.offset,
                             dropped_bytes=len(self._data) - bad.offset, reason=bad.reason)
