"""Receiving a snapshot file from the leader in chunks, resumably (thesis §5.3).

The file arrives byte for byte as the leader stores it (snapshot_file.py)
into ``<name>.partial``, keyed by term and index. Each chunk must start where
the previous one ended; anything else is refused with a ProtocolError whose
``details["expected_offset"]`` tells the sender where to resume. When the
chunk marked ``done`` arrives the whole file is checked (format, metadata,
checksum) and only then renamed into place.

A transfer interrupted midway, even by a crash of this node, resumes where
it stopped. Each chunk is fdatasync-ed before a 16-byte progress record
(offset reached, CRC so far) is appended to ``<name>.progress``. After a
power cut the partial file may hold unsynced garbage past the last good
chunk, but the progress file never runs ahead of the data it describes (it
is written only after the data is durable); so on resume the partial file is
cut back to the last recorded offset and its CRC up to there compared. A
lost or torn progress record only means resending a little more.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from types import TracebackType

from quorumkv.errors import CorruptSnapshot, ProtocolError, StorageError
from quorumkv.raft.entries import SnapshotMeta
from quorumkv.storage import fsutil
from quorumkv.storage.record import checksum
from quorumkv.storage.snapshot_file import read_layout, verify_checksum
from quorumkv.storage.snapshot_store import (
    PARTIAL_SUFFIX,
    PROGRESS_SUFFIX,
    SnapshotStore,
    translate_io,
)

log = logging.getLogger(__name__)

_PROGRESS = struct.Struct(">QII")
"""offset reached, CRC-32 of the partial file up to it, CRC-32 of these first 12 bytes."""
_PROGRESS_BODY = struct.Struct(">QI")


class SnapshotReceiver:
    """Receives one snapshot (``meta``) into ``store``, resuming any earlier partial copy."""

    def __init__(self, store: SnapshotStore, meta: SnapshotMeta) -> None:
        self.meta = meta
        self._final = store.path_for(meta)
        self._partial = self._final.with_name(self._final.name + PARTIAL_SUFFIX)
        self._progress = self._final.with_name(self._final.name + PROGRESS_SUFFIX)
        self._fd = self._progress_fd = -1
        self._crc = 0
        self.offset = 0
        """Bytes durably received: the offset the next chunk must start at."""
        self.finished = False
        with translate_io("opening a snapshot transfer", self._partial):
            if self._final.exists():
                # Already received (say we crashed before answering the leader).
                self.finished = True
                self.offset = self._final.stat().st_size
                return
            self._open()

    def _open(self) -> None:
        fd = os.open(self._partial, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        self._fd = fd
        resume_at, crc = self._last_progress()
        size = os.fstat(fd).st_size
        if resume_at and (size < resume_at or _crc_of_prefix(fd, resume_at) != crc):
            log.warning("partial snapshot %s does not match its progress record; "
                        "restarting the transfer from the beginning", self._partial)
            resume_at, crc = 0, 0
        if size != resume_at:
            # Bytes past the last recorded chunk were never acknowledged.
            os.ftruncate(fd, resume_at)
            fsutil.sync_data(fd)
        os.lseek(fd, resume_at, os.SEEK_SET)
        self._progress_fd = os.open(self._progress, os.O_WRONLY | os.O_CREAT
                                    | getattr(os, "O_CLOEXEC", 0), 0o644)
        if resume_at == 0:
            os.ftruncate(self._progress_fd, 0)
        os.lseek(self._progress_fd, 0, os.SEEK_END)
        self.offset, self._crc = resume_at, crc
        if resume_at:
            log.info("resuming snapshot transfer %s at offset %d", self._partial, resume_at)

    def _last_progress(self) -> tuple[int, int]:
        try:
            data = self._progress.read_bytes()
        except FileNotFoundError:
            return 0, 0
        last = (0, 0)
        for pos in range(0, len(data) - _PROGRESS.size + 1, _PROGRESS.size):
            offset, crc, own = _PROGRESS.unpack_from(data, pos)
            if checksum(data[pos:pos + _PROGRESS_BODY.size]) != own:
                break
            last = (offset, crc)
        return last

    def write_chunk(self, offset: int, data: bytes, done: bool) -> int:
        """Store one chunk; return the offset the next one must start at.

        On the ``done`` chunk the file is checked and published; then
        ``finished`` is True. Raises ProtocolError (with ``expected_offset``)
        for a chunk that does not start at ``offset``, CorruptSnapshot if the
        complete file fails its checks (the partial copy is then discarded).
        """
        if self.finished:
            return self.offset
        if self._fd < 0:
            raise StorageError("snapshot receiver is closed")
        if offset != self.offset:
            raise ProtocolError(f"snapshot chunk for term {self.meta.term}, index "
                                f"{self.meta.index} starts at offset {offset}, but "
                                f"{self.offset} bytes have been received: resume from there",
                                expected_offset=self.offset, offset=offset)
        with translate_io("receiving a snapshot", self._partial):
            if data:
                fsutil.write_all(self._fd, data)
                fsutil.sync_data(self._fd)
                self._crc = checksum(data, self._crc)
                self.offset += len(data)
                body = _PROGRESS_BODY.pack(self.offset, self._crc)
                fsutil.write_all(self._progress_fd,
                                 body + struct.pack(">I", checksum(body)))
            if done:
                self._finish()
        return self.offset

    def _finish(self) -> None:
        path = str(self._partial)
        try:
            layout = read_layout(self._fd, path)
            verify_checksum(self._fd, layout, path)
            if layout.meta != self.meta:
                raise CorruptSnapshot(f"received snapshot {path} holds {layout.meta}, not the "
                                      f"announced {self.meta}", path=path)
        except CorruptSnapshot:
            self.abort()
            raise
        self._close_fds()
        os.replace(self._partial, self._final)
        self._progress.unlink(missing_ok=True)
        fsutil.sync_dir(self._final.parent)
        self.finished = True
        log.info("received snapshot %s (%d bytes)", self._final, self.offset)

    def abort(self) -> None:
        """Give the transfer up and delete what was received."""
        self._close_fds()
        with translate_io("discarding a snapshot transfer", self._partial):
            self._partial.unlink(missing_ok=True)
            self._progress.unlink(missing_ok=True)
        self.offset = 0

    def close(self) -> None:
        """Stop receiving for now, keeping the partial copy to resume later."""
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._fd, self._progress_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._progress_fd = -1

    def __enter__(self) -> SnapshotReceiver:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _crc_of_prefix(fd: int, length: int) -> int:
    crc = 0
    offset = 0
    while offset < length:
        chunk = os.pread(fd, min(1 << 20, length - offset), offset)
        if not chunk:
            break
        crc = checksum(chunk, crc)
        offset += len(chunk)
    return crc


def partial_path(store: SnapshotStore, meta: SnapshotMeta) -> Path:
    """Where a transfer of ``meta`` keeps its bytes until complete."""
    final = store.path_for(meta)
    return final.with_name(final.name + PARTIAL_SUFFIX)
