"""Applying one command inside the store's LMDB write transaction.

The outcome is a function of the store and the command alone: the
timestamp comes from the command, nothing reads a clock or draws a random
number, and iteration order is LMDB's byte order.

Each command is checked completely before its first write, so a command
that fails (a Compact of the past, a Txn reading a compacted revision, a
Put naming a lease that is not granted) raises its RequestError with
nothing written, and the store can still record the entry as applied in
the same transaction.

Leases (``leases.py``) are kept in step with the versions: every write of
a key detaches it from the lease of the version it replaces and a put
attaches it to its own, so a lease's attachments are always the live keys
that name it, and revoking it deletes exactly those.
"""

from __future__ import annotations

from quorumkv.errors import Compacted, InvalidArgument, LeaseNotFound, StorageError
from quorumkv.kv.commands import (
    Compact,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    LeaseGrant,
    LeaseRevoke,
    Put,
    RangeRequest,
    Txn,
    TxnOp,
    Write,
)
from quorumkv.kv.history import History
from quorumkv.kv.history import Txn as LmdbTxn
from quorumkv.kv.keys import MAX_SUB
from quorumkv.kv.leases import LeaseIndex
from quorumkv.kv.reads import check_read_revision, read_range
from quorumkv.kv.results import (
    CompactResult,
    DeleteResult,
    Event,
    EventType,
    KeyValue,
    LeaseGrantResult,
    LeaseRevokeResult,
    PutResult,
    Result,
    TxnResponse,
    TxnResult,
)


def _satisfies(op: CompareOp, actual: bytes | int, expected: bytes | int) -> bool:
    # check_command guarantees both sides have the same type for the target.
    if op is CompareOp.EQUAL:
        return actual == expected
    if op is CompareOp.NOT_EQUAL:
        return actual != expected
    if op is CompareOp.LESS:
        return actual < expected  # type: ignore[operator]
    return actual > expected  # type: ignore[operator]


def _field(kv: KeyValue | None, target: CompareTarget) -> bytes | int:
    if target is CompareTarget.VALUE:
        assert kv is not None
        return kv.value
    if kv is None:
        return 0
    if target is CompareTarget.VERSION:
        return kv.version
    if target is CompareTarget.CREATE_REVISION:
        return kv.create_revision
    if target is CompareTarget.MOD_REVISION:
        return kv.mod_revision
    return kv.lease


class Applier:
    """Applies one command; its writes share one new revision, numbered by sub revision."""

    def __init__(self, history: History, leases: LeaseIndex, txn: LmdbTxn, *, revision: int,
                 compact_revision: int) -> None:
        self._history = history
        self._leases = leases
        self._txn = txn
        self._begin = revision
        self.compact_revision = compact_revision
        self._timestamp = 0
        self._sub = 0
        self.events: list[Event] = []

    @property
    def revision(self) -> int:
        """The store's revision as of the writes so far: one more than before if any."""
        return self._begin + 1 if self._sub else self._begin

    def apply(self, cmd: Write, *, timestamp: int) -> Result:
        """Apply ``cmd``, stamping what it writes with ``timestamp`` (its own, or its
        Session's)."""
        self._timestamp = timestamp
        if isinstance(cmd, Put):
            self._check_lease(cmd.lease)
            return self._put(cmd)
        if isinstance(cmd, DeleteRange):
            return self._delete(cmd)
        if isinstance(cmd, Txn):
            return self._txn_command(cmd)
        if isinstance(cmd, LeaseGrant):
            return self._lease_grant(cmd)
        if isinstance(cmd, LeaseRevoke):
            return self._lease_revoke(cmd)
        return self._compact(cmd)

    def _check_lease(self, lease: int) -> None:
        """A put may name only a granted lease (or none)."""
        if lease != 0 and not self._leases.exists(self._txn, lease):
            raise LeaseNotFound(f"lease {lease} not found", lease=lease)

    def _write(self, kv: KeyValue) -> None:
        assert self._sub <= MAX_SUB
        self._history.append(self._txn, kv, self._sub)
        self._sub += 1

    def _put(self, op: Put) -> PutResult:
        """Write ``op`` (its lease already checked by :meth:`_check_lease`)."""
        prev = self._history.get(self._txn, op.key)
        revision = self._begin + 1
        kv = KeyValue(key=op.key, value=op.value,
                      create_revision=prev.create_revision if prev else revision,
                      mod_revision=revision, version=prev.version + 1 if prev else 1,
                      lease=op.lease, timestamp=self._timestamp)
        self._write(kv)
        if prev is not None and prev.lease not in (0, op.lease):
            self._leases.detach(self._txn, prev.lease, op.key)
        if op.lease != 0:
            self._leases.attach(self._txn, op.lease, op.key)
        self.events.append(Event(type=EventType.PUT, kv=kv, prev_kv=prev))
        return PutResult(revision=revision, prev_kv=prev if op.prev_kv else None)

    def _tombstone(self, prev: KeyValue) -> None:
        """Delete the live version ``prev`` at the new revision, detaching it from its lease."""
        tombstone = KeyValue(key=prev.key, value=b"", create_revision=0,
                             mod_revision=self._begin + 1, version=0, lease=0,
                             timestamp=self._timestamp)
        self._write(tombstone)
        if prev.lease != 0:
            self._leases.detach(self._txn, prev.lease, prev.key)
        self.events.append(Event(type=EventType.DELETE, kv=tombstone, prev_kv=prev))

    def _delete(self, op: DeleteRange) -> DeleteResult:
        # Gather first: the scan must not run over records being written.
        doomed = list(self._history.scan(self._txn, op.key, op.range_end))
        for prev in doomed:
            self._tombstone(prev)
        return DeleteResult(revision=self.revision, deleted=len(doomed),
                            prev_kvs=tuple(doomed) if op.prev_kv else ())

    def _holds(self, cmp: Compare) -> bool:
        kvs = list(self._history.scan(self._txn, cmp.key, cmp.range_end))
        if not kvs:
            # etcd: a missing key has version/revisions/lease 0, and no value
            # at all, so every comparison of its value fails.
            if cmp.target is CompareTarget.VALUE:
                return False
            return _satisfies(cmp.op, 0, cmp.value)
        return all(_satisfies(cmp.op, _field(kv, cmp.target), cmp.value) for kv in kvs)

    def _txn_command(self, txn: Txn) -> TxnResult:
        succeeded = all(self._holds(cmp) for cmp in txn.compares)
        ops = txn.success if succeeded else txn.failure
        # Every check of the chosen branch comes before its first write.
        for op in ops:
            if isinstance(op, RangeRequest):
                check_read_revision(op.revision, current=self._begin,
                                    compact_revision=self.compact_revision)
            elif isinstance(op, Put):
                self._check_lease(op.lease)  # no op of a Txn grants or revokes one
        responses = tuple(self._txn_op(op) for op in ops)
        return TxnResult(succeeded=succeeded, revision=self.revision, responses=responses)

    def _txn_op(self, op: TxnOp) -> TxnResponse:
        if isinstance(op, Put):
            return self._put(op)
        if isinstance(op, DeleteRange):
            return self._delete(op)
        # Reads see the writes of the ops before them (as in etcd).
        return read_range(self._history, self._txn, op, current=self.revision)

    def _lease_grant(self, cmd: LeaseGrant) -> LeaseGrantResult:
        if self._leases.exists(self._txn, cmd.id):
            raise InvalidArgument(f"lease {cmd.id} already exists", lease=cmd.id)
        self._leases.grant(self._txn, cmd.id, cmd.ttl)
        return LeaseGrantResult(id=cmd.id, ttl=cmd.ttl)

    def _lease_revoke(self, cmd: LeaseRevoke) -> LeaseRevokeResult:
        if not self._leases.exists(self._txn, cmd.id):
            raise LeaseNotFound(f"lease {cmd.id} not found", lease=cmd.id)
        # Gather first (as a DeleteRange does), in key order.
        doomed: list[KeyValue] = []
        for key in self._leases.keys(self._txn, cmd.id):
            kv = self._history.get(self._txn, key)
            if kv is None or kv.lease != cmd.id:
                raise StorageError(f"lease {cmd.id} holds key {key[:80]!r}, which is not "
                                   f"attached to it")
            doomed.append(kv)
        for prev in doomed:
            self._tombstone(prev)
        self._leases.remove(self._txn, cmd.id)
        return LeaseRevokeResult(revision=self.revision, deleted=len(doomed))

    def _compact(self, cmd: Compact) -> CompactResult:
        if cmd.revision <= self.compact_revision:
            raise Compacted(compact_revision=self.compact_revision)
        if cmd.revision > self._begin:
            raise InvalidArgument(f"future revision {cmd.revision} "
                                  f"(current revision {self._begin})")
        self._history.compact(self._txn, cmd.revision)
        self.compact_revision = cmd.revision
        return CompactResult(revision=self._begin, compact_revision=cmd.revision)
