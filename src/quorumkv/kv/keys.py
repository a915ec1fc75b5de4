"""How user keys and revisions become LMDB keys, so that LMDB's byte order is MVCC order.

Every version of a user key is one record in the ``kv`` sub-database under::

    slot(user key) + main revision (8 bytes, big-endian) + sub revision (4 bytes, big-endian)

so all versions of a key sit together, oldest first, and keys sit in user-key
order. ``slot`` is the user key with each ``0x00`` byte escaped as
``0x00 0xFF`` and then a terminator ``0x00 0x01``. The escape keeps the
order of arbitrary binary keys ("a" < "a\\x00" < "a\\x01") and makes slots
prefix-free: no slot is the beginning of another, so the revision bytes that
follow never blur two keys together.

LMDB caps a key at 511 bytes (a compile-time constant of the library), but
quorumkv accepts user keys up to 4 KiB by default. A key whose escaped form is
too long gets a *truncated* slot: its escaped prefix, a different terminator
``0x00 0x02`` and the SHA-256 of the whole key. Truncated slots still sort by
that prefix, and so in user-key order relative to every key with a different
prefix, but keys sharing a truncated prefix (a *group*) sort among themselves
by hash. Readers that cross such a group gather it and sort it by the real
key (see ``history.py``); this costs nothing for the common short keys.
"""

from __future__ import annotations

import hashlib
import struct

LMDB_MAX_KEY = 511
"""The largest key LMDB accepts (``mdb_env_get_maxkeysize`` of the bundled library)."""

_REVISION = struct.Struct(">QI")
REVISION_SIZE = _REVISION.size
"""Bytes of (main, sub) revision appended to a slot."""

MAX_REVISION = (1 << 63) - 1
"""Revisions, leases, timestamps and limits are signed 64-bit values on the wire."""

MAX_SUB = (1 << 32) - 1

_END_FULL = b"\x00\x01"
_END_TRUNCATED = b"\x00\x02"
_HASH_SIZE = 32

ESCAPED_LIMIT = LMDB_MAX_KEY - REVISION_SIZE - len(_END_TRUNCATED) - _HASH_SIZE
"""Escaped keys up to this length get a full slot; longer ones are truncated to it."""

_FULL_SLOT_MAX = ESCAPED_LIMIT + len(_END_FULL)

ALL_KEYS = b"\x00"
"""As ``range_end``: every key >= ``key`` (etcd's convention)."""

PAST_SLOT = b"\xff" * REVISION_SIZE
"""Appended to a slot, sorts after every version of that slot and before the next slot.

It is the key of revision (2**64 - 1, 2**32 - 1), which is never written
(revisions stop at :data:`MAX_REVISION`), and it keeps seek keys within
LMDB's limit.
"""


def _escape(key: bytes) -> bytes:
    return key.replace(b"\x00", b"\x00\xff")


def _unescape(escaped: bytes) -> bytes:
    return escaped.replace(b"\x00\xff", b"\x00")


def slot(key: bytes) -> bytes:
    """The LMDB key prefix shared by every version of ``key``."""
    escaped = _escape(key)
    if len(escaped) <= ESCAPED_LIMIT:
        return escaped + _END_FULL
    cut = ESCAPED_LIMIT
    if escaped[cut - 1] == 0:
        # A 0x00 always opens an escape pair: never cut a pair in half, or the
        # truncated prefix would no longer sort like the key.
        cut -= 1
    return escaped[:cut] + _END_TRUNCATED + hashlib.sha256(key).digest()


def is_truncated(slot_bytes: bytes) -> bool:
    """Whether a slot belongs to a long key (the two kinds have disjoint lengths)."""
    return len(slot_bytes) > _FULL_SLOT_MAX


def group(slot_bytes: bytes) -> bytes:
    """The prefix shared by every slot that may hold keys in an unknown relative order.

    A full slot is a group of one. Groups are prefix-free, and a group's slots
    all begin with it.
    """
    return slot_bytes[:-_HASH_SIZE] if is_truncated(slot_bytes) else slot_bytes


def key_of_full_slot(slot_bytes: bytes) -> bytes:
    """The user key of a full slot (a truncated slot needs its record to know the key)."""
    assert not is_truncated(slot_bytes)
    return _unescape(slot_bytes[: -len(_END_FULL)])


def history_key(slot_bytes: bytes, main: int, sub: int) -> bytes:
    return slot_bytes + _REVISION.pack(main, sub)


def split_history_key(lmdb_key: bytes) -> tuple[bytes, int, int]:
    """``(slot, main, sub)`` of a record key."""
    main, sub = _REVISION.unpack_from(lmdb_key, len(lmdb_key) - REVISION_SIZE)
    return lmdb_key[:-REVISION_SIZE], main, sub


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix``.

    Increment the last byte that is not 0xFF and drop what follows it; a prefix
    of only 0xFF bytes (or an empty one) has no upper bound, so the answer is
    :data:`ALL_KEYS`, as in etcd.
    """
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return ALL_KEYS
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def in_range(key: bytes, start: bytes, end: bytes | None) -> bool:
    """Whether ``key`` is selected by (start, end) with ``end`` in etcd's convention.

    ``end`` None selects ``start`` alone; :data:`ALL_KEYS` selects every key
    from ``start`` on; anything else is the half-open interval [start, end).
    """
    if end is None:
        return key == start
    if end == ALL_KEYS:
        return key >= start
    return start <= key < end
