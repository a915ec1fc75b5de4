"""Leases in the state machine (etcd v3): grants, keys attached by puts, revokes that delete them.

The store records leases and their keys; it never decides expiry (the leader
does, and proposes a LeaseRevoke). Everything here is deterministic state:
checked before any write, replicated, kept across reopening and snapshots,
covered by the digest, applied once inside a Session, and decoded strictly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorumkv.client.results_wire import (
    Header,
    result_from_wire,
    result_to_wire,
    write_result,
    write_result_from_wire,
)
from quorumkv.errors import (
    ERRORS_BY_CODE,
    InvalidArgument,
    LeaseNotFound,
    ProtocolError,
    RequestError,
    StorageError,
    from_dict,
)
from quorumkv.kv import (
    ALL_KEYS,
    Applied,
    Command,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    EventType,
    KVStore,
    LeaseGrant,
    LeaseGrantResult,
    LeaseRevoke,
    LeaseRevokeResult,
    Outcome,
    Put,
    PutResult,
    RangeRequest,
    Session,
    Txn,
    TxnResult,
    Write,
    check_command,
    decode_command,
    encode_command,
    validate,
)
from quorumkv.kv.commands import MAX_LEASE_TTL
from quorumkv.kv.keys import split_history_key
from quorumkv.kv.leases import LEASE_KEY_PREFIX, LEASE_PREFIX
from quorumkv.kv.members import MEMBER_PREFIX
from quorumkv.kv.records import CONF_KEY, FORMAT_KEY, STATE_KEY
from quorumkv.kv.result_codec import decode_outcome, encode_outcome

EVERYTHING = RangeRequest(key=b"\x00", range_end=ALL_KEYS)
MAX_ID = 2**63 - 1


def pack(obj: Any) -> bytes:
    data = msgpack.packb(obj, use_bin_type=True)
    assert isinstance(data, bytes)
    return data


class Log:
    """Feeds one store consecutive log entries, as a server does."""

    def __init__(self, store: KVStore) -> None:
        self.store = store
        self.index = store.applied_index

    def apply(self, payload: Command) -> Outcome:
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

    def grant(self, lease_id: int, ttl: int = 60) -> LeaseGrantResult:
        result = self.applied(LeaseGrant(id=lease_id, ttl=ttl)).result
        assert isinstance(result, LeaseGrantResult)
        return result

    def put(self, key: bytes, lease: int = 0, value: bytes = b"v") -> PutResult:
        result = self.applied(Put(key=key, value=value, lease=lease)).result
        assert isinstance(result, PutResult)
        return result

    def revoke(self, lease_id: int) -> Applied:
        return self.applied(LeaseRevoke(id=lease_id))

    def live(self) -> dict[bytes, int]:
        """Every live key with its lease."""
        return {kv.key: kv.lease for kv in self.store.range(EVERYTHING).kvs}


@pytest.fixture
def log() -> Iterator[Log]:
    with KVStore.open_temporary() as store:
        yield Log(store)


def state(store: KVStore) -> tuple[object, ...]:
    """Everything a command could change, the applied index aside."""
    leases = store.leases()
    return (store.revision, store.range(EVERYTHING), leases,
            {i: store.lease_keys(i) for i in leases}, store.digest())


# -- grant -------------------------------------------------------------------


def test_a_grant_records_the_lease_and_takes_no_revision(log: Log) -> None:
    log.put(b"a")
    applied = log.applied(LeaseGrant(id=7, ttl=30, timestamp=5))
    assert applied.result == LeaseGrantResult(id=7, ttl=30)
    assert applied.events == ()
    assert log.store.revision == 1
    assert log.store.leases() == {7: 30}
    assert log.store.lease_exists(7) and not log.store.lease_exists(8)
    assert log.store.lease_keys(7) == []
    assert log.store.applied_index == 2 and log.store.clock == 5


def test_granting_an_existing_lease_fails_and_changes_nothing(log: Log) -> None:
    log.grant(7, ttl=30)
    before = state(log.store)
    err = log.failed(LeaseGrant(id=7, ttl=99))
    assert type(err) is InvalidArgument and err.message == "lease 7 already exists"
    assert state(log.store) == before
    assert log.store.leases() == {7: 30}


def test_lease_ids_and_ttls_at_their_limits(log: Log) -> None:
    log.grant(MAX_ID, ttl=MAX_LEASE_TTL)
    log.grant(1, ttl=1)
    log.put(b"k", lease=MAX_ID)
    assert log.store.leases() == {1: 1, MAX_ID: MAX_LEASE_TTL}
    assert log.store.lease_keys(MAX_ID) == [b"k"]
    assert log.store.lease_keys(1) == []


# -- attaching and revoking ---------------------------------------------------


def test_revoke_deletes_exactly_the_attached_keys_at_one_revision(log: Log) -> None:
    log.grant(1)
    log.grant(2)
    log.put(b"c", lease=1, value=b"c1")        # 1
    log.put(b"a", lease=1, value=b"a1")        # 2
    log.put(b"b", lease=2)                     # 3
    log.put(b"d")                              # 4
    log.put(b"a", lease=1, value=b"a2")        # 5: still attached, once
    assert log.store.lease_keys(1) == [b"a", b"c"]
    assert log.store.lease_keys(2) == [b"b"]
    prev_a, prev_c = log.store.get(b"a"), log.store.get(b"c")
    assert prev_a is not None and prev_c is not None

    applied = log.applied(LeaseRevoke(id=1, timestamp=77))
    assert applied.result == LeaseRevokeResult(revision=6, deleted=2)
    assert log.store.revision == 6
    assert log.live() == {b"b": 2, b"d": 0}
    assert log.store.leases() == {2: 60}
    assert not log.store.lease_exists(1) and log.store.lease_keys(1) == []
    # DELETE events in key order, each with the version it removed, as a DeleteRange's.
    assert [e.type for e in applied.events] == [EventType.DELETE, EventType.DELETE]
    assert [e.prev_kv for e in applied.events] == [prev_a, prev_c]
    for event in applied.events:
        assert event.prev_kv is not None
        assert (event.kv.key, event.kv.value, event.kv.version, event.kv.create_revision,
                event.kv.mod_revision, event.kv.lease, event.kv.timestamp) == (
            event.prev_kv.key, b"", 0, 0, 6, 0, 77)
    assert revision_subs(log.store, 6) == [0, 1]
    # The past is still readable.
    old = log.store.get(b"a", revision=5)
    assert old is not None and old.value == b"a2"


def revision_subs(store: KVStore, revision: int) -> list[int]:
    """The sub revisions written at ``revision``, in order (read straight from LMDB)."""
    history = store._history  # sub revisions are not part of the API
    env = store._live_env()
    with env.begin() as txn:
        found = [split_history_key(k)[1:] for k, _ in txn.cursor(db=history.db)]
    return sorted(sub for main, sub in found if main == revision)


def test_revoke_events_equal_a_delete_range_of_the_same_keys() -> None:
    with KVStore.open_temporary() as a, KVStore.open_temporary() as b:
        for store, lease in ((a, 5), (b, 0)):
            setup: list[Command] = [LeaseGrant(id=5, ttl=10),
                                    Put(key=b"x", value=b"1", lease=lease),
                                    Put(key=b"y", value=b"2"),
                                    Put(key=b"z", value=b"3", lease=lease),
                                    Put(key=b"x", value=b"4", lease=lease)]
            store.apply_batch([(i, 1, c) for i, c in enumerate(setup, start=1)])
        revoked = a.apply(6, 1, LeaseRevoke(id=5, timestamp=9))
        deleted = b.apply(6, 1, Txn(success=(DeleteRange(key=b"x"), DeleteRange(key=b"z")),
                                    timestamp=9))
        assert isinstance(revoked, Applied) and isinstance(deleted, Applied)
        prevs = [e.prev_kv for e in revoked.events]
        assert [p.lease if p else None for p in prevs] == [5, 5]
        # Same events but for the lease of the deleted versions.
        assert [e.kv for e in revoked.events] == [e.kv for e in deleted.events]
        assert [(e.type, e.prev_kv.key if e.prev_kv else None) for e in revoked.events] == [
            (e.type, e.prev_kv.key if e.prev_kv else None) for e in deleted.events]
        assert a.revision == b.revision == 5  # the grant took no revision
        assert revision_subs(a, 5) == revision_subs(b, 5) == [0, 1]
        assert a.range(EVERYTHING) == b.range(EVERYTHING)


def test_keys_put_with_another_lease_or_none_are_detached(log: Log) -> None:
    log.grant(1)
    log.grant(2)
    log.put(b"a", lease=1)
    log.put(b"b", lease=1)
    log.put(b"a", lease=2)      # moves to lease 2
    log.put(b"b", lease=0)      # leaves every lease
    assert log.store.lease_keys(1) == []
    assert log.store.lease_keys(2) == [b"a"]
    revision = log.store.revision
    applied = log.revoke(1)
    assert applied.result == LeaseRevokeResult(revision=revision, deleted=0)
    assert applied.events == ()
    assert log.store.revision == revision
    assert log.live() == {b"a": 2, b"b": 0}
    assert log.revoke(2).result == LeaseRevokeResult(revision=revision + 1, deleted=1)
    assert log.live() == {b"b": 0}


def test_deleted_keys_are_detached(log: Log) -> None:
    log.grant(1)
    log.put(b"a", lease=1)
    log.put(b"b", lease=1)
    log.put(b"c", lease=1)
    log.applied(DeleteRange(key=b"a", range_end=b"c"))
    assert log.store.lease_keys(1) == [b"c"]
    log.put(b"a")               # back, without a lease
    log.applied(Txn(success=(DeleteRange(key=b"c"), Put(key=b"b", value=b"", lease=1))))
    assert log.store.lease_keys(1) == [b"b"]
    assert log.revoke(1).result == LeaseRevokeResult(revision=log.store.revision, deleted=1)
    assert log.live() == {b"a": 0}


def test_puts_in_a_txn_attach_and_compare_on_the_lease(log: Log) -> None:
    log.grant(3)
    result = log.applied(Txn(
        compares=(Compare(key=b"k", target=CompareTarget.LEASE, op=CompareOp.EQUAL, value=0),),
        success=(Put(key=b"k", value=b"1", lease=3), Put(key=b"l", value=b"2", lease=3)),
    )).result
    assert isinstance(result, TxnResult) and result.succeeded
    assert log.store.lease_keys(3) == [b"k", b"l"]
    assert log.live() == {b"k": 3, b"l": 3}


def test_a_revoke_of_a_lease_without_keys_keeps_the_revision(log: Log) -> None:
    log.put(b"a")
    log.grant(4)
    applied = log.revoke(4)
    assert applied.result == LeaseRevokeResult(revision=1, deleted=0)
    assert log.store.revision == 1 and log.store.leases() == {}


def test_revoking_an_unknown_lease_fails(log: Log) -> None:
    log.grant(4)
    log.put(b"a", lease=4)
    before = state(log.store)
    err = log.failed(LeaseRevoke(id=5))
    assert type(err) is LeaseNotFound and err.code == "lease_not_found"
    assert state(log.store) == before
    log.revoke(4)
    assert type(log.failed(LeaseRevoke(id=4))) is LeaseNotFound  # revoked already


def test_a_lease_id_can_be_granted_again_after_its_revoke(log: Log) -> None:
    log.grant(4, ttl=10)
    log.put(b"a", lease=4)
    log.revoke(4)
    log.grant(4, ttl=20)
    assert log.store.leases() == {4: 20} and log.store.lease_keys(4) == []


# -- puts naming an unknown lease ---------------------------------------------


def test_a_put_with_an_unknown_lease_fails_and_writes_nothing(log: Log) -> None:
    log.grant(1)
    log.put(b"a", lease=1, value=b"old")
    before = state(log.store)
    for key in (b"a", b"new"):
        err = log.failed(Put(key=key, value=b"x", lease=2))
        assert type(err) is LeaseNotFound and err.message == "lease 2 not found"
        assert err.details == {"lease": 2}
    assert state(log.store) == before
    assert log.store.applied_index == 4


def test_a_txn_with_a_put_naming_an_unknown_lease_fails_whole(log: Log) -> None:
    log.grant(1)
    log.put(b"a", lease=1)
    before = state(log.store)
    err = log.failed(Txn(success=(Put(key=b"x", value=b"1"), DeleteRange(key=b"a"),
                                  Put(key=b"y", value=b"2", lease=1),
                                  Put(key=b"z", value=b"3", lease=9))))
    assert type(err) is LeaseNotFound
    assert state(log.store) == before
    # Only the branch that runs is checked (as in etcd).
    failing = Put(key=b"x", value=b"", lease=9)
    result = log.applied(Txn(success=(Put(key=b"y", value=b""),), failure=(failing,))).result
    assert isinstance(result, TxnResult) and result.succeeded
    assert type(log.failed(Txn(compares=(Compare(key=b"q", target=CompareTarget.VERSION,
                                                 op=CompareOp.GREATER, value=0),),
                               failure=(failing,)))) is LeaseNotFound


def test_lease_not_found_is_a_request_error_known_by_its_code() -> None:
    assert ERRORS_BY_CODE["lease_not_found"] is LeaseNotFound
    assert issubclass(LeaseNotFound, RequestError)
    err = from_dict(LeaseNotFound("lease 3 not found", lease=3).to_dict())
    assert type(err) is LeaseNotFound and err.remote and err.details == {"lease": 3}


# -- the codec and validation -------------------------------------------------

ids = st.integers(1, MAX_ID)
ttls = st.integers(1, MAX_LEASE_TTL)
stamps = st.integers(0, MAX_ID)
lease_commands = st.one_of(st.builds(LeaseGrant, id=ids, ttl=ttls, timestamp=stamps),
                           st.builds(LeaseRevoke, id=ids, timestamp=stamps))


@settings(max_examples=100)
@given(lease_commands, st.integers(0, MAX_ID), st.integers(1, MAX_ID))
def test_lease_commands_round_trip(cmd: LeaseGrant | LeaseRevoke, client_id: int,
                                   seq: int) -> None:
    data = encode_command(cmd)
    assert decode_command(data) == cmd
    assert encode_command(decode_command(data)) == data
    validate(cmd)
    wrapped = decode_command(encode_command(cmd, client_id=client_id, seq=seq))
    if client_id:
        assert isinstance(wrapped, Session)
        assert (wrapped.client_id, wrapped.seq, wrapped.timestamp) == (client_id, seq,
                                                                       cmd.timestamp)
        assert wrapped.command == type(cmd)(**{**_fields(cmd), "timestamp": 0})
    else:
        assert wrapped == cmd


def _fields(cmd: LeaseGrant | LeaseRevoke) -> dict[str, Any]:
    return {name: getattr(cmd, name) for name in cmd.__slots__}


def test_the_documented_encoding() -> None:
    assert encode_command(LeaseGrant(id=5, ttl=60, timestamp=9)) == pack([7, 5, 60, 9])
    assert encode_command(LeaseRevoke(id=5, timestamp=9)) == pack([8, 5, 9])
    assert encode_command(LeaseRevoke(id=5), client_id=3, seq=4) == pack(
        [6, 3, 4, [8, 5, 0], 0])


@pytest.mark.parametrize("data", [
    pack([7, 1, 60]),                          # short grant
    pack([7, 1, 60, 0, 0]),                    # long grant
    pack([7, 0, 60, 0]),                       # id 0
    pack([7, -1, 60, 0]),                      # negative id
    pack([7, 2**63, 60, 0]),                   # id past int64
    pack([7, True, 60, 0]),                    # bool id
    pack([7, b"\x01", 60, 0]),                 # binary id
    pack([7, 1.0, 60, 0]),                     # float id
    pack([7, 1, 0, 0]),                        # ttl 0
    pack([7, 1, -5, 0]),                       # negative ttl
    pack([7, 1, MAX_LEASE_TTL + 1, 0]),        # ttl past the limit
    pack([7, 1, "60", 0]),                     # ttl as str
    pack([7, 1, None, 0]),                     # nil ttl
    pack([7, 1, 60, -1]),                      # negative timestamp
    pack([7, 1, 60, False]),                   # bool timestamp
    pack([8, 1]),                              # short revoke
    pack([8, 1, 0, 0]),                        # long revoke
    pack([8, 0, 0]),                           # id 0
    pack([8, "1", 0]),                         # id as str
    pack([8, [1], 0]),                         # id as array
    pack([8, 1, 1.5]),                         # float timestamp
    pack([3, [], [[7, 1, 60, 0]], [], 0]),     # a grant inside a txn
    pack([3, [], [], [[8, 1, 0]], 0]),         # a revoke inside a txn
    pack([6, 1, 1, [7, 1, 60, 5], 0]),         # session's grant with its own timestamp
    pack([6, 1, 1, [8, 0, 0], 0]),             # session's revoke of id 0
    pack({"lease_grant": 1}),
])
def test_malformed_lease_commands_are_invalid_arguments(data: bytes) -> None:
    with pytest.raises(InvalidArgument):
        decode_command(data)


@pytest.mark.parametrize("cmd", [
    LeaseGrant(id=0, ttl=1),
    LeaseGrant(id=-1, ttl=1),
    LeaseGrant(id=2**63, ttl=1),
    LeaseGrant(id=True, ttl=1),
    LeaseGrant(id=1, ttl=0),
    LeaseGrant(id=1, ttl=MAX_LEASE_TTL + 1),
    LeaseGrant(id=1, ttl=1.0),  # type: ignore[arg-type]
    LeaseGrant(id=1, ttl=True),
    LeaseRevoke(id=0),
    LeaseRevoke(id="1"),  # type: ignore[arg-type]
    Txn(success=(LeaseGrant(id=1, ttl=1),)),  # type: ignore[arg-type]
    Txn(failure=(LeaseRevoke(id=1),)),  # type: ignore[arg-type]
    Session(client_id=1, seq=1, command=LeaseGrant(id=1, ttl=1, timestamp=3)),
])
def test_malformed_lease_commands_fail_validation(cmd: Command) -> None:
    with pytest.raises(InvalidArgument):
        check_command(cmd)
    with pytest.raises(InvalidArgument):
        validate(cmd)


def test_a_malformed_command_in_the_log_fails_without_writing(log: Log) -> None:
    before = state(log.store)
    err = log.failed(LeaseGrant(id=0, ttl=1))
    assert type(err) is InvalidArgument
    assert state(log.store) == before


def test_lease_records_collide_with_no_other_meta_record() -> None:
    prefixes = [LEASE_PREFIX, LEASE_KEY_PREFIX, MEMBER_PREFIX]
    for a in prefixes:
        for b in [*prefixes, FORMAT_KEY, STATE_KEY, CONF_KEY]:
            assert a == b or not b.startswith(a)


# -- exactly once -------------------------------------------------------------


def session(client_id: int, seq: int, cmd: Write) -> Session:
    return Session(client_id=client_id, seq=seq, command=cmd)


def test_a_retried_grant_answers_the_first_result_and_applies_once(log: Log) -> None:
    grant = session(9, 1, LeaseGrant(id=5, ttl=30))
    first = log.applied(grant)
    assert first.result == LeaseGrantResult(id=5, ttl=30)
    before = state(log.store)
    again = log.applied(grant)  # without the session, this would be "already exists"
    assert again.result == first.result and again.events == ()
    assert state(log.store) == before


def test_a_retried_revoke_answers_the_first_result_and_applies_once(log: Log) -> None:
    log.grant(5)
    log.put(b"a", lease=5)
    log.put(b"b", lease=5)
    revoke = session(9, 1, LeaseRevoke(id=5))
    first = log.applied(revoke)
    assert first.result == LeaseRevokeResult(revision=3, deleted=2)
    assert len(first.events) == 2
    # The lease comes back with a key: a retry must not revoke it again.
    log.grant(5)
    log.put(b"c", lease=5)
    before = state(log.store)
    again = log.applied(revoke)
    assert again.result == first.result and again.events == ()
    assert state(log.store) == before and log.store.lease_keys(5) == [b"c"]


def test_a_retried_failure_repeats_the_error(log: Log) -> None:
    revoke = session(9, 1, LeaseRevoke(id=5))
    first = log.failed(revoke)
    log.grant(5)
    again = log.failed(revoke)  # recorded: the lease granted since is not revoked
    assert type(first) is type(again) is LeaseNotFound
    assert (again.message, again.details) == (first.message, first.details)
    assert log.store.lease_exists(5)
    put = session(9, 2, Put(key=b"k", value=b"", lease=6))
    assert type(log.failed(put)) is LeaseNotFound
    log.grant(6)
    assert type(log.failed(put)) is LeaseNotFound
    assert log.store.get(b"k") is None


@pytest.mark.parametrize("outcome", [
    LeaseGrantResult(id=MAX_ID, ttl=MAX_LEASE_TTL),
    LeaseRevokeResult(revision=12, deleted=3),
    LeaseNotFound("lease 4 not found", lease=4),
    InvalidArgument("lease 4 already exists", lease=4),
], ids=lambda o: type(o).__name__)
def test_recorded_outcomes_round_trip(outcome: Any) -> None:
    decoded = decode_outcome(encode_outcome(outcome))
    if isinstance(outcome, RequestError):
        assert isinstance(decoded, RequestError)
        assert (type(decoded), decoded.message, decoded.details) == (
            type(outcome), outcome.message, outcome.details)
    else:
        assert decoded == outcome


@pytest.mark.parametrize("record", [
    [6, 1],                      # short grant result
    [6, -1, 5],                  # negative id
    [6, 1, True],                # bool ttl
    [7, 1, 2, 3],                # long revoke result
    [7, "1", 2],                 # str revision
    [3, True, 1, [[6, 1, 5]]],   # a grant result as a txn response
])
def test_malformed_recorded_lease_results_are_storage_errors(record: list[Any]) -> None:
    with pytest.raises(StorageError):
        decode_outcome(pack(record))


# -- durability and the digest -------------------------------------------------


def fill(log: Log) -> None:
    log.grant(1, ttl=10)
    log.grant(2, ttl=20)
    log.put(b"a", lease=1)
    log.put(b"b", lease=2)
    log.put(b"c", lease=1)
    log.put(b"d")


def test_leases_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "kv"
    with KVStore.open(path) as store:
        fill(Log(store))
        before = state(store)
    with KVStore.open(path, create=False) as store:
        assert state(store) == before
        assert store.leases() == {1: 10, 2: 20}
        assert store.lease_keys(1) == [b"a", b"c"]
        log = Log(store)
        assert log.revoke(1).result == LeaseRevokeResult(revision=5, deleted=2)
        assert log.live() == {b"b": 2, b"d": 0}


def test_snapshots_carry_leases_and_the_digest_covers_them(tmp_path: Path) -> None:
    with KVStore.open_temporary() as source, KVStore.open_temporary() as replica:
        fill(Log(source))
        source.snapshot_to(tmp_path / "snap")
        replica.restore_from(tmp_path / "snap")
        assert replica.digest() == source.digest()
        assert state(replica) == state(source)
        # Both go on alike.
        for store in (source, replica):
            Log(store).revoke(2)
        assert replica.digest() == source.digest()
        assert replica.lease_keys(1) == [b"a", b"c"] and replica.leases() == {1: 10}


def test_the_digest_tells_lease_states_apart() -> None:
    def digest_of(*cmds: Command) -> str:
        with KVStore.open_temporary() as store:
            store.apply_batch([(i, 1, c) for i, c in enumerate(cmds, start=1)])
            return store.digest()

    put = Put(key=b"k", value=b"v")
    base = digest_of(put, put)
    granted = digest_of(put, LeaseGrant(id=1, ttl=5))
    assert granted != base                                    # a lease, no key change
    assert digest_of(put, LeaseGrant(id=1, ttl=6)) != granted  # another ttl
    assert digest_of(put, LeaseGrant(id=2, ttl=5)) != granted  # another id
    assert digest_of(LeaseGrant(id=1, ttl=5), put) == granted  # same state, other order
    # Granted and revoked again: as if it never was.
    assert digest_of(put, LeaseGrant(id=1, ttl=5), LeaseRevoke(id=1)) == digest_of(put)


def test_meta_records_of_leases_are_what_the_docs_say(log: Log) -> None:
    fill(log)
    meta = log.store._meta  # the on-disk layout is the point
    with log.store._live_env().begin() as txn:
        records = {k: v for k, v in txn.cursor(db=meta) if k.startswith(b"lease")}
    one, two = (1).to_bytes(8, "big"), (2).to_bytes(8, "big")
    assert records == {
        b"lease/" + one: pack([10]), b"lease/" + two: pack([20]),
        b"lease-key/" + one + b"a": b"", b"lease-key/" + one + b"c": b"",
        b"lease-key/" + two + b"b": b"",
    }


def test_a_corrupt_lease_record_is_a_storage_error(log: Log) -> None:
    log.grant(1)
    meta = log.store._meta
    with log.store._live_env().begin(write=True) as txn:
        txn.put(b"lease/" + (1).to_bytes(8, "big"), pack(["ten"]), db=meta)
    with pytest.raises(StorageError):
        log.store.leases()


def test_reads_refuse_what_is_not_a_lease_id(log: Log) -> None:
    for bad in (0, -1, 2**63, True):
        with pytest.raises(InvalidArgument):
            log.store.lease_keys(bad)
        with pytest.raises(InvalidArgument):
            log.store.lease_exists(bad)


# -- the client wire ------------------------------------------------------------

HEADER = Header(revision=3, raft_term=2, member="n1", applied_index=40)


@pytest.mark.parametrize("result, wire", [
    (LeaseGrantResult(id=MAX_ID, ttl=60), {"type": "lease_grant", "id": MAX_ID, "ttl": 60}),
    (LeaseRevokeResult(revision=9, deleted=2),
     {"type": "lease_revoke", "revision": 9, "deleted": 2}),
], ids=["grant", "revoke"])
def test_lease_results_on_the_wire(result: Any, wire: dict[str, Any]) -> None:
    assert result_to_wire(result) == wire
    assert result_from_wire(msgpack.unpackb(pack(wire))) == result
    full = write_result(Applied(index=4, result=result), HEADER)
    assert write_result_from_wire(msgpack.unpackb(pack(full))) == (result, HEADER)


@pytest.mark.parametrize("wire", [
    {"type": "lease_grant", "ttl": 60},
    {"type": "lease_grant", "id": 1},
    {"type": "lease_grant", "id": 0, "ttl": 60},
    {"type": "lease_grant", "id": 1, "ttl": 0},
    {"type": "lease_grant", "id": -1, "ttl": 60},
    {"type": "lease_grant", "id": 2**63, "ttl": 60},
    {"type": "lease_grant", "id": 1, "ttl": MAX_LEASE_TTL + 1},
    {"type": "lease_grant", "id": True, "ttl": 60},
    {"type": "lease_grant", "id": 1, "ttl": "60"},
    {"type": "lease_revoke", "deleted": 1},
    {"type": "lease_revoke", "revision": 1},
    {"type": "lease_revoke", "revision": 1, "deleted": -1},
    {"type": "lease_revoke", "revision": 1.0, "deleted": 1},
    {"type": "txn", "revision": 1, "succeeded": True,
     "responses": [{"type": "lease_revoke", "revision": 1, "deleted": 0}]},
])
def test_malformed_lease_results_are_protocol_errors(wire: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        result_from_wire(wire)
    with pytest.raises(ProtocolError):
        write_result_from_wire({**wire, "header": HEADER.to_wire()})


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "id", "ttl", "revision", "deleted", "header"]),
                       st.one_of(st.sampled_from(["lease_grant", "lease_revoke"]),
                                 st.integers(-2, 2**64), st.booleans(), st.none(),
                                 st.binary(max_size=2), st.just(HEADER.to_wire())),
                       max_size=6))
def test_random_lease_result_maps_raise_only_protocol_error(obj: dict[str, Any]) -> None:
    for decode in (write_result_from_wire, result_from_wire):
        with contextlib.suppress(ProtocolError):
            decode(obj)


# -- a model ------------------------------------------------------------------

KEYS = [b"a", b"b", b"c", b"d"]
LEASES = [1, 2, 3]

grants = st.builds(LeaseGrant, id=st.sampled_from(LEASES), ttl=st.integers(1, 3))
revokes = st.builds(LeaseRevoke, id=st.sampled_from(LEASES))
model_puts = st.builds(Put, key=st.sampled_from(KEYS), value=st.just(b"v"),
                       lease=st.sampled_from([0, *LEASES]))
model_deletes = st.one_of(st.builds(DeleteRange, key=st.sampled_from(KEYS)),
                          st.builds(lambda k: DeleteRange(key=k, range_end=ALL_KEYS),
                                    st.sampled_from(KEYS)))
model_txns = st.builds(lambda p, d: Txn(success=(p, d)), model_puts,
                       st.builds(DeleteRange, key=st.sampled_from(KEYS))).filter(
    lambda t: t.success[0].key != t.success[1].key)
steps = st.lists(st.one_of(grants, revokes, model_puts, model_puts, model_deletes, model_txns),
                 min_size=1, max_size=40)


class LeaseModel:
    """Leases, the obvious way: each live key's lease, and the granted leases."""

    def __init__(self) -> None:
        self.keys: dict[bytes, int] = {}
        self.leases: dict[int, int] = {}
        self.revision = 0

    def attached(self, lease_id: int) -> list[bytes]:
        return sorted(k for k, lease in self.keys.items() if lease == lease_id)

    def _check_lease(self, lease: int) -> None:
        if lease and lease not in self.leases:
            raise LeaseNotFound

    def apply(self, cmd: Command) -> tuple[type[RequestError] | None, list[bytes]]:
        """The error class the command fails with, and the keys it deletes, in order."""
        try:
            deleted = self._apply(cmd)
        except RequestError as err:
            return type(err), []
        return None, deleted

    def _apply(self, cmd: Command) -> list[bytes]:
        if isinstance(cmd, LeaseGrant):
            if cmd.id in self.leases:
                raise InvalidArgument
            self.leases[cmd.id] = cmd.ttl
            return []
        if isinstance(cmd, LeaseRevoke):
            if cmd.id not in self.leases:
                raise LeaseNotFound
            del self.leases[cmd.id]
            return self._delete(self.attached(cmd.id))
        if isinstance(cmd, Put):
            self._check_lease(cmd.lease)
            self.revision += 1
            self.keys[cmd.key] = cmd.lease
            return []
        if isinstance(cmd, DeleteRange):
            return self._delete([k for k in sorted(self.keys)
                                 if k == cmd.key or (cmd.range_end is not None and k >= cmd.key)])
        assert isinstance(cmd, Txn)
        put, delete = cmd.success
        assert isinstance(put, Put) and isinstance(delete, DeleteRange)
        self._check_lease(put.lease)
        self.revision += 1
        self.keys[put.key] = put.lease
        gone = [delete.key] if delete.key in self.keys else []
        for key in gone:
            del self.keys[key]
        return gone

    def _delete(self, keys: list[bytes]) -> list[bytes]:
        if keys:
            self.revision += 1
        for key in keys:
            del self.keys[key]
        return keys


@settings(max_examples=150, deadline=None)
@given(steps)
def test_leases_match_a_model(plan: list[Command]) -> None:
    model = LeaseModel()
    with KVStore.open_temporary() as store:
        log = Log(store)
        for cmd in plan:
            expected_attached = (model.attached(cmd.id) if isinstance(cmd, LeaseRevoke)
                                 else None)
            error, deleted = model.apply(cmd)
            outcome = log.apply(cmd)
            if error is not None:
                assert type(outcome) is error
            else:
                assert isinstance(outcome, Applied), outcome
                assert [e.kv.key for e in outcome.events
                        if e.type is EventType.DELETE] == deleted
                if isinstance(cmd, LeaseRevoke):
                    assert deleted == expected_attached
                    assert outcome.result == LeaseRevokeResult(revision=model.revision,
                                                               deleted=len(deleted))
                    assert all(e.prev_kv is not None and e.prev_kv.lease == cmd.id
                               for e in outcome.events)
            assert store.revision == model.revision
            assert log.live() == model.keys
            assert store.leases() == model.leases
            for lease_id in LEASES:
                assert store.lease_keys(lease_id) == model.attached(lease_id)
                assert store.lease_exists(lease_id) == (lease_id in model.leases)

