"""Property tests: the LMDB store against a plain-Python model of etcd's MVCC.

The model is written for clarity, not speed: a dict from key to its list of
versions (tombstones included), scanned in full for every question. Random
sequences of puts, deletes, transactions, compactions and reads go to both;
every result, event, error and read (at every revision) must agree, and
must survive batching, closing and reopening, and snapshot copies.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from quorumkv.errors import Compacted, InvalidArgument, RequestError
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
    Event,
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
    TxnResponse,
    TxnResult,
    check_command,
)
from quorumkv.kv.keys import ESCAPED_LIMIT

INFINITY = 1 << 62
GRANTED = LeaseGrant(id=7, ttl=60)
"""Puts draw lease 7, so every store starts with it granted (at index 1; it takes no
revision, and the model knows no leases: its puts never fail for one)."""


def selects(start: bytes, end: bytes | None, key: bytes) -> bool:
    if end is None:
        return key == start
    return key >= start and (end == ALL_KEYS or key < end)


@dataclass
class Model:
    """etcd's MVCC, the slow and obvious way."""

    revision: int = 0
    compact_revision: int = 0
    versions: dict[bytes, list[KeyValue]] = field(default_factory=dict)
    _begin: int = 0
    _wrote: bool = False
    _events: list[Event] = field(default_factory=list)
    _timestamp: int = 0

    # reads

    def seen(self, key: bytes, revision: int) -> KeyValue | None:
        found = [v for v in self.versions.get(key, []) if v.mod_revision <= revision]
        return found[-1] if found else None

    def live(self, key: bytes, revision: int) -> KeyValue | None:
        kv = self.seen(key, revision)
        return kv if kv is not None and kv.version > 0 else None

    def scan(self, start: bytes, end: bytes | None, revision: int) -> list[KeyValue]:
        found = (self.live(k, revision) for k in sorted(self.versions) if selects(start, end, k))
        return [kv for kv in found if kv is not None]

    def check_revision(self, revision: int, current: int) -> None:
        if revision > current:
            raise InvalidArgument("future revision")
        if revision and revision < self.compact_revision:
            raise Compacted(compact_revision=self.compact_revision)

    def read(self, req: RangeRequest, current: int) -> RangeResult:
        kvs = self.scan(req.key, req.range_end, req.revision or current)
        shown = [] if req.count_only else kvs[: req.limit or None]
        if req.keys_only:
            shown = [replace(kv, value=b"") for kv in shown]
        more = not req.count_only and req.limit > 0 and len(kvs) > req.limit
        return RangeResult(kvs=tuple(shown), count=len(kvs), more=more, revision=current)

    def range(self, req: RangeRequest) -> RangeResult:
        self.check_revision(req.revision, self.revision)
        return self.read(req, self.revision)

    # writes

    def apply(self, cmd: Command) -> tuple[Result, tuple[Event, ...]]:
        self._begin, self._wrote, self._events = self.revision, False, []
        self._timestamp = cmd.timestamp
        result: Result
        if isinstance(cmd, Put):
            result = self.put(cmd)
        elif isinstance(cmd, DeleteRange):
            result = self.delete(cmd)
        elif isinstance(cmd, Txn):
            result = self.txn(cmd)
        else:
            assert isinstance(cmd, Compact), cmd  # plans hold no leases nor sessions
            result = self.compact(cmd)
        if self._wrote:
            self.revision = self._begin + 1
        return result, tuple(self._events)

    @property
    def current(self) -> int:
        return self._begin + 1 if self._wrote else self._begin

    def put(self, op: Put) -> PutResult:
        rev = self._begin + 1
        prev = self.live(op.key, INFINITY)
        kv = KeyValue(key=op.key, value=op.value,
                      create_revision=prev.create_revision if prev else rev, mod_revision=rev,
                      version=prev.version + 1 if prev else 1, lease=op.lease,
                      timestamp=self._timestamp)
        self.versions.setdefault(op.key, []).append(kv)
        self._wrote = True
        self._events.append(Event(type=EventType.PUT, kv=kv, prev_kv=prev))
        return PutResult(revision=rev, prev_kv=prev if op.prev_kv else None)

    def delete(self, op: DeleteRange) -> DeleteResult:
        rev = self._begin + 1
        gone = self.scan(op.key, op.range_end, INFINITY)
        for prev in gone:
            tomb = KeyValue(key=prev.key, value=b"", create_revision=0, mod_revision=rev,
                            version=0, lease=0, timestamp=self._timestamp)
            self.versions[prev.key].append(tomb)
            self._wrote = True
            self._events.append(Event(type=EventType.DELETE, kv=tomb, prev_kv=prev))
        return DeleteResult(revision=self.current, deleted=len(gone),
                            prev_kvs=tuple(gone) if op.prev_kv else ())

    def holds(self, cmp: Compare) -> bool:
        kvs = self.scan(cmp.key, cmp.range_end, INFINITY)
        if not kvs and cmp.target is CompareTarget.VALUE:
            return False
        targets = {
            CompareTarget.VALUE: lambda kv: kv.value,
            CompareTarget.VERSION: lambda kv: kv.version,
            CompareTarget.CREATE_REVISION: lambda kv: kv.create_revision,
            CompareTarget.MOD_REVISION: lambda kv: kv.mod_revision,
            CompareTarget.LEASE: lambda kv: kv.lease,
        }
        actuals = [targets[cmp.target](kv) for kv in kvs] if kvs else [0]
        ops = {
            CompareOp.EQUAL: lambda a, b: a == b,
            CompareOp.NOT_EQUAL: lambda a, b: a != b,
            CompareOp.LESS: lambda a, b: a < b,
            CompareOp.GREATER: lambda a, b: a > b,
        }
        return all(ops[cmp.op](a, cmp.value) for a in actuals)

    def txn(self, txn: Txn) -> TxnResult:
        ok = all(self.holds(c) for c in txn.compares)
        ops = txn.success if ok else txn.failure
        for op in ops:
            if isinstance(op, RangeRequest):
                self.check_revision(op.revision, self._begin)
        responses: list[TxnResponse] = []
        for op in ops:
            if isinstance(op, Put):
                responses.append(self.put(op))
            elif isinstance(op, DeleteRange):
                responses.append(self.delete(op))
            else:
                responses.append(self.read(op, self.current))
        return TxnResult(succeeded=ok, revision=self.current, responses=tuple(responses))

    def compact(self, cmd: Compact) -> CompactResult:
        if cmd.revision <= self.compact_revision:
            raise Compacted(compact_revision=self.compact_revision)
        if cmd.revision > self.revision:
            raise InvalidArgument("future revision")
        for key, versions in list(self.versions.items()):
            old = [v for v in versions if v.mod_revision <= cmd.revision]
            keep = [old[-1]] if old and old[-1].version > 0 else []
            rest = keep + [v for v in versions if v.mod_revision > cmd.revision]
            if rest:
                self.versions[key] = rest
            else:
                del self.versions[key]
        self.compact_revision = cmd.revision
        return CompactResult(revision=self.revision, compact_revision=cmd.revision)


# -- strategies --------------------------------------------------------------

# Long keys exercise truncated slots: one whole group of keys sharing a
# truncated prefix, a prefix whose escape pairs straddle the cut, a key of
# exactly the full-slot limit next to longer keys with the same start.
LONG_PREFIXES = [
    b"L" * (ESCAPED_LIMIT + 5),
    b"L" * ESCAPED_LIMIT,
    b"L" * (ESCAPED_LIMIT - 1),
    b"L" * (ESCAPED_LIMIT - 1) + b"\x00",
    b"\x00" * (ESCAPED_LIMIT // 2 + 3),
]
short_keys = st.lists(st.sampled_from(b"\x00\x01ab\xff"), min_size=1, max_size=3).map(bytes)
long_keys = st.builds(lambda p, s: p + s, st.sampled_from(LONG_PREFIXES),
                      st.lists(st.sampled_from(b"\x00a\xff"), max_size=2).map(bytes))
keys = st.one_of(short_keys, short_keys, short_keys, long_keys)
values = st.sampled_from([b"", b"v", b"w", b"\x00x"])
# Mostly "current", so reads inside a Txn usually run rather than fail.
revisions = st.one_of(st.just(0), st.just(0), st.integers(1, 25))
timestamps = st.integers(0, 2**62)


@st.composite
def key_ranges(draw: st.DrawFn) -> tuple[bytes, bytes | None]:
    start = draw(keys)
    end = draw(st.one_of(st.none(), st.just(ALL_KEYS), keys))
    if end is not None and end != ALL_KEYS and end < start:
        start, end = end, start
    return start, end


@st.composite
def puts(draw: st.DrawFn, *, in_txn: bool = False) -> Put:
    return Put(key=draw(keys), value=draw(values), lease=draw(st.sampled_from([0, 0, 7])),
               prev_kv=draw(st.booleans()), timestamp=0 if in_txn else draw(timestamps))


@st.composite
def deletes(draw: st.DrawFn, *, in_txn: bool = False) -> DeleteRange:
    start, end = draw(key_ranges())
    return DeleteRange(key=start, range_end=end, prev_kv=draw(st.booleans()),
                       timestamp=0 if in_txn else draw(timestamps))


@st.composite
def range_requests(draw: st.DrawFn, *, in_txn: bool = False) -> RangeRequest:
    start, end = draw(key_ranges())
    # A bad revision fails the whole Txn: keep that the exception there.
    revision = draw(st.one_of(st.just(0), st.just(0), st.just(0), st.integers(1, 6))
                    if in_txn else revisions)
    return RangeRequest(key=start, range_end=end, limit=draw(st.integers(0, 3)),
                        revision=revision, keys_only=draw(st.booleans()),
                        count_only=draw(st.booleans()))


@st.composite
def compares(draw: st.DrawFn) -> Compare:
    start, end = draw(key_ranges())
    target = draw(st.sampled_from(CompareTarget))
    value: bytes | int = (draw(values) if target is CompareTarget.VALUE
                          else draw(st.integers(0, 12)))
    return Compare(key=start, range_end=end, target=target,
                   op=draw(st.sampled_from(CompareOp)), value=value)


def _well_formed(cmd: Command) -> bool:
    try:
        check_command(cmd)
    except InvalidArgument:
        return False
    return True


txn_ops = st.one_of(puts(in_txn=True), deletes(in_txn=True), range_requests(in_txn=True))
txns = st.builds(
    lambda c, s, f, t: Txn(compares=tuple(c), success=tuple(s), failure=tuple(f), timestamp=t),
    st.lists(compares(), max_size=2), st.lists(txn_ops, max_size=3),
    st.lists(txn_ops, max_size=3), timestamps,
).filter(_well_formed)
commands: st.SearchStrategy[Command] = st.one_of(
    puts(), puts(), deletes(), txns, txns,
    st.builds(lambda r, t: Compact(revision=r, timestamp=t), revisions, timestamps),
)


@dataclass(frozen=True)
class Read:
    req: RangeRequest


@dataclass(frozen=True)
class CompactBack:
    """Compact ``back`` revisions behind the current one, decided when the step runs.

    Absolute revisions drawn up front mostly land in the future or the
    compacted past; this makes successful compactions common.
    """

    back: int
    timestamp: int

    def resolve(self, model: Model) -> Compact:
        return Compact(revision=max(model.revision - self.back, 1), timestamp=self.timestamp)


Step = Command | CompactBack | Read

compact_backs = st.builds(CompactBack, st.integers(0, 3), timestamps)
plans = st.lists(st.one_of(commands, commands, commands, compact_backs), min_size=4,
                 max_size=30)
steps = st.lists(st.one_of(commands, commands, commands, compact_backs,
                           range_requests().map(Read)), min_size=4, max_size=30)


def concrete(plan: list[Command | CompactBack]) -> tuple[list[Command], list[object], Model]:
    """The plan's commands, the model's outcome for each, and the model after them all."""
    model = Model()
    commands_out: list[Command] = []
    expected: list[object] = []
    for step in plan:
        cmd = step.resolve(model) if isinstance(step, CompactBack) else step
        commands_out.append(cmd)
        expected.append(model_step(model, cmd))
    return commands_out, expected, model


# -- checks ------------------------------------------------------------------


def outcome_of(fn: object, *args: object) -> object:
    """A call's result, or its RequestError reduced to something comparable."""
    assert callable(fn)
    try:
        return fn(*args)
    except RequestError as err:
        return (type(err), getattr(err, "compact_revision", None))


def model_step(model: Model, cmd: Command) -> object:
    try:
        result, events = model.apply(cmd)
    except RequestError as err:
        return (type(err), getattr(err, "compact_revision", None))
    return result, events


def store_outcome(outcome: object) -> object:
    if isinstance(outcome, RequestError):
        return (type(outcome), getattr(outcome, "compact_revision", None))
    assert isinstance(outcome, Applied)
    return outcome.result, outcome.events


def describe(outcome: object) -> str:
    """A label for hypothesis' statistics: is the interesting behaviour being generated?"""
    if isinstance(outcome, tuple) and isinstance(outcome[0], type):
        return outcome[0].__name__
    assert isinstance(outcome, tuple)
    result, events = outcome
    writes = "writes" if events else "writes nothing"
    if isinstance(result, TxnResult):
        branch = "then" if result.succeeded else "else"
        reads = any(isinstance(r, RangeResult) for r in result.responses)
        return f"{branch}, {writes}, {'reads' if reads else 'no reads'}"
    return writes


def check_all_history(store: KVStore, model: Model) -> None:
    assert (store.revision, store.compact_revision) == (model.revision, model.compact_revision)
    assert store.history_size() == sum(len(v) for v in model.versions.values())
    for rev in range(max(model.compact_revision, 1), model.revision + 1):
        req = RangeRequest(key=b"\x00", range_end=ALL_KEYS, revision=rev)
        assert store.range(req) == model.range(req), f"at revision {rev}"
    current = RangeRequest(key=b"\x00", range_end=ALL_KEYS)
    assert store.range(current) == model.range(current)
    if model.compact_revision > 1:
        with pytest.raises(Compacted):
            store.range(RangeRequest(key=b"a", revision=model.compact_revision - 1))


# -- properties --------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(steps)
def test_store_matches_model_step_by_step(plan: list[Step]) -> None:
    model = Model()
    with KVStore.open_temporary() as store:
        store.apply(1, 1, GRANTED)
        for index, step in enumerate(plan, start=2):
            if isinstance(step, Read):
                assert outcome_of(store.range, step.req) == outcome_of(model.range, step.req)
                store.apply_noop(index, 1)
                continue
            cmd = step.resolve(model) if isinstance(step, CompactBack) else step
            expected = model_step(model, cmd)
            got = store_outcome(store.apply_batch([(index, 1, cmd)])[0])
            assert got == expected, cmd
            event(f"{type(cmd).__name__}: {describe(expected)}")
            assert store.applied_index == index
        check_all_history(store, model)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(plans)
def test_batched_apply_survives_reopen_and_snapshot(plan: list[Command | CompactBack]) -> None:
    cmds, expected, model = concrete(plan)
    with tempfile.TemporaryDirectory() as tmp:
        data, copy = Path(tmp) / "data", Path(tmp) / "copy"
        store = KVStore.open(data)
        try:
            outcomes = store.apply_batch(
                [(1, 3, GRANTED)]
                + [(index, 3, cmd) for index, cmd in enumerate(cmds, start=2)])
            assert [store_outcome(o) for o in outcomes[1:]] == expected
            digest = store.digest()
            meta = store.snapshot_to(copy)
            assert (meta.index, meta.term) == (len(plan) + 1, 3)
        finally:
            store.close()

        for path in (data, copy):
            with KVStore.open(path, create=False) as reopened:
                assert reopened.digest() == digest
                assert reopened.applied_index == len(plan) + 1
                check_all_history(reopened, model)


@settings(max_examples=60, deadline=None)
@given(plans, plans)
def test_restore_from_snapshot_then_continue(first_plan: list[Command | CompactBack],
                                             then_plan: list[Command | CompactBack]) -> None:
    """A replica restored from a snapshot and fed the rest of the log ends up identical."""
    first, _, _ = concrete(first_plan)
    then, _, _ = concrete(first_plan + then_plan)
    then = then[len(first):]
    with tempfile.TemporaryDirectory() as tmp, KVStore.open_temporary() as leader, \
            KVStore.open_temporary() as follower:
        leader.apply_batch([(1, 1, GRANTED)]
                           + [(i, 1, cmd) for i, cmd in enumerate(first, start=2)])
        follower.apply_batch([(1, 1, Put(key=b"stale", value=b"x"))])
        leader.snapshot_to(Path(tmp) / "snap")
        follower.restore_from(Path(tmp) / "snap")
        assert follower.digest() == leader.digest()
        rest = [(i, 2, cmd) for i, cmd in enumerate(then, start=len(first) + 2)]
        assert ([store_outcome(o) for o in follower.apply_batch(rest)]
                == [store_outcome(o) for o in leader.apply_batch(rest)])
        assert follower.digest() == leader.digest()
        assert follower.applied_index == leader.applied_index == len(first) + len(then) + 1
