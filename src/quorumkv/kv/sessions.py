"""The session table: what each client's recent writes did, so that a retry applies once.

Theory of operation (thesis §6.3). A client that sends a write and hears
nothing back (a timeout, a dropped connection, a leader that crashed after
committing) cannot tell whether the write happened, so it sends it again.
Without help, Raft would then apply it twice. So every write a client
numbers (``client_id``, ``seq``) is logged as a
:class:`~quorumkv.kv.commands.Session`, and the state machine itself, not
the leader, keeps per client the outcome of its recent writes: a retry
finds the record and gets the first attempt's answer without applying
anything. Because the table is replicated state, written in the same LMDB
transaction as the data and carried by snapshots, the answer survives
leader changes and restarts.

The window. A client may pipeline, so its writes can reach the log out of
order; each client's table keeps the outcomes of its ``window`` highest
seqs: (highest - window, highest]. A seq in that range that has no record
is new and applied; one with a record is a duplicate; one at or below
``highest - window`` without a record may or may not have been applied
long ago, and is refused (SeqTooOld, an InvalidArgument: "too old to be deduplicated").
A client must therefore keep fewer than ``window`` writes in flight.

Expiry. Clients do not say goodbye, so sessions expire: each client's last
activity is the state machine's clock (``StoreState.clock``: the latest
leader timestamp applied) when it last sent a write, and a session idle for
more than ``ttl_ns`` is dropped. Every replica must drop the same sessions
at the same entry, so no replica reads its own clock: after applying an
entry whose index is a multiple of ``sweep_interval``, the store drops every
session idle at the clock. An index that keeps sessions in idleness order
makes that sweep cost the sessions it drops, not the sessions it keeps. A
client's write after its session expired starts a new session; a retry of a
write older than the TTL can thus apply again, which the TTL (10 minutes by
default, far beyond any client's retry deadline) is there to make moot.

Every replica must use the same :class:`SessionPolicy`: it decides outcomes.

Layout of the ``sessions`` sub-database (integers 8 bytes big-endian, so
LMDB's byte order is numeric order)::

    0x01 client_id                   [last_active, highest_seq]   the client's session
    0x02 client_id seq               outcome (result_codec.py)    one recorded write
    0x03 last_active client_id       b""                          sessions by idleness
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import lmdb

from quorumkv.errors import SeqTooOld, StorageError
from quorumkv.kv.history import Txn
from quorumkv.kv.packing import pack, unpack
from quorumkv.kv.result_codec import RecordedOutcome, decode_outcome, encode_outcome

_SESSION, _RECORD, _IDLE = b"\x01", b"\x02", b"\x03"
_INT_SIZE = 8
_EVERY_SEQ = 1 << 63
"""Above every seq (seqs are at most 2**63 - 1)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionPolicy:
    """How much the session table remembers. Part of the replicated state machine's
    definition: every replica of a group must use the same policy."""

    window: int = 256
    """Outcomes kept per client: its highest seqs. Bounds a client's writes in flight."""
    ttl_ns: int = 10 * 60 * 1_000_000_000
    """A session idle for longer than this (by the log's timestamps) is dropped."""
    sweep_interval: int = 128
    """Expired sessions are dropped after applying each entry whose index is a multiple
    of this: often enough to bound the table, rarely enough to cost nothing."""

    def __post_init__(self) -> None:
        for name in ("window", "ttl_ns", "sweep_interval"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"SessionPolicy.{name} must be a positive integer")


@dataclass(frozen=True, slots=True)
class _Client:
    last_active: int
    highest: int


def _int(value: int) -> bytes:
    return value.to_bytes(_INT_SIZE, "big")


def _session_key(client_id: int) -> bytes:
    return _SESSION + _int(client_id)


def _record_key(client_id: int, seq: int) -> bytes:
    return _RECORD + _int(client_id) + _int(seq)


def _idle_key(last_active: int, client_id: int) -> bytes:
    return _IDLE + _int(last_active) + _int(client_id)


def _decode_client(data: bytes) -> _Client:
    try:
        obj = unpack(data)
    except ValueError as err:
        raise StorageError(f"corrupt session record in the state machine: {err}") from err
    if (not isinstance(obj, list) or len(obj) != 2
            or any(type(x) is not int or x < 0 for x in obj)):
        raise StorageError("corrupt session record in the state machine")
    return _Client(last_active=obj[0], highest=obj[1])


class SessionTable:
    """The ``sessions`` sub-database, read and written through the caller's transaction."""

    def __init__(self, db: lmdb._Database, policy: SessionPolicy) -> None:
        self.db = db
        self.policy = policy

    def _client(self, txn: Txn, client_id: int) -> _Client | None:
        data = txn.get(_session_key(client_id), db=self.db)
        return None if data is None else _decode_client(data)

    def recorded(self, txn: Txn, client_id: int, seq: int) -> RecordedOutcome | None:
        """What write ``seq`` of the client did, or None if it is new.

        Raises SeqTooOld if the write is too old to tell: below the
        client's window, where outcomes are no longer kept.
        """
        client = self._client(txn, client_id)
        if client is None:
            return None
        data = txn.get(_record_key(client_id, seq), db=self.db)
        if data is not None:
            return decode_outcome(data)
        if seq <= client.highest - self.policy.window:
            raise SeqTooOld(
                f"write {seq} of client {client_id} is too old to be deduplicated: only the "
                f"outcomes of its latest {self.policy.window} writes are kept (the latest is "
                f"{client.highest}), so whether it was applied is unknown",
                client_id=client_id, seq=seq, highest_seq=client.highest)
        return None

    def note(self, txn: Txn, client_id: int, seq: int, *, now: int,
             outcome: RecordedOutcome | None = None) -> None:
        """The client sent write ``seq`` at clock ``now``; record its ``outcome`` if given.

        Any write, a duplicate or a refused one too, keeps the session alive.
        Recording a seq above the client's highest slides its window up and
        forgets the outcomes that fall out of it.
        """
        old = self._client(txn, client_id)
        last_active = now if old is None else max(old.last_active, now)
        highest = 0 if old is None else old.highest
        if outcome is not None:
            txn.put(_record_key(client_id, seq), encode_outcome(outcome), db=self.db)
            if seq > highest:
                highest = seq
                self._forget_records(txn, client_id, below=highest - self.policy.window + 1)
        client = _Client(last_active=last_active, highest=highest)
        if client == old:
            return
        txn.put(_session_key(client_id), pack([client.last_active, client.highest]), db=self.db)
        if old is None or old.last_active != last_active:
            if old is not None:
                txn.delete(_idle_key(old.last_active, client_id), db=self.db)
            txn.put(_idle_key(last_active, client_id), b"", db=self.db)

    def _forget_records(self, txn: Txn, client_id: int, *, below: int) -> None:
        """Drop the client's recorded outcomes of seqs under ``below``."""
        if below <= 0:
            return
        cur = txn.cursor(self.db)
        prefix = _RECORD + _int(client_id)
        end = prefix + _int(below)
        # Keys are fixed-size, so everything in [prefix, end) is this client's.
        while cur.set_range(prefix) and cur.key() < end:
            cur.delete()

    def expire(self, txn: Txn, *, now: int) -> int:
        """Drop every session idle for more than the TTL at clock ``now``; return how many.

        Walks the idleness index from the oldest, so it reads only the
        sessions it drops (and one more).
        """
        cutoff = now - self.policy.ttl_ns
        if cutoff <= 0:
            return 0
        cur = txn.cursor(self.db)
        doomed: list[tuple[bytes, int]] = []
        found = cur.set_range(_IDLE)
        while found:
            key = cur.key()
            if not key.startswith(_IDLE):
                break
            if int.from_bytes(key[1:1 + _INT_SIZE], "big") >= cutoff:
                break
            doomed.append((key, int.from_bytes(key[1 + _INT_SIZE:], "big")))
            found = cur.next()
        # Deleting after the scan keeps the cursor's position well defined.
        for idle_key, client_id in doomed:
            txn.delete(idle_key, db=self.db)
            txn.delete(_session_key(client_id), db=self.db)
            self._forget_records(txn, client_id, below=_EVERY_SEQ)
        return len(doomed)

    def clients(self, txn: Txn) -> int:
        """Sessions held."""
        cur = txn.cursor(self.db)
        count = 0
        found = cur.set_range(_SESSION)
        while found and cur.key().startswith(_SESSION):
            count += 1
            found = cur.next()
        return count

    def items(self, txn: Txn) -> Iterator[tuple[bytes, bytes]]:
        """Every record, in key order: what the store's digest covers."""
        yield from txn.cursor(self.db)
