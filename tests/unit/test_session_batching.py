"""The session table's batching (sessions.py) changes nothing a replica can observe.

Replicas split the same committed entries into different batches (a leader
applies what it committed, a follower what it received), and the session
table keeps per-batch state, written once per batch. Whatever the split,
the outcomes and every record in every sub-database after entry N must be
the same, and the same as the table's documented layout, written as if each
write were applied on its own: existing stores and snapshots hold that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack  # type: ignore[import-untyped, unused-ignore]
from hypothesis import event, given, settings
from hypothesis import strategies as st

from quorumkv.errors import RequestError, SeqTooOld
from quorumkv.kv import (
    Applied,
    Command,
    KVStore,
    Outcome,
    Put,
    PutResult,
    Session,
    SessionPolicy,
)
from quorumkv.kv.commands import Authorized
from quorumkv.kv.result_codec import decode_outcome, encode_outcome

POLICY = SessionPolicy(window=3, ttl_ns=1_000, sweep_interval=3)

Entry = tuple[int, int, Command | None]
Contents = dict[bytes, list[tuple[bytes, bytes]]]


def pack(obj: object) -> bytes:
    data = msgpack.packb(obj, use_bin_type=True)
    assert isinstance(data, bytes)
    return data


def i64(value: int) -> bytes:
    return value.to_bytes(8, "big")


@st.composite
def logs(draw: st.DrawFn) -> list[Command | None]:
    """Entries as several clients send them: mostly their next seq, some retries, some
    too old, some jumps ahead; log time that sometimes leaps past the TTL or lags (a
    leader with a slower clock); no-ops and writes outside any session between."""
    highest: dict[int, int] = {}
    clock = 1_000
    out: list[Command | None] = []
    for _ in range(draw(st.integers(1, 60))):
        clock += draw(st.sampled_from([0, 1, 7, 300, 999, 1_001, 2_500]))
        timestamp = max(0, clock - draw(st.sampled_from([0, 0, 0, 5, 400])))
        kind = draw(st.sampled_from(["session"] * 6 + ["noop", "plain", "authorized"]))
        if kind == "noop":
            out.append(None)
            continue
        put = Put(key=b"k%d" % draw(st.integers(0, 4)), value=b"v%d" % len(out),
                  prev_kv=draw(st.booleans()))
        if kind == "plain":
            out.append(Put(key=put.key, value=put.value, timestamp=timestamp))
            continue
        client = draw(st.integers(1, 4))
        top = highest.get(client, 0)
        seq = max(1, top + draw(st.sampled_from([1, 1, 1, 2, 5, 12, 0, -1, -2, -3, -6])))
        highest[client] = max(top, seq)
        cmd: Command = Session(client_id=client, seq=seq, command=put, timestamp=timestamp)
        out.append(Authorized(user=None, command=cmd) if kind == "authorized" else cmd)
    return out


def contents(store: KVStore) -> Contents:
    """Every record of every sub-database (the layout is the point, hence the internals)."""
    dbs = {b"kv": store._history.db, b"meta": store._meta, b"sessions": store._sessions.db}
    with store._live_env().begin() as txn:
        assert [name for name, _ in txn.cursor()] == sorted(dbs)
        return {name: list(txn.cursor(db=db)) for name, db in dbs.items()}


def same(a: Outcome, b: Outcome) -> bool:
    if isinstance(a, RequestError) or isinstance(b, RequestError):
        return (type(a) is type(b) and isinstance(a, RequestError)
                and isinstance(b, RequestError)
                and (a.message, a.details) == (b.message, b.details))
    return a == b


@dataclass
class Reference:
    """The session table written write by write, as sessions.py documents it: what
    stores hold and what every replica must keep holding."""

    policy: SessionPolicy
    clock: int = 0
    clients: dict[int, tuple[int, int]] = field(default_factory=dict)
    """client -> (last_active, highest seq)"""
    records: dict[tuple[int, int], bytes] = field(default_factory=dict)

    def entry(self, index: int, payload: Command | None, outcome: Outcome) -> None:
        """Follow entry ``index``, checking the store's ``outcome`` against the table."""
        if isinstance(payload, Authorized):
            payload = payload.command
        if payload is not None:
            self.clock = max(self.clock, payload.timestamp)
        if isinstance(payload, Session):
            self._write(payload, outcome)
        if index % self.policy.sweep_interval == 0:
            cutoff = self.clock - self.policy.ttl_ns
            for client, (last_active, _) in list(self.clients.items()):
                if last_active < cutoff:
                    event("a session expired")
                    del self.clients[client]
                    for key in [k for k in self.records if k[0] == client]:
                        del self.records[key]

    def _write(self, session: Session, outcome: Outcome) -> None:
        client, seq, window = session.client_id, session.seq, self.policy.window
        known = self.clients.get(client)
        last_active, highest = known if known is not None else (self.clock, 0)
        last_active = max(last_active, self.clock)
        if known is not None and (client, seq) in self.records:
            event("a retry answered from its record")
            recorded = decode_outcome(self.records[client, seq])
            if isinstance(recorded, RequestError):
                assert same(outcome, recorded)
            else:
                assert isinstance(outcome, Applied)
                assert (outcome.result, outcome.events) == (recorded, ())
        elif known is not None and seq <= highest - window:
            event("a retry too old to deduplicate")
            assert isinstance(outcome, SeqTooOld)
        else:
            if isinstance(outcome, Applied):
                assert outcome.result is not None
                self.records[client, seq] = encode_outcome(outcome.result)
            else:
                assert isinstance(outcome, RequestError)
                self.records[client, seq] = encode_outcome(outcome)
            if seq > highest:
                highest = seq
                for key in [k for k in self.records
                            if k[0] == client and k[1] <= highest - window]:
                    del self.records[key]
        self.clients[client] = (last_active, highest)

    def table(self) -> list[tuple[bytes, bytes]]:
        """The ``sessions`` sub-database, in key order."""
        rows = [(b"\x01" + i64(client), pack([last_active, highest]))
                for client, (last_active, highest) in self.clients.items()]
        rows += [(b"\x02" + i64(client) + i64(seq), record)
                 for (client, seq), record in self.records.items()]
        rows += [(b"\x03" + i64(last_active) + i64(client), b"")
                 for client, (last_active, _) in self.clients.items()]
        return sorted(rows)


@settings(max_examples=150, deadline=None)
@given(logs(), st.lists(st.integers(1, 12), min_size=1, max_size=60))
def test_the_split_into_batches_changes_nothing(payloads: list[Command | None],
                                                sizes: list[int]) -> None:
    entries: list[Entry] = [(i, 1, p) for i, p in enumerate(payloads, start=1)]
    reference = Reference(POLICY)
    with KVStore.open_temporary(sessions=POLICY) as single, \
            KVStore.open_temporary(sessions=POLICY) as batched:
        start, turn = 0, 0
        while start < len(entries):
            size = sizes[turn % len(sizes)]
            batch = entries[start:start + size]
            start, turn = start + size, turn + 1
            together = batched.apply_batch(batch)
            alone = [single.apply_batch([entry])[0] for entry in batch]
            assert all(same(a, b) for a, b in zip(together, alone, strict=True))
            for (index, _, payload), outcome in zip(batch, alone, strict=True):
                reference.entry(index, payload, outcome)
            # After every batch, not only at the end: a snapshot may be taken then.
            assert contents(batched) == contents(single)
            assert contents(single)[b"sessions"] == reference.table()
            assert batched.digest() == single.digest()
            assert batched.session_count() == single.session_count() == len(reference.clients)
        assert batched.applied_index == single.applied_index == len(entries)
        assert batched.clock == single.clock == reference.clock


def test_a_sweep_inside_a_batch_sees_the_activity_before_it() -> None:
    # Client 1, last active at 1000 as of the first batch, writes again at index 3 in the
    # second; the sweep after index 3 (cutoff 2100 - 1000) must see that activity, not the
    # stored 1000, and drop client 2 only.
    def write(client: int, seq: int, key: bytes, timestamp: int) -> Session:
        return Session(client_id=client, seq=seq, command=Put(key=key, value=b""),
                       timestamp=timestamp)

    entries: list[Entry] = [(1, 1, write(1, 1, b"a", 1_000)), (2, 1, write(2, 1, b"b", 1_050)),
                            (3, 1, write(1, 1, b"a", 2_100)), (4, 1, write(1, 2, b"c", 2_200))]
    with KVStore.open_temporary(sessions=POLICY) as single, \
            KVStore.open_temporary(sessions=POLICY) as split, \
            KVStore.open_temporary(sessions=POLICY) as whole:
        for entry in entries:
            single.apply_batch([entry])
        split.apply_batch(entries[:2])
        split.apply_batch(entries[2:])
        whole.apply_batch(entries)
        assert split.session_count() == whole.session_count() == 1
        assert contents(split) == contents(whole) == contents(single)
        assert contents(whole)[b"sessions"] == [
            (b"\x01" + i64(1), pack([2_200, 2])),
            (b"\x02" + i64(1) + i64(1), encode_outcome(PutResult(revision=1))),
            (b"\x02" + i64(1) + i64(2), encode_outcome(PutResult(revision=3))),
            (b"\x03" + i64(2_200) + i64(1), b""),
        ]


def test_a_window_that_jumps_forgets_everything_below_it() -> None:
    # The window moves by one (one known key) or jumps (a walk over the client's records).
    with KVStore.open_temporary(sessions=POLICY) as store:
        seqs = [1, 2, 3, 4, 30, 31, 29, 100]
        store.apply_batch([
            (i, 1, Session(client_id=5, seq=seq, command=Put(key=b"k", value=b""),
                           timestamp=i))
            for i, seq in enumerate(seqs, start=1)])
        kept = [key for key, _ in contents(store)[b"sessions"] if key[:1] == b"\x02"]
        assert kept == [b"\x02" + i64(5) + i64(100)]
