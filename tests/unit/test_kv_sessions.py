"""Exactly-once writes (thesis §6.3): the session table, its window, its expiry, its records.

A client's numbered write reaches the store as a Session; applying the same
(client_id, seq) again must answer what the first application answered and
change nothing, on every replica alike, across restarts and snapshots.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from quorumkv.errors import Compacted, InvalidArgument, RequestError, StorageError
from quorumkv.kv import (
    ALL_KEYS,
    Applied,
    Command,
    Compact,
    CompactResult,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    DeleteResult,
    KeyValue,
    KVStore,
    Outcome,
    Put,
    PutResult,
    RangeRequest,
    RangeResult,
    Result,
    Session,
    SessionPolicy,
    Txn,
    TxnResult,
    Write,
    check_command,
    decode_command,
    encode_command,
    validate,
)
from quorumkv.kv.result_codec import decode_outcome, decode_result, encode_outcome, encode_result

SMALL = SessionPolicy(window=4, ttl_ns=1_000, sweep_interval=4)
EVERYTHING = RangeRequest(key=b"\x00", range_end=ALL_KEYS)


def pack(obj: Any) -> bytes:
    data = msgpack.packb(obj, use_bin_type=True)
    assert isinstance(data, bytes)
    return data


def session(client_id: int, seq: int, cmd: Write, timestamp: int = 0) -> Session:
    return Session(client_id=client_id, seq=seq, command=cmd, timestamp=timestamp)


class Log:
    """Feeds one store consecutive log entries, as a server does."""

    def __init__(self, store: KVStore) -> None:
        self.store = store
        self.index = store.applied_index

    def apply(self, payload: Command | None) -> Outcome:
        self.index += 1
        return self.store.apply_batch([(self.index, 1, payload)])[0]

    def applied(self, payload: Command) -> Applied:
        outcome = self.apply(payload)
        assert isinstance(outcome, Applied), outcome
        return outcome

    def failed(self, payload: Command) -> RequestError:
        outcome = self.apply(payload)
        assert isinstance(outcome, RequestError), outcome
        return outcome


def live(store: KVStore) -> tuple[int, int, RangeResult]:
    return store.revision, store.compact_revision, store.range(EVERYTHING)


@pytest.fixture
def log() -> Iterator[Log]:
    with KVStore.open_temporary(sessions=SMALL) as store:
        yield Log(store)


# -- a repeat applies once ---------------------------------------------------


def test_a_repeated_write_applies_once_and_answers_the_same(log: Log) -> None:
    log.applied(Put(key=b"k", value=b"before"))
    write = session(7, 1, Put(key=b"k", value=b"after", prev_kv=True), timestamp=10)
    first = log.applied(write)
    state = live(log.store)
    again = log.applied(write)
    assert again.result == first.result
    assert isinstance(first.result, PutResult) and first.result.prev_kv is not None
    assert first.result.prev_kv.value == b"before"
    assert first.events and not again.events  # watchers see the change once
    assert live(log.store) == state
    kv = log.store.get(b"k")
    assert kv is not None and kv.version == 2
    assert log.store.applied_index == 3


SETUP = [Put(key=b"a", value=b"1"), Put(key=b"b", value=b"2"), Put(key=b"a", value=b"3"),
         Put(key=b"c", value=b"4")]

KINDS: list[Write] = [
    Put(key=b"a", value=b"new", prev_kv=True),
    DeleteRange(key=b"a", range_end=b"c", prev_kv=True),
    Txn(compares=(Compare(key=b"a", target=CompareTarget.VALUE, op=CompareOp.EQUAL,
                          value=b"3"),),
        success=(RangeRequest(key=b"a", range_end=ALL_KEYS, limit=2),
                 Put(key=b"b", value=b"txn", prev_kv=True),
                 DeleteRange(key=b"c", prev_kv=True),
                 RangeRequest(key=b"a", range_end=ALL_KEYS, revision=2))),
    Txn(compares=(Compare(key=b"a", target=CompareTarget.VERSION, op=CompareOp.GREATER,
                          value=5),),
        failure=(RangeRequest(key=b"b", keys_only=True),)),
    Compact(revision=3),
]


@pytest.mark.parametrize("cmd", KINDS, ids=lambda c: type(c).__name__)
def test_every_kind_of_write_repeats_its_result(log: Log, cmd: Write) -> None:
    for setup in SETUP:
        log.applied(setup)
    first = log.applied(session(1, 1, cmd))
    state = live(log.store)
    for _ in range(2):
        assert log.applied(session(1, 1, cmd)).result == first.result
    assert live(log.store) == state


@pytest.mark.parametrize("cmd", [
    Compact(revision=9),                                              # the future
    Txn(success=(RangeRequest(key=b"a", revision=1), Put(key=b"x", value=b""))),  # compacted
], ids=["future-compact", "compacted-read"])
def test_a_repeated_failure_repeats_the_error(log: Log, cmd: Write) -> None:
    for setup in SETUP:
        log.applied(setup)
    log.applied(Compact(revision=2))
    first = log.failed(session(1, 1, cmd))
    state = live(log.store)
    again = log.failed(session(1, 1, cmd))
    assert (type(again), again.message, again.details) == (
        type(first), first.message, first.details)
    if isinstance(first, Compacted):
        assert isinstance(again, Compacted) and again.compact_revision == 2
    assert live(log.store) == state


def test_writes_without_a_session_are_not_deduplicated(log: Log) -> None:
    log.applied(Put(key=b"k", value=b"v"))
    log.applied(Put(key=b"k", value=b"v"))
    kv = log.store.get(b"k")
    assert kv is not None and kv.version == 2


def test_clients_are_independent(log: Log) -> None:
    a = log.applied(session(1, 1, Put(key=b"k", value=b"a")))
    b = log.applied(session(2, 1, Put(key=b"k", value=b"b")))
    assert a.result != b.result
    assert log.applied(session(1, 1, Put(key=b"k", value=b"a"))).result == a.result
    kv = log.store.get(b"k")
    assert kv is not None and (kv.value, kv.version) == (b"b", 2)
    assert log.store.session_count() == 2


# -- the window --------------------------------------------------------------


def put_n(seq: int) -> Put:
    return Put(key=b"k%d" % seq, value=b"%d" % seq)


def test_seqs_out_of_order_within_the_window(log: Log) -> None:
    results = {seq: log.applied(session(1, seq, put_n(seq))).result for seq in (3, 1, 4, 2)}
    assert log.store.revision == 4
    for seq in (1, 2, 3, 4):
        assert log.applied(session(1, seq, put_n(seq))).result == results[seq]
    assert log.store.revision == 4


def test_a_seq_below_the_window_is_refused(log: Log) -> None:
    for seq in (1, 2, 3, 6):  # the window is now (2, 6]
        log.applied(session(1, seq, put_n(seq)))
    assert log.applied(session(1, 5, put_n(5))).result == PutResult(revision=5)  # new, in window
    assert log.applied(session(1, 3, put_n(3))).result == PutResult(revision=3)  # still recorded
    state = live(log.store)
    for seq in (2, 1):  # applied, but their records fell out of the window
        err = log.failed(session(1, seq, put_n(seq)))
        assert isinstance(err, InvalidArgument) and "too old to be deduplicated" in err.message
    assert isinstance(log.failed(session(1, 1, put_n(1))), InvalidArgument)
    assert live(log.store) == state
    # Another client's window is its own.
    assert isinstance(log.apply(session(2, 1, put_n(1))), Applied)


def test_the_table_stays_bounded_per_client(tmp_path: Path) -> None:
    with KVStore.open(tmp_path / "kv", sessions=SMALL) as store:
        log = Log(store)
        for seq in range(1, 101):
            log.applied(session(9, seq, put_n(seq % 3)))
    env = lmdb.open(str(tmp_path / "kv"), max_dbs=3)
    with env.begin() as txn:
        entries = txn.stat(env.open_db(b"sessions", txn=txn))["entries"]
    env.close()
    assert entries == SMALL.window + 2  # the outcomes, the session, its idleness entry


# -- expiry ------------------------------------------------------------------


def test_idle_sessions_expire_at_sweep_indexes_by_log_time(log: Log) -> None:
    # Sweeps come after entries 4, 8, ...; SMALL's TTL is 1000 ns of log time.
    log.applied(session(1, 1, put_n(1), timestamp=10_000))    # 1
    log.applied(session(2, 1, put_n(2), timestamp=10_500))    # 2
    log.applied(Put(key=b"plain", value=b"", timestamp=11_001))  # 3: client 1 idle for 1001
    assert log.store.session_count() == 2                     # ...but no sweep yet
    log.apply(None)                                           # 4: the sweep drops client 1
    assert log.store.session_count() == 1
    assert log.store.clock == 11_001
    revision = log.store.revision
    # Client 1 is a stranger again: its old seq is new; client 2 still deduplicates.
    assert log.applied(session(1, 1, put_n(1), timestamp=11_002)).result == PutResult(
        revision=revision + 1)
    assert log.applied(session(2, 1, put_n(2), timestamp=11_003)).result == PutResult(
        revision=2)
    assert log.store.session_count() == 2


def test_activity_and_duplicates_keep_a_session_alive(log: Log) -> None:
    log.applied(session(1, 1, put_n(1), timestamp=10_000))    # 1
    log.applied(session(1, 1, put_n(1), timestamp=10_900))    # 2: a retry is activity
    log.applied(Put(key=b"x", value=b"", timestamp=11_500))   # 3: idle for 600
    log.apply(None)                                           # 4: sweep
    assert log.store.session_count() == 1
    log.applied(Put(key=b"x", value=b"", timestamp=12_000))   # 5: idle for 1100
    assert log.store.session_count() == 1
    for _ in range(3):                                        # 6, 7, 8: sweep after 8
        log.apply(None)
    assert log.store.session_count() == 0


def test_the_clock_never_goes_back(log: Log) -> None:
    log.applied(session(1, 1, put_n(1), timestamp=10_000))    # 1
    log.applied(Put(key=b"x", value=b"", timestamp=20_000))   # 2: a leader with a fast clock
    log.applied(session(2, 1, put_n(2), timestamp=15_000))    # 3: its successor, slower
    assert log.store.clock == 20_000
    log.apply(None)                                           # 4: sweep at 20_000
    assert log.store.session_count() == 1                     # 2 was active at 20_000


def test_expiry_is_the_same_on_every_replica() -> None:
    entries: list[tuple[int, int, Command | None]] = []
    for i in range(1, 200):
        client = 1 + i % 7
        cmd: Command | None = session(client, i, put_n(i % 5), timestamp=100 * i * client)
        entries.append((i, 1, None if i % 11 == 0 else cmd))
    with KVStore.open_temporary(sessions=SMALL) as one, \
            KVStore.open_temporary(sessions=SMALL) as other:
        for entry in entries:
            one.apply_batch([entry])
        other.apply_batch(entries)
        assert one.digest() == other.digest()
        assert one.session_count() == other.session_count()
        assert 0 < one.session_count() < 7


# -- persistence -------------------------------------------------------------


def test_the_table_survives_a_restart(tmp_path: Path) -> None:
    write = session(5, 1, Put(key=b"k", value=b"v", prev_kv=True), timestamp=1)
    with KVStore.open(tmp_path / "kv", sessions=SMALL) as store:
        first = Log(store).applied(write)
        digest = store.digest()
    with KVStore.open(tmp_path / "kv", create=False, sessions=SMALL) as store:
        assert store.digest() == digest
        assert Log(store).applied(write).result == first.result
        assert store.revision == 1


def test_the_table_travels_in_snapshots(tmp_path: Path) -> None:
    write = session(5, 3, Txn(success=(Put(key=b"k", value=b"v"),
                                       RangeRequest(key=b"k"))), timestamp=1)
    with KVStore.open_temporary(sessions=SMALL) as leader, \
            KVStore.open_temporary(sessions=SMALL) as follower:
        first = Log(leader).applied(write)
        leader.snapshot_to(tmp_path / "snap")
        follower.restore_from(tmp_path / "snap")
        assert follower.digest() == leader.digest()
        assert Log(follower).applied(write).result == first.result
        assert follower.revision == 1


def test_the_digest_covers_the_table() -> None:
    with KVStore.open_temporary() as a, KVStore.open_temporary() as b:
        Log(a).applied(session(1, 1, Put(key=b"k", value=b"v")))
        Log(b).applied(session(2, 1, Put(key=b"k", value=b"v")))
        assert live(a) == live(b)
        assert a.digest() != b.digest()


def test_a_store_without_a_session_table_is_upgraded(tmp_path: Path) -> None:
    cmds = [Put(key=b"k", value=b"v"), Put(key=b"k", value=b"w")]
    with KVStore.open(tmp_path / "kv") as store, KVStore.open_temporary() as fresh:
        for i, cmd in enumerate(cmds, start=1):
            store.apply(i, 1, cmd)
            fresh.apply(i, 1, cmd)
        expected = fresh.digest()
    # What an older version wrote: format 1, a state of four fields, no sessions.
    env = lmdb.open(str(tmp_path / "kv"), max_dbs=3)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"sessions", txn=txn), delete=True)
        meta = env.open_db(b"meta", txn=txn)
        txn.put(b"format", pack(1), db=meta)
        txn.put(b"state", pack([2, 0, 2, 1]), db=meta)
    env.close()
    with KVStore.open(tmp_path / "kv") as store:
        assert (store.revision, store.applied_index, store.clock) == (2, 2, 0)
        assert store.digest() == expected
        log = Log(store)
        first = log.applied(session(1, 1, Put(key=b"k", value=b"x")))
        assert log.applied(session(1, 1, Put(key=b"k", value=b"x"))).result == first.result
    with KVStore.open(tmp_path / "kv", create=False) as store:
        assert store.revision == 3


# -- the log encoding of sessions --------------------------------------------


def test_a_session_round_trips_through_the_log_encoding() -> None:
    cmd = session(2**63 - 1, 12, Txn(success=(Put(key=b"k", value=b"v"),)), timestamp=99)
    data = encode_command(cmd)
    assert decode_command(data) == cmd
    assert encode_command(decode_command(data)) == data


def test_a_numbered_write_is_encoded_as_a_session() -> None:
    put = Put(key=b"k", value=b"v", timestamp=42)
    assert decode_command(encode_command(put, client_id=3, seq=8)) == session(
        3, 8, Put(key=b"k", value=b"v"), timestamp=42)
    assert decode_command(encode_command(put)) == put
    with pytest.raises(InvalidArgument, match="only a key-value write"):
        encode_command(session(1, 1, Put(key=b"k", value=b"")), client_id=1, seq=1)
    with pytest.raises(InvalidArgument, match="seq"):
        encode_command(put, client_id=3, seq=0)


sessions = st.builds(session, st.integers(1, 2**63 - 1), st.integers(1, 2**63 - 1),
                    st.deferred(lambda: plain_writes), st.integers(0, 2**63 - 1))


@settings(max_examples=100)
@given(sessions)
def test_sessions_round_trip(cmd: Session) -> None:
    assert decode_command(encode_command(cmd)) == cmd


@settings(max_examples=200)
@given(sessions.map(encode_command).flatmap(
    lambda d: st.tuples(st.just(d), st.integers(0, len(d)), st.binary(max_size=3))
).map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + len(t[2]):]))
def test_damaged_sessions_decode_to_a_command_or_invalid_argument(data: bytes) -> None:
    try:
        cmd = decode_command(data)
    except InvalidArgument:
        return
    check_command(cmd)


def test_clients_do_not_send_sessions() -> None:
    with pytest.raises(InvalidArgument, match="client_id and seq"):
        validate(session(1, 1, Put(key=b"k", value=b"")))


PUT = [1, b"k", b"v", 0, False, 0]


@pytest.mark.parametrize("fields", [
    [6, 1, 1, PUT],                                  # no timestamp
    [6, 0, 1, PUT, 0],                               # client 0 means "no session"
    [6, 1, 0, PUT, 0],                               # seqs start at 1
    [6, -1, 1, PUT, 0],
    [6, 2**63, 1, PUT, 0],
    [6, 1, 1, [1, b"k", b"v", 0, False, 5], 0],      # the command's own timestamp
    [6, 1, 1, [6, 1, 1, PUT, 0], 0],                 # a session in a session
    [6, 1, 1, [5, b"k", None, 0, 0, False, False], 0],  # a read
    [3, [], [[6, 1, 1, PUT, 0]], [], 0],             # a session in a txn
    [6, 1, True, PUT, 0],
])
def test_malformed_sessions_are_invalid_arguments(fields: list[Any]) -> None:
    with pytest.raises(InvalidArgument):
        decode_command(pack(fields))


def test_a_malformed_session_is_refused_at_apply(log: Log) -> None:
    assert isinstance(log.apply(session(0, 1, Put(key=b"k", value=b""))), InvalidArgument)
    assert log.store.session_count() == 0
    assert log.store.revision == 0


# -- the stored encoding of results ------------------------------------------

ints = st.integers(0, 2**63 - 1)
kvs = st.builds(KeyValue, key=st.binary(min_size=1, max_size=6), value=st.binary(max_size=6),
                create_revision=ints, mod_revision=ints, version=ints, lease=ints,
                timestamp=ints)
kv_tuples = st.lists(kvs, max_size=3).map(tuple)
put_results = st.builds(PutResult, revision=ints, prev_kv=st.none() | kvs)
delete_results = st.builds(DeleteResult, revision=ints, deleted=ints, prev_kvs=kv_tuples)
range_results = st.builds(RangeResult, kvs=kv_tuples, count=ints, more=st.booleans(),
                          revision=ints)
txn_results = st.builds(TxnResult, succeeded=st.booleans(), revision=ints,
                        responses=st.lists(put_results | delete_results | range_results,
                                           max_size=4).map(tuple))
compact_results = st.builds(CompactResult, revision=ints, compact_revision=ints)
results: st.SearchStrategy[Result] = st.one_of(put_results, delete_results, txn_results,
                                               compact_results)


@settings(max_examples=200)
@given(results)
def test_results_round_trip(result: Result) -> None:
    assert decode_result(encode_result(result)) == result
    assert decode_outcome(encode_outcome(result)) == result


@pytest.mark.parametrize("err", [
    Compacted(compact_revision=17),
    InvalidArgument("future revision 9 (current revision 4)"),
    InvalidArgument("with details", seq=3, what="x"),
    InvalidArgument("details msgpack cannot carry", thing=object()),
], ids=lambda e: e.message)
def test_errors_round_trip(err: RequestError) -> None:
    decoded = decode_outcome(encode_outcome(err))
    assert type(decoded) is type(err)
    assert decoded.message == err.message
    assert not decoded.remote
    if "cannot carry" in err.message:
        assert decoded.details == {}
    else:
        assert decoded.details == err.details
    if isinstance(err, Compacted):
        assert isinstance(decoded, Compacted) and decoded.compact_revision == 17


@pytest.mark.parametrize("data", [
    b"\xc1",
    pack([]),
    pack([9, 1]),
    pack([1, 1]),                                  # short put
    pack([1, -1, None]),                           # negative revision
    pack([1, 1, [b"k", b"v", 1, 1, 1, 0]]),        # short kv
    pack([5, 1, 1, False, []]),                    # a range is a txn response only
    pack([3, True, 1, [[3, True, 1, []]]]),        # a txn inside a txn
    pack([3, 1, 1, []]),                           # int for bool
    pack([0, "not_a_code", "m", {}]),
    pack([0, "not_leader", "m", {}]),              # not a request error
    pack([0, "invalid_argument", "m", []]),
    pack([0, "invalid_argument", "m", {1: 2}]),
    pack([0, "compacted", "m", {"message": "twice"}]),
])
def test_corrupt_result_records_are_storage_errors(data: bytes) -> None:
    with pytest.raises(StorageError):
        decode_outcome(data)


# -- a run with retries equals the run without them --------------------------

short_keys = st.sampled_from([b"a", b"b", b"c"])
plain_writes: st.SearchStrategy[Write] = st.one_of(
    st.builds(Put, key=short_keys, value=st.sampled_from([b"", b"1", b"2"]),
              prev_kv=st.booleans()),
    st.builds(DeleteRange, key=st.just(b"a"), range_end=st.sampled_from([None, b"c", ALL_KEYS]),
              prev_kv=st.booleans()),
    st.builds(lambda k, v, p: Txn(
        compares=(Compare(key=k, target=CompareTarget.VERSION, op=CompareOp.GREATER, value=v),),
        success=(Put(key=k, value=b"s"), RangeRequest(key=b"a", range_end=ALL_KEYS)),
        failure=(RangeRequest(key=k, revision=p),)),
        short_keys, st.integers(0, 2), st.integers(0, 4)),
    st.builds(Compact, revision=st.integers(0, 4)),
)


@st.composite
def runs_with_retries(draw: st.DrawFn) -> list[tuple[int, int, Write]]:
    """Writes (client, seq, command) in log order, some sent again later, seqs out of order."""
    ids = draw(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 10)), min_size=1,
                        max_size=40))
    commands: dict[tuple[int, int], Write] = {}
    run = []
    for client, seq in ids:
        if (client, seq) not in commands:  # a retry resends the same command
            commands[client, seq] = draw(plain_writes)
        run.append((client, seq, commands[client, seq]))
    return run


def same_outcome(a: Outcome, b: Outcome) -> bool:
    if isinstance(a, RequestError) or isinstance(b, RequestError):
        return type(a) is type(b) and str(a) == str(b)
    assert isinstance(a, Applied) and isinstance(b, Applied)
    return a.result == b.result


@settings(max_examples=100, deadline=None)
@given(runs_with_retries())
def test_retries_change_nothing(run: list[tuple[int, int, Write]]) -> None:
    window = SMALL.window
    with KVStore.open_temporary(sessions=SMALL) as retried, \
            KVStore.open_temporary(sessions=SMALL) as once:
        with_retries, without = Log(retried), Log(once)
        first: dict[tuple[int, int], Outcome] = {}
        highest: dict[int, int] = {}
        for step, (client, seq, cmd) in enumerate(run, start=1):
            outcome = with_retries.apply(session(client, seq, cmd, timestamp=step))
            top = highest.get(client, 0)
            if (client, seq) not in first:
                expected = without.apply(session(client, seq, cmd, timestamp=step))
                first[client, seq] = expected
                if seq > top - window:  # in the window, so its outcome is recorded
                    highest[client] = max(top, seq)
                assert same_outcome(outcome, expected)
            elif seq <= top - window:  # its record fell out of the window
                event("a retry too old to deduplicate")
                assert isinstance(outcome, InvalidArgument) and "too old" in outcome.message
            else:
                event("a retry answered from its record")
                assert same_outcome(outcome, first[client, seq])
        assert live(retried) == live(once)
