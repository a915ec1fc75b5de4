"""Backups: taking one on a live node, and restoring one as a member of a new cluster.

Taking one (``quorumkv snapshot save``). :func:`prepare_backup` copies
the state machine with ``KVStore.snapshot_to``, as the Raft group does
for its own snapshots: one LMDB read transaction, so the copy is
consistent while writes go on, compacted, in the node's scratch
directory. The copy's own records give the header (revision, applied
index, key count); :class:`BackupSource` then reads header, image and
digest out as one backup file (``storage/backup_file.py``) for the client
port to stream. The node asks for a read index first, so the backup holds
every write acknowledged before it was asked for.

Restoring one (``quorumkv snapshot restore``, like ``etcdutl snapshot
restore``): :func:`restore_backup` makes a fresh data directory for one
member of a *new* cluster; run it once per member, with the same
``--initial-cluster`` (and token) each time, then start each member with
``serve`` and that same initial cluster. It

1. checks the target is empty or missing, and the backup whole (digest,
   length, header against image), before anything is kept;
2. claims a staging directory beside the target for the member, under the
   cluster id a normal bootstrap of those members and token derives
   (``NodeConfig.cluster_id``), so ``serve`` accepts it;
3. copies the image into its state machine and rebases the membership:
   every old member (registry and configuration) is removed and every new
   one added as a voter, as membership changes applied right after the
   backup's applied index. So keys, values, every MVCC revision field, the
   store's revision, the compaction point, sessions and leases are the
   backup's (a lease runs for its full TTL from the moment the new
   cluster's leader sees it, as after any election), and the member
   registry lists the new members only;
4. saves that state as a Raft snapshot in the snapshot store and writes a
   log that starts at it (snapshot marker, hard state committing it): the
   new cluster's log begins where the backup's applied index, plus the
   membership changes, ends, so the store never sees an index go back, and
   a member that joins later receives this snapshot like any other;
5. renames the staging directory to the target. A restore that fails or is
   interrupted leaves the target as it was (a staging directory
   ``.NAME.restoring-*`` beside it may remain after a crash; remove it).

Every member restored from one backup with the same arguments holds the
same state, so their digests agree from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from quorumkv.errors import CorruptSnapshot, DataDirError, InvalidArgument, StorageError
from quorumkv.kv import ALL_KEYS, KVStore, RangeRequest
from quorumkv.kv.environment import DATA_FILE
from quorumkv.kv.members import MemberRecord, MembershipChange
from quorumkv.raft.entries import ConfChange, ConfChangeType, HardState, SnapshotMeta
from quorumkv.server.config import NodeConfig, node_id_for
from quorumkv.server.data_dir import DataDir
from quorumkv.storage import SnapshotStore, WriteAheadLog, fsutil
from quorumkv.storage.backup_file import (
    DIGEST_SIZE,
    BackupChecker,
    BackupHeader,
    BackupInfo,
    read_header,
)
from quorumkv.storage.snapshot_store import translate_io

log = logging.getLogger(__name__)

MAX_CONCURRENT = 2
"""Backups one node prepares or sends at once: each is a whole copy of its store on disk,
so a client that asks for many must not fill the disk."""

_COPY_CHUNK = 1 << 20
_IMAGE_DIR = "image"
_COPY_PREFIX = "backup-"


# -- taking a backup ----------------------------------------------------------------------


class BackupSource:
    """A consistent copy of a node's state machine, read out as a backup file, once, in order.

    Owns its scratch directory: :meth:`close` removes it, then calls ``on_close``.
    """

    def __init__(self, directory: Path, header: BackupHeader) -> None:
        self.header = header
        self.on_close: Callable[[], None] | None = None
        """Called once, on the event loop, when :meth:`close` is done."""
        self._dir = directory
        self._head = header.encode()
        with translate_io("opening the backup copy", directory):
            self._fd = fsutil.open_for_read(directory / _IMAGE_DIR / DATA_FILE)
        self._hash = hashlib.sha256()
        self._offset = 0
        self._closed = False

    @property
    def size(self) -> int:
        """Bytes of the whole backup file."""
        return self.header.file_size

    def read_sync(self, max_bytes: int) -> bytes:
        """The next at most ``max_bytes`` of the file (b"" at its end). Blocks on the disk."""
        if self._closed:
            raise StorageError("the backup copy is closed")
        head_len, image_end = len(self._head), len(self._head) + self.header.image_size
        pos = self._offset
        if pos < head_len:
            data = self._head[pos:pos + max_bytes]
        elif pos < image_end:
            with translate_io("reading the backup copy", self._dir):
                data = os.pread(self._fd, min(max_bytes, image_end - pos), pos - head_len)
            if not data:
                raise StorageError(f"the backup copy in {self._dir} shrank while being read")
        elif pos == image_end:
            # The digest goes out whole: it is known only now, and it is small.
            data = self._hash.digest()
            assert len(data) == DIGEST_SIZE
        else:
            return b""
        if pos < image_end:
            self._hash.update(data)
        self._offset += len(data)
        return data

    async def read(self, max_bytes: int) -> bytes:
        return await asyncio.to_thread(self.read_sync, max_bytes)

    def close_sync(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)
            shutil.rmtree(self._dir, ignore_errors=True)

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)
        callback, self.on_close = self.on_close, None
        if callback is not None:
            callback()


def prepare_backup(kv: KVStore, scratch: Path, *, cluster_id: int,
                   member: str) -> BackupSource:
    """Copy ``kv`` into ``scratch`` for a backup (blocks: run it in a worker thread)."""
    tmp = Path(tempfile.mkdtemp(prefix=_COPY_PREFIX, dir=scratch))
    try:
        image = tmp / _IMAGE_DIR
        kv.snapshot_to(image)
        # The header comes from the copy itself, never from the live store, which
        # has moved on since the copy's read transaction.
        with KVStore.open(image, create=False) as copy:
            keys = copy.range(RangeRequest(key=b"\x00", range_end=ALL_KEYS,
                                           count_only=True)).count
            state = (copy.applied_index, copy.applied_term, copy.revision,
                     copy.compact_revision)
        with translate_io("measuring the backup copy", image):
            size = (image / DATA_FILE).stat().st_size
        header = BackupHeader(cluster_id=cluster_id, member=member, applied_index=state[0],
                              applied_term=state[1], revision=state[2],
                              compact_revision=state[3], key_count=keys, image_size=size,
                              created_ns=time.time_ns())
        source = BackupSource(tmp, header)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("backup copy taken at revision %d (applied index %d, %d keys, %d bytes)",
             header.revision, header.applied_index, header.key_count, size)
    return source


def discard_backup_copies(scratch: Path) -> None:
    """Remove the copies of backups that were being sent when the node last stopped (a
    whole copy of the store each): call it at start, before any backup is taken."""
    with translate_io("removing old backup copies", scratch):
        stale = [p for p in scratch.iterdir() if p.name.startswith(_COPY_PREFIX)]
    for path in stale:
        log.info("removing the copy of an unfinished backup %s", path)
        shutil.rmtree(path, ignore_errors=True)


# -- restoring one ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Restored:
    """What :func:`restore_backup` made."""

    backup: BackupInfo
    data_dir: Path
    member: str
    cluster_id: int
    members: dict[str, str]
    """The new cluster: member name -> peer address."""
    snapshot: SnapshotMeta
    """Where the new cluster's log starts: the restored state, with the new membership."""


def restore_backup(backup: Path, config: NodeConfig) -> Restored:
    """Make ``config.data_dir`` a data directory of member ``config.name`` of the new cluster
    ``config.initial_cluster``, holding the state of ``backup`` (see the module doc)."""
    if not config.initial_cluster:
        raise InvalidArgument("a restore needs the new cluster's initial members "
                              "(--initial-cluster NAME=HOST:PORT,...)")
    root = Path(os.path.realpath(config.data_dir))
    _check_empty(root)
    read_header(backup)  # a foreign or truncated file is refused before any work
    records = {node_id_for(name): MemberRecord(name=name, peer_address=f"{host}:{port}",
                                               client_address=config.client_addresses.get(name))
               for name, (host, port) in config.initial_cluster.items()}
    with translate_io("creating the data directory", root.parent):
        fsutil.make_dir(root.parent)
        staging = root.parent / f".{root.name}.restoring-{secrets.token_hex(4)}"
        staging.mkdir()
    try:
        data = DataDir(staging)
        data.claim(name=config.name, node_id=config.node_id, cluster_id=config.cluster_id)
        with translate_io("creating the data directory", staging):
            for d in (data.wal, data.snap, data.kv, data.scratch):
                d.mkdir()
        info = _copy_image(backup, data.kv / DATA_FILE)
        with _open_image(data.kv, backup) as kv:
            _check_image(kv, info.header, backup)
            _rebase_membership(kv, records)
            meta = _save_snapshot(kv, SnapshotStore(data.snap), data.scratch)
        wal = WriteAheadLog.open(data.wal)
        try:
            # The log starts at the snapshot, committed, as a follower's does after
            # installing one: nothing before it is ever asked for.
            wal.save_snapshot_marker(meta)
            wal.save_hard_state(HardState(term=meta.term, commit=meta.index))
            wal.sync()
        finally:
            wal.close()
        with translate_io("publishing the data directory", root):
            fsutil.sync_dir(data.kv)
            fsutil.sync_dir(staging)
            # rename(2) replaces an empty directory, and the name appears whole or not at all.
            os.rename(staging, root)
            fsutil.sync_dir(root.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("restored revision %d into %s as member %s of cluster %d", info.header.revision,
             root, config.name, config.cluster_id)
    return Restored(backup=info, data_dir=root, member=config.name,
                    cluster_id=config.cluster_id,
                    members={r.name: r.peer_address for r in records.values()}, snapshot=meta)


def _check_empty(root: Path) -> None:
    if not (root.exists() or root.is_symlink()):
        return
    if not root.is_dir():
        raise DataDirError(f"{root} exists and is not a directory")
    with translate_io("reading the data directory", root):
        entries = sorted(p.name for p in root.iterdir())
    if entries:
        raise DataDirError(f"{root} is not empty ({', '.join(entries[:5])}): a restore "
                           f"makes a new data directory; give an empty or missing one")


def _copy_image(backup: Path, dest: Path) -> BackupInfo:
    """Write the image of ``backup`` to ``dest``, checking the whole file on the way."""
    checker = BackupChecker(str(backup))
    with translate_io("copying the image out of the backup", backup):
        fd = fsutil.open_for_create(dest)
        try:
            with open(backup, "rb") as src:
                while chunk := src.read(_COPY_CHUNK):
                    fsutil.write_all(fd, checker.update(chunk))
            info = checker.finish()
            fsutil.sync_file(fd)
        finally:
            os.close(fd)
    return info


@contextlib.contextmanager
def _open_image(directory: Path, backup: Path) -> Iterator[KVStore]:
    try:
        kv = KVStore.open(directory, create=False)
    except DataDirError as e:
        # Its digest matched, so the node that took it wrote something else.
        raise CorruptSnapshot(f"the image in backup {backup} is not a quorumkv state "
                              f"machine this version reads: {e.message}",
                              path=str(backup)) from None
    try:
        yield kv
    finally:
        kv.close()


def _check_image(kv: KVStore, header: BackupHeader, backup: Path) -> None:
    said = (header.revision, header.compact_revision, header.applied_index, header.applied_term)
    found = (kv.revision, kv.compact_revision, kv.applied_index, kv.applied_term)
    if said != found:
        raise CorruptSnapshot(
            f"backup {backup} says revision {said[0]}, compact revision {said[1]}, applied "
            f"index {said[2]} (term {said[3]}), but its image holds {found[0]}, {found[1]}, "
            f"{found[2]} (term {found[3]})", path=str(backup))


def _rebase_membership(kv: KVStore, records: dict[int, MemberRecord]) -> None:
    """Replace the old membership with ``records`` (all voters), as applied changes."""
    conf = kv.conf_state
    old = sorted((set(kv.members()) | conf.members()) - set(records))
    # The changes are entries no log holds: the snapshot taken after them stands for
    # them. Numbering them after the applied index keeps the store's index moving
    # forward; the term stays, as a log's term may.
    index, term = kv.applied_index, max(kv.applied_term, 1)
    batch: list[tuple[int, int, MembershipChange]] = []
    for node_id in old:
        conf = ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=node_id).apply_to(conf)
        index += 1
        batch.append((index, term, MembershipChange(conf=conf, node_id=node_id, member=None,
                                                    removed=True)))
    for node_id, record in sorted(records.items()):
        conf = ConfChange(type=ConfChangeType.ADD_VOTER, node_id=node_id).apply_to(conf)
        index += 1
        batch.append((index, term, MembershipChange(conf=conf, node_id=node_id,
                                                    member=record)))
    kv.apply_batch(batch)
    assert kv.conf_state.voters == frozenset(records) and not kv.conf_state.learners


def _save_snapshot(kv: KVStore, snapshots: SnapshotStore, scratch: Path) -> SnapshotMeta:
    """The store as a snapshot in ``snapshots`` (what RaftGroup does after compaction)."""
    tmp = Path(tempfile.mkdtemp(prefix="snap-", dir=scratch))
    try:
        meta = kv.snapshot_to(tmp)
        snapshots.save_from_file(meta, tmp / DATA_FILE)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta
