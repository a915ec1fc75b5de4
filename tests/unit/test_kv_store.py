"""The store's operations, one behaviour per test, with etcd's semantics as the reference."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from quorumkv.errors import Compacted, InvalidArgument
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
    EventType,
    KeyValue,
    KVStore,
    LeaseGrant,
    Put,
    PutResult,
    RangeRequest,
    RangeResult,
    Result,
    Txn,
    TxnResult,
    prefix_end,
)
from quorumkv.kv.keys import ESCAPED_LIMIT


class Cluster:
    """One store fed log entries one at a time, as a server would."""

    def __init__(self, store: KVStore) -> None:
        self.store = store
        self.index = 0

    def apply(self, cmd: Command) -> Applied:
        self.index += 1
        out = self.store.apply(self.index, 1, cmd)
        assert isinstance(out, Applied)
        return out

    def result(self, cmd: Command) -> Result:
        result = self.apply(cmd).result
        assert result is not None
        return result

    def put(self, key: bytes, value: bytes = b"v", **kw: object) -> PutResult:
        result = self.result(Put(key=key, value=value, **kw))  # type: ignore[arg-type]
        assert isinstance(result, PutResult)
        return result

    def delete(self, key: bytes, range_end: bytes | None = None,
               prev_kv: bool = False) -> DeleteResult:
        result = self.result(DeleteRange(key=key, range_end=range_end, prev_kv=prev_kv))
        assert isinstance(result, DeleteResult)
        return result

    def txn(self, txn: Txn) -> TxnResult:
        result = self.result(txn)
        assert isinstance(result, TxnResult)
        return result

    def range(self, key: bytes, range_end: bytes | None = None, **kw: object) -> RangeResult:
        return self.store.range(RangeRequest(key=key, range_end=range_end, **kw))  # type: ignore[arg-type]

    def keys(self, key: bytes = b"\x00", range_end: bytes | None = ALL_KEYS,
             **kw: object) -> list[bytes]:
        return [kv.key for kv in self.range(key, range_end, **kw).kvs]


@pytest.fixture
def kv() -> Iterator[Cluster]:
    with KVStore.open_temporary() as store:
        yield Cluster(store)


# -- put ---------------------------------------------------------------------


def test_put_creates_a_key_at_a_new_revision(kv: Cluster) -> None:
    kv.apply(LeaseGrant(id=9, ttl=60))  # takes no revision
    out = kv.apply(Put(key=b"a", value=b"1", lease=9, timestamp=1234))
    assert out.result == PutResult(revision=1)
    got = kv.store.get(b"a")
    assert got == KeyValue(key=b"a", value=b"1", create_revision=1, mod_revision=1, version=1,
                           lease=9, timestamp=1234)
    assert kv.store.revision == 1


def test_put_again_bumps_version_and_keeps_create_revision(kv: Cluster) -> None:
    kv.put(b"a", b"1")
    kv.put(b"other")
    result = kv.put(b"a", b"2", prev_kv=True)
    assert result.revision == 3
    assert result.prev_kv is not None and result.prev_kv.value == b"1"
    got = kv.store.get(b"a")
    assert got is not None
    assert (got.value, got.create_revision, got.mod_revision, got.version) == (b"2", 1, 3, 2)


def test_prev_kv_only_when_asked(kv: Cluster) -> None:
    kv.put(b"a")
    assert kv.put(b"a").prev_kv is None


def test_version_resets_and_create_revision_moves_after_delete(kv: Cluster) -> None:
    kv.put(b"a")
    kv.put(b"a")
    kv.delete(b"a")
    kv.put(b"a", b"again")
    got = kv.store.get(b"a")
    assert got is not None
    assert (got.version, got.create_revision, got.mod_revision) == (1, 4, 4)


def test_timestamp_comes_from_the_command(kv: Cluster) -> None:
    kv.apply(Put(key=b"a", value=b"", timestamp=7))
    kv.apply(Put(key=b"a", value=b"", timestamp=5))  # clocks may go back; we record, not judge
    got = kv.store.get(b"a")
    assert got is not None and got.timestamp == 5


def test_put_event_carries_new_and_previous_version(kv: Cluster) -> None:
    kv.put(b"a", b"1")
    events = kv.apply(Put(key=b"a", value=b"2")).events
    assert len(events) == 1
    assert events[0].type is EventType.PUT
    assert events[0].kv.value == b"2"
    assert events[0].prev_kv is not None and events[0].prev_kv.value == b"1"


# -- delete ------------------------------------------------------------------


def test_delete_of_a_missing_key_changes_nothing(kv: Cluster) -> None:
    kv.put(b"a")
    out = kv.apply(DeleteRange(key=b"b"))
    assert out.result == DeleteResult(revision=1, deleted=0)
    assert out.events == ()
    assert kv.store.revision == 1


def test_delete_range_removes_every_key_in_range_at_one_revision(kv: Cluster) -> None:
    for key in (b"a", b"b", b"ba", b"c"):
        kv.put(key)
    out = kv.apply(DeleteRange(key=b"b", range_end=b"c", prev_kv=True))
    assert isinstance(out.result, DeleteResult)
    assert out.result.revision == 5
    assert out.result.deleted == 2
    assert [p.key for p in out.result.prev_kvs] == [b"b", b"ba"]
    assert [(e.type, e.kv.key, e.kv.mod_revision, e.kv.version) for e in out.events] == [
        (EventType.DELETE, b"b", 5, 0), (EventType.DELETE, b"ba", 5, 0)]
    assert kv.keys() == [b"a", b"c"]


def test_delete_prefix_and_delete_all(kv: Cluster) -> None:
    for key in (b"app", b"apple", b"apq", b"b", b"\xff\xff"):
        kv.put(key)
    assert kv.result(DeleteRange.prefix(b"app")) == DeleteResult(revision=6, deleted=2)
    assert kv.keys() == [b"apq", b"b", b"\xff\xff"]
    assert kv.delete(b"\x00", ALL_KEYS).deleted == 3
    assert kv.keys() == []


def test_deleted_key_is_absent_from_its_delete_on_and_present_before(kv: Cluster) -> None:
    kv.put(b"a", b"1")
    kv.delete(b"a")
    kv.put(b"b")
    assert kv.store.get(b"a", revision=1) is not None
    assert kv.store.get(b"a", revision=2) is None
    assert kv.store.get(b"a", revision=3) is None
    assert kv.store.get(b"a") is None


# -- range -------------------------------------------------------------------


def test_range_single_key_half_open_interval_prefix_and_all(kv: Cluster) -> None:
    for key in (b"a", b"a\x00", b"a\x01", b"ab", b"b", b"\xff"):
        kv.put(key)
    assert kv.keys(b"a", None) == [b"a"]
    assert kv.keys(b"a", b"ab") == [b"a", b"a\x00", b"a\x01"]
    assert kv.keys(b"a\x00", b"b") == [b"a\x00", b"a\x01", b"ab"]
    assert [k.key for k in kv.store.range(RangeRequest.prefix(b"a")).kvs] == [
        b"a", b"a\x00", b"a\x01", b"ab"]
    assert kv.keys(b"ab", ALL_KEYS) == [b"ab", b"b", b"\xff"]
    assert kv.keys(b"\x00", ALL_KEYS) == [b"a", b"a\x00", b"a\x01", b"ab", b"b", b"\xff"]
    assert kv.keys(b"b", b"b") == []


def test_limit_cuts_the_answer_but_count_counts_all(kv: Cluster) -> None:
    for key in (b"a", b"b", b"c"):
        kv.put(key)
    result = kv.range(b"a", ALL_KEYS, limit=2)
    assert [k.key for k in result.kvs] == [b"a", b"b"]
    assert (result.count, result.more, result.revision) == (3, True, 3)
    exact = kv.range(b"a", ALL_KEYS, limit=3)
    assert (len(exact.kvs), exact.count, exact.more) == (3, 3, False)


def test_keys_only_and_count_only(kv: Cluster) -> None:
    kv.put(b"a", b"value")
    kv.put(b"b", b"value")
    keys_only = kv.range(b"a", ALL_KEYS, keys_only=True)
    assert [(k.key, k.value, k.version) for k in keys_only.kvs] == [(b"a", b"", 1), (b"b", b"", 1)]
    count_only = kv.range(b"a", ALL_KEYS, count_only=True, limit=1)
    assert (count_only.kvs, count_only.count, count_only.more) == ((), 2, False)


def test_reads_at_past_revisions(kv: Cluster) -> None:
    kv.put(b"a", b"1")      # 1
    kv.put(b"b", b"1")      # 2
    kv.put(b"a", b"2")      # 3
    kv.delete(b"b")         # 4
    at = {rev: [(k.key, k.value) for k in kv.range(b"\x00", ALL_KEYS, revision=rev).kvs]
          for rev in range(1, 5)}
    assert at == {1: [(b"a", b"1")], 2: [(b"a", b"1"), (b"b", b"1")],
                  3: [(b"a", b"2"), (b"b", b"1")], 4: [(b"a", b"2")]}
    # The answer says how far this replica has got, also for reads of the past.
    assert kv.range(b"a", revision=1).revision == 4


def test_future_revision_is_invalid(kv: Cluster) -> None:
    kv.put(b"a")
    with pytest.raises(InvalidArgument, match="future revision"):
        kv.range(b"a", revision=2)


def test_read_of_an_empty_store(kv: Cluster) -> None:
    assert kv.range(b"a", ALL_KEYS) == RangeResult(kvs=(), count=0, more=False, revision=0)


def test_malformed_read_is_invalid(kv: Cluster) -> None:
    with pytest.raises(InvalidArgument):
        kv.range(b"")
    with pytest.raises(InvalidArgument):
        kv.range(b"b", b"a")


# -- txn ---------------------------------------------------------------------


def cmp(key: bytes, target: CompareTarget, op: CompareOp, value: bytes | int,
        range_end: bytes | None = None) -> Compare:
    return Compare(key=key, target=target, op=op, value=value, range_end=range_end)


V, C, M, VAL, L = (CompareTarget.VERSION, CompareTarget.CREATE_REVISION,
                   CompareTarget.MOD_REVISION, CompareTarget.VALUE, CompareTarget.LEASE)
EQ, NE, LT, GT = CompareOp.EQUAL, CompareOp.NOT_EQUAL, CompareOp.LESS, CompareOp.GREATER


def holds(kv: Cluster, *compares: Compare) -> bool:
    return kv.txn(Txn(compares=compares)).succeeded


def test_compares_on_an_existing_key(kv: Cluster) -> None:
    kv.apply(LeaseGrant(id=3, ttl=60))  # takes no revision
    kv.put(b"x")
    kv.put(b"a", b"m", lease=3)   # 2
    kv.put(b"a", b"n", lease=3)   # 3
    assert holds(kv, cmp(b"a", V, EQ, 2), cmp(b"a", C, EQ, 2), cmp(b"a", M, EQ, 3))
    assert holds(kv, cmp(b"a", VAL, EQ, b"n"), cmp(b"a", VAL, GT, b"m"), cmp(b"a", VAL, LT, b"o"))
    assert holds(kv, cmp(b"a", L, EQ, 3), cmp(b"a", V, NE, 1), cmp(b"a", M, GT, 2))
    assert not holds(kv, cmp(b"a", V, LT, 2))
    assert not holds(kv, cmp(b"a", VAL, EQ, b"m"))


def test_compares_on_a_missing_key_see_zeroes_and_no_value(kv: Cluster) -> None:
    assert holds(kv, cmp(b"a", V, EQ, 0), cmp(b"a", C, EQ, 0), cmp(b"a", M, EQ, 0),
                 cmp(b"a", L, EQ, 0))
    assert not holds(kv, cmp(b"a", V, GT, 0))
    # etcd: a missing key has no value, so no comparison of its value holds.
    assert not holds(kv, cmp(b"a", VAL, EQ, b""))
    assert not holds(kv, cmp(b"a", VAL, NE, b"x"))


def test_compare_over_a_range_must_hold_for_every_key(kv: Cluster) -> None:
    kv.put(b"a1")
    kv.put(b"a2")
    kv.put(b"a2")
    assert holds(kv, cmp(b"a", V, GT, 0, range_end=b"b"))
    assert not holds(kv, cmp(b"a", V, EQ, 1, range_end=b"b"))
    assert holds(kv, cmp(b"z", V, EQ, 0, range_end=ALL_KEYS))


def test_compare_and_swap(kv: Cluster) -> None:
    kv.put(b"lock", b"free")
    swap = Txn(compares=(cmp(b"lock", VAL, EQ, b"free"),),
               success=(Put(key=b"lock", value=b"mine"),),
               failure=(RangeRequest(key=b"lock"),))
    first = kv.txn(swap)
    assert first.succeeded and first.revision == 2
    second = kv.txn(swap)
    assert not second.succeeded and second.revision == 2
    assert isinstance(second.responses[0], RangeResult)
    assert second.responses[0].kvs[0].value == b"mine"


def test_txn_writes_share_one_revision(kv: Cluster) -> None:
    kv.put(b"c")
    out = kv.apply(Txn(success=(Put(key=b"a", value=b"1"), Put(key=b"b", value=b"2"),
                                DeleteRange(key=b"c")), timestamp=99))
    assert isinstance(out.result, TxnResult)
    assert out.result.revision == 2
    assert [(e.type, e.kv.key, e.kv.mod_revision, e.kv.timestamp) for e in out.events] == [
        (EventType.PUT, b"a", 2, 99), (EventType.PUT, b"b", 2, 99),
        (EventType.DELETE, b"c", 2, 99)]
    assert kv.store.revision == 2
    assert kv.keys(revision=1) == [b"c"]
    assert kv.keys(revision=2) == [b"a", b"b"]


def test_read_only_txn_leaves_the_revision_alone(kv: Cluster) -> None:
    kv.put(b"a")
    out = kv.apply(Txn(compares=(cmp(b"a", V, EQ, 5),), failure=(RangeRequest(key=b"a"),),
                       success=(Put(key=b"a", value=b""),)))
    assert isinstance(out.result, TxnResult)
    assert (out.result.succeeded, out.result.revision, out.events) == (False, 1, ())
    assert kv.store.revision == 1


def test_reads_in_a_txn_see_the_writes_before_them(kv: Cluster) -> None:
    kv.put(b"a", b"old")
    kv.put(b"c", b"doomed")
    result = kv.txn(Txn(success=(RangeRequest(key=b"a"), Put(key=b"a", value=b"new"),
                                 RangeRequest(key=b"a"), DeleteRange(key=b"c"),
                                 RangeRequest(key=b"c"), RangeRequest(key=b"a", revision=1))))
    reads = [r for r in result.responses if isinstance(r, RangeResult)]
    assert [[k.value for k in r.kvs] for r in reads] == [[b"old"], [b"new"], [], [b"old"]]
    assert [r.revision for r in reads] == [2, 3, 3, 3]


def test_txn_delete_after_delete_sees_the_first(kv: Cluster) -> None:
    kv.put(b"a")
    kv.put(b"b")
    result = kv.txn(Txn(success=(DeleteRange(key=b"a", range_end=b"c"),
                                 DeleteRange(key=b"b"))))
    assert [r.deleted for r in result.responses if isinstance(r, DeleteResult)] == [2, 0]


def test_txn_reading_compacted_history_fails_whole_and_counts_as_applied(kv: Cluster) -> None:
    for _ in range(3):
        kv.put(b"a")
    kv.apply(Compact(revision=3))
    bad = Txn(success=(Put(key=b"b", value=b""), RangeRequest(key=b"a", revision=2)))
    with pytest.raises(Compacted) as err:
        kv.apply(bad)
    assert err.value.compact_revision == 3
    assert kv.store.applied_index == kv.index
    assert kv.store.get(b"b") is None
    assert kv.store.revision == 3
    with pytest.raises(InvalidArgument, match="future revision"):
        kv.apply(Txn(success=(RangeRequest(key=b"a", revision=4),)))


def test_only_the_chosen_branch_is_checked(kv: Cluster) -> None:
    kv.put(b"a")
    result = kv.txn(Txn(compares=(cmp(b"a", V, EQ, 1),),
                        failure=(RangeRequest(key=b"a", revision=50),),
                        success=(RangeRequest(key=b"a"),)))
    assert result.succeeded


# -- compaction --------------------------------------------------------------


def test_compaction_keeps_what_later_reads_can_see(kv: Cluster) -> None:
    kv.put(b"a", b"1")      # 1
    kv.put(b"a", b"2")      # 2
    kv.put(b"b", b"1")      # 3
    kv.delete(b"b")         # 4
    kv.put(b"c", b"1")      # 5
    kv.put(b"a", b"3")      # 6
    before = {rev: kv.range(b"\x00", ALL_KEYS, revision=rev) for rev in range(4, 7)}
    out = kv.apply(Compact(revision=4))
    assert out.result == CompactResult(revision=6, compact_revision=4)
    assert out.events == ()
    assert kv.store.compact_revision == 4
    assert kv.store.revision == 6
    for rev, expected in before.items():
        assert kv.range(b"\x00", ALL_KEYS, revision=rev) == expected
    # a@2 (newest at or below 4), a@6, c@5 remain; a@1 and b's versions and tombstone go.
    assert kv.store.history_size() == 3


def test_reads_below_the_compact_revision_fail(kv: Cluster) -> None:
    for _ in range(4):
        kv.put(b"a")
    kv.apply(Compact(revision=3))
    with pytest.raises(Compacted) as err:
        kv.range(b"a", revision=2)
    assert err.value.compact_revision == 3
    assert kv.range(b"a", revision=3).kvs[0].mod_revision == 3


def test_compaction_errors(kv: Cluster) -> None:
    kv.put(b"a")
    kv.put(b"a")
    with pytest.raises(Compacted):
        kv.apply(Compact(revision=0))
    with pytest.raises(InvalidArgument, match="future revision"):
        kv.apply(Compact(revision=3))
    kv.apply(Compact(revision=2))
    with pytest.raises(Compacted):
        kv.apply(Compact(revision=2))
    with pytest.raises(Compacted):
        kv.apply(Compact(revision=1))
    assert kv.store.applied_index == kv.index == 7


def test_compaction_of_a_deleted_key_forgets_it(kv: Cluster) -> None:
    kv.put(b"a")
    kv.delete(b"a")
    kv.apply(Compact(revision=2))
    assert kv.store.history_size() == 0
    kv.put(b"a")
    got = kv.store.get(b"a")
    assert got is not None and (got.version, got.create_revision) == (1, 3)


# -- keys of every shape -----------------------------------------------------


def test_binary_keys_sort_bytewise(kv: Cluster) -> None:
    keys = [b"\x00", b"\x00\x00", b"\x00\x01", b"\x00\xff", b"\x01", b"a", b"a\x00", b"a\xff",
            b"\xff", b"\xff\x00", b"\xff\xff"]
    for key in reversed(keys):
        kv.put(key)
    assert kv.keys() == keys
    assert kv.keys(b"\x00\x00", b"a\x00") == keys[1:6]


def test_long_keys_sort_and_range_like_short_ones(kv: Cluster) -> None:
    base = b"k" * (ESCAPED_LIMIT - 2)
    keys = sorted({base, base + b"\x00", base + b"a", base + b"a" * 3, base + b"ab" * 40,
                   base + b"b", base + b"b" + b"\x00" * 100, base + b"\xff" * 4000,
                   b"k" * 5000, b"k" * 4999 + b"\x00", b"z" * 4096})
    for i, key in enumerate(reversed(keys)):
        kv.put(key, str(i).encode())
    assert kv.keys() == keys
    for lo in range(len(keys)):
        for hi in range(lo, len(keys)):
            assert kv.keys(keys[lo], keys[hi]) == keys[lo:hi]
    assert kv.keys(base + b"a", prefix_end(base + b"a")) == [
        k for k in keys if k.startswith(base + b"a")]
    for key in keys:
        got = kv.store.get(key)
        assert got is not None and got.key == key
    doomed = [k for k in keys if base + b"a" <= k < base + b"b\x01"]
    assert len(doomed) == 5
    assert kv.delete(base + b"a", base + b"b\x01").deleted == len(doomed)
    assert kv.keys() == [k for k in keys if k not in doomed]


def test_long_key_history(kv: Cluster) -> None:
    key = b"\x00" * 3000
    kv.put(key, b"1")
    kv.put(key, b"2")
    kv.delete(key)
    kv.put(key, b"3")
    assert [kv.store.get(key, revision=r) for r in (1, 2, 3)] == [
        KeyValue(key=key, value=b"1", create_revision=1, mod_revision=1, version=1),
        KeyValue(key=key, value=b"2", create_revision=1, mod_revision=2, version=2),
        None]
    kv.apply(Compact(revision=3))
    got = kv.store.get(key)
    assert got is not None and (got.value, got.version) == (b"3", 1)
    assert kv.store.history_size() == 1
