"""The store on disk: applied index bookkeeping, reopening, snapshots, restore, bad directories."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from quorumkv.errors import DataDirError, InvalidArgument, StorageError
from quorumkv.kv import (
    AlreadyApplied,
    Applied,
    Command,
    Compact,
    DeleteRange,
    KVStore,
    Put,
    RangeRequest,
    Txn,
)
from quorumkv.raft.entries import ConfState

VOTERS = ConfState(voters=frozenset({1, 2, 3}), learners=frozenset({4}))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KVStore]:
    with KVStore.open(tmp_path / "kv") as opened:
        yield opened


def some_commands(n: int) -> list[Command]:
    cmds: list[Command] = []
    for i in range(n):
        key = b"k%03d" % (i % 17)
        if i % 7 == 6:
            cmds.append(DeleteRange(key=b"k00", range_end=b"k01", timestamp=i))
        elif i % 11 == 10:
            cmds.append(Txn(success=(Put(key=key, value=b"t"), Put(key=b"other", value=b"o")),
                            timestamp=i))
        else:
            cmds.append(Put(key=key, value=b"v%d" % i, timestamp=i))
    return cmds


# -- the applied index -------------------------------------------------------


def test_a_new_store_is_empty(store: KVStore) -> None:
    assert (store.applied_index, store.applied_term, store.revision, store.compact_revision) == (
        0, 0, 0, 0)
    assert store.conf_state == ConfState()


def test_every_entry_kind_advances_the_applied_index(store: KVStore) -> None:
    store.apply(1, 1, Put(key=b"a", value=b""))
    noop = store.apply_noop(2, 2)
    conf = store.apply_conf_state(3, 2, VOTERS)
    assert isinstance(noop, Applied) and noop.result is None
    assert isinstance(conf, Applied) and conf.conf_state == VOTERS
    with pytest.raises(InvalidArgument):
        store.apply(4, 2, Compact(revision=9))
    assert (store.applied_index, store.applied_term, store.revision) == (4, 2, 1)
    assert store.conf_state == VOTERS


def test_replayed_entries_are_skipped(store: KVStore) -> None:
    store.apply(1, 1, Put(key=b"a", value=b"1"))
    store.apply(2, 1, Put(key=b"a", value=b"2"))
    digest = store.digest()
    assert store.apply(1, 1, Put(key=b"a", value=b"1")) == AlreadyApplied(index=1,
                                                                          applied_index=2)
    assert store.apply_conf_state(2, 1, VOTERS) == AlreadyApplied(index=2, applied_index=2)
    assert store.apply_noop(2, 1) == AlreadyApplied(index=2, applied_index=2)
    assert store.digest() == digest and store.conf_state == ConfState()
    outcomes = store.apply_batch([(2, 1, Put(key=b"a", value=b"2")),
                                  (3, 1, Put(key=b"a", value=b"3"))])
    assert isinstance(outcomes[0], AlreadyApplied) and isinstance(outcomes[1], Applied)
    got = store.get(b"a")
    assert got is not None and got.version == 3


def test_a_gap_or_a_term_going_back_applies_nothing(store: KVStore) -> None:
    store.apply(1, 5, Put(key=b"a", value=b""))
    with pytest.raises(DataDirError, match="skipped"):
        store.apply(3, 5, Put(key=b"b", value=b""))
    with pytest.raises(DataDirError, match="skipped"):
        store.apply_batch([(2, 5, Put(key=b"b", value=b"")), (4, 5, None)])
    with pytest.raises(DataDirError, match="term"):
        store.apply(2, 4, Put(key=b"b", value=b""))
    assert (store.applied_index, store.revision, store.get(b"b")) == (1, 1, None)


def test_a_failed_command_in_a_batch_does_not_stop_the_others(store: KVStore) -> None:
    outcomes = store.apply_batch([(1, 1, Put(key=b"a", value=b"")),
                                  (2, 1, Compact(revision=5)),
                                  (3, 1, Put(key=b"b", value=b""))])
    assert isinstance(outcomes[1], InvalidArgument)
    assert [type(o) for o in outcomes] == [Applied, InvalidArgument, Applied]
    assert (store.applied_index, store.revision) == (3, 2)


def test_sync_and_reopen_keep_the_last_apply(tmp_path: Path) -> None:
    with KVStore.open(tmp_path / "kv") as store:
        store.apply(1, 1, Put(key=b"a", value=b""))
        store.sync()
    with KVStore.open_temporary() as temporary:
        temporary.sync()  # nothing to flush, and no error
    with KVStore.open(tmp_path / "kv", create=False) as store:
        assert store.applied_index == 1


def test_an_empty_batch_does_nothing(store: KVStore) -> None:
    assert store.apply_batch([]) == []
    assert store.applied_index == 0


# -- reopening ---------------------------------------------------------------


def test_reopening_restores_everything(tmp_path: Path) -> None:
    path = tmp_path / "kv"
    with KVStore.open(path) as store:
        store.apply_batch([(i, 2, c) for i, c in enumerate(some_commands(40), start=1)])
        store.apply_conf_state(41, 3, VOTERS)
        store.apply(42, 3, Compact(revision=10))
        before = (store.digest(), store.applied_index, store.applied_term, store.revision,
                  store.compact_revision, store.conf_state,
                  store.range(RangeRequest(key=b"k", range_end=b"l", revision=20)))
    with KVStore.open(path, create=False) as store:
        after = (store.digest(), store.applied_index, store.applied_term, store.revision,
                 store.compact_revision, store.conf_state,
                 store.range(RangeRequest(key=b"k", range_end=b"l", revision=20)))
    assert after == before


def test_digest_tells_states_apart() -> None:
    with KVStore.open_temporary() as a, KVStore.open_temporary() as b:
        a.apply(1, 1, Put(key=b"k", value=b"1"))
        b.apply(1, 1, Put(key=b"k", value=b"2"))
        assert a.digest() != b.digest()
        b.apply(2, 1, Put(key=b"k", value=b"1"))
        assert a.digest() != b.digest()  # same value, different revisions
        a.apply(2, 1, Put(key=b"k", value=b"1"))
        assert a.digest() == b.digest()  # histories differ, live states do not


def test_same_entries_same_digest_however_applied() -> None:
    cmds = some_commands(60)
    with KVStore.open_temporary() as one, KVStore.open_temporary() as batch:
        for i, cmd in enumerate(cmds, start=1):
            one.apply(i, 1, cmd)
        batch.apply_batch([(i, 1, cmd) for i, cmd in enumerate(cmds, start=1)])
        assert one.digest() == batch.digest()


# -- snapshots and restore ---------------------------------------------------


def test_snapshot_is_a_store_of_its_own(store: KVStore, tmp_path: Path) -> None:
    store.apply_batch([(i, 1, c) for i, c in enumerate(some_commands(30), start=1)])
    store.apply_conf_state(31, 2, VOTERS)
    meta = store.snapshot_to(tmp_path / "snap")
    assert (meta.index, meta.term, meta.conf) == (31, 2, VOTERS)
    assert [p.name for p in (tmp_path / "snap").iterdir()] == ["data.mdb"]
    digest = store.digest()
    store.apply(32, 2, Put(key=b"after", value=b""))
    with KVStore.open(tmp_path / "snap", create=False) as copy:
        assert copy.digest() == digest
        assert (copy.applied_index, copy.conf_state) == (31, VOTERS)
        assert copy.get(b"after") is None


def test_a_pinned_image_is_the_store_as_of_the_pin(store: KVStore, tmp_path: Path) -> None:
    store.apply_batch([(i, 1, c) for i, c in enumerate(some_commands(30), start=1)])
    store.apply_conf_state(31, 2, VOTERS)
    digest = store.digest()
    (tmp_path / "copy").mkdir()
    with store.pinned_image() as (meta, image):
        assert (meta.index, meta.term, meta.conf) == (31, 2, VOTERS)
        # A write after the pin is not in the image, though it lands before the copy.
        store.apply(32, 2, Put(key=b"after", value=b""))
        with open(tmp_path / "copy" / "data.mdb", "wb") as f:
            image.write_to(f.fileno())
    with KVStore.open(tmp_path / "copy", create=False) as copy:
        assert copy.digest() == digest
        assert (copy.applied_index, copy.conf_state) == (31, VOTERS)
        assert copy.get(b"after") is None


def test_snapshot_needs_an_empty_destination(store: KVStore, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_bytes(b"")
    with pytest.raises(DataDirError, match="not empty"):
        store.snapshot_to(tmp_path / "full")


def test_snapshot_while_writes_go_on_is_consistent(store: KVStore, tmp_path: Path) -> None:
    cmds = some_commands(400)
    start = threading.Event()

    def write() -> None:
        start.wait()
        for i, cmd in enumerate(cmds, start=1):
            store.apply(i, 1, cmd)

    writer = threading.Thread(target=write)
    writer.start()
    start.set()
    metas = [store.snapshot_to(tmp_path / f"snap{n}") for n in range(5)]
    writer.join()
    for n, meta in enumerate(metas):
        with KVStore.open_temporary() as replay, \
                KVStore.open(tmp_path / f"snap{n}", create=False) as copy:
            replay.apply_batch([(i, 1, c) for i, c in enumerate(cmds[: meta.index], start=1)])
            assert copy.digest() == replay.digest()
            assert copy.applied_index == meta.index


def test_restore_replaces_the_state_and_leaves_the_snapshot_alone(tmp_path: Path) -> None:
    with KVStore.open(tmp_path / "leader") as leader:
        leader.apply_batch([(i, 4, c) for i, c in enumerate(some_commands(25), start=1)])
        leader.snapshot_to(tmp_path / "snap")
        snap_bytes = (tmp_path / "snap" / "data.mdb").read_bytes()
        with KVStore.open(tmp_path / "follower") as follower:
            follower.apply_batch([(i, 1, Put(key=b"old%d" % i, value=b"")) for i in range(1, 40)])
            meta = follower.restore_from(tmp_path / "snap")
            assert (meta.index, meta.term) == (25, 4)
            assert follower.digest() == leader.digest()
            assert (follower.applied_index, follower.applied_term) == (25, 4)
            assert follower.get(b"old1") is None
            follower.apply(26, 4, Put(key=b"next", value=b""))
        with KVStore.open(tmp_path / "follower", create=False) as follower:
            assert follower.applied_index == 26
    assert [p.name for p in (tmp_path / "snap").iterdir()] == ["data.mdb"]
    assert (tmp_path / "snap" / "data.mdb").read_bytes() == snap_bytes
    assert not (tmp_path / "follower" / "restore.tmp").exists()


@pytest.mark.parametrize("make", ["missing", "garbage", "foreign"])
def test_restore_from_a_bad_snapshot_keeps_the_store(store: KVStore, tmp_path: Path,
                                                     make: str) -> None:
    store.apply(1, 1, Put(key=b"a", value=b""))
    bad = tmp_path / "bad"
    bad.mkdir()
    if make == "garbage":
        (bad / "data.mdb").write_bytes(b"not lmdb" * 1000)
    elif make == "foreign":
        env = lmdb.open(str(bad))
        with env.begin(write=True) as txn:
            txn.put(b"hello", b"world")
        env.close()
    with pytest.raises(DataDirError):
        store.restore_from(bad)
    assert store.get(b"a") is not None
    store.apply(2, 1, Put(key=b"b", value=b""))


def test_an_interrupted_restore_is_cleaned_up(tmp_path: Path) -> None:
    with KVStore.open(tmp_path / "kv") as store:
        store.apply(1, 1, Put(key=b"a", value=b""))
    (tmp_path / "kv" / "restore.tmp").mkdir()
    (tmp_path / "kv" / "restore.tmp" / "data.mdb").write_bytes(b"half")
    with KVStore.open(tmp_path / "kv") as store:
        assert store.get(b"a") is not None
    assert not (tmp_path / "kv" / "restore.tmp").exists()


def test_temporary_store_restores_and_cleans_up(tmp_path: Path) -> None:
    with KVStore.open_temporary() as source:
        source.apply(1, 1, Put(key=b"a", value=b""))
        source.snapshot_to(tmp_path / "snap")
    with KVStore.open_temporary() as store:
        store.restore_from(tmp_path / "snap")
        assert store.get(b"a") is not None
        path = store.path
    assert not path.exists()


# -- bad directories and misuse ----------------------------------------------


def test_opening_nothing_without_create(tmp_path: Path) -> None:
    with pytest.raises(DataDirError):
        KVStore.open(tmp_path / "none", create=False)
    assert not (tmp_path / "none").exists()


def test_opening_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(DataDirError):
        KVStore.open(tmp_path / "file")


def test_opening_garbage(tmp_path: Path) -> None:
    (tmp_path / "kv").mkdir()
    (tmp_path / "kv" / "data.mdb").write_bytes(b"\x07" * 8192)
    with pytest.raises(DataDirError):
        KVStore.open(tmp_path / "kv")


def test_opening_someone_elses_lmdb(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path / "other"), max_dbs=2)
    env.open_db(b"kv")
    env.open_db(b"other")
    env.close()
    with pytest.raises(DataDirError, match="not a quorumkv"):
        KVStore.open(tmp_path / "other")


def test_opening_a_newer_format(tmp_path: Path) -> None:
    KVStore.open(tmp_path / "kv").close()
    env = lmdb.open(str(tmp_path / "kv"), max_dbs=2)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"\x07", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(DataDirError, match="format 7"):
        KVStore.open(tmp_path / "kv")


@pytest.mark.parametrize(("key", "record"), [
    (b"state", b"\x93\x01\x02\x03"),           # three fields where four belong
    (b"state", b"\xc1"),                         # not msgpack
    (b"conf", b"\x92\x91\x01\x91\x01"),          # node 1 both voter and learner
    (b"conf", b"\x92\x91\xa1x\x90"),             # a string for a node id
])
def test_opening_corrupt_bookkeeping(tmp_path: Path, key: bytes, record: bytes) -> None:
    KVStore.open(tmp_path / "kv").close()
    env = lmdb.open(str(tmp_path / "kv"), max_dbs=2)
    with env.begin(write=True) as txn:
        txn.put(key, record, db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(StorageError, match="corrupt"):
        KVStore.open(tmp_path / "kv")


@pytest.mark.parametrize(("key", "record"), [
    (b"state", b"\x93\x01\x02\x03"),
    (b"state", b"\xc1"),
    (b"conf", b"\x92\x91\x01\x91\x01"),
    (b"format", b"\x07"),
])
def test_reads_keep_the_decoded_state_only_while_its_records_are_unchanged(
        store: KVStore, key: bytes, record: bytes) -> None:
    store.apply(1, 1, Put(key=b"a", value=b"1"))
    assert store.range(RangeRequest(key=b"a")).revision == 1
    assert store.range(RangeRequest(key=b"a")).revision == 1  # from the kept state
    store.apply(2, 1, Put(key=b"a", value=b"2"))
    assert store.range(RangeRequest(key=b"a")).revision == 2
    # Damage a record behind the store's back (its internals: the layout is the point):
    # the next read decodes it again and says so, however recently it read a good one.
    with store._live_env().begin(write=True) as txn:
        txn.put(key, record, db=store._meta)
    with pytest.raises((StorageError, DataDirError), match=r"corrupt|format 7"):
        store.get(b"a")


def test_a_read_decodes_nothing_while_the_state_records_are_unchanged(
        store: KVStore) -> None:
    store.apply(1, 1, Put(key=b"a", value=b"1"))
    reader = store._state_reader
    with store._live_env().begin() as txn:
        first = reader.read(txn)
        assert reader.read(txn) is first
    store.apply(2, 1, Put(key=b"a", value=b"2"))
    with store._live_env().begin() as txn:
        second = reader.read(txn)
    assert (first.revision, second.revision) == (1, 2)


def test_reading_a_corrupt_version(tmp_path: Path) -> None:
    with KVStore.open(tmp_path / "kv") as store:
        store.apply(1, 1, Put(key=b"a", value=b"1"))
    env = lmdb.open(str(tmp_path / "kv"), max_dbs=2)
    with env.begin(write=True) as txn:
        db = env.open_db(b"kv", txn=txn)
        lmdb_key = next(iter(txn.cursor(db)))[0]
        txn.put(lmdb_key, b"\x92\x01\x02", db=db)
    env.close()
    with KVStore.open(tmp_path / "kv") as store, pytest.raises(StorageError, match="corrupt"):
        store.get(b"a")


def test_opening_a_store_twice_in_one_process(store: KVStore) -> None:
    with pytest.raises(DataDirError):
        KVStore.open(store.path)


def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    store = KVStore.open(tmp_path / "kv")
    store.close()
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.apply(1, 1, Put(key=b"a", value=b""))
    with pytest.raises(StorageError, match="closed"):
        store.get(b"a")
    with pytest.raises(StorageError, match="closed"):
        store.snapshot_to(tmp_path / "snap")


def test_a_full_store_fails_the_batch_and_stays_usable(tmp_path: Path) -> None:
    with KVStore.open(tmp_path / "kv", map_size=1 << 20) as store:
        store.apply(1, 1, Put(key=b"small", value=b""))
        with pytest.raises(StorageError, match="full"):
            store.apply_batch([(2, 1, Put(key=b"big", value=b"x" * (2 << 20)))])
        assert store.applied_index == 1
        store.apply(2, 1, Put(key=b"small", value=b"again"))
        assert store.revision == 2
