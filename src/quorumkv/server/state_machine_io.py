"""What the node and the simulator both do between the Raft log and the state machine.

Committed entries become the store's payloads (a membership change becomes
the configuration it produces with the member's record from its context, a
leader no-op becomes nothing to apply), and a
snapshot file from the snapshot store becomes the store's new contents.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from quorumkv.errors import QuorumKVError
from quorumkv.kv import KVStore, Payload, decode_command
from quorumkv.kv.members import MemberRecord, MembershipChange, decode_member
from quorumkv.raft.entries import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    SnapshotMeta,
)
from quorumkv.storage import SnapshotStore

log = logging.getLogger(__name__)


def payloads(entries: Sequence[Entry], conf: ConfState) -> list[tuple[int, int, Payload]]:
    """``(index, term, payload)`` for ``KVStore.apply_batch``, starting from membership ``conf``."""
    batch: list[tuple[int, int, Payload]] = []
    for e in entries:
        if e.type is EntryType.CONF_CHANGE:
            cc = ConfChange.decode(e.data)
            conf = cc.apply_to(conf)
            batch.append((e.index, e.term, MembershipChange(
                conf=conf, node_id=cc.node_id, member=_record(e.index, cc),
                removed=cc.type is ConfChangeType.REMOVE_NODE)))
        elif not e.data:
            batch.append((e.index, e.term, None))
        else:
            try:
                batch.append((e.index, e.term, decode_command(e.data)))
            except QuorumKVError:
                # Validated before proposing, so this is a bug or a foreign log:
                # record it as applied (all replicas agree) and say so.
                log.error("entry %d holds an undecodable command; skipped", e.index)
                batch.append((e.index, e.term, None))
    return batch


def _record(index: int, cc: ConfChange) -> MemberRecord | None:
    if not cc.context or cc.type is ConfChangeType.REMOVE_NODE:
        return None
    try:
        return decode_member(cc.context)
    except QuorumKVError:
        # Checked before proposing; every replica skips the same record.
        log.error("entry %d holds an undecodable member record; not recorded", index)
        return None


def restore_snapshot(kv: KVStore, snapshots: SnapshotStore, meta: SnapshotMeta,
                     scratch: Path) -> SnapshotMeta:
    """Replace ``kv``'s contents with the image of snapshot ``meta``."""
    tmp = Path(tempfile.mkdtemp(prefix="restore-", dir=scratch))
    try:
        snapshots.open_reader(meta).copy_image_to(tmp / "data.mdb")
        return kv.restore_from(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
