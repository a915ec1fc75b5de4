"""Replaying the MVCC history as watch events (kv/watch_history.py).

The reference is what the store said at the time: every Applied.events list
returned while applying. A replay of any range over any window must give
back exactly those events, in the same order, with the same sub revisions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorumkv.errors import Compacted, InvalidArgument, RequestError
from quorumkv.kv import (
    ALL_KEYS,
    Applied,
    Command,
    Compact,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    Event,
    EventType,
    KeyValue,
    KVStore,
    Put,
    Txn,
    check_command,
    prefix_end,
)
from quorumkv.kv.keys import ESCAPED_LIMIT, in_range
from quorumkv.kv.watch_history import events_between

Replayed = list[tuple[int, int, Event]]


def replay(store: KVStore, key: bytes, range_end: bytes | None, start: int, end: int, *,
           prev_kv: bool = False, limit: int = 0) -> Replayed:
    """events_between over the store's history, in a read transaction of its own.

    Stands in for the KVStore wrapper to come; the only use of its internals here.
    """
    with store._live_env().begin() as txn:
        return events_between(txn, store._history, key=key, range_end=range_end,
                              start_revision=start, end_revision=end,
                              compact_revision=store.compact_revision, prev_kv=prev_kv,
                              limit=limit)


class Recorder:
    """A store fed batches of entries, keeping every event it emitted with its (rev, sub)."""

    def __init__(self, store: KVStore) -> None:
        self.store = store
        self.index = 0
        self.events: Replayed = []

    def apply_batch(self, cmds: list[Command]) -> list[Applied | RequestError]:
        entries = []
        for cmd in cmds:
            self.index += 1
            entries.append((self.index, 1, cmd))
        outcomes: list[Applied | RequestError] = []
        for outcome in self.store.apply_batch(entries):
            assert isinstance(outcome, Applied | RequestError)
            if isinstance(outcome, Applied):
                # The applier numbers a command's writes 0, 1, ... and emits one event each.
                self.events.extend((e.kv.mod_revision, sub, e)
                                   for sub, e in enumerate(outcome.events))
            outcomes.append(outcome)
        return outcomes

    def apply(self, cmd: Command) -> Applied:
        outcome = self.apply_batch([cmd])[0]
        assert isinstance(outcome, Applied), outcome
        return outcome

    def expected(self, key: bytes, range_end: bytes | None, start: int, end: int, *,
                 prev_kv: bool, limit: int = 0) -> Replayed:
        chosen = [(rev, sub, e if prev_kv else replace(e, prev_kv=None))
                  for rev, sub, e in self.events
                  if start <= rev <= end and in_range(e.kv.key, key, range_end)]
        if limit and len(chosen) > limit:
            last = chosen[limit - 1][0]
            chosen = [item for item in chosen if item[0] <= last]
        return chosen


@pytest.fixture
def rec() -> Iterator[Recorder]:
    with KVStore.open_temporary() as store:
        yield Recorder(store)


def put(key: bytes, value: bytes = b"v", *, timestamp: int = 0) -> Put:
    return Put(key=key, value=value, timestamp=timestamp)


# -- the property: replay == what the applier emitted ----------------------------------------

LONG = b"L" * (ESCAPED_LIMIT + 3)
"""Keys starting with it share one truncated-slot group, stored in hash order."""

short_keys = st.lists(st.sampled_from(b"\x00ab\xff"), min_size=1, max_size=2).map(bytes)
long_keys = st.builds(lambda s: LONG + s,
                      st.lists(st.sampled_from(b"\x00a\xff"), max_size=1).map(bytes))
keys = st.one_of(short_keys, short_keys, short_keys, long_keys)
values = st.sampled_from([b"", b"v", b"w"])
timestamps = st.integers(0, 1000)


@st.composite
def key_ranges(draw: st.DrawFn) -> tuple[bytes, bytes | None]:
    start = draw(keys)
    end = draw(st.one_of(st.none(), st.just(ALL_KEYS), keys, keys))
    if end is not None and end != ALL_KEYS and end < start:
        start, end = end, start
    return start, end


@st.composite
def puts(draw: st.DrawFn, *, in_txn: bool = False) -> Put:
    return Put(key=draw(keys), value=draw(values),
               prev_kv=draw(st.booleans()), timestamp=0 if in_txn else draw(timestamps))


@st.composite
def deletes(draw: st.DrawFn, *, in_txn: bool = False) -> DeleteRange:
    start, end = draw(key_ranges())
    return DeleteRange(key=start, range_end=end, timestamp=0 if in_txn else draw(timestamps))


@st.composite
def compares(draw: st.DrawFn) -> Compare:
    start, end = draw(key_ranges())
    return Compare(key=start, range_end=end, target=CompareTarget.VERSION,
                   op=draw(st.sampled_from(CompareOp)), value=draw(st.integers(0, 3)))


def _well_formed(cmd: Command) -> bool:
    try:
        check_command(cmd)
    except InvalidArgument:
        return False
    return True


txn_ops = st.one_of(puts(in_txn=True), deletes(in_txn=True))
txns = st.builds(
    lambda c, s, f, t: Txn(compares=tuple(c), success=tuple(s), failure=tuple(f), timestamp=t),
    st.lists(compares(), max_size=1), st.lists(txn_ops, max_size=4),
    st.lists(txn_ops, max_size=3), timestamps,
).filter(_well_formed)


@dataclass(frozen=True)
class CompactBack:
    """Compact ``back`` revisions behind the current one (resolved when its batch runs)."""

    back: int


Step = Command | CompactBack
steps = st.one_of(puts(), puts(), puts(), deletes(), txns, txns, st.builds(
    CompactBack, st.integers(0, 4)))
batches = st.lists(st.lists(steps, min_size=1, max_size=4), min_size=1, max_size=12)


@st.composite
def windows(draw: st.DrawFn, revision: int,
            compact_revision: int) -> tuple[bytes, bytes | None, int, int, int]:
    start, end = draw(st.one_of(key_ranges(), key_ranges(), st.just((b"\x00", ALL_KEYS))))
    # Mostly where history remains; sometimes anywhere (Compacted below it).
    after = st.integers(compact_revision + 1, max(revision, compact_revision + 1))
    first = draw(st.one_of(after, after, after, st.integers(1, revision + 1)))
    last = draw(st.one_of(st.integers(first - 1, revision + 1), st.just(1 << 62)))
    return start, end, first, last, draw(st.sampled_from([0, 0, 1, 2, 3]))


@settings(max_examples=150, deadline=None)
@given(batches, st.data())
def test_replay_gives_back_exactly_the_events_applied(plan: list[list[Step]],
                                                      data: st.DataObject) -> None:
    with KVStore.open_temporary() as store:
        rec = Recorder(store)
        for batch in plan:
            rec.apply_batch([Compact(revision=max(store.revision - s.back, 1))
                             if isinstance(s, CompactBack) else s for s in batch])
        queries: list[tuple[bytes, bytes | None, int, int, int]] = [
            (ALL_KEYS, ALL_KEYS, store.compact_revision + 1, store.revision, 0)]
        queries += data.draw(st.lists(windows(store.revision, store.compact_revision),
                                      min_size=12, max_size=12))
        for key, range_end, start, end, limit in queries:
            for prev_kv in (False, True):
                if start <= store.compact_revision:
                    with pytest.raises(Compacted):
                        replay(store, key, range_end, start, end, prev_kv=prev_kv, limit=limit)
                    continue
                got = replay(store, key, range_end, start, end, prev_kv=prev_kv, limit=limit)
                assert got == rec.expected(key, range_end, start, end, prev_kv=prev_kv,
                                           limit=limit)


# -- explicit cases ----------------------------------------------------------------------------


def test_watch_from_a_past_revision(rec: Recorder) -> None:
    a1 = rec.apply(put(b"a", b"1", timestamp=10)).events[0].kv      # rev 1
    rec.apply(put(b"b", b"x"))                                       # rev 2
    a3 = rec.apply(put(b"a", b"2", timestamp=30)).events[0].kv  # rev 3
    rec.apply(DeleteRange(key=b"a", timestamp=40))                   # rev 4
    assert rec.store.revision == 4
    got = replay(rec.store, b"a", None, 2, 4, prev_kv=True)
    tombstone = KeyValue(key=b"a", value=b"", create_revision=0, mod_revision=4, version=0,
                         lease=0, timestamp=40)
    assert got == [
        (3, 0, Event(type=EventType.PUT, kv=a3, prev_kv=a1)),
        (4, 0, Event(type=EventType.DELETE, kv=tombstone, prev_kv=a3)),
    ]
    assert a3 == KeyValue(key=b"a", value=b"2", create_revision=1, mod_revision=3, version=2,
                          lease=0, timestamp=30)
    assert [e.prev_kv for _, _, e in replay(rec.store, b"a", None, 2, 4)] == [None, None]
    assert got == rec.expected(b"a", None, 2, 4, prev_kv=True)
    # The whole keyspace from revision 1: everything, in order.
    assert replay(rec.store, b"\x00", ALL_KEYS, 1, 4, prev_kv=True) == rec.events


def test_start_just_after_the_compact_revision_works_and_at_it_is_compacted(
        rec: Recorder) -> None:
    rec.apply(put(b"a", b"1"))                    # rev 1
    kept = rec.apply(put(b"a", b"2")).events[0].kv  # rev 2
    rec.apply(put(b"b", b"1"))                    # rev 3
    rec.apply(DeleteRange(key=b"b"))              # rev 4
    rec.apply(put(b"a", b"3"))                    # rev 5
    rec.apply(put(b"b", b"2"))                    # rev 6
    rec.apply(Compact(revision=4))
    assert rec.store.compact_revision == 4

    got = replay(rec.store, b"a", b"c", 5, 6, prev_kv=True)
    # a's version 2 survived compaction as the newest at or below 4, so the replay
    # still knows what revision 5 replaced; b's tombstone went, and b@6 replaced nothing.
    assert [(rev, e.kv.key, e.prev_kv) for rev, _, e in got] == [
        (5, b"a", kept), (6, b"b", None)]
    assert got == rec.expected(b"a", b"c", 5, 6, prev_kv=True)

    with pytest.raises(Compacted) as caught:
        replay(rec.store, b"a", b"c", 4, 6)
    assert caught.value.details == {"compact_revision": 4}
    assert caught.value.compact_revision == 4
    assert "revision 4" in caught.value.message
    assert "compact revision 4" in caught.value.message
    with pytest.raises(Compacted):
        replay(rec.store, b"a", None, 1, 6)


def test_compacted_message_names_both_revisions(rec: Recorder) -> None:
    for value in (b"1", b"2", b"3"):
        rec.apply(put(b"a", value))
    rec.apply(Compact(revision=2))
    with pytest.raises(Compacted) as caught:
        replay(rec.store, b"a", None, 1, 3)
    assert "revision 1" in caught.value.message and "compact revision 2" in caught.value.message
    assert caught.value.to_dict()["details"] == {"compact_revision": 2}


def test_start_below_one_is_invalid(rec: Recorder) -> None:
    rec.apply(put(b"a"))
    with pytest.raises(InvalidArgument):
        replay(rec.store, b"a", None, 0, 1)
    with pytest.raises(InvalidArgument):
        replay(rec.store, b"a", None, 1, 1, limit=-1)


def test_tombstones_replay_as_deletes_with_the_deleted_version(rec: Recorder) -> None:
    rec.apply(put(b"k", b"1"))                       # rev 1
    rec.apply(put(b"k", b"2", timestamp=3))         # rev 2
    delete = rec.apply(DeleteRange(key=b"k", timestamp=99))  # rev 3
    recreate = rec.apply(put(b"k", b"new"))          # rev 4
    rec.apply(DeleteRange(key=b"k"))                 # rev 5
    got = replay(rec.store, b"k", None, 1, 5, prev_kv=True)
    assert [e for _, _, e in got][2] == delete.events[0]
    assert [e for _, _, e in got][3] == recreate.events[0]
    deleted = got[2][2]
    assert deleted.type is EventType.DELETE
    assert deleted.kv == KeyValue(key=b"k", value=b"", create_revision=0, mod_revision=3,
                                  version=0, lease=0, timestamp=99)
    assert deleted.prev_kv is not None and deleted.prev_kv.value == b"2"
    assert deleted.prev_kv.timestamp == 3
    # Creation after a delete replaced nothing.
    assert got[3][2].type is EventType.PUT and got[3][2].prev_kv is None
    assert got[3][2].kv.version == 1 and got[3][2].kv.create_revision == 4
    assert [(r, e.type) for r, _, e in got] == [
        (1, EventType.PUT), (2, EventType.PUT), (3, EventType.DELETE), (4, EventType.PUT),
        (5, EventType.DELETE)]
    assert got == rec.expected(b"k", None, 1, 5, prev_kv=True)


def test_a_window_starting_after_a_delete_sees_a_fresh_creation(rec: Recorder) -> None:
    rec.apply(put(b"k", b"1"))        # rev 1
    rec.apply(DeleteRange(key=b"k"))  # rev 2
    rec.apply(put(b"k", b"2"))        # rev 3
    rec.apply(put(b"k", b"3"))        # rev 4
    got = replay(rec.store, b"k", None, 3, 4, prev_kv=True)
    # The record just before the window is a tombstone: the key did not exist.
    assert got[0][2].prev_kv is None
    assert got[1][2].prev_kv == got[0][2].kv
    assert got == rec.expected(b"k", None, 3, 4, prev_kv=True)
    # Starting at the delete itself gives the DELETE with the version it removed.
    deleted = replay(rec.store, b"k", None, 2, 2, prev_kv=True)[0][2]
    assert deleted.type is EventType.DELETE
    assert deleted.prev_kv is not None and deleted.prev_kv.value == b"1"


def test_events_of_one_revision_keep_their_order(rec: Recorder) -> None:
    for key in (b"a", b"b", b"c", b"d"):
        rec.apply(put(key, b"0"))                   # revs 1-4
    # Writes in an order unlike key order: c, a, then a range delete of b and d.
    txn = rec.apply(Txn(success=(put(b"c", b"1"), put(b"a", b"1"),
                                 DeleteRange(key=b"b", range_end=b"bz"),
                                 DeleteRange(key=b"d")), timestamp=7))
    assert len(txn.events) == 4
    got = replay(rec.store, b"a", ALL_KEYS, 5, 5, prev_kv=True)
    assert [(rev, sub) for rev, sub, _ in got] == [(5, 0), (5, 1), (5, 2), (5, 3)]
    assert tuple(e for _, _, e in got) == txn.events
    assert [e.kv.key for _, _, e in got] == [b"c", b"a", b"b", b"d"]
    # A range delete's events follow key order, as the applier wrote them.
    rec.apply(put(b"b", b"again"))                                 # rev 6
    multi = rec.apply(DeleteRange(key=b"a", range_end=ALL_KEYS))  # rev 7
    got = replay(rec.store, b"a", ALL_KEYS, 7, 7, prev_kv=True)
    assert tuple(e for _, _, e in got) == multi.events
    assert [(sub, e.kv.key) for _, sub, e in got] == [(0, b"a"), (1, b"b"), (2, b"c")]
    # A narrower range keeps the sub revisions of the full revision.
    got = replay(rec.store, b"b", b"d", 5, 7)
    assert [(rev, sub, e.type, e.kv.key) for rev, sub, e in got] == [
        (5, 0, EventType.PUT, b"c"), (5, 2, EventType.DELETE, b"b"),
        (6, 0, EventType.PUT, b"b"), (7, 1, EventType.DELETE, b"b"),
        (7, 2, EventType.DELETE, b"c")]
    assert got == rec.expected(b"b", b"d", 5, 7, prev_kv=False)


def test_limit_never_splits_a_revision(rec: Recorder) -> None:
    rec.apply(put(b"x"))                                                       # rev 1: 1
    rec.apply(Txn(success=(put(b"a"), put(b"b"), put(b"c"))))                # rev 2: 3
    rec.apply(put(b"y"))                                                       # rev 3: 1
    rec.apply(DeleteRange(key=b"a", range_end=b"d"))                          # rev 4: 3
    every = replay(rec.store, b"\x00", ALL_KEYS, 1, 4)
    assert [rev for rev, _, _ in every] == [1, 2, 2, 2, 3, 4, 4, 4]

    def revs(limit: int, start: int = 1) -> list[int]:
        return [rev for rev, _, _ in replay(rec.store, b"\x00", ALL_KEYS, start, 4,
                                            limit=limit)]

    assert revs(1) == [1]
    assert revs(2) == [1, 2, 2, 2]
    assert revs(4) == [1, 2, 2, 2]
    assert revs(5) == [1, 2, 2, 2, 3]
    assert revs(6) == [1, 2, 2, 2, 3, 4, 4, 4]
    assert revs(100) == revs(0) == [rev for rev, _, _ in every]
    assert revs(1, start=2) == [2, 2, 2]

    # Paging by limit, resuming at the revision after the last one returned, loses
    # and repeats nothing.
    for limit in (1, 2, 3):
        paged: Replayed = []
        start = 1
        while start <= rec.store.revision:
            page = replay(rec.store, b"\x00", ALL_KEYS, start, rec.store.revision,
                          prev_kv=True, limit=limit)
            if not page:
                break
            paged += page
            start = page[-1][0] + 1
        assert paged == replay(rec.store, b"\x00", ALL_KEYS, 1, 4, prev_kv=True)


def test_empty_ranges_and_quiet_windows_give_nothing(rec: Recorder) -> None:
    rec.apply(put(b"a"))         # rev 1
    rec.apply(put(b"m"))         # rev 2
    rec.apply(put(b"a"))         # rev 3
    store = rec.store
    assert replay(store, b"b", b"l", 1, 3) == []                     # no key in range
    assert replay(store, b"nothing", None, 1, 3) == []               # missing key
    assert replay(store, b"a", b"a", 1, 3) == []                     # empty interval
    assert replay(store, b"zz", ALL_KEYS, 1, 3) == []                # past the last key
    assert replay(store, b"m", None, 3, 3) == []                     # quiet window
    assert replay(store, b"a", None, 2, 2) == []
    assert replay(store, b"a", None, 3, 2) == []                     # end before start
    assert replay(store, b"\x00", ALL_KEYS, 4, 1 << 62) == []        # the future
    with KVStore.open_temporary() as empty:
        assert replay(empty, b"\x00", ALL_KEYS, 1, 10, prev_kv=True) == []


def test_prefix_ranges_and_binary_keys(rec: Recorder) -> None:
    for key in (b"a", b"a\x00", b"a\x00b", b"a\x01", b"ab", b"b", b"\xff", b"\xff\xff"):
        rec.apply(put(key))
    rec.apply(DeleteRange.prefix(b"a\x00"))
    for key, end in [(b"a\x00", prefix_end(b"a\x00")), (b"a", b"ab"), (b"\xff", ALL_KEYS),
                     (b"\xff", prefix_end(b"\xff")), (b"a\x00", None)]:
        for prev_kv in (False, True):
            assert replay(rec.store, key, end, 1, rec.store.revision, prev_kv=prev_kv) == \
                rec.expected(key, end, 1, rec.store.revision, prev_kv=prev_kv)
    assert [e.kv.key for _, _, e in replay(rec.store, b"a\x00", prefix_end(b"a\x00"), 9, 9)] \
        == [b"a\x00", b"a\x00b"]


def test_long_keys_in_one_group_are_filtered_by_their_real_keys(rec: Recorder) -> None:
    # Keys sharing a truncated slot prefix sort by hash in the history; ranges
    # that cut through such a group must still select by the key itself.
    long_keys = [LONG + suffix for suffix in (b"", b"\x00", b"a", b"b", b"\xff")]
    for key in long_keys:
        rec.apply(put(key))
    rec.apply(Txn(success=tuple(put(key, b"2") for key in reversed(long_keys))))
    rec.apply(DeleteRange(key=LONG + b"a", range_end=LONG + b"c"))
    last = rec.store.revision
    for start, end in [(LONG, None), (LONG + b"a", None), (LONG + b"\x00", LONG + b"b"),
                       (LONG + b"a", ALL_KEYS), (b"L", LONG + b"a"), (LONG, prefix_end(LONG))]:
        for prev_kv in (False, True):
            got = replay(rec.store, start, end, 1, last, prev_kv=prev_kv)
            assert got == rec.expected(start, end, 1, last, prev_kv=prev_kv)
    assert [e.kv.key for _, _, e in replay(rec.store, LONG + b"\x00", LONG + b"b", 6, 6)] \
        == [LONG + b"a", LONG + b"\x00"]


def test_session_repeats_add_no_events(rec: Recorder) -> None:
    from quorumkv.kv import Session  # noqa: PLC0415  (one test's import)

    rec.apply(Session(client_id=1, seq=1, command=put(b"a", b"1"), timestamp=5))
    rec.apply(Session(client_id=1, seq=1, command=put(b"a", b"1"), timestamp=6))
    rec.apply(put(b"a", b"2"))
    got = replay(rec.store, b"a", None, 1, rec.store.revision, prev_kv=True)
    assert [(rev, e.kv.value) for rev, _, e in got] == [(1, b"1"), (2, b"2")]
    assert got == rec.expected(b"a", None, 1, rec.store.revision, prev_kv=True)
