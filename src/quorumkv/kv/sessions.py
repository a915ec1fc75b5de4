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

Batching. The store applies a batch of entries in one LMDB transaction,
through one :class:`SessionBatch`: it keeps each client's session as the
batch has it so far, and writes a client's session row and idleness key
once, when the batch flushes (before a sweep, which reads the index, and
before the transaction commits), rather than at every write. Outcome
records go straight to LMDB. What the sub-database holds after an entry is
a function of the entries applied, not of how they were batched: a
leader's batches differ from a follower's, and the digest covers this table.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

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


class _Client(NamedTuple):
    # A tuple: one is built and compared per write.
    last_active: int
    highest: int


# One struct call per key rather than a to_bytes per integer: several keys per write.
_ONE_INT = struct.Struct(">cQ")
_TWO_INTS = struct.Struct(">cQQ")


def _int(value: int) -> bytes:
    return value.to_bytes(_INT_SIZE, "big")


def _session_key(client_id: int) -> bytes:
    return _ONE_INT.pack(_SESSION, client_id)


def _record_key(client_id: int, seq: int) -> bytes:
    return _TWO_INTS.pack(_RECORD, client_id, seq)


def _idle_key(last_active: int, client_id: int) -> bytes:
    return _TWO_INTS.pack(_IDLE, last_active, client_id)


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
    """The ``sessions`` sub-database, through the caller's transaction: sweeps and reads
    here, a batch's writes through :meth:`batch`."""

    def __init__(self, db: lmdb._Database, policy: SessionPolicy) -> None:
        self.db = db
        self.policy = policy

    def batch(self, txn: Txn) -> SessionBatch:
        """The table as the writes of one batch in ``txn`` see and change it."""
        return SessionBatch(self, txn)

    def expire(self, txn: Txn, *, now: int) -> int:
        """Drop every session idle for more than the TTL at clock ``now``; return how many.

        Walks the idleness index from the oldest, so it reads only the
        sessions it drops (and one more). An open :class:`SessionBatch` on
        ``txn`` must be flushed first (its :meth:`SessionBatch.expire` does).
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
            self.forget_records(txn, client_id, below=_EVERY_SEQ)
        return len(doomed)

    def forget_records(self, txn: Txn, client_id: int, *, below: int) -> None:
        """Drop the client's recorded outcomes of seqs under ``below``."""
        if below <= 0:
            return
        cur = txn.cursor(self.db)
        prefix = _RECORD + _int(client_id)
        end = prefix + _int(below)
        # Keys are fixed-size, so everything in [prefix, end) is this client's.
        while cur.set_range(prefix) and cur.key() < end:
            cur.delete()

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


_SLIDE_DELETES = 8
"""A window sliding up by at most this many seqs deletes the records that fall out of it
one by one; a longer jump walks the client's records instead."""


class SessionBatch:
    """The session table through one write transaction, for the entries of one batch.

    Each client's session is read from LMDB once per batch and then kept
    here; its row and idleness key are written by :meth:`flush`, which
    must run before anything else reads the ``sessions`` sub-database
    through the transaction and before it commits. Outcome records are
    read and written directly. Discard the batch if the transaction aborts.
    """

    __slots__ = ("_clients", "_db", "_stored", "_table", "_txn", "_window")

    def __init__(self, table: SessionTable, txn: Txn) -> None:
        self._table = table
        self._db = table.db
        self._txn = txn
        self._window = table.policy.window
        self._clients: dict[int, _Client | None] = {}
        """Every client this batch looked at: its session as of the writes so far."""
        self._stored: dict[int, _Client | None] = {}
        """For each client changed since the last flush, its session as LMDB holds it."""

    def _client(self, client_id: int) -> _Client | None:
        try:
            return self._clients[client_id]
        except KeyError:
            pass
        data = self._txn.get(_session_key(client_id), db=self._db)
        client = None if data is None else _decode_client(data)
        self._clients[client_id] = client
        return client

    def recorded(self, client_id: int, seq: int) -> RecordedOutcome | None:
        """What write ``seq`` of the client did, or None if it is new.

        Raises SeqTooOld if the write is too old to tell: below the
        client's window, where outcomes are no longer kept.
        """
        client = self._client(client_id)
        if client is None:
            return None
        data = self._txn.get(_record_key(client_id, seq), db=self._db)
        if data is not None:
            return decode_outcome(data)
        if seq <= client.highest - self._window:
            raise SeqTooOld(
                f"write {seq} of client {client_id} is too old to be deduplicated: only the "
                f"outcomes of its latest {self._window} writes are kept (the latest is "
                f"{client.highest}), so whether it was applied is unknown",
                client_id=client_id, seq=seq, highest_seq=client.highest)
        return None

    def note(self, client_id: int, seq: int, *, now: int,
             outcome: RecordedOutcome | None = None) -> None:
        """The client sent write ``seq`` at clock ``now``; record its ``outcome`` if given.

        Any write, a duplicate or a refused one too, keeps the session alive.
        Recording a seq above the client's highest slides its window up and
        forgets the outcomes that fall out of it.
        """
        old = self._client(client_id)
        if old is None:
            last_active, highest = now, 0
        else:
            last_active, highest = max(old.last_active, now), old.highest
        if outcome is not None:
            self._txn.put(_record_key(client_id, seq), encode_outcome(outcome), db=self._db)
            if seq > highest:
                self._slide(client_id, highest, seq)
                highest = seq
        client = _Client(last_active, highest)
        if client == old:
            return
        if client_id not in self._stored:
            self._stored[client_id] = old
        self._clients[client_id] = client

    def _slide(self, client_id: int, highest: int, new_highest: int) -> None:
        """Forget the client's outcomes that fall out of its window as its highest seq
        goes from ``highest`` to ``new_highest``."""
        window = self._window
        # Every record of the client is in (highest - window, highest]: an outcome is
        # recorded only for a seq in the window (recorded() refuses older ones), and the
        # group's one policy fixes the window. So the ones to drop are in
        # (highest - window, new_highest - window]: usually one known key, as the window
        # moves up by one, which costs a delete rather than a cursor walk.
        first = max(highest - window + 1, 1)
        last = new_highest - window
        if last < first:
            return
        if last - first < _SLIDE_DELETES:
            txn, db = self._txn, self._db
            for seq in range(first, last + 1):
                txn.delete(_record_key(client_id, seq), db=db)
        else:
            self._table.forget_records(self._txn, client_id, below=last + 1)

    def flush(self) -> None:
        """Write every session changed since the last flush: its row and idleness key."""
        if not self._stored:
            return
        txn, db, clients = self._txn, self._db, self._clients
        for client_id, stored in self._stored.items():
            client = clients[client_id]
            assert client is not None  # a changed session is never dropped unflushed
            if client == stored:
                continue
            txn.put(_session_key(client_id), pack([client.last_active, client.highest]),
                    db=db)
            if stored is None or stored.last_active != client.last_active:
                if stored is not None:
                    txn.delete(_idle_key(stored.last_active, client_id), db=db)
                txn.put(_idle_key(client.last_active, client_id), b"", db=db)
        self._stored.clear()

    def expire(self, *, now: int) -> int:
        """Flush, then drop every session idle for more than the TTL at clock ``now``
        (:meth:`SessionTable.expire`); return how many were dropped."""
        self.flush()
        dropped = self._table.expire(self._txn, now=now)
        if dropped:
            # The dropped ones are stale here; the rest would simply be read again.
            self._clients.clear()
        return dropped
