"""Snapshot images on the peer wire: the chunk codec, the sending job, the receiving side.

``InstallSnapshot`` (raft/messages.py) carries only metadata; the image
travels beside it on the sender's ordinary outbound connection (peers.py
owns the connection and the frame tags). One transfer is three kinds of
frame, in this order on one connection::

    SNAPSHOT_BEGIN  the InstallSnapshot message (peer_codec): names the file
    (the receiver's SNAPSHOT_RESUME answer, on its own connection: see Resuming)
    SNAPSHOT_CHUNK  msgpack [group, term, index, offset, data, done], repeated;
                    the bytes of the snapshot *file* (snapshot_file.py), so the
                    receiver checks it exactly as the sender's store does
    (the done chunk ends the transfer)

Ordinary Raft messages may be interleaved between chunks, so heartbeats keep
flowing during a long transfer and the follower does not start an election.
The receiver hands the InstallSnapshot to ``on_snapshot`` only once the whole
file has been written, checksummed and renamed into its store
(SnapshotReceiver): the core never sees metadata whose image is missing.

Resuming. The receiver keeps the partial file of a broken transfer
(SnapshotReceiver is resumable across restarts), and the sender starts a
retried transfer where the receiver stopped. Connections are
one-directional, so the receiver answers a SNAPSHOT_BEGIN on *its own*
outbound connection to the sender::

    SNAPSHOT_RESUME msgpack [group, term, index, offset]: "I durably hold the
                    first ``offset`` bytes of this file; start there"

It answers every begin addressed to it: with the offset its partial file
reached, the file's size if it already has the whole file, or 0 (no partial
file, or a transfer it will discard). After writing the begin, the sender
waits for the answer (at most ``resume_wait`` seconds; ordinary messages keep
flowing meanwhile) and streams from the offset it names, or from 0 if none
came in time (a receiver with no connection back to us, an older peer). The
answer is advice only: an offset beyond the file's end is ignored, and the
receiver still refuses a chunk that leaves a gap after the bytes it holds
(ProtocolError, closing the connection, so the next attempt asks again);
chunks it already holds are skipped, as they always were. An answer that
names no snapshot the sender is waiting on (late, or from another peer) is
ignored. A late answer to an earlier begin of the *same* snapshot may be taken
for the current one; it names no more than the receiver held then, which it
still holds unless it has discarded the partial file since: then the first
chunk leaves a gap, the receiver closes the connection and the next attempt
asks again.

If the partial file came from a *different* file with the same term and index
(another leader took the snapshot at the same point), the whole-file checksum
on the done chunk fails, the partial file is discarded, and the next attempt
starts clean: correctness never rests on the resume.

``on_done(True)`` means the whole stream was written to the socket, not that
the follower installed it: as in Raft, the follower's next AppendResponse is
the real acknowledgement, and ``report_snapshot`` only moves the leader back
to probing (etcd-raft does the same).

Disk work (opening and verifying the file, reading chunks, writing and
fdatasync-ing them) runs in a thread so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgpack

from quorumkv.errors import CorruptSnapshot, ProtocolError, StorageError
from quorumkv.raft.messages import InstallSnapshot
from quorumkv.storage.snapshot_receiver import SnapshotReceiver
from quorumkv.storage.snapshot_store import SnapshotChunk, SnapshotReader, SnapshotStore

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_U64 = (1 << 64) - 1
CHUNK_OVERHEAD = 64
"""Upper bound of a chunk frame's bytes beyond its data (tag + msgpack header, six fields)."""


async def in_thread(fn: Callable[..., T], *args: Any,
                    discard: Callable[[T], None] | None = None) -> T:
    """Run blocking ``fn(*args)`` in the default executor.

    A thread cannot be interrupted. If the awaiting task is cancelled, wait for
    the thread to finish before letting the cancellation through, so that the
    caller's cleanup (closing the file descriptor the thread is using) never
    races the thread; a closed fd number can be reused by another file at once.
    A result nobody will receive is handed to ``discard`` (to close what it opened).
    """
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait([fut])
        if fut.cancelled():
            raise
        if fut.exception() is not None:
            log.warning("disk operation finished with an error after its task was cancelled",
                        exc_info=fut.exception())
        elif discard is not None:
            discard(fut.result())
        raise


# -- the chunk frame ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkFrame:
    """One piece of a snapshot file, addressed by the snapshot's group, term and index."""

    group: int
    term: int
    index: int
    offset: int
    data: bytes
    done: bool


def encode_chunk(group: int, term: int, index: int, chunk: SnapshotChunk) -> bytes:
    return msgpack.packb(  # type: ignore[no-any-return]
        [group, term, index, chunk.offset, chunk.data, chunk.done], use_bin_type=True)


def decode_chunk(body: bytes) -> ChunkFrame:
    """Decode a chunk frame's body; ProtocolError for anything malformed (untrusted bytes)."""
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"snapshot chunk is not valid msgpack: {type(e).__name__}") from None
    if type(obj) is not list or len(obj) != 6:
        raise ProtocolError("snapshot chunk must be [group, term, index, offset, data, done]")
    group, term, index, offset, data, done = obj
    for name, v in (("group", group), ("term", term), ("index", index), ("offset", offset)):
        if type(v) is not int or not 0 <= v <= _MAX_U64:
            raise ProtocolError(f"snapshot chunk {name} must be an unsigned integer")
    if type(data) is not bytes:
        raise ProtocolError("snapshot chunk data must be bytes")
    if type(done) is not bool:
        raise ProtocolError("snapshot chunk done must be a boolean")
    return ChunkFrame(group=group, term=term, index=index, offset=offset, data=data, done=done)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeFrame:
    """The receiver's answer to a begin: it durably holds ``offset`` bytes of the file."""

    group: int
    term: int
    index: int
    offset: int


def encode_resume(group: int, term: int, index: int, offset: int) -> bytes:
    return msgpack.packb([group, term, index, offset])  # type: ignore[no-any-return]


def decode_resume(body: bytes) -> ResumeFrame:
    """Decode a resume frame's body; ProtocolError for anything malformed."""
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"snapshot resume is not valid msgpack: {type(e).__name__}") from None
    if type(obj) is not list or len(obj) != 4:
        raise ProtocolError("snapshot resume must be [group, term, index, offset]")
    for name, v in zip(("group", "term", "index", "offset"), obj, strict=True):
        if type(v) is not int or not 0 <= v <= _MAX_U64:
            raise ProtocolError(f"snapshot resume {name} must be an unsigned integer")
    group, term, index, offset = obj
    return ResumeFrame(group=group, term=term, index=index, offset=offset)


# -- sending -----------------------------------------------------------------------------


class OutboundSnapshot:
    """One snapshot to stream to one peer: opens the file, reads chunks, reports once.

    ``open()``, then (the begin written) ``start(offset)`` once the receiver's
    answer came or the wait for it ended, then ``next_chunk()`` until ``sent_all``.
    """

    def __init__(self, message: InstallSnapshot, store: SnapshotStore,
                 on_done: Callable[[bool], None], chunk_size: int) -> None:
        self.message = message
        self._store = store
        self._on_done = on_done
        self._chunk_size = chunk_size
        self._reader: SnapshotReader | None = None
        self._chunks: Iterator[SnapshotChunk] | None = None
        self.resume_deadline: float | None = None
        """While set (a loop time), the begin is out and the receiver's answer awaited."""
        self.last_chunk_bytes = 0
        """File bytes carried by the chunk ``next_chunk`` produced last."""
        self.sent_all = False
        """The done chunk has been produced; once it is written the transfer succeeded."""
        self._reported = False

    async def open(self) -> bool:
        """Open and verify the snapshot file; False (already reported) if it is unusable."""
        meta = self.message.snapshot
        try:
            self._reader = await in_thread(self._store.open_reader, meta,
                                           discard=SnapshotReader.close)
        except StorageError as e:
            log.error("cannot send snapshot (term %d, index %d) to node %d: %s",
                      meta.term, meta.index, self.message.dst, e)
            self.finish(False)
            return False
        if self._reader.meta != meta:
            # The receiver checks the file's metadata against the message's; a mismatch
            # would only fail there, after the whole transfer.
            log.error("snapshot file %s holds %s, but the InstallSnapshot to node %d "
                      "announces %s", self._reader.path, self._reader.meta,
                      self.message.dst, meta)
            self.finish(False)
            return False
        return True

    @property
    def awaiting_resume(self) -> bool:
        return self.resume_deadline is not None

    def start(self, offset: int) -> None:
        """Stream from ``offset`` (the receiver's answer, or 0 without one)."""
        assert self._reader is not None, "open() first"
        meta = self.message.snapshot
        size = self._reader.size
        if offset > size:
            log.warning("node %d asks to resume snapshot (term %d, index %d) at offset %d, "
                        "past its end (%d bytes): sending it whole", self.message.dst,
                        meta.term, meta.index, offset, size)
            offset = 0
        self.resume_deadline = None
        self._chunks = self._reader.read_chunks(self._chunk_size, offset=offset)
        if offset:
            log.info("streaming snapshot (term %d, index %d, %d bytes) to node %d from "
                     "offset %d", meta.term, meta.index, size, self.message.dst, offset)
        else:
            log.info("streaming snapshot (term %d, index %d, %d bytes) to node %d", meta.term,
                     meta.index, size, self.message.dst)

    async def next_chunk(self) -> bytes:
        """The next chunk frame's body. Raises StorageError if the file cannot be read."""
        assert self._chunks is not None, "start() first"
        chunk = await in_thread(next, self._chunks)
        self.sent_all = chunk.done
        self.last_chunk_bytes = len(chunk.data)
        meta = self.message.snapshot
        return encode_chunk(self.message.group, meta.term, meta.index, chunk)

    def finish(self, ok: bool) -> None:
        """Close the file and call ``on_done`` (once, whatever happens after)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._chunks = None
        if self._reported:
            return
        self._reported = True
        if not ok:
            log.warning("snapshot transfer (term %d, index %d) to node %d failed",
                        self.message.snapshot.term, self.message.snapshot.index,
                        self.message.dst)
        try:
            self._on_done(ok)
        except Exception:
            log.exception("snapshot on_done callback failed")


# -- receiving ---------------------------------------------------------------------------


class InboundSnapshots:
    """The snapshot stream state of one inbound connection (at most one transfer at a time).

    ``busy`` is shared by all connections of a transport: two connections must
    never write the same partial file at once (a half-open old connection and
    its replacement could otherwise both be mid-transfer).
    ``answer(begin, offset)`` sends the SNAPSHOT_RESUME answer to a begin back
    to its sender (on our own outbound connection to it).
    """

    def __init__(self, *, node_id: int, store: SnapshotStore | None,
                 on_snapshot: Callable[[InstallSnapshot, Path], None] | None,
                 busy: set[tuple[int, int, int]],
                 answer: Callable[[InstallSnapshot, int], None] | None = None) -> None:
        self._node_id = node_id
        self._answer = answer
        self._store = store
        self._on_snapshot = on_snapshot
        self._busy = busy
        self._message: InstallSnapshot | None = None
        self._receiver: SnapshotReceiver | None = None
        self._key: tuple[int, int, int] | None = None
        self._discarding = False
        """The current stream is being read past and ignored (refused or failed)."""

    async def begin(self, m: InstallSnapshot) -> None:
        await self._begin(m)
        if m.dst == self._node_id and self._answer is not None:
            receiver = self._receiver
            offset = receiver.offset if receiver is not None and not self._discarding else 0
            try:
                self._answer(m, offset)
            except Exception:
                log.exception("answering a snapshot begin from node %d failed", m.src)

    async def _begin(self, m: InstallSnapshot) -> None:
        if self._receiver is not None and self._message is not None:
            log.info("snapshot transfer (term %d, index %d) from node %d abandoned by the "
                     "sender; its partial file is kept for a resume",
                     self._message.snapshot.term, self._message.snapshot.index, m.src)
        self._release()
        self._message = m
        key = (m.group, m.snapshot.term, m.snapshot.index)
        if m.dst != self._node_id:
            # Like a misdirected message: an address now serving another node id.
            log.warning("ignoring a snapshot from node %d addressed to node %d (we are %d)",
                        m.src, m.dst, self._node_id)
            self._discarding = True
            return
        if self._store is None or self._on_snapshot is None:
            log.warning("ignoring a snapshot from node %d: this transport has no snapshot "
                        "store", m.src)
            self._discarding = True
            return
        if key in self._busy:
            log.warning("ignoring a second concurrent transfer of snapshot (term %d, index "
                        "%d) from node %d", m.snapshot.term, m.snapshot.index, m.src)
            self._discarding = True
            return
        try:
            self._receiver = await in_thread(SnapshotReceiver, self._store, m.snapshot,
                                             discard=SnapshotReceiver.close)
        except StorageError as e:
            log.error("cannot receive snapshot (term %d, index %d): %s",
                      m.snapshot.term, m.snapshot.index, e)
            self._discarding = True
            return
        self._key = key
        self._busy.add(key)

    async def chunk(self, c: ChunkFrame) -> None:
        """Take one chunk. ProtocolError if the sender broke the stream's rules."""
        m = self._message
        if m is None:
            raise ProtocolError("snapshot chunk outside a snapshot transfer")
        if (c.group, c.term, c.index) != (m.group, m.snapshot.term, m.snapshot.index):
            raise ProtocolError(f"snapshot chunk for (term {c.term}, index {c.index}) inside "
                                f"the transfer of (term {m.snapshot.term}, index "
                                f"{m.snapshot.index})")
        if self._discarding:
            if c.done:
                self._release()
            return
        receiver = self._receiver
        assert receiver is not None
        try:
            complete = await self._write(receiver, c)
        except ProtocolError:
            self._release()
            raise  # the sender broke the stream's rules: peers.py closes the connection
        except CorruptSnapshot as e:
            # Already discarded by the receiver; the leader will send the snapshot again.
            log.warning("received snapshot failed its checks and was discarded: %s", e)
            self._release()
            return
        except StorageError as e:
            log.error("receiving snapshot (term %d, index %d) from node %d failed: %s",
                      c.term, c.index, m.src, e)
            self._drop_receiver()
            self._discarding = True
            if c.done:
                self._release()
            return
        if not complete:
            return
        assert self._store is not None and self._on_snapshot is not None
        path = self._store.path_for(m.snapshot)
        on_snapshot = self._on_snapshot
        self._release()
        try:
            on_snapshot(m, path)
        except Exception:
            log.exception("on_snapshot callback failed")

    async def _write(self, receiver: SnapshotReceiver, c: ChunkFrame) -> bool:
        """Write what the receiver lacks of ``c``; True once the snapshot is complete."""
        have = receiver.offset
        end = c.offset + len(c.data)
        if receiver.finished:
            pass  # already in the store (we crashed before the core installed it)
        elif c.offset > have:
            raise ProtocolError(f"snapshot chunk at offset {c.offset} leaves a gap after "
                                f"{have} bytes", expected_offset=have, offset=c.offset)
        elif end > have or (c.done and end == have):
            # Bytes before ``have`` are already durable from an earlier attempt.
            await in_thread(receiver.write_chunk, have, c.data[have - c.offset:], c.done)
        elif c.done:
            # The partial file is longer than the whole file: it came from another file.
            log.warning("partial snapshot (term %d, index %d) is longer than the file being "
                        "sent; discarding it", c.term, c.index)
            await in_thread(receiver.abort)
            raise CorruptSnapshot("partial snapshot longer than the transferred file")
        if not c.done:
            return False
        if not receiver.finished:
            raise ProtocolError("snapshot stream ended but the receiver is not finished")
        return True

    def _drop_receiver(self) -> None:
        if self._receiver is not None:
            self._receiver.close()  # keeps the partial file for a later resume
            self._receiver = None
        if self._key is not None:
            self._busy.discard(self._key)
            self._key = None

    def _release(self) -> None:
        """Forget the current transfer, keeping any partial file for a later resume."""
        self._drop_receiver()
        self._message = None
        self._discarding = False

    def close(self) -> None:
        self._release()
