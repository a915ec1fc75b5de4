"""The lease index: which leases are granted, and which keys are attached to each.

Leases live in the ``meta`` sub-database next to the store's own records
(``records.py``) and the member registry (``members.py``), written in the
same LMDB transaction as the data, so they survive restarts and travel in
snapshots with no sub-database of their own. Ids are 8 bytes big-endian, so
LMDB's byte order is numeric order::

    b"lease/" id              [ttl]    a granted lease (msgpack; ttl in seconds)
    b"lease-key/" id key      b""      key is attached to lease id

Neither prefix is a prefix of the other or of ``format``, ``state``,
``conf`` or ``member/``, so a cursor walk from a prefix stops at the first
key without it. A key is attached to the lease of its live version: the
applier attaches it on a put with a lease, and detaches it on a put with
another lease (or none) and on its deletion, so the attachments of a lease
are exactly the live keys whose ``lease`` is that lease's id.
"""

from __future__ import annotations

from collections.abc import Iterator

import lmdb

from quorumkv.errors import StorageError
from quorumkv.kv.history import Txn
from quorumkv.kv.packing import pack, unpack

LEASE_PREFIX = b"lease/"
LEASE_KEY_PREFIX = b"lease-key/"
_ID_SIZE = 8


def _id_bytes(lease_id: int) -> bytes:
    return lease_id.to_bytes(_ID_SIZE, "big")


def lease_key(lease_id: int) -> bytes:
    return LEASE_PREFIX + _id_bytes(lease_id)


def attachment_key(lease_id: int, key: bytes) -> bytes:
    return LEASE_KEY_PREFIX + _id_bytes(lease_id) + key


def _decode_ttl(data: bytes) -> int:
    try:
        obj = unpack(data)
    except ValueError as err:
        raise StorageError(f"corrupt lease record in the state machine: {err}") from err
    if not isinstance(obj, list) or len(obj) != 1 or type(obj[0]) is not int or obj[0] < 1:
        raise StorageError("corrupt lease record in the state machine")
    return obj[0]


def _walk(txn: Txn, db: lmdb._Database, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Every record under ``prefix``, in key order. Do not write while iterating."""
    cursor = txn.cursor(db=db)
    if not cursor.set_range(prefix):
        return
    for key, value in cursor:
        if not key.startswith(prefix):
            return
        yield key, value


class LeaseIndex:
    """The lease records of the ``meta`` sub-database, through the caller's transaction."""

    def __init__(self, db: lmdb._Database) -> None:
        self.db = db

    def exists(self, txn: Txn, lease_id: int) -> bool:
        return txn.get(lease_key(lease_id), db=self.db) is not None

    def ttl(self, txn: Txn, lease_id: int) -> int | None:
        """The lease's TTL (seconds), None if it is not granted."""
        value = txn.get(lease_key(lease_id), db=self.db)
        return None if value is None else _decode_ttl(value)

    def grant(self, txn: Txn, lease_id: int, ttl: int) -> None:
        fresh = txn.put(lease_key(lease_id), pack([ttl]), overwrite=False, db=self.db)
        assert fresh, "a lease is granted once"

    def remove(self, txn: Txn, lease_id: int) -> None:
        """Drop the lease and whatever is still attached to it."""
        for key in self.keys(txn, lease_id):
            self.detach(txn, lease_id, key)
        txn.delete(lease_key(lease_id), db=self.db)

    def attach(self, txn: Txn, lease_id: int, key: bytes) -> None:
        txn.put(attachment_key(lease_id, key), b"", db=self.db)

    def detach(self, txn: Txn, lease_id: int, key: bytes) -> None:
        txn.delete(attachment_key(lease_id, key), db=self.db)

    def keys(self, txn: Txn, lease_id: int) -> list[bytes]:
        """The keys attached to the lease, in key order."""
        prefix = LEASE_KEY_PREFIX + _id_bytes(lease_id)
        return [key[len(prefix):] for key, _ in _walk(txn, self.db, prefix)]

    def leases(self, txn: Txn) -> dict[int, int]:
        """Every granted lease: id -> ttl (seconds)."""
        out: dict[int, int] = {}
        for key, value in _walk(txn, self.db, LEASE_PREFIX):
            if len(key) != len(LEASE_PREFIX) + _ID_SIZE:
                raise StorageError("corrupt lease key in the state machine")
            out[int.from_bytes(key[len(LEASE_PREFIX):], "big")] = _decode_ttl(value)
        return out

    def items(self, txn: Txn) -> Iterator[tuple[bytes, bytes]]:
        """Every lease record (in id order), then every attachment (in id and key order):
        what the store's digest covers."""
        yield from _walk(txn, self.db, LEASE_PREFIX)
        yield from _walk(txn, self.db, LEASE_KEY_PREFIX)
