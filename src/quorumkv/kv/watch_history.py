"""The stored MVCC history replayed as watch events: what a watch from the past sees.

Every change the applier makes is one record in the ``kv`` sub-database (see
``history.py``): a new version for a PUT, a tombstone for a DELETE, under
(key slot, revision, sub revision). The Event the applier emitted for it is
therefore a function of that record and the one before it in the same slot:

- the record is the Event's ``kv`` (a tombstone for a DELETE, exactly as the
  applier built it);
- the record before it is the ``prev_kv``, unless there is none or it is a
  tombstone (the key did not exist: first creation, or re-creation after a
  delete).

Compaction keeps this true after the compact revision: for each key it
keeps the newest version at or below it (dropping it if it is a tombstone,
along with everything older), so the record before the first change after
the compact revision is still there when that change replaced a live
version, and absent when it did not. History at or below the compact
revision is gone, so a replay must start after it (etcd's rule).

Events of different keys interleave in (revision, sub) order, which is the
order the applier emitted them in: within one revision the sub revision
counts the writes of the command. The replay merges the keys' histories
with a heap, one entry per key, so that it reads only the records it
returns plus one seek (and, for ``prev_kv``, one look back) per key in range.
"""

from __future__ import annotations

import heapq
from typing import TypeAlias

from quorumkv.errors import Compacted, InvalidArgument, StorageError
from quorumkv.kv.history import Cursor, History, Txn
from quorumkv.kv.keys import (
    ALL_KEYS,
    MAX_REVISION,
    PAST_SLOT,
    REVISION_SIZE,
    group,
    history_key,
    in_range,
    is_truncated,
    key_of_full_slot,
    slot,
    split_history_key,
)
from quorumkv.kv.records import decode_kv
from quorumkv.kv.results import Event, EventType, KeyValue

_Pending: TypeAlias = tuple[int, int, bytes, KeyValue | None]
"""A key's next change to replay: (revision, sub, its LMDB key, the version it replaced).

(revision, sub) is unique across the whole history, and LMDB keys are unique,
so heap order never compares the version."""


def events_between(txn: Txn, history: History, *, key: bytes, range_end: bytes | None,
                   start_revision: int, end_revision: int, compact_revision: int,
                   prev_kv: bool = False, limit: int = 0) -> list[tuple[int, int, Event]]:
    """The events of keys selected by (``key``, ``range_end``) at revisions in
    [``start_revision``, ``end_revision``], as ``(revision, sub, event)`` in the
    order the applier emitted them.

    ``range_end`` follows etcd (None: ``key`` alone; ALL_KEYS: every key from
    ``key`` on). Each event equals the one emitted when the change was
    applied, except that ``prev_kv`` is None unless asked for. ``limit`` > 0
    stops once that many events are gathered, after finishing the revision
    of the last one: a revision's events are never split, so the answer may
    exceed ``limit`` and a consumer can resume at the revision after the
    last one returned.

    Raises Compacted if ``start_revision`` is at or below ``compact_revision``
    (the earliest start is ``compact_revision + 1``), InvalidArgument if it
    is below 1 (there are no events at revision 0: resolve "from now" to a
    revision first) or if ``limit`` is negative.
    """
    if start_revision < 1:
        raise InvalidArgument(f"watch start revision {start_revision} is below 1")
    if limit < 0:
        raise InvalidArgument(f"negative limit {limit}")
    if start_revision <= compact_revision:
        raise Compacted(f"watch from revision {start_revision} needs history compacted away "
                        f"(compact revision {compact_revision}; the earliest start is "
                        f"{compact_revision + 1})",
                        compact_revision=compact_revision)
    if end_revision < start_revision or start_revision > MAX_REVISION:
        return []
    cur = txn.cursor(history.db)
    heap: list[_Pending] = []
    for slot_bytes in _slots(cur, key, range_end):
        pending = _first_change(cur, slot_bytes, key, range_end, start_revision,
                                end_revision, prev_kv)
        if pending is not None:
            heap.append(pending)
    heapq.heapify(heap)

    out: list[tuple[int, int, Event]] = []
    while heap:
        revision, sub, lmdb_key, prev = heap[0]
        if limit and len(out) >= limit and revision != out[-1][0]:
            break
        heapq.heappop(heap)
        if not cur.set_key(lmdb_key):
            raise StorageError("state machine history changed during a watch replay")
        kv = decode_kv(cur.value())
        kind = EventType.DELETE if kv.is_tombstone else EventType.PUT
        out.append((revision, sub, Event(type=kind, kv=kv, prev_kv=prev if prev_kv else None)))
        following = _next_change(cur, lmdb_key[:-REVISION_SIZE], end_revision,
                                 kv if prev_kv and not kv.is_tombstone else None)
        if following is not None:
            heapq.heappush(heap, following)
    return out


def _slots(cur: Cursor, key: bytes, range_end: bytes | None) -> list[bytes]:
    """Slots that may hold keys in range, jumping from slot to slot (as History.scan).

    A group of long keys may straddle either bound; _first_change filters by key.
    """
    if range_end is None:
        return [slot(key)]
    found: list[bytes] = []
    stop = None if range_end == ALL_KEYS else group(slot(range_end))
    positioned = cur.set_range(group(slot(key)))
    while positioned:
        slot_bytes = cur.key()[:-REVISION_SIZE]
        if stop is not None and group(slot_bytes) > stop:
            break
        found.append(slot_bytes)
        positioned = cur.set_range(slot_bytes + PAST_SLOT)
    return found


def _in_slot(lmdb_key: bytes, slot_bytes: bytes) -> bool:
    return len(lmdb_key) == len(slot_bytes) + REVISION_SIZE and lmdb_key.startswith(slot_bytes)


def _first_change(cur: Cursor, slot_bytes: bytes, key: bytes, range_end: bytes | None,
                  start_revision: int, end_revision: int, want_prev: bool) -> _Pending | None:
    """The slot's first change at or after ``start_revision``, if in the window and range."""
    seek = history_key(slot_bytes, start_revision, 0)
    if not cur.set_range(seek):
        return None
    lmdb_key = cur.key()
    if not _in_slot(lmdb_key, slot_bytes):
        return None
    _, revision, sub = split_history_key(lmdb_key)
    if revision > end_revision:
        return None
    if is_truncated(slot_bytes):
        # Only the record knows a long key, and its group may straddle a bound.
        if not in_range(decode_kv(cur.value()).key, key, range_end):
            return None
    elif range_end is not None and not in_range(key_of_full_slot(slot_bytes), key, range_end):
        return None
    prev: KeyValue | None = None
    if want_prev and cur.prev() and _in_slot(cur.key(), slot_bytes):
        before = decode_kv(cur.value())
        prev = None if before.is_tombstone else before
    return revision, sub, lmdb_key, prev


def _next_change(cur: Cursor, slot_bytes: bytes, end_revision: int,
                 prev: KeyValue | None) -> _Pending | None:
    """The change after the cursor's record in its slot, if within the window."""
    if not cur.next():
        return None
    lmdb_key = cur.key()
    if not _in_slot(lmdb_key, slot_bytes):
        return None
    _, revision, sub = split_history_key(lmdb_key)
    if revision > end_revision:
        return None
    return revision, sub, lmdb_key, prev
