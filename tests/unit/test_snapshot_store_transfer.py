"""Streaming a snapshot to a follower in chunks, and resuming an interrupted transfer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quorumkv.errors import ProtocolError
from quorumkv.raft.entries import ConfState, SnapshotMeta
from quorumkv.storage import CorruptSnapshot, SnapshotReceiver, SnapshotStore
from quorumkv.storage.snapshot_receiver import partial_path

META = SnapshotMeta(index=500, term=3, conf=ConfState(voters=frozenset({1, 2, 3})))
IMAGE = os.urandom(50_000)


@pytest.fixture
def leader(tmp_path: Path) -> SnapshotStore:
    store = SnapshotStore(tmp_path / "leader")
    with store.begin(META) as w:
        w.write(IMAGE)
        w.commit()
    return store


@pytest.fixture
def follower(tmp_path: Path) -> SnapshotStore:
    return SnapshotStore(tmp_path / "follower")


def received_image(store: SnapshotStore) -> bytes:
    with store.open_reader(META) as r:
        return b"".join(r.image_chunks())


@pytest.mark.parametrize("chunk_size", [777, 4096, 1 << 20])
def test_chunked_round_trip(leader: SnapshotStore, follower: SnapshotStore,
                            chunk_size: int) -> None:
    receiver = SnapshotReceiver(follower, META)
    with leader.open_reader(META) as reader:
        for chunk in reader.read_chunks(chunk_size):
            assert receiver.write_chunk(chunk.offset, chunk.data, chunk.done) == \
                chunk.offset + len(chunk.data)
        assert receiver.finished
        assert receiver.offset == reader.size
    assert follower.latest() == META
    assert received_image(follower) == IMAGE
    assert sorted(p.name for p in follower.directory.iterdir()) == [
        follower.path_for(META).name]


def test_resume_after_interruption(leader: SnapshotStore, follower: SnapshotStore) -> None:
    with leader.open_reader(META) as reader:
        receiver = SnapshotReceiver(follower, META)
        for chunk in reader.read_chunks(4096):
            receiver.write_chunk(chunk.offset, chunk.data, chunk.done)
            if chunk.offset >= 20_000:
                break
        got = receiver.offset
        receiver.close()  # the connection (or this node) went away
        assert follower.latest() is None

        resumed = SnapshotReceiver(follower, META)
        assert resumed.offset == got
        for chunk in reader.read_chunks(4096, offset=resumed.offset):
            resumed.write_chunk(chunk.offset, chunk.data, chunk.done)
        assert resumed.finished
    assert received_image(follower) == IMAGE


def test_resume_drops_bytes_written_after_the_last_recorded_chunk(
        leader: SnapshotStore, follower: SnapshotStore) -> None:
    """After a power cut the partial file may be longer than what was acknowledged."""
    with leader.open_reader(META) as reader:
        receiver = SnapshotReceiver(follower, META)
        chunks = reader.read_chunks(8192)
        for _ in range(3):
            c = next(chunks)
            receiver.write_chunk(c.offset, c.data, c.done)
        receiver.close()
        with open(partial_path(follower, META), "ab") as f:
            f.write(b"\0" * 3000)  # a chunk whose write reached the disk only in part
        resumed = SnapshotReceiver(follower, META)
        assert resumed.offset == 3 * 8192
        for c in reader.read_chunks(8192, offset=resumed.offset):
            resumed.write_chunk(c.offset, c.data, c.done)
    assert received_image(follower) == IMAGE


def test_damaged_partial_file_restarts_the_transfer(leader: SnapshotStore,
                                                    follower: SnapshotStore) -> None:
    with leader.open_reader(META) as reader:
        receiver = SnapshotReceiver(follower, META)
        chunks = reader.read_chunks(8192)
        for _ in range(2):
            c = next(chunks)
            receiver.write_chunk(c.offset, c.data, c.done)
        receiver.close()
        with open(partial_path(follower, META), "r+b") as f:
            f.seek(100)
            f.write(b"rot")
        resumed = SnapshotReceiver(follower, META)
        assert resumed.offset == 0
        for c in reader.read_chunks(8192):
            resumed.write_chunk(c.offset, c.data, c.done)
    assert received_image(follower) == IMAGE


def test_chunk_at_the_wrong_offset_is_rejected(leader: SnapshotStore,
                                               follower: SnapshotStore) -> None:
    receiver = SnapshotReceiver(follower, META)
    with leader.open_reader(META) as reader:
        chunks = list(reader.read_chunks(1000))
    receiver.write_chunk(0, chunks[0].data, False)
    for bad in (chunks[2], chunks[0]):  # one skipped ahead, one repeated
        with pytest.raises(ProtocolError, match="resume from there") as info:
            receiver.write_chunk(bad.offset, bad.data, bad.done)
        assert info.value.details["expected_offset"] == 1000
        assert info.value.details["offset"] == bad.offset
    assert receiver.offset == 1000
    for c in chunks[1:]:
        receiver.write_chunk(c.offset, c.data, c.done)
    assert received_image(follower) == IMAGE


def test_damaged_transfer_fails_the_final_check(leader: SnapshotStore,
                                                follower: SnapshotStore) -> None:
    receiver = SnapshotReceiver(follower, META)
    with leader.open_reader(META) as reader:
        chunks = list(reader.read_chunks(10_000))
    for c in chunks[:-1]:
        # Flip the byte rather than overwrite it: a random image may already hold any value.
        data = (c.data if c.offset != 10_000
                else c.data[:50] + bytes([c.data[50] ^ 0xFF]) + c.data[51:])
        receiver.write_chunk(c.offset, data, c.done)
    last = chunks[-1]
    with pytest.raises(CorruptSnapshot, match="checksum mismatch"):
        receiver.write_chunk(last.offset, last.data, last.done)
    assert follower.latest() is None
    assert list(follower.directory.iterdir()) == []


def test_announced_metadata_must_match_the_file(leader: SnapshotStore,
                                                follower: SnapshotStore) -> None:
    other = SnapshotMeta(index=500, term=3, conf=ConfState(voters=frozenset({1, 2})))
    receiver = SnapshotReceiver(follower, other)
    with leader.open_reader(META) as reader, pytest.raises(CorruptSnapshot, match="announced"):
        for c in reader.read_chunks(1 << 20):
            receiver.write_chunk(c.offset, c.data, c.done)
    assert list(follower.directory.iterdir()) == []


def test_all_bytes_received_but_not_finished(leader: SnapshotStore,
                                             follower: SnapshotStore) -> None:
    """The last chunk was stored but its ``done`` never processed: an empty done chunk
    from the end finishes the transfer."""
    receiver = SnapshotReceiver(follower, META)
    with leader.open_reader(META) as reader:
        for c in reader.read_chunks(1 << 20):
            receiver.write_chunk(c.offset, c.data, False)
        receiver.close()
        resumed = SnapshotReceiver(follower, META)
        assert resumed.offset == reader.size
        [end] = list(reader.read_chunks(offset=resumed.offset))
        assert (end.data, end.done) == (b"", True)
        resumed.write_chunk(end.offset, end.data, end.done)
        assert resumed.finished
    assert received_image(follower) == IMAGE


def test_already_received_snapshot(leader: SnapshotStore, follower: SnapshotStore) -> None:
    receiver = SnapshotReceiver(follower, META)
    with leader.open_reader(META) as reader:
        for c in reader.read_chunks():
            receiver.write_chunk(c.offset, c.data, c.done)
        again = SnapshotReceiver(follower, META)
        assert again.finished and again.offset == reader.size
        assert again.write_chunk(0, b"ignored", True) == reader.size


def test_prune_removes_stale_partial_transfers(leader: SnapshotStore,
                                               follower: SnapshotStore) -> None:
    stale = SnapshotMeta(index=100, term=2)
    r = SnapshotReceiver(follower, stale)
    r.write_chunk(0, b"partial bytes", False)
    r.close()
    with leader.open_reader(META) as reader:
        receiver = SnapshotReceiver(follower, META)
        for c in reader.read_chunks():
            receiver.write_chunk(c.offset, c.data, c.done)
    removed = follower.prune(keep=1)
    assert {p.suffix for p in removed} == {".partial", ".progress"}
    assert [p.name for p in follower.directory.iterdir()] == [follower.path_for(META).name]
