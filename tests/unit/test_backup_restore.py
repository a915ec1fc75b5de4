"""Taking a backup of a store and restoring it as a member of a new cluster (server/backup.py).

Real stores and data directories in a temporary directory, no processes:
what a restored member starts from (store, registry, configuration,
snapshot, log) is checked here; that the members then form a working
cluster is tests/integration/test_backup.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from quorumkv.errors import (
    CorruptSnapshot,
    DataDirError,
    InvalidArgument,
    ResourceExhausted,
    StorageError,
)
from quorumkv.kv import (
    ALL_KEYS,
    Command,
    Compact,
    DeleteRange,
    KVStore,
    LeaseGrant,
    Put,
    RangeRequest,
    Session,
)
from quorumkv.kv.members import MemberRecord, MembershipChange
from quorumkv.raft.entries import ConfState, HardState
from quorumkv.server.backup import (
    MAX_CONCURRENT,
    BackupSource,
    discard_backup_copies,
    prepare_backup,
    restore_backup,
)
from quorumkv.server.config import NodeConfig, node_id_for, parse_initial_cluster
from quorumkv.server.node import Node
from quorumkv.storage import SnapshotStore, WriteAheadLog
from quorumkv.storage.backup_file import DIGEST_SIZE, BackupHeader, check_file

NEW_CLUSTER = "n1=127.0.0.1:9001,n2=127.0.0.1:9002,a=127.0.0.1:9003"
NEW_CLIENTS = "n1=127.0.0.1:9101,n2=127.0.0.1:9102,a=127.0.0.1:9103"


class Source:
    """A store fed entries as an old cluster of members a, b, c (and learner d) would."""

    def __init__(self, path: Path) -> None:
        self.kv = KVStore.open(path)
        self.index = 0
        conf = ConfState()
        for name in ("a", "b", "c", "d"):
            node_id = node_id_for(name)
            if name == "d":
                conf = ConfState(voters=conf.voters, learners=frozenset({node_id}))
            else:
                conf = ConfState(voters=conf.voters | {node_id}, learners=conf.learners)
            self.index += 1
            self.kv.apply_batch([(self.index, 1, MembershipChange(
                conf=conf, node_id=node_id,
                member=MemberRecord(name=name, peer_address=f"old:{self.index}")))])

    def apply(self, cmd: Command) -> None:
        self.index += 1
        self.kv.apply(self.index, 3, cmd)


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Source]:
    src = Source(tmp_path / "source")
    for i in range(300):
        src.apply(Put(key=b"key/%04d" % i, value=b"value %d" % i, timestamp=1000 + i))
    src.apply(Put(key=b"key/0001", value=b"again", timestamp=5000))
    src.apply(DeleteRange(key=b"key/0002"))
    src.apply(Compact(revision=100))
    src.apply(LeaseGrant(id=77, ttl=60))
    src.apply(Put(key=b"leased", value=b"x", lease=77))
    src.apply(Session(client_id=5, seq=1, command=Put(key=b"session", value=b"once"),
                      timestamp=6000))
    try:
        yield src
    finally:
        src.kv.close()


def take_backup(kv: KVStore, directory: Path, *, chunk: int = 4096) -> Path:
    scratch = directory / "scratch"
    scratch.mkdir(exist_ok=True)
    source = prepare_backup(kv, scratch, cluster_id=99, member="a")
    path = directory / "backup.db"
    try:
        with open(path, "wb") as f:
            while data := source.read_sync(chunk):
                f.write(data)
    finally:
        source.close_sync()
    assert not any(scratch.iterdir())  # the copy went with close
    return path


def config(name: str, data_dir: Path, **kw: object) -> NodeConfig:
    clients = {n: f"{h}:{p}" for n, (h, p) in parse_initial_cluster(NEW_CLIENTS).items()}
    return NodeConfig(name=name, data_dir=data_dir,
                      initial_cluster=parse_initial_cluster(NEW_CLUSTER),
                      client_addresses=clients, **kw)  # type: ignore[arg-type]


def everything(kv: KVStore) -> list[object]:
    return list(kv.range(RangeRequest(key=b"\x00", range_end=ALL_KEYS)).kvs)


def test_a_backup_is_the_store_as_of_one_read(source: Source, tmp_path: Path) -> None:
    path = take_backup(source.kv, tmp_path)
    info = check_file(path)
    h = info.header
    assert (h.cluster_id, h.member) == (99, "a")
    assert (h.revision, h.compact_revision) == (source.kv.revision, 100)
    assert (h.applied_index, h.applied_term) == (source.index, 3)
    assert h.key_count == 300 - 1 + 2  # key/* less the deleted one, "leased", "session"
    data = path.read_bytes()
    assert data[-DIGEST_SIZE:] == hashlib.sha256(data[:-DIGEST_SIZE]).digest()


def test_the_source_is_read_once_and_in_order(source: Source, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    backup = prepare_backup(source.kv, scratch, cluster_id=1, member="a")
    # Writes after the copy are not in it.
    source.apply(Put(key=b"later", value=b"not in the backup"))
    pieces = []
    while data := asyncio.run(backup.read(1000)):
        pieces.append(data)
    closed: list[bool] = []
    backup.on_close = lambda: closed.append(True)
    asyncio.run(backup.close())
    asyncio.run(backup.close())
    assert closed == [True]
    assert sum(map(len, pieces)) == backup.size == backup.header.file_size
    assert backup.header.revision == source.kv.revision - 1
    with pytest.raises(StorageError, match="closed"):
        backup.read_sync(10)
    assert not any(scratch.iterdir())


def test_restore_keeps_the_data_and_replaces_the_membership(source: Source,
                                                            tmp_path: Path) -> None:
    path = take_backup(source.kv, tmp_path)
    cfg = config("n1", tmp_path / "new-n1")
    restored = restore_backup(path, cfg)
    new_ids = {node_id_for(n) for n in ("n1", "n2", "a")}
    meta = restored.snapshot
    # Three old members leave (b, c, learner d), three new voters arrive (a is re-added).
    assert meta.index == source.index + 6 and meta.term == 3
    assert meta.conf == ConfState(voters=frozenset(new_ids))
    assert restored.cluster_id == cfg.cluster_id != 99
    assert restored.members == {"n1": "127.0.0.1:9001", "n2": "127.0.0.1:9002",
                                "a": "127.0.0.1:9003"}
    root = tmp_path / "new-n1"
    assert json.loads((root / "member.json").read_text()) == {
        "format": 1, "name": "n1", "node_id": node_id_for("n1"), "cluster_id": cfg.cluster_id}
    with KVStore.open(root / "kv", create=False) as kv:
        assert everything(kv) == everything(source.kv)
        assert (kv.revision, kv.compact_revision, kv.clock) == (
            source.kv.revision, source.kv.compact_revision, source.kv.clock)
        assert kv.leases() == {77: 60} and kv.lease_keys(77) == [b"leased"]
        assert kv.session_count() == source.kv.session_count() == 1
        assert kv.applied_index == meta.index and kv.conf_state == meta.conf
        assert kv.members() == {
            node_id_for(n): MemberRecord(name=n, peer_address=f"127.0.0.1:{9000 + i}",
                                         client_address=f"127.0.0.1:{9100 + i}")
            for i, n in ((1, "n1"), (2, "n2"), (3, "a"))}
    snapshots = SnapshotStore(root / "snap")
    assert snapshots.snapshots() == [meta]
    with snapshots.open_reader(meta) as reader:
        assert reader.image_size > 0
    with WriteAheadLog.open(root / "wal") as wal:
        assert wal.recovered.snapshot == meta
        assert wal.recovered.entries == []
        assert wal.recovered.hard_state == HardState(term=3, commit=meta.index)
    assert not any((root / "tmp").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_every_member_restored_from_one_backup_holds_the_same_state(source: Source,
                                                                     tmp_path: Path) -> None:
    path = take_backup(source.kv, tmp_path)
    digests = set()
    for name in ("n1", "n2", "a"):
        restore_backup(path, config(name, tmp_path / name))
        with KVStore.open(tmp_path / name / "kv", create=False) as kv:
            digests.add((kv.applied_index, kv.digest()))
    assert len(digests) == 1


def test_the_cluster_id_is_the_one_a_bootstrap_derives(source: Source, tmp_path: Path) -> None:
    path = take_backup(source.kv, tmp_path)
    plain = restore_backup(path, config("n1", tmp_path / "plain"))
    token = restore_backup(path, config("n1", tmp_path / "token", cluster_token="s3cret"))
    assert plain.cluster_id == config("n1", tmp_path).cluster_id
    assert token.cluster_id == config("n1", tmp_path, cluster_token="s3cret").cluster_id
    assert plain.cluster_id != token.cluster_id


def test_restore_refuses_a_used_directory_and_a_missing_cluster(source: Source,
                                                                tmp_path: Path) -> None:
    path = take_backup(source.kv, tmp_path)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "wal").mkdir()
    with pytest.raises(DataDirError, match="is not empty"):
        restore_backup(path, config("n1", busy))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataDirError, match="not a directory"):
        restore_backup(path, config("n1", a_file))
    with pytest.raises(InvalidArgument, match="initial-cluster"):
        restore_backup(path, NodeConfig(name="n1", data_dir=tmp_path / "lonely"))
    assert not (tmp_path / "lonely").exists()
    # The first restore made it; a second one into it is refused.
    restore_backup(path, config("n1", tmp_path / "once"))
    with pytest.raises(DataDirError, match="is not empty"):
        restore_backup(path, config("n1", tmp_path / "once"))


def _rewrite(path: Path, out: Path, **changes: object) -> Path:
    """The backup with header fields changed and its digest made to match again."""
    data = path.read_bytes()
    info = check_file(path)
    h = info.header
    fields = {f: getattr(h, f) for f in BackupHeader.__dataclass_fields__}
    fields.update(changes)
    image = data[h.header_size:h.header_size + h.image_size]
    if "image" in fields:
        image = fields.pop("image")  # type: ignore[assignment]
        fields["image_size"] = len(image)
    body = BackupHeader(**fields).encode() + image  # type: ignore[arg-type]
    out.write_bytes(body + hashlib.sha256(body).digest())
    return out


def test_an_image_that_disagrees_with_its_header_is_refused(source: Source,
                                                            tmp_path: Path) -> None:
    path = take_backup(source.kv, tmp_path)
    lying = _rewrite(path, tmp_path / "lying.db", revision=5)
    with pytest.raises(CorruptSnapshot, match="says revision 5"):
        restore_backup(lying, config("n1", tmp_path / "x"))
    garbage = _rewrite(path, tmp_path / "garbage.db", image=b"\x00" * 8192)
    with pytest.raises(CorruptSnapshot, match="not a quorumkv state machine"):
        restore_backup(garbage, config("n1", tmp_path / "y"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_damaged_backup_leaves_nothing_behind(source: Source, tmp_path: Path) -> None:
    path = take_backup(source.kv, tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) - 100] ^= 0x10
    path.write_bytes(bytes(data))
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(CorruptSnapshot, match="checksum mismatch"):
        restore_backup(path, config("n1", target))
    assert target.is_dir() and not any(target.iterdir())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_copies_left_by_a_stopped_node_are_removed_at_start(source: Source,
                                                            tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    copy = prepare_backup(source.kv, scratch, cluster_id=1, member="a")  # as if it crashed
    (scratch / "snap-123").mkdir()  # the Raft group's, not ours
    try:
        discard_backup_copies(scratch)
        assert [p.name for p in scratch.iterdir()] == ["snap-123"]
    finally:
        copy.close_sync()


def test_a_node_prepares_or_sends_a_bounded_number_of_backups(source: Source,
                                                              tmp_path: Path) -> None:
    node = Node(NodeConfig(name="a", data_dir=tmp_path / "node"))
    (tmp_path / "node").mkdir()

    async def take() -> BackupSource:
        return prepare_backup(source.kv, tmp_path / "node", cluster_id=1, member="a")

    node._take_backup = take  # type: ignore[method-assign]
    node.header = dict  # type: ignore[method-assign]

    async def main() -> None:
        first = [await node.snapshot() for _ in range(MAX_CONCURRENT)]
        with pytest.raises(ResourceExhausted, match="already preparing or sending"):
            await node.snapshot()
        await first[0][1].close()  # a finished backup frees its place
        _, again = await node.snapshot()
        for _, backup in [*first[1:], (None, again)]:
            await backup.close()
        assert node._backups == 0
        assert not any((tmp_path / "node").iterdir())

    asyncio.run(main())
