"""Durable storage: the write-ahead log and snapshot files.

Public surface::

    WriteAheadLog        segmented, checksummed, group-committed Raft log (wal.py)
    RecoveredState       what WriteAheadLog.open found on disk
    TornTail             a torn write cut from the end of the log at open
    SnapshotStore        atomic, checksummed snapshot files (snapshot_store.py)
    SnapshotWriter       returned by SnapshotStore.begin
    SnapshotReader       returned by SnapshotStore.open_reader
    SnapshotChunk        a piece of a snapshot file in transit
    SnapshotReceiver     resumable chunked receipt of a snapshot from the leader
    CorruptSnapshot      a damaged snapshot file (a StorageError)

Everything else in this package is internal.
"""

from quorumkv.errors import CorruptSnapshot
from quorumkv.storage.recovery import RecoveredState
from quorumkv.storage.segment import TornTail
from quorumkv.storage.snapshot_receiver import SnapshotReceiver
from quorumkv.storage.snapshot_store import (
    SnapshotChunk,
    SnapshotReader,
    SnapshotStore,
    SnapshotWriter,
)
from quorumkv.storage.wal import DEFAULT_SEGMENT_SIZE, WriteAheadLog

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "CorruptSnapshot",
    "RecoveredState",
    "SnapshotChunk",
    "SnapshotReader",
    "SnapshotReceiver",
    "SnapshotStore",
    "SnapshotWriter",
    "TornTail",
    "WriteAheadLog",
]
