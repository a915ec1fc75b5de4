"""Snapshot files: atomic save, checksum on open, latest, prune, foreign files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quorumkv.errors import DataDirError, StorageError
from quorumkv.raft.entries import ConfState, SnapshotMeta
from quorumkv.storage import CorruptSnapshot, SnapshotStore
from quorumkv.storage.snapshot_store import SnapshotWriter


def meta(index: int, term: int = 1) -> SnapshotMeta:
    return SnapshotMeta(index=index, term=term,
                        conf=ConfState(voters=frozenset({1, 2, 3}), learners=frozenset({4})))


def save(store: SnapshotStore, m: SnapshotMeta, image: bytes, tmp: Path) -> None:
    src = tmp / f"image-{m.term}-{m.index}"
    src.write_bytes(image)
    store.save_from_file(m, src)


def test_save_and_reopen(tmp_path: Path) -> None:
    image = os.urandom(300_000)
    store = SnapshotStore(tmp_path / "snap")
    assert store.latest() is None
    save(store, meta(10), image, tmp_path)
    again = SnapshotStore(tmp_path / "snap")
    assert again.latest() == meta(10)
    with again.open_reader(meta(10)) as reader:
        assert reader.meta == meta(10)
        assert reader.image_size == len(image)
        assert b"".join(reader.image_chunks(4096)) == image
        reader.copy_image_to(tmp_path / "restored")
    assert (tmp_path / "restored").read_bytes() == image
    assert sorted(p.name for p in (tmp_path / "snap").iterdir()) == [
        "0000000000000001-000000000000000a.snap"]


def test_writer_streams_and_latest_is_the_highest_index(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    for index, term in ((5, 1), (20, 2), (12, 2)):
        with store.begin(meta(index, term)) as w:
            w.write(b"a" * index)
            w.write(memoryview(b"b" * 3))
            w.commit()
    assert store.latest() == meta(20, 2)
    assert store.snapshots() == [meta(5, 1), meta(12, 2), meta(20, 2)]
    with store.open_reader(meta(12, 2)) as r:
        assert b"".join(r.image_chunks()) == b"a" * 12 + b"bbb"


def test_empty_image(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with store.begin(meta(1)) as w:
        w.commit()
    with store.open_reader(meta(1)) as r:
        assert list(r.image_chunks()) == []


def test_unfinished_saves_leave_nothing_behind(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with pytest.raises(RuntimeError), store.begin(meta(3)) as w:
        w.write(b"half an image")
        raise RuntimeError("state machine failed mid-snapshot")
    w2 = store.begin(meta(4))
    w2.write(b"x")
    w2.abort()
    assert list(tmp_path.iterdir()) == []
    assert store.latest() is None
    # A crash mid-save leaves a .tmp file, which the next start removes.
    w3 = store.begin(meta(5))
    w3.write(b"y")
    assert [p.suffix for p in tmp_path.iterdir()] == [".tmp"]
    SnapshotStore(tmp_path)
    assert list(tmp_path.iterdir()) == []
    w3.abort()


def test_committed_writer_refuses_more(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    w = store.begin(meta(1))
    w.commit()
    with pytest.raises(StorageError):
        w.write(b"more")


@pytest.mark.parametrize("where", ["image", "meta", "trailer_crc"])
def test_checksum_mismatch_is_detected_on_open(tmp_path: Path, where: str) -> None:
    store = SnapshotStore(tmp_path)
    save(store, meta(7), b"0123456789" * 1000, tmp_path / "..")
    path = store.path_for(meta(7))
    size = path.stat().st_size
    offset = {"image": size // 2, "meta": 20, "trailer_crc": size - 12}[where]
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))
    with pytest.raises(CorruptSnapshot) as info:
        store.open_reader(meta(7)).close()
    assert isinstance(info.value, StorageError)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    assert "checksum mismatch" in str(info.value)


def test_truncated_or_foreign_snapshot_file(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    save(store, meta(7), b"z" * 1000, tmp_path / "..")
    path = store.path_for(meta(7))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CorruptSnapshot, match="truncated"):
        store.open_reader(meta(7))
    path.write_bytes(b"PK\x03\x04 not a snapshot at all")
    with pytest.raises(CorruptSnapshot, match="not a quorumkv snapshot"):
        store.latest()


def test_open_reader_of_a_missing_snapshot(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no snapshot"):
        SnapshotStore(tmp_path).open_reader(meta(99))


def test_foreign_file_in_the_directory(tmp_path: Path) -> None:
    (tmp_path / "data.mdb").write_bytes(b"x")
    with pytest.raises(DataDirError, match=r"data\.mdb"):
        SnapshotStore(tmp_path)


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    for i in (1, 2, 3, 4):
        save(store, meta(i * 10, term=i), b"img%d" % i, tmp_path / "..")
    # A reader of a snapshot that gets pruned keeps reading it.
    reader = store.open_reader(meta(10, 1))
    removed = store.prune(keep=2)
    assert sorted(p.name for p in removed) == sorted(
        store.path_for(m).name for m in (meta(10, 1), meta(20, 2)))
    assert store.snapshots() == [meta(30, 3), meta(40, 4)]
    assert b"".join(reader.image_chunks()) == b"img1"
    reader.close()
    assert store.prune(keep=2) == []
    store.prune(keep=1)
    assert store.snapshots() == [meta(40, 4)]
    with pytest.raises(ValueError):
        store.prune(keep=0)


def test_name_that_does_not_match_the_content(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    save(store, meta(7), b"z", tmp_path / "..")
    store.path_for(meta(7)).rename(store.path_for(meta(8)))
    with pytest.raises(CorruptSnapshot, match="does not match its name"):
        store.latest()
    with pytest.raises(CorruptSnapshot):
        store.open_reader(meta(8))


def test_a_streamed_save_writes_what_the_producer_wrote(tmp_path: Path) -> None:
    image = os.urandom(3_000_000)  # many times a pipe's buffer

    def produce(fd: int) -> None:
        view = memoryview(image)
        while view:
            view = view[os.write(fd, view[:65536]):]

    store = SnapshotStore(tmp_path)
    store.save_streamed(meta(7), produce, chunk_size=100_000)
    with store.open_reader(meta(7)) as reader:
        assert b"".join(reader.image_chunks(1 << 20)) == image


def test_a_producer_that_fails_leaves_no_snapshot(tmp_path: Path) -> None:
    def produce(fd: int) -> None:
        os.write(fd, b"x" * 100_000)
        raise StorageError("the image could not be read")

    store = SnapshotStore(tmp_path)
    with pytest.raises(StorageError, match="could not be read"):
        store.save_streamed(meta(7), produce)
    assert store.latest() is None
    assert list(tmp_path.iterdir()) == []


def test_a_failing_save_stops_a_producer_that_is_still_writing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The disk fails after the first chunk: the producer, blocked on a full pipe,
    # must be released (its next write fails) rather than hang the save.
    real = SnapshotWriter.write
    chunks: list[int] = []

    def write(self: SnapshotWriter, data: bytes | bytearray | memoryview) -> None:
        if chunks:
            raise StorageError("writing a snapshot failed: No space left on device")
        chunks.append(len(data))
        real(self, data)

    monkeypatch.setattr(SnapshotWriter, "write", write)
    refused: list[OSError] = []

    def produce(fd: int) -> None:
        try:
            while True:
                os.write(fd, b"y" * 65536)
        except OSError as e:
            refused.append(e)
            raise

    store = SnapshotStore(tmp_path)
    with pytest.raises(StorageError, match="No space left"):
        store.save_streamed(meta(7), produce, chunk_size=65536)
    assert len(refused) == 1  # EPIPE: it stopped, and the save waited for it
    assert store.latest() is None
    assert list(tmp_path.iterdir()) == []
