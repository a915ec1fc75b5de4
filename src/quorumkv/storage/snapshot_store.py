"""Snapshot files: saving them atomically, finding the latest, reading and pruning.

A snapshot is a state machine image plus its SnapshotMeta, in one
checksummed file named by term and index (snapshot_file.py). Saving writes
``<name>.tmp``, fsyncs it, renames it and fsyncs the directory, so after a
power cut a snapshot is either complete under its final name or absent.
Save the snapshot before its marker goes into the write-ahead log: the
marker lets the log drop the entries the snapshot replaces.

Receiving a snapshot from the leader in chunks, resumably, is
snapshot_receiver.py; it keeps its partial files in the same directory.

Readers hold an open file descriptor, so a snapshot pruned while it is being
streamed to a follower stays readable until the reader is closed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from quorumkv.errors import CorruptSnapshot, DataDirError, StorageError
from quorumkv.raft.entries import SnapshotMeta
from quorumkv.storage import fsutil
from quorumkv.storage.record import checksum
from quorumkv.storage.snapshot_file import (
    SUFFIX,
    encode_head,
    encode_trailer,
    parse_snapshot_name,
    read_layout,
    snapshot_name,
    verify_checksum,
)

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"
PARTIAL_SUFFIX = ".partial"
PROGRESS_SUFFIX = ".progress"

DEFAULT_CHUNK_SIZE = 1 << 20


@contextlib.contextmanager
def translate_io(what: str, path: Path | str) -> Iterator[None]:
    """Report an OSError as the StorageError callers expect, naming the file."""
    try:
        yield
    except OSError as e:
        raise StorageError(f"{what} failed for {path}: {e}", path=str(path)) from e


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotChunk:
    """A piece of a snapshot file in transit to a follower."""

    offset: int
    data: bytes
    done: bool
    """True on the chunk that ends the file."""


class SnapshotStore:
    """The snapshot files of one Raft group, in one directory."""

    def __init__(self, directory: str | Path) -> None:
        self._dir = Path(directory)
        with translate_io("opening the snapshot directory", self._dir):
            fsutil.make_dir(self._dir)
            leftovers = []
            for name in os.listdir(self._dir):
                kind = _classify(name)
                if kind is None:
                    raise DataDirError(f"unexpected file {name!r} in snapshot directory "
                                       f"{self._dir}: is this the right data directory?",
                                       path=str(self._dir))
                if kind == TMP_SUFFIX:
                    leftovers.append(self._dir / name)
            for tmp in leftovers:
                # A save that crashed before its rename: never a snapshot.
                log.info("removing unfinished snapshot %s", tmp)
                tmp.unlink()
            if leftovers:
                fsutil.sync_dir(self._dir)

    @property
    def directory(self) -> Path:
        return self._dir

    def path_for(self, meta: SnapshotMeta) -> Path:
        return self._dir / snapshot_name(meta)

    def _complete(self) -> list[tuple[int, int, Path]]:
        """(index, term, path) of every complete snapshot, oldest first."""
        out = []
        for name in os.listdir(self._dir):
            parsed = parse_snapshot_name(name)
            if parsed is not None:
                term, index = parsed
                out.append((index, term, self._dir / name))
        out.sort()
        return out

    def snapshots(self) -> list[SnapshotMeta]:
        """Metadata of every complete snapshot, oldest first (headers only are read)."""
        with translate_io("listing snapshots", self._dir):
            return [self._read_meta(path) for _, _, path in self._complete()]

    def latest(self) -> SnapshotMeta | None:
        """The newest complete snapshot's metadata (its checksum is checked on open)."""
        with translate_io("listing snapshots", self._dir):
            complete = self._complete()
            return self._read_meta(complete[-1][2]) if complete else None

    def _read_meta(self, path: Path) -> SnapshotMeta:
        fd = fsutil.open_for_read(path)
        try:
            meta = read_layout(fd, str(path)).meta
        finally:
            os.close(fd)
        if path.name != snapshot_name(meta):
            raise _misnamed(path, meta)
        return meta

    def begin(self, meta: SnapshotMeta) -> SnapshotWriter:
        """Start saving a snapshot; write the image, then ``commit()`` (or ``abort()``)."""
        return SnapshotWriter(self.path_for(meta), meta)

    def save_from_file(self, meta: SnapshotMeta, src_path: str | Path,
                       chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        """Save the image in ``src_path`` as the snapshot ``meta``."""
        with self.begin(meta) as writer, translate_io("reading the image", src_path), \
                open(src_path, "rb") as src:
            while chunk := src.read(chunk_size):
                writer.write(chunk)
            writer.commit()

    def save_streamed(self, meta: SnapshotMeta, produce: Callable[[int], None],
                      chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        """Save as the snapshot ``meta`` the image that ``produce`` writes to the file
        descriptor it is given (a pipe), in one pass: no copy of the image is written
        anywhere first. ``produce`` runs in a thread of its own while this one reads,
        checksums and writes; an error on either side discards the snapshot."""
        read_fd, write_fd = os.pipe()
        failure: list[BaseException] = []

        def producer() -> None:
            try:
                produce(write_fd)
            except BaseException as e:  # re-raised in the saving thread
                failure.append(e)
            finally:
                os.close(write_fd)

        thread = threading.Thread(target=producer, name="snapshot-image", daemon=True)
        try:
            with self.begin(meta) as writer:
                thread.start()
                while chunk := os.read(read_fd, chunk_size):
                    writer.write(chunk)
                thread.join()
                if failure:
                    raise failure[0]
                writer.commit()
        finally:
            # Closing the reading end first makes a producer still writing fail at
            # once (EPIPE) instead of blocking on a full pipe.
            os.close(read_fd)
            if thread.ident is not None:
                thread.join()

    def open_reader(self, meta: SnapshotMeta, *, verify: bool = True) -> SnapshotReader:
        """Open a complete snapshot; its whole-file checksum is checked unless ``verify`` is
        False. Raises CorruptSnapshot on damage."""
        return SnapshotReader(self.path_for(meta), meta, verify=verify)

    def prune(self, keep: int = 1) -> list[Path]:
        """Remove all but the newest ``keep`` snapshots, and partial transfers no newer than
        the newest one. Returns the files removed."""
        if keep < 1:
            raise ValueError("prune must keep at least one snapshot")
        removed: list[Path] = []
        with translate_io("pruning snapshots", self._dir):
            complete = self._complete()
            removed.extend(path for _, _, path in complete[:-keep])
            if complete:
                newest = complete[-1][0]
                for name in os.listdir(self._dir):
                    parsed = _partial_of(name)
                    if parsed is not None and parsed[1] <= newest:
                        removed.append(self._dir / name)
            for path in removed:
                path.unlink()
            if removed:
                fsutil.sync_dir(self._dir)
        for path in removed:
            log.info("pruned %s", path)
        return removed


def _misnamed(path: Path, meta: SnapshotMeta) -> CorruptSnapshot:
    return CorruptSnapshot(f"snapshot file {path} holds the snapshot at term {meta.term}, "
                           f"index {meta.index}, which does not match its name (damaged "
                           "header, or renamed by hand)", path=str(path))


def _classify(name: str) -> str | None:
    """Which of the store's kinds of file ``name`` is (its suffix), or None."""
    if parse_snapshot_name(name) is not None:
        return SUFFIX
    for suffix in (TMP_SUFFIX, PARTIAL_SUFFIX, PROGRESS_SUFFIX):
        if name.endswith(suffix) and parse_snapshot_name(name[:-len(suffix)]) is not None:
            return suffix
    return None


def _partial_of(name: str) -> tuple[int, int] | None:
    """(term, index) of a partial transfer's file, or None."""
    for suffix in (PARTIAL_SUFFIX, PROGRESS_SUFFIX):
        if name.endswith(suffix):
            return parse_snapshot_name(name[:-len(suffix)])
    return None


class SnapshotWriter:
    """Writes one snapshot under a temporary name; ``commit()`` publishes it atomically."""

    def __init__(self, final: Path, meta: SnapshotMeta) -> None:
        self.meta = meta
        self._final = final
        self._tmp = final.with_name(final.name + TMP_SUFFIX)
        self._image_len = 0
        self._done = False
        with translate_io("creating a snapshot file", self._tmp):
            try:
                self._fd = fsutil.open_for_create(self._tmp)
            except FileExistsError:
                raise StorageError(f"snapshot {final.name} is already being saved "
                                   f"({self._tmp} exists)", path=str(self._tmp)) from None
        head = encode_head(meta)
        self._crc = 0
        self._write(head)

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            with translate_io("writing a snapshot", self._tmp):
                fsutil.write_all(self._fd, data)
        except BaseException:
            self.abort()
            raise
        self._crc = checksum(data, self._crc)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append image bytes."""
        if self._done:
            raise StorageError("snapshot writer already committed or aborted")
        self._write(data)
        self._image_len += len(data)

    def commit(self) -> SnapshotMeta:
        """Write the trailer, fsync, rename into place, fsync the directory."""
        if self._done:
            raise StorageError("snapshot writer already committed or aborted")
        try:
            with translate_io("saving a snapshot", self._final):
                fsutil.write_all(self._fd, encode_trailer(self._image_len, self._crc))
                fsutil.publish(self._tmp, self._final, self._fd)
        except BaseException:
            self.abort()
            raise
        self._done = True
        os.close(self._fd)
        log.info("saved snapshot %s (%d image bytes)", self._final, self._image_len)
        return self.meta

    def abort(self) -> None:
        """Discard the unfinished snapshot."""
        if self._done:
            return
        self._done = True
        os.close(self._fd)
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.abort()


class SnapshotReader:
    """An open, checked snapshot: stream it to a follower or read its image."""

    def __init__(self, path: Path, meta: SnapshotMeta, *, verify: bool = True) -> None:
        self.path = path
        with translate_io("opening a snapshot", path):
            try:
                self._fd = fsutil.open_for_read(path)
            except FileNotFoundError:
                raise StorageError(f"no snapshot at term {meta.term}, index {meta.index} "
                                   f"({path} does not exist)", path=str(path)) from None
            try:
                self._layout = read_layout(self._fd, str(path))
                if verify:
                    verify_checksum(self._fd, self._layout, str(path))
                if (self._layout.meta.index, self._layout.meta.term) != (meta.index, meta.term):
                    raise _misnamed(path, self._layout.meta)
            except BaseException:
                os.close(self._fd)
                raise
        self._closed = False

    @property
    def meta(self) -> SnapshotMeta:
        return self._layout.meta

    @property
    def size(self) -> int:
        """Size of the whole file, which is what travels to a follower."""
        return self._layout.file_size

    @property
    def image_size(self) -> int:
        return self._layout.image_size

    def read_chunks(self, chunk_size: int = DEFAULT_CHUNK_SIZE,
                    offset: int = 0) -> Iterator[SnapshotChunk]:
        """The file from ``offset`` on, in chunks; the last has ``done`` set.

        Starting at the very end yields one empty ``done`` chunk, so a
        receiver that has every byte but never saw the end can finish.
        """
        if chunk_size <= 0 or not 0 <= offset <= self.size:
            raise ValueError(f"bad chunk size {chunk_size} or offset {offset} "
                             f"(file size {self.size})")
        while True:
            with translate_io("reading a snapshot", self.path):
                data = os.pread(self._fd, min(chunk_size, self.size - offset), offset)
            if offset + len(data) < self.size and not data:
                raise StorageError(f"snapshot file {self.path} shrank while being read",
                                   path=str(self.path))
            done = offset + len(data) == self.size
            yield SnapshotChunk(offset=offset, data=data, done=done)
            if done:
                return
            offset += len(data)

    def image_chunks(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        """The state machine image, in chunks."""
        offset = self._layout.image_offset
        end = offset + self._layout.image_size
        while offset < end:
            with translate_io("reading a snapshot", self.path):
                data = os.pread(self._fd, min(chunk_size, end - offset), offset)
            if not data:
                raise StorageError(f"snapshot file {self.path} shrank while being read",
                                   path=str(self.path))
            yield data
            offset += len(data)

    def copy_image_to(self, dest: str | Path) -> None:
        """Write the image to ``dest`` atomically (temporary file, fsync, rename)."""
        dest = Path(dest)
        tmp = dest.with_name(dest.name + TMP_SUFFIX)
        with translate_io("copying a snapshot image", dest):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0),
                         0o644)
            try:
                for chunk in self.image_chunks():
                    fsutil.write_all(fd, chunk)
                fsutil.publish(tmp, dest, fd)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            finally:
                os.close(fd)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
