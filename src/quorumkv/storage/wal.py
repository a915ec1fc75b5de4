"""The write-ahead log: Raft's entries, hard state and snapshot markers, on disk.

Theory of operation
-------------------
The log is a directory of segment files (segment.py) appended in order;
each record is framed and checksummed (record.py). ``append``,
``save_hard_state`` and ``save_snapshot_marker`` only add records to a
buffer in memory; ``sync`` hands the buffer to the kernel and fsyncs once,
so one disk flush commits everything appended since the previous one (group
commit). Until ``sync`` returns nothing is durable: Raft must not answer a
vote or acknowledge an append before it (thesis §3.8), and ``durable_index``
says how far that promise currently reaches.

Normally what survives a power cut is a prefix of what was written: a
record is whole or torn, and a torn record can only be at the end of the last
segment (the previous segment is fsynced before the next one is created).
``open`` cuts such a tail away with a warning; any other bad record is
corruption and raises ``CorruptLog`` naming the file and offset.
recovery.py states how records combine into the recovered state.

One case errs on the safe side: a file system that, in a power cut, persists
a later page of an unsynced batch but not an earlier one leaves a bad record
followed by valid ones in the last segment. That is indistinguishable from
damage to synced data, so it too is reported as corruption rather than
silently cut; nothing acknowledged is lost, but an operator must look.

A segment is closed once it reaches ``segment_size``; the next one starts
with copies of the current hard state and snapshot marker, so whole
segments before a snapshot can be deleted (``release_before``) without
losing either.

Threads: every method takes an internal lock, so the thread that owns the
log and, say, a metrics reader may share it; methods block on disk I/O, so
an asyncio server calls them from a worker thread.

Failures: after an I/O error the log refuses further use. A failed fsync may
already have dropped the dirty pages it could not write (on Linux they are
then marked clean), so retrying could report success for data that never
reached the disk; the only safe way on is to reopen and recover from what
the disk really holds.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from quorumkv.errors import DataDirError, StorageError
from quorumkv.raft.entries import Entry, HardState, SnapshotMeta
from quorumkv.storage import fsutil
from quorumkv.storage.payload import (
    ENTRY_HEAD,
    SegmentHeader,
    encode_hard_state,
    encode_snapshot_meta,
    entry_head,
)
from quorumkv.storage.record import MAX_PAYLOAD, RecordType, append_frame
from quorumkv.storage.recovery import LogReplay, RecoveredState
from quorumkv.storage.segment import (
    SegmentReader,
    create_segment,
    is_leftover_tmp,
    new_salt,
    parse_segment_name,
    segment_name,
)

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_SIZE = 64 << 20

_FLUSH_THRESHOLD = 4 << 20
"""Buffered bytes handed to the kernel early (without fsync) to bound memory."""


@dataclass(slots=True)
class _Segment:
    seq: int
    first_index: int
    path: Path
    max_index: int
    """Highest entry index recorded in the segment (0 if none): it may go once a snapshot
    covers this index."""


class WriteAheadLog:
    """A segmented, checksummed, group-committed log. Create it with :meth:`open`."""

    recovered: RecoveredState
    """What was on disk at :meth:`open` (empty for a new log)."""

    def __init__(self, directory: Path, dir_fd: int, segment_size: int) -> None:
        """Private: use :meth:`open`."""
        self._dir = directory
        self._dir_fd = dir_fd
        self._segment_size = segment_size
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._fd = -1
        self._salt = 0
        self._active_size = 0
        self._active_records = 0
        """Records in the active segment after its header: it takes at least one before
        it may be closed, however small ``segment_size`` is."""
        self._pending = bytearray()
        self._unsynced = False
        self._hard_state = HardState()
        self._snapshot: SnapshotMeta | None = None
        self._last_index = 0
        self._durable_index = 0
        self._failed: str | None = None
        self._closed = False

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(cls, directory: str | Path, *,
             segment_size: int = DEFAULT_SEGMENT_SIZE) -> WriteAheadLog:
        """Open the log in ``directory``: create it if empty or missing, else recover it.

        Raises DataDirError if the directory holds something that is not a
        quorumkv log or is locked by another process, and CorruptLog if a
        record other than a torn tail is damaged.
        """
        if segment_size <= 0:
            raise ValueError("segment_size must be positive")
        path = Path(directory)
        try:
            fsutil.make_dir(path)
            dir_fd = fsutil.open_dir(path)
        except OSError as e:
            raise DataDirError(f"cannot open WAL directory {path}: {e}", path=str(path)) from e
        try:
            if not fsutil.lock_dir(dir_fd):
                raise DataDirError(f"WAL directory {path} is in use by another process "
                                   "(or already open in this one)", path=str(path))
            wal = cls(path, dir_fd, segment_size)
            wal._load()
        except OSError as e:
            os.close(dir_fd)
            raise DataDirError(f"cannot read WAL directory {path}: {e}", path=str(path)) from e
        except BaseException:
            os.close(dir_fd)
            raise
        return wal

    def _load(self) -> None:
        found: list[tuple[int, int, Path]] = []
        leftovers: list[Path] = []
        for name in sorted(os.listdir(self._dir)):
            parsed = parse_segment_name(name)
            if parsed is not None:
                found.append((parsed[0], parsed[1], self._dir / name))
            elif is_leftover_tmp(name):
                leftovers.append(self._dir / name)
            else:
                raise DataDirError(f"unexpected file {name!r} in WAL directory {self._dir}: "
                                   "is this the right data directory?", path=str(self._dir))
        for tmp in leftovers:
            # A crash between creating and renaming a segment: it was never used.
            log.info("removing unfinished segment %s", tmp)
            tmp.unlink()
        if leftovers:
            os.fsync(self._dir_fd)
        if not found:
            self._start_fresh()
            return
        found.sort()
        for (seq, _, _), (next_seq, _, next_path) in itertools.pairwise(found):
            if next_seq != seq + 1:
                raise DataDirError(f"WAL segment {seq + 1} is missing before {next_path}",
                                   path=str(next_path))
        self._replay(found)

    def _start_fresh(self) -> None:
        salt = new_salt()
        self._fd, self._active_size = create_segment(
            self._dir, SegmentHeader(seq=1, first_index=1, salt=salt), b"")
        self._salt = salt
        self._segments = [_Segment(seq=1, first_index=1,
                                   path=self._dir / segment_name(1, 1), max_index=0)]
        self.recovered = RecoveredState(hard_state=HardState(), snapshot=None, entries=[],
                                        torn_tail=None)

    def _replay(self, found: list[tuple[int, int, Path]]) -> None:
        replay = LogReplay()
        reader: SegmentReader | None = None
        records_in_last = 0
        for k, (seq, first_index, path) in enumerate(found):
            reader = SegmentReader(path, last=k == len(found) - 1)
            max_index = 0
            records_in_last = 0
            for rec in reader.records():
                records_in_last += 1
                index = replay.apply(str(path), rec)
                if index is not None and index > max_index:
                    max_index = index
            self._segments.append(_Segment(seq=seq, first_index=first_index, path=path,
                                           max_index=max_index))
        assert reader is not None
        state = replay.finish(reader.torn)
        fd = fsutil.open_for_append(reader.path)
        try:
            if reader.torn is not None:
                torn = reader.torn
                log.warning("torn write at the end of the WAL: truncating %s at offset %d, "
                            "dropping %d bytes (%s)", torn.path, torn.offset,
                            torn.dropped_bytes, torn.reason)
                os.ftruncate(fd, torn.offset)
                os.lseek(fd, 0, os.SEEK_END)
            # If only the process died (no power cut), records it wrote but never
            # synced are still in the page cache and were just read back. Sync them
            # before reporting them durable, or a power cut now could still lose
            # entries this node is about to acknowledge. Earlier segments were
            # synced before their successors were created.
            fsutil.sync_data(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._salt = reader.header.salt
        self._active_size = reader.valid_end
        self._active_records = records_in_last
        self._hard_state = state.hard_state
        self._snapshot = state.snapshot
        self._last_index = self._durable_index = state.last_index
        self.recovered = state
        log.info("recovered WAL %s: %d segment(s), last index %d, snapshot at %d",
                 self._dir, len(self._segments), state.last_index,
                 state.snapshot.index if state.snapshot else 0)

    # ------------------------------------------------------------------ status

    @property
    def last_index(self) -> int:
        """Index of the last live entry appended (or of the snapshot, if the log is empty)."""
        return self._last_index

    @property
    def durable_index(self) -> int:
        """Highest entry index known to be fsynced with everything before it."""
        return self._durable_index

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    @property
    def snapshot(self) -> SnapshotMeta | None:
        """The latest snapshot marker saved."""
        return self._snapshot

    @property
    def directory(self) -> Path:
        return self._dir

    def segment_paths(self) -> list[Path]:
        with self._lock:
            return [s.path for s in self._segments]

    # ----------------------------------------------------------------- writing

    def append(self, entries: Sequence[Entry]) -> None:
        """Buffer entries for the next :meth:`sync`.

        ``entries`` must be contiguous, start after the snapshot and no later
        than ``last_index + 1``. Starting at or before ``last_index`` truncates
        the log from there (Raft conflict resolution).
        """
        if not entries:
            return
        first = entries[0].index
        for prev, e in itertools.pairwise(entries):
            if e.index != prev.index + 1:
                raise ValueError(f"entries to append are not contiguous: {e.index} "
                                 f"follows {prev.index}")
        for e in entries:
            if len(e.data) + ENTRY_HEAD.size > MAX_PAYLOAD:
                raise ValueError(f"entry {e.index} has {len(e.data)} bytes of data; the "
                                 f"limit is {MAX_PAYLOAD - ENTRY_HEAD.size}")
        with self._lock, self._io("append"):
            snap_index = self._snapshot.index if self._snapshot else 0
            if first <= snap_index:
                raise ValueError(f"cannot append entry {first}: the snapshot covers the log "
                                 f"up to {snap_index}")
            if first > self._last_index + 1:
                raise ValueError(f"cannot append entry {first}: the log ends at "
                                 f"{self._last_index}, so that would leave a gap")
            if first <= self._last_index:
                self._last_index = first - 1
                self._durable_index = min(self._durable_index, first - 1)
            for e in entries:
                self._add(RecordType.ENTRY, e.index, entry_head(e), e.data)
                self._last_index = e.index

    def save_hard_state(self, hs: HardState) -> None:
        """Buffer a new hard state for the next :meth:`sync`; the latest one wins."""
        with self._lock, self._io("save hard state"):
            self._add(RecordType.HARD_STATE, None, encode_hard_state(hs))
            self._hard_state = hs

    def save_snapshot_marker(self, meta: SnapshotMeta) -> None:
        """Record that a snapshot covers the log up to ``meta.index``.

        Save the snapshot file itself (durably) first. Entries up to the index
        are dropped from the live log; later ones survive recovery only if
        their term is at least the snapshot's (recovery.py says why), and the
        next append after a received snapshot truncates them anyway.
        """
        with self._lock, self._io("save snapshot marker"):
            snap_index = self._snapshot.index if self._snapshot else 0
            if meta.index < snap_index:
                raise ValueError(f"snapshot marker at {meta.index} is older than the one "
                                 f"at {snap_index}")
            self._add(RecordType.SNAPSHOT, None, encode_snapshot_meta(meta))
            self._snapshot = meta
            self._last_index = max(self._last_index, meta.index)

    def sync(self) -> None:
        """Write and fsync everything buffered: one flush for the whole batch."""
        with self._lock, self._io("sync"):
            self._sync_locked()

    def release_before(self, index: int) -> None:
        """Delete whole segments whose entries are all below ``index``.

        Call it after saving a snapshot marker at ``index`` or later (syncing
        first if need be: this method syncs before deleting anything, since
        the marker must be durable before the entries it replaces go). The
        active segment is never deleted.
        """
        with self._lock, self._io("release segments"):
            snap_index = self._snapshot.index if self._snapshot else 0
            if index > snap_index + 1:
                raise ValueError(f"release_before({index}) would delete entries no snapshot "
                                 f"covers (the latest marker is at {snap_index})")
            self._sync_locked()
            while len(self._segments) > 1 and self._segments[0].max_index < index:
                seg = self._segments[0]
                os.unlink(seg.path)
                # One segment at a time, oldest first, each removal made durable:
                # a crash in between then leaves a suffix of the log, never a hole.
                os.fsync(self._dir_fd)
                self._segments.pop(0)
                log.info("released WAL segment %s (entries below %d)", seg.path, index)

    def close(self) -> None:
        """Sync what is buffered (unless the log failed) and release the directory."""
        with self._lock:
            if self._closed:
                return
            try:
                if self._failed is None:
                    with self._io("close"):
                        self._sync_locked()
            finally:
                self._closed = True
                os.close(self._fd)
                os.close(self._dir_fd)

    def __enter__(self) -> WriteAheadLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --------------------------------------------------------------- internals

    @contextlib.contextmanager
    def _io(self, what: str) -> Iterator[None]:
        if self._closed:
            raise StorageError("the write-ahead log is closed")
        if self._failed is not None:
            raise StorageError(f"the write-ahead log failed earlier ({self._failed}); reopen "
                               "it to recover from what is on disk")
        try:
            yield
        except OSError as e:
            self._failed = f"{what}: {e}"
            raise StorageError(f"WAL {what} failed in {self._dir}: {e}",
                               path=str(self._dir)) from e

    def _add(self, rtype: RecordType, entry_index: int | None, *parts: bytes) -> None:
        if self._active_size >= self._segment_size and self._active_records > 0:
            self._rotate(entry_index if entry_index is not None else self._last_index + 1)
        self._active_size += append_frame(self._pending, rtype, self._salt, *parts)
        self._active_records += 1
        if entry_index is not None:
            seg = self._segments[-1]
            seg.max_index = max(seg.max_index, entry_index)
        if len(self._pending) >= _FLUSH_THRESHOLD:
            self._write_pending()

    def _write_pending(self) -> None:
        if self._pending:
            fsutil.write_all(self._fd, self._pending)
            self._pending.clear()
            self._unsynced = True

    def _sync_locked(self) -> None:
        self._write_pending()
        if self._unsynced:
            fsutil.sync_data(self._fd)
            self._unsynced = False
        self._durable_index = self._last_index

    def _rotate(self, first_index: int) -> None:
        # The closing segment must be durable before its successor exists:
        # recovery treats a bad record in any but the last segment as
        # corruption, which is only sound if earlier segments were complete.
        self._sync_locked()
        seq = self._segments[-1].seq + 1
        salt = new_salt()
        checkpoint = bytearray()
        if self._hard_state != HardState():
            append_frame(checkpoint, RecordType.HARD_STATE, salt,
                         encode_hard_state(self._hard_state))
        if self._snapshot is not None:
            append_frame(checkpoint, RecordType.SNAPSHOT, salt,
                         encode_snapshot_meta(self._snapshot))
        fd, size = create_segment(self._dir, SegmentHeader(seq=seq, first_index=first_index,
                                                            salt=salt), bytes(checkpoint))
        os.close(self._fd)
        self._fd, self._salt, self._active_size, self._active_records = fd, salt, size, 0
        self._segments.append(_Segment(seq=seq, first_index=first_index,
                                       path=self._dir / segment_name(seq, first_index),
                                       max_index=0))
