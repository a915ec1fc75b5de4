"""Backup and restore, end to end: ``quorumkv snapshot save/status/restore`` on real processes.

One source cluster (module fixture) is loaded with keys of several
versions, a deleted key, a compaction and a lease, then backed up twice
while a thread keeps writing (with the command line, and with the client's
``snapshot_save`` and a progress callback). What the backup must hold is
read from the source at the backup's revision before the source stops.
The restore test then makes a brand-new cluster of it (new directories,
new ports) and compares. Every process is stopped by its pid (the
harness, and ``subprocess.run``'s timeout); waits are polls with
generous deadlines, never sleeps for correctness.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cluster_harness
import pytest
from cluster_harness import free_ports, running_cluster, wait_until

from quorumkv.client import ALL_KEYS, AsyncClient, Client, KeyValue, Put
from quorumkv.client.snapshot import offer_to_wire
from quorumkv.errors import (
    CorruptSnapshot,
    QuorumKVError,
    QuorumNotReached,
    StorageError,
    Timeout,
    UnavailableError,
)
from quorumkv.kv import Limits
from quorumkv.server.client_api import ClientServer
from quorumkv.server.config import NodeConfig, parse_initial_cluster
from quorumkv.storage.backup_file import BackupHeader, check_file, parse_header

pytestmark = pytest.mark.timeout(300)

CLI_TIMEOUT = 120.0
PRELOAD_KEYS = 1500
VALUE = b"v" * 800  # ~1.2 MB of values: the image takes several 1 MiB chunks
LEASE_TTL = 3600
NAMES = ("n1", "n2", "n3")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run one CLI command; subprocess.run kills the child by pid if it overruns."""
    return subprocess.run([sys.executable, "-m", "quorumkv.cli", *args], capture_output=True,
                          text=True, timeout=CLI_TIMEOUT, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def failed(result: subprocess.CompletedProcess[str], code: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert f"error ({code}):" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


def everything(c: Client, *, revision: int = 0) -> tuple[list[KeyValue], int]:
    """Every live key (as of ``revision``) with all its fields, and the store's revision."""
    result = c.range(b"\x00", ALL_KEYS, revision=revision)
    assert not result.more
    return list(result.kvs), result.revision


class Writer(threading.Thread):
    """Writes new keys one after another, remembering each acknowledged one's revision."""

    def __init__(self, endpoints: list[str]) -> None:
        super().__init__(name="backup-load", daemon=True)
        self.endpoints = endpoints
        self.stop = threading.Event()
        self.acked: list[tuple[bytes, bytes, int]] = []
        self.lock = threading.Lock()
        self.unknown = 0

    def run(self) -> None:
        with Client(self.endpoints, timeout=10.0) as c:
            i = 0
            while not self.stop.is_set():
                key, value = b"load/%06d" % i, b"w%d" % i
                i += 1
                try:
                    revision = c.put(key, value).revision
                except QuorumKVError:
                    self.unknown += 1  # outcome unknown: claims nothing either way
                    continue
                with self.lock:
                    self.acked.append((key, value, revision))

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def snapshot(self) -> list[tuple[bytes, bytes, int]]:
        with self.lock:
            return list(self.acked)


@dataclass
class Saved:
    file: Path
    api_file: Path
    revision: int
    expected: list[KeyValue]
    """The source's keys at the backup's revision."""
    acked_before: list[tuple[bytes, bytes, int]]
    """Writes acknowledged before the save was started."""
    acked_all: list[tuple[bytes, bytes, int]]
    lease_id: int
    source_cluster_id: int
    older: list[KeyValue]
    """The source's keys five revisions before the backup's: history the backup keeps."""
    progress: list[tuple[int, int]] = field(default_factory=list)
    api_info: Any = None
    save_output: str = ""


def preload(c: Client) -> int:
    """Keys of several versions, a deletion, a compaction and a lease; returns the lease id."""
    batch = 100
    for start in range(0, PRELOAD_KEYS, batch):
        c.txn([], [Put(key=b"pre/%05d" % i, value=VALUE) for i in range(start, start + batch)])
    for version in range(2, 4):
        c.put("pre/00007", b"version %d" % version)
    c.put("doomed", "x")
    c.delete("doomed")
    c.compact(c.put("marker", "before compaction").revision)
    lease = c.grant_lease(LEASE_TTL, keep_alive=False)
    for name in ("a", "b", "c"):
        c.put(f"leased/{name}", name, lease=lease.id)
    return lease.id


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Saved]:
    root = tmp_path_factory.mktemp("backup-source")
    with running_cluster(root) as source:
        source.leader_name()
        eps = ",".join(source.endpoints)
        with source.client(timeout=20.0) as c:
            lease_id = preload(c)
            source_cluster_id = c.membership().cluster_id
        writer = Writer(source.endpoints)
        writer.start()
        try:
            wait_until(lambda: writer.count() >= 20, what="the load to start")
            acked_before = writer.snapshot()
            file = root / "backup.db"
            output = ok(cli("snapshot", "save", str(file), "--endpoints", eps))
            after_save = writer.count()
            progress: list[tuple[int, int]] = []
            api_file = root / "api.db"
            with source.client(timeout=20.0) as c:
                api_info = c.snapshot_save(api_file,
                                           progress=lambda r, t: progress.append((r, t)))
            # Writes go on after both copies, so some land beyond the backup.
            wait_until(lambda: writer.count() >= after_save + 20, what="writes after the save")
        finally:
            writer.stop.set()
            writer.join(timeout=60)
        assert not writer.is_alive()
        header = check_file(file).header
        assert header.revision - 5 > header.compact_revision
        with source.client(timeout=20.0) as c:
            expected, _ = everything(c, revision=header.revision)
            older, _ = everything(c, revision=header.revision - 5)
        yield Saved(file=file, api_file=api_file, revision=header.revision, expected=expected,
                    acked_before=acked_before, acked_all=writer.snapshot(), lease_id=lease_id,
                    source_cluster_id=source_cluster_id, older=older, progress=progress,
                    api_info=api_info, save_output=output)


def test_save_holds_every_write_acknowledged_before_it(saved: Saved) -> None:
    assert f"Snapshot saved at {saved.file}" in saved.save_output
    assert f"revision:         {saved.revision}\n" in saved.save_output
    assert not saved.file.with_name(saved.file.name + ".part").exists()
    by_key = {kv.key: kv for kv in saved.expected}
    for key, value, revision in saved.acked_before:
        assert revision <= saved.revision
        assert by_key[key].value == value and by_key[key].mod_revision == revision
    # The backup is one point in the history: exactly the writes up to its revision.
    for key, value, revision in saved.acked_all:
        if revision <= saved.revision:
            assert by_key[key].value == value and by_key[key].mod_revision == revision
        else:
            assert key not in by_key
    assert any(revision > saved.revision for _, _, revision in saved.acked_all)
    header = check_file(saved.file).header
    assert header.key_count == len(saved.expected)
    assert header.cluster_id == saved.source_cluster_id and header.member in NAMES
    assert header.compact_revision > 0


def test_the_client_saves_with_progress(saved: Saved) -> None:
    info = check_file(saved.api_file)
    assert info == saved.api_info
    assert info.header.revision >= saved.revision
    received = [r for r, _ in saved.progress]
    assert received == sorted(received) and received[-1] == info.file_size
    assert {t for _, t in saved.progress} == {info.file_size}
    assert len(saved.progress) >= 3  # the offer, then several chunks


def test_status_shows_and_checks_a_backup(saved: Saved) -> None:
    text = ok(cli("snapshot", "status", str(saved.file)))
    info = check_file(saved.file)
    for line in (f"revision:         {saved.revision}", f"keys:             "
                 f"{len(saved.expected)}", f"sha256:           {info.sha256}",
                 "format version:   1", f"source cluster:   {saved.source_cluster_id}",
                 f"size:             {info.file_size} bytes", "checksum:         OK"):
        assert line in text, text
    doc = json.loads(ok(cli("--json", "snapshot", "status", str(saved.file))))
    assert doc == json.loads(ok(cli("snapshot", "status", str(saved.file), "--json")))
    assert (doc["revision"], doc["key_count"], doc["size"], doc["sha256"]) == (
        saved.revision, len(saved.expected), info.file_size, info.sha256)
    assert (doc["applied_index"], doc["member"], doc["checksum"]) == (
        info.header.applied_index, info.header.member, "ok")


def _restore_args(file: Path, name: str, data_dir: Path, initial: str,
                  clients: str) -> list[str]:
    return ["snapshot", "restore", str(file), "--name", name, "--data-dir", str(data_dir),
            "--initial-cluster", initial, "--client-urls", clients]


def test_restore_makes_a_new_cluster_with_the_same_data(
        saved: Saved, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ports = free_ports(3 * len(NAMES))
    # The harness's own naming: peers first, then client ports, then HTTP ports.
    initial = ",".join(f"{n}=127.0.0.1:{ports[i]}" for i, n in enumerate(NAMES))
    clients = ",".join(f"{n}=127.0.0.1:{ports[len(NAMES) + i]}" for i, n in enumerate(NAMES))
    new_id = NodeConfig(name="n1", data_dir=tmp_path,
                        initial_cluster=parse_initial_cluster(initial)).cluster_id
    for name in NAMES:
        doc = json.loads(ok(cli(*_restore_args(saved.file, name, tmp_path / name, initial,
                                               clients), "--json")))
        assert doc["cluster_id"] == new_id and doc["member"] == name
        assert doc["backup"]["revision"] == saved.revision
    assert new_id != saved.source_cluster_id
    # running_cluster starts the members on these very ports and directories.
    monkeypatch.setattr(cluster_harness, "free_ports", lambda count: ports)
    with running_cluster(tmp_path) as restored:
        monkeypatch.undo()  # the members have their ports; a joiner gets fresh ones
        restored.leader_name()
        scan = json.loads(ok(cli("scan", "--limit", "1", "--json", "--endpoints",
                                 ",".join(restored.endpoints))))
        assert (scan["revision"], scan["count"]) == (saved.revision, len(saved.expected))
        with restored.client(timeout=20.0) as c:
            kvs, revision = everything(c)
            assert revision == saved.revision
            assert kvs == saved.expected  # keys, values, create/mod revision, version, lease
            assert everything(c, revision=saved.revision - 5)[0] == saved.older
            listing = c.membership()
            assert listing.cluster_id == new_id
            assert sorted((m.name, m.peer_address, m.client_address, m.voter)
                          for m in listing.members) == [
                (n, f"127.0.0.1:{ports[i]}", f"127.0.0.1:{ports[len(NAMES) + i]}", True)
                for i, n in enumerate(NAMES)]
            assert saved.lease_id in c.leases()
            assert c.get("leased/a") is not None
            assert c.get("leased/a").lease == saved.lease_id  # type: ignore[union-attr]

            def digests() -> dict[str, tuple[int, str]]:
                out = {}
                for n in restored.nodes:
                    with Client([n.client_address], timeout=5.0) as one:
                        d = one.digest()
                    out[n.name] = (d["applied_index"], d["digest"])
                return out

            wait_until(lambda: len(set(digests().values())) == 1,
                       what="the same digest on every restored member")
            # History continues from the backup's revision.
            assert c.put("after-restore", "yes").revision == saved.revision + 1
            assert c.get("pre/00007").version == 3  # type: ignore[union-attr]
            assert c.put("pre/00007", "next").revision == saved.revision + 2
            assert c.get("pre/00007").version == 4  # type: ignore[union-attr]
            wait_until(lambda: len(set(digests().values())) == 1,
                       what="the same digest after new writes")
            # A member that joins later starts from the restored snapshot, like any joiner.
            restored.add_joiner(tmp_path, "n4").start()
            wait_until(lambda: any(m.name == "n4" and m.voter for m in c.member_list()),
                       what="n4 to join and be promoted")
            wait_until(lambda: len(digests()) == 4 and len(set(digests().values())) == 1,
                       what="the same digest on the joiner")


def _damaged(saved: Saved, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Damaged copies of the backup, with what the error must say."""
    data = saved.file.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    cases = {"flipped": (bytes(flipped), "checksum mismatch"),
             "truncated": (data[:-100], "is truncated"),
             "header-only": (data[:20], "is truncated"),
             "extended": (data + b"\x00", "bytes more than its header"),
             "foreign": (b"not a backup at all\n" * 10, "is not a quorumkv backup file"),
             "empty": (b"", "is empty")}
    out = {}
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.db"
        path.write_bytes(content)
        out[name] = (path, message)
    return out


def test_a_damaged_backup_is_refused_by_status_and_restore(saved: Saved, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    initial = f"n1=127.0.0.1:{port}"
    for name, (path, message) in _damaged(saved, tmp_path).items():
        assert message in failed(cli("snapshot", "status", str(path)), "corrupt_snapshot"), name
        target = tmp_path / f"restored-{name}"
        err = failed(cli(*_restore_args(path, "n1", target, initial, f"n1=127.0.0.1:{port}")),
                     "corrupt_snapshot")
        assert message in err, name
        assert not target.exists(), name
    # Nothing half-made is left beside the targets either.
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    failed(cli("snapshot", "status", str(tmp_path / "missing.db")), "storage_error")


def test_restore_refuses_a_non_empty_directory_and_bad_arguments(saved: Saved,
                                                                 tmp_path: Path) -> None:
    (port,) = free_ports(1)
    initial = f"n1=127.0.0.1:{port}"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something").write_text("mine")
    err = failed(cli(*_restore_args(saved.file, "n1", busy, initial, initial)),
                 "data_dir_error")
    assert "is not empty" in err
    assert [p.name for p in busy.iterdir()] == ["something"]
    failed(cli(*_restore_args(saved.file, "n9", tmp_path / "x", initial, initial)),
           "invalid_argument")
    assert not (tmp_path / "x").exists()
    # An empty directory is fine.
    empty = tmp_path / "empty"
    empty.mkdir()
    out = ok(cli(*_restore_args(saved.file, "n1", empty, initial, initial)))
    assert f"revision {saved.revision}" in out and "start it with: quorumkv serve" in out
    assert (empty / "member.json").is_file()


# -- the stream itself, against an in-process client port ------------------------------------


class MemorySource:
    """A backup held in memory, that can fail or pause at an offset."""

    def __init__(self, data: bytes, *, fail_at: int | None = None,
                 pause_at: int | None = None) -> None:
        self.data = data
        self.offset = 0
        self.fail_at = fail_at
        self.pause_at = pause_at
        self.paused = asyncio.Event()
        self.resume = asyncio.Event()
        self.closed = asyncio.Event()

    @property
    def size(self) -> int:
        return len(self.data)

    async def read(self, max_bytes: int) -> bytes:
        if self.pause_at is not None and self.offset >= self.pause_at:
            self.paused.set()
            await self.resume.wait()
            self.pause_at = None
        if self.fail_at is not None and self.offset >= self.fail_at:
            raise StorageError("the disk went away")
        data = self.data[self.offset:self.offset + max_bytes]
        self.offset += len(data)
        return data

    async def close(self) -> None:
        self.closed.set()


class SnapshotNode:
    """Just enough of a node to answer hello and snapshot with the sources it is given."""

    def __init__(self, *sources: MemorySource) -> None:
        self.sources = list(sources)

    def hello(self) -> dict[str, Any]:
        return {"name": "n1", "id": 1, "cluster_id": 7}

    async def snapshot(self) -> tuple[dict[str, Any], MemorySource]:
        source = self.sources.pop(0)
        data = source.data
        parsed = parse_header(data, "memory")
        assert parsed is not None
        return offer_to_wire(parsed, {"revision": parsed.revision}), source


def memory_backup(image_size: int = 300_000) -> tuple[bytes, BackupHeader]:
    image = bytes(i % 251 for i in range(image_size))
    h = BackupHeader(cluster_id=7, member="n1", applied_index=10, applied_term=2,
                     revision=9, compact_revision=0, key_count=3, image_size=len(image),
                     created_ns=1)
    body = h.encode() + image
    return body + hashlib.sha256(body).digest(), h


@asynccontextmanager
async def client_port(node: SnapshotNode, max_frame: int = 64 << 10,
                      ) -> AsyncIterator[ClientServer]:
    server = ClientServer(node, host="127.0.0.1", port=0, limits=Limits(),  # type: ignore[arg-type]
                          max_frame=max_frame)
    await server.start()
    try:
        yield server
    finally:
        await server.close(grace=WAIT)


def run(coro: Awaitable[None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, 60)
    asyncio.run(bounded())


WAIT = 10.0


def test_a_stream_in_many_frames_becomes_one_checked_file(tmp_path: Path) -> None:
    data, h = memory_backup()
    source = MemorySource(data)
    seen: list[tuple[int, int]] = []

    async def main() -> None:
        async with client_port(SnapshotNode(source)) as server, \
                AsyncClient([f"127.0.0.1:{server.port}"]) as c:
            info = await c.snapshot_save(tmp_path / "b.db",
                                         progress=lambda r, t: seen.append((r, t)))
            assert info.header == h and info.file_size == len(data)
            await asyncio.wait_for(source.closed.wait(), WAIT)

    run(main())
    assert (tmp_path / "b.db").read_bytes() == data
    assert not (tmp_path / "b.db.part").exists()
    assert len(seen) > len(data) // (64 << 10)  # one call per frame, and one first
    assert [r for r, _ in seen] == sorted(r for r, _ in seen) and seen[-1] == (len(data),
                                                                               len(data))


def test_an_error_mid_stream_leaves_no_file_and_the_connection_usable(tmp_path: Path) -> None:
    data, _ = memory_backup()
    failing, good = MemorySource(data, fail_at=100_000), MemorySource(data)
    target = tmp_path / "b.db"
    target.write_bytes(b"an older backup")

    async def main() -> None:
        async with client_port(SnapshotNode(failing, good)) as server, \
                AsyncClient([f"127.0.0.1:{server.port}"]) as c:
            with pytest.raises(StorageError, match="the disk went away") as caught:
                await c.snapshot_save(target)
            assert caught.value.remote
            assert failing.closed.is_set()
            assert target.read_bytes() == b"an older backup"
            assert not (tmp_path / "b.db.part").exists()
            await c.snapshot_save(target)  # the same connection streams the next one

    run(main())
    assert target.read_bytes() == data


def test_bytes_damaged_in_transit_are_refused(tmp_path: Path) -> None:
    data, h = memory_backup()
    damaged = bytearray(data)
    damaged[h.header_size + 1000] ^= 0x04

    async def main() -> None:
        async with client_port(SnapshotNode(MemorySource(bytes(damaged)))) as server, \
                AsyncClient([f"127.0.0.1:{server.port}"]) as c:
            with pytest.raises(CorruptSnapshot, match="checksum mismatch"):
                await c.snapshot_save(tmp_path / "b.db")

    run(main())
    assert not (tmp_path / "b.db").exists() and not (tmp_path / "b.db.part").exists()


def test_a_silent_node_is_given_up_on_and_stops_streaming(tmp_path: Path) -> None:
    data, _ = memory_backup(4 << 20)
    source = MemorySource(data, pause_at=100_000)

    async def main() -> None:
        async with client_port(SnapshotNode(source)) as server, \
                AsyncClient([f"127.0.0.1:{server.port}"]) as c:
            with pytest.raises(Timeout, match=r"sent no part of the backup for 0\.5s"):
                await c.snapshot_save(tmp_path / "b.db", stall_timeout=0.5)
            # The client dropped the connection: the node stops at its next chunk.
            source.resume.set()
            await asyncio.wait_for(source.closed.wait(), WAIT)
            assert source.offset < len(data)

    run(main())
    assert not (tmp_path / "b.db").exists() and not (tmp_path / "b.db.part").exists()


def test_a_node_shutting_down_ends_the_stream_with_an_error(tmp_path: Path) -> None:
    data, _ = memory_backup()
    source = MemorySource(data, pause_at=100_000)

    async def main() -> None:
        async with client_port(SnapshotNode(source)) as server, \
                AsyncClient([f"127.0.0.1:{server.port}"]) as c:
            saving = asyncio.ensure_future(c.snapshot_save(tmp_path / "b.db"))
            await asyncio.wait_for(source.paused.wait(), WAIT)
            closing = asyncio.ensure_future(server.close(grace=WAIT))
            await asyncio.sleep(0)  # close() marks the server closing before its first wait
            source.resume.set()
            with pytest.raises(UnavailableError, match="shutting down"):
                await saving
            await closing
            assert source.closed.is_set()

    run(main())
    assert not (tmp_path / "b.db.part").exists()


class RefusingNode(SnapshotNode):
    """A member cut off from the leader: it cannot take a read index."""

    async def snapshot(self) -> tuple[dict[str, Any], MemorySource]:
        raise QuorumNotReached("a majority did not confirm the read index in time")


def test_a_node_that_cannot_start_a_backup_is_left_for_the_next(tmp_path: Path) -> None:
    data, _ = memory_backup()

    async def main() -> None:
        async with client_port(RefusingNode()) as cut_off, \
                client_port(SnapshotNode(MemorySource(data))) as healthy, \
                AsyncClient([f"127.0.0.1:{cut_off.port}", f"127.0.0.1:{healthy.port}"]) as c:
            await c.snapshot_save(tmp_path / "b.db")
        async with client_port(RefusingNode()) as cut_off, \
                AsyncClient([f"127.0.0.1:{cut_off.port}"]) as c:
            with pytest.raises(Timeout, match="a majority did not confirm"):
                await c.snapshot_save(tmp_path / "c.db", stall_timeout=1.0)

    run(main())
    assert (tmp_path / "b.db").read_bytes() == data
    assert not (tmp_path / "c.db").exists() and not (tmp_path / "c.db.part").exists()
