"""The ``kv`` sub-database: every version of every key, in (key, revision) order.

Reading a key at revision R is one seek: position just past (key, R) and
step back; whatever record is there, if it belongs to the key, is the
version visible at R (a tombstone means the key was deleted then). A range
scan does that once per key, jumping from key to key, so its cost follows
the number of keys, not the length of their history.

The functions here take the LMDB transaction from the caller, so the same
code serves snapshot reads and the writes of an apply.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeAlias

import lmdb

from quorumkv.errors import StorageError
from quorumkv.kv.keys import (
    ALL_KEYS,
    MAX_REVISION,
    PAST_SLOT,
    REVISION_SIZE,
    group,
    history_key,
    in_range,
    slot,
    split_history_key,
)
from quorumkv.kv.records import decode_kv, encode_kv
from quorumkv.kv.results import KeyValue

# The C extension's classes are generic only in their stubs, hence the strings.
Txn: TypeAlias = "lmdb.Transaction[bytes]"
Cursor: TypeAlias = "lmdb.Cursor[bytes]"

SCAN_ALL_START = b"\x00"
"""With :data:`ALL_KEYS` as the end, selects every key (keys are never empty)."""


class History:
    def __init__(self, db: lmdb._Database) -> None:
        self.db = db

    def _seen_at(self, cur: Cursor, slot_bytes: bytes, revision: int) -> KeyValue | None:
        """The version of the slot's key visible at ``revision``, tombstones included."""
        if revision >= MAX_REVISION:
            seek = slot_bytes + PAST_SLOT
        else:
            seek = history_key(slot_bytes, revision + 1, 0)
        moved = cur.prev() if cur.set_range(seek) else cur.last()
        if not moved:
            return None
        found = cur.key()
        if len(found) != len(slot_bytes) + REVISION_SIZE or not found.startswith(slot_bytes):
            return None
        return decode_kv(cur.value())

    def get(self, txn: Txn, key: bytes, revision: int = MAX_REVISION) -> KeyValue | None:
        """The live version of ``key`` at ``revision`` (default: the latest), if any."""
        kv = self._seen_at(txn.cursor(self.db), slot(key), revision)
        if kv is None or kv.is_tombstone:
            return None
        if kv.key != key:
            # Only two keys whose SHA-256 collide could share a slot.
            raise StorageError("state machine slot holds a different key")
        return kv

    def scan(self, txn: Txn, start: bytes, end: bytes | None,
             revision: int = MAX_REVISION) -> Iterator[KeyValue]:
        """Live versions at ``revision`` of the keys selected by (start, end), in key order.

        ``end`` follows etcd: None is ``start`` alone, ALL_KEYS is every key
        from ``start`` on. Do not write through ``txn`` while iterating.
        """
        if end is None:
            kv = self.get(txn, start, revision)
            if kv is not None:
                yield kv
            return
        cur = txn.cursor(self.db)
        # Groups (see keys.py) sort like their keys, so everything in range
        # lies between the start's group and the end's; a group may straddle
        # either bound, hence the per-key filter.
        stop = None if end == ALL_KEYS else group(slot(end))
        positioned = cur.set_range(group(slot(start)))
        while positioned:
            current = group(cur.key()[:-REVISION_SIZE])
            if stop is not None and current > stop:
                return
            members: list[KeyValue] = []
            while positioned:
                slot_bytes = cur.key()[:-REVISION_SIZE]
                if not slot_bytes.startswith(current):
                    break
                kv = self._seen_at(cur, slot_bytes, revision)
                if kv is not None and not kv.is_tombstone and in_range(kv.key, start, end):
                    members.append(kv)
                positioned = cur.set_range(slot_bytes + PAST_SLOT)
            # A group of long keys is stored in hash order; put it in key order.
            members.sort(key=lambda kv: kv.key)
            yield from members

    def append(self, txn: Txn, kv: KeyValue, sub: int) -> None:
        """Record a new version (or tombstone) written at (kv.mod_revision, sub)."""
        fresh = txn.put(history_key(slot(kv.key), kv.mod_revision, sub), encode_kv(kv),
                        overwrite=False, db=self.db)
        assert fresh, "a (key, revision) is written once"

    def compact(self, txn: Txn, revision: int) -> int:
        """Drop history that no read at ``revision`` or later can see; return records dropped.

        For each key, every version at or below ``revision`` goes except the
        newest of them, which stays unless it is a tombstone: reads at or
        after ``revision`` see exactly what they saw before.
        """
        doomed: list[bytes] = []
        last_slot: bytes | None = None
        newest_below: tuple[bytes, bytes] | None = None  # (lmdb key, record)
        for lmdb_key, record in txn.cursor(self.db):
            slot_bytes, main, _ = split_history_key(lmdb_key)
            if slot_bytes != last_slot:
                if newest_below is not None and decode_kv(newest_below[1]).is_tombstone:
                    doomed.append(newest_below[0])
                last_slot, newest_below = slot_bytes, None
            if main > revision:
                continue
            if newest_below is not None:
                doomed.append(newest_below[0])
            newest_below = (lmdb_key, record)
        if newest_below is not None and decode_kv(newest_below[1]).is_tombstone:
            doomed.append(newest_below[0])
        # Deleting after the scan keeps the cursor's position well defined.
        for lmdb_key in doomed:
            txn.delete(lmdb_key, db=self.db)
        return len(doomed)
