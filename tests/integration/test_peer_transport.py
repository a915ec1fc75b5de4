"""The peer transport over real sockets on 127.0.0.1, ephemeral ports only.

Every test runs inside ``run()``, which fails the test if any task is left
running once it returns (``close()`` must cancel and await everything it
started). Waits are event waits or polls under a generous deadline, never
bare sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest

from quorumkv.errors import NetworkError
from quorumkv.raft.entries import ConfState, Entry, SnapshotMeta
from quorumkv.raft.messages import AppendRequest, Heartbeat, InstallSnapshot, Message
from quorumkv.storage import SnapshotReceiver, SnapshotStore
from quorumkv.storage.snapshot_receiver import partial_path
from quorumkv.transport.framing import HEADER, encode_frame
from quorumkv.transport.peer_codec import encode_message
from quorumkv.transport.peers import (
    HANDSHAKE,
    MAGIC,
    PROTOCOL_VERSION,
    TAG_MESSAGE,
    TAG_PING,
    TAG_SNAPSHOT_CHUNK,
    TAG_SNAPSHOT_RESUME,
    PeerTransport,
    encode_handshake,
)

pytestmark = pytest.mark.timeout(120)

HOST = "127.0.0.1"
WAIT = 10.0
CLUSTER = 77
META = SnapshotMeta(index=900, term=4, conf=ConfState(voters=frozenset({1, 2, 3})))


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        async with asyncio.timeout(90):
            await test()
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert leftover == [], f"tasks left running: {leftover}"

    asyncio.run(main())


async def wait_until(pred: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll a condition no callback signals (counters, files) under a deadline."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


def hb(src: int, dst: int, i: int) -> Heartbeat:
    """A small numbered message: ``commit`` carries the sequence number."""
    return Heartbeat(src=src, dst=dst, term=1, commit=i)


class Node:
    """A PeerTransport plus what it received, with event-driven waits."""

    def __init__(self, node_id: int, port: int = 0, **kw: Any) -> None:
        self.id = node_id
        self.received: list[Message] = []
        self.snapshots: list[tuple[InstallSnapshot, Path]] = []
        self.arrivals: list[int] = []
        """Senders reported by on_arrival, in order (unless a test passes its own)."""
        self._changed = asyncio.Event()
        kw.setdefault("cluster_id", CLUSTER)
        kw.setdefault("on_arrival", self._on_arrival)
        self.t = PeerTransport(node_id=node_id, listen_host=HOST, listen_port=port,
                               on_message=self._on_message, on_snapshot=self._on_snapshot,
                               rng=random.Random(node_id), **kw)
        self.unreachable_seen: set[int] = set()

    def _on_message(self, m: Message) -> None:
        self.received.append(m)
        self._changed.set()

    def _on_snapshot(self, m: InstallSnapshot, path: Path) -> None:
        self.snapshots.append((m, path))
        self._changed.set()

    def _on_arrival(self, sender: int) -> None:
        self.arrivals.append(sender)
        self._changed.set()

    async def wait_for(self, pred: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not pred():
                self._changed.clear()
                await self._changed.wait()

    def seq_from(self, src: int) -> list[int]:
        return [m.commit for m in self.received if isinstance(m, Heartbeat) and m.src == src]

    def saw_unreachable(self, peer: int) -> bool:
        self.unreachable_seen |= self.t.unreachable()
        return peer in self.unreachable_seen


@asynccontextmanager
async def cluster(n: int, **kw: Any) -> AsyncIterator[list[Node]]:
    nodes = [Node(i + 1, **kw) for i in range(n)]
    try:
        for node in nodes:
            await node.t.start()
        for a in nodes:
            for b in nodes:
                if a is not b:
                    a.t.set_peer(b.id, HOST, b.t.port)
        yield nodes
    finally:
        for node in nodes:
            await node.t.close()


class RawServer:
    """A listener that is not a quorumkv node: the test reads (or not) what arrives."""

    def __init__(self) -> None:
        self.connections: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = \
            asyncio.Queue()
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> None:
        # A small limit: asyncio stops reading from the socket once this much is buffered,
        # so a connection the test never reads really does fill up.
        self._server = await asyncio.start_server(self._accept, HOST, 0, limit=4096)
        self.port = self._server.sockets[0].getsockname()[1]

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        self.connections.put_nowait((reader, writer))

    async def accept(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(WAIT):
            return await self.connections.get()

    async def close(self) -> None:
        self._server.close()
        for w in self._writers:
            w.close()
        await self._server.wait_closed()


def free_port() -> int:
    """An ephemeral port that nothing listens on (the kernel chose it; we let it go)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def make_snapshot(store: SnapshotStore, image: bytes, meta: SnapshotMeta = META) -> None:
    with store.begin(meta) as w:
        w.write(image)
        w.commit()


def image_of(store: SnapshotStore, meta: SnapshotMeta = META) -> bytes:
    with store.open_reader(meta) as r:  # verifies the whole-file checksum
        return b"".join(r.image_chunks())


# -- messages ----------------------------------------------------------------------------


def test_messages_flow_both_ways_between_three_nodes_in_order() -> None:
    async def body() -> None:
        async with cluster(3) as nodes:
            count = 2000
            for i in range(count):
                for a in nodes:
                    for b in nodes:
                        if a is not b:
                            a.t.send(hb(a.id, b.id, i))
            for b in nodes:
                senders = [a.id for a in nodes if a is not b]

                def all_arrived(b: Node = b, senders: list[int] = senders) -> bool:
                    return all(len(b.seq_from(a)) == count for a in senders)

                await b.wait_for(all_arrived)
                for src in senders:
                    assert b.seq_from(src) == list(range(count)), f"{src} -> {b.id} out of order"
            assert all(n.t.stats()[p].dropped == 0 for n in nodes for p in n.t.stats())
            assert all(n.t.misdirected == 0 for n in nodes)

    run(body)


def test_mixed_sizes_keep_their_order_and_content() -> None:
    async def body() -> None:
        async with cluster(2) as (n1, n2):
            rng = random.Random(8)
            sent: list[Message] = []
            for i in range(300):
                if i % 3 == 0:
                    m: Message = AppendRequest(
                        src=1, dst=2, term=2, prev_index=i, prev_term=2, commit=i,
                        entries=(Entry(term=2, index=i + 1, data=rng.randbytes(i * 97)),))
                else:
                    m = hb(1, 2, i)
                sent.append(m)
                n1.t.send(m)
            await n2.wait_for(lambda: len(n2.received) == len(sent))
            assert n2.received == sent

    run(body)


def test_peer_down_then_up_receives_the_messages_queued_meanwhile() -> None:
    async def body() -> None:
        port = free_port()
        n1 = Node(1, backoff_max=0.3)
        await n1.t.start()
        n1.t.set_peer(2, HOST, port)
        try:
            for i in range(10):
                n1.t.send(hb(1, 2, i))
            await wait_until(lambda: n1.saw_unreachable(2))
            assert n1.t.stats()[2].connected is False
            assert n1.t.stats()[2].queued == 10
            n2 = Node(2, port=port)
            await n2.t.start()
            try:
                await n2.wait_for(lambda: len(n2.received) == 10)
                assert n2.seq_from(1) == list(range(10))
                # A later message takes the now-open connection.
                n1.t.send(hb(1, 2, 10))
                await n2.wait_for(lambda: len(n2.received) == 11)
            finally:
                await n2.t.close()
        finally:
            await n1.t.close()

    run(body)


def test_a_restarted_peer_gets_what_was_sent_after_it_went_away() -> None:
    async def body() -> None:
        async with cluster(2, backoff_max=0.3) as (n1, n2):
            n1.t.send(hb(1, 2, 0))
            await n2.wait_for(lambda: n2.seq_from(1) == [0])
            port = n2.t.port
            await n2.t.close()
            n1.t.send(hb(1, 2, 1))  # the old connection is dead: must not be written there
            again = Node(2, port=port)
            await again.t.start()
            try:
                n1.t.send(hb(1, 2, 2))
                await again.wait_for(lambda: again.seq_from(1) == [1, 2])
            finally:
                await again.t.close()

    run(body)


def test_full_queue_drops_the_oldest_messages() -> None:
    async def body() -> None:
        port = free_port()
        n1 = Node(1, max_queue=8, backoff_max=0.3)
        await n1.t.start()
        n1.t.set_peer(2, HOST, port)
        try:
            for i in range(20):
                n1.t.send(hb(1, 2, i))
            stats = n1.t.stats()[2]
            assert (stats.queued, stats.dropped) == (8, 12)
            n2 = Node(2, port=port)
            await n2.t.start()
            try:
                await n2.wait_for(lambda: len(n2.received) == 8)
                assert n2.seq_from(1) == list(range(12, 20)), "the newest messages survive"
            finally:
                await n2.t.close()
        finally:
            await n1.t.close()

    run(body)


def test_a_dead_peer_does_not_delay_a_live_one() -> None:
    async def body() -> None:
        stuck = RawServer()  # accepts, never reads: our writes to it block in drain()
        await stuck.start()
        async with cluster(2, write_timeout=2.0) as (n1, n2):
            n1.t.set_peer(3, HOST, stuck.port)
            n1.t.set_peer(4, HOST, free_port())  # nothing listens there
            await stuck.accept()
            big = (Entry(term=1, index=1, data=bytes(64 << 10)),)
            for i in range(400):  # 25 MiB: far more than the socket buffers hold
                n1.t.send(AppendRequest(src=1, dst=3, term=1, prev_index=0, prev_term=0,
                                        entries=big, commit=i))
                n1.t.send(hb(1, 4, i))
            loop = asyncio.get_running_loop()
            started = loop.time()
            for i in range(100):
                n1.t.send(hb(1, 2, i))
            await n2.wait_for(lambda: len(n2.received) == 100)
            assert n2.seq_from(1) == list(range(100))
            assert loop.time() - started < 5.0
            assert n1.t.stats()[3].queued > 0, "the stuck peer still has a backlog"
            # The stuck connection is given up after write_timeout and reported.
            await wait_until(lambda: n1.saw_unreachable(3) and n1.saw_unreachable(4))
        await stuck.close()

    run(body)


def test_changing_a_peers_address_reconnects_there() -> None:
    async def body() -> None:
        async with cluster(2, backoff_max=0.3) as (n1, n2):
            n1.t.set_peer(2, HOST, free_port())
            n1.t.send(hb(1, 2, 0))
            await wait_until(lambda: n1.saw_unreachable(2))
            n1.t.set_peer(2, HOST, n2.t.port)
            await n2.wait_for(lambda: n2.seq_from(1) == [0])

    run(body)


def test_listening_on_a_taken_port_is_a_network_error() -> None:
    async def body() -> None:
        async with cluster(1) as (n1,):
            taken = Node(2, port=n1.t.port)
            with pytest.raises(NetworkError, match="cannot listen"):
                await taken.t.start()
            await taken.t.close()

    run(body)


def test_send_contract() -> None:
    async def body() -> None:
        async with cluster(1) as (n1,):
            n1.t.send(hb(1, 9, 0))  # no address known: dropped, counted, no error
            assert n1.t.unknown_destination == 1
            with pytest.raises(TypeError, match="send_snapshot"):
                n1.t.send(InstallSnapshot(src=1, dst=9, term=1, snapshot=META))
            with pytest.raises(ValueError):
                n1.t.set_peer(1, HOST, 1)
            done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            n1.t.send_snapshot(InstallSnapshot(src=1, dst=9, term=1, snapshot=META),
                               done.set_result)
            assert not done.done(), "on_done is never called from inside send_snapshot"
            assert await asyncio.wait_for(done, WAIT) is False

    run(body)


# -- hostile input -----------------------------------------------------------------------


def _handshake(cluster: int = CLUSTER, sender: int = 7, magic: bytes = MAGIC,
               version: int = PROTOCOL_VERSION) -> bytes:
    return encode_frame(HANDSHAKE.pack(magic, version, cluster, sender))


def _tagged(tag: int, body: bytes) -> bytes:
    return encode_frame(bytes((tag,)) + body)


HOSTILE: dict[str, bytes] = {
    "http request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "short garbage frame": b"\x00\x00\x00\x05hello",
    "huge first frame": b"\xff\xff\xff\xff" + b"x" * 100,
    "wrong magic": _handshake(magic=b"NOT-PEER"),
    "wrong version": _handshake(version=PROTOCOL_VERSION + 1),
    "wrong cluster": _handshake(cluster=CLUSTER + 1),
    "claims our id": _handshake(sender=2),
    "oversized frame": _handshake() + b"\xff\xff\xff\xff",
    "empty frame": _handshake() + HEADER.pack(0),
    "unknown tag": _handshake() + _tagged(9, b""),
    "first unassigned tag": _handshake() + _tagged(TAG_PING + 1, b""),
    "ping with a body": _handshake() + _tagged(TAG_PING, b"x"),
    "not msgpack": _handshake() + _tagged(TAG_MESSAGE, b"\xc1\xc1"),
    "wrong types": _handshake() + _tagged(TAG_MESSAGE, msgpack.packb([5, 1, 0, "x", 2, 1, 0,
                                                                      b""])),
    "forged sender": _handshake(sender=7) + _tagged(TAG_MESSAGE, encode_message(hb(1, 2, 0))),
    "bare install snapshot": _handshake(sender=7) + _tagged(
        TAG_MESSAGE, encode_message(InstallSnapshot(src=7, dst=2, term=1, snapshot=META))),
    "chunk outside a transfer": _handshake() + _tagged(
        TAG_SNAPSHOT_CHUNK, msgpack.packb([0, 4, 900, 0, b"x", True])),
    "malformed resume": _handshake() + _tagged(TAG_SNAPSHOT_RESUME, msgpack.packb([0, 4, -1])),
    "silent": b"",
}


async def _expect_disconnected(port: int, payload: bytes) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(payload)
        await writer.drain()
        async with asyncio.timeout(WAIT):
            while True:  # the listener closes; a reset is as good as an end-of-file
                try:
                    if not await reader.read(1 << 16):
                        return
                except ConnectionResetError:
                    return
    finally:
        writer.close()


def test_hostile_clients_are_disconnected_while_a_peer_keeps_working() -> None:
    async def body() -> None:
        async with cluster(2, handshake_timeout=1.0) as (n1, n2):
            n1.t.send(hb(1, 2, 0))
            await n2.wait_for(lambda: n2.seq_from(1) == [0])
            await asyncio.gather(*(_expect_disconnected(n2.t.port, p) for p in HOSTILE.values()))
            # The frames that closed those connections were no sign of life.
            assert 7 not in n2.arrivals
            # A client that speaks the protocol stays connected; a message addressed to
            # another node, or a resume for no transfer of ours, is only dropped, and a
            # ping (tag 4 is known) is only counted.
            _, writer = await asyncio.open_connection(HOST, n2.t.port)
            writer.write(encode_handshake(CLUSTER, 7)
                         + _tagged(TAG_SNAPSHOT_RESUME, msgpack.packb([0, 4, 900, 5]))
                         + _tagged(TAG_MESSAGE, encode_message(hb(7, 9, 0)))
                         + _tagged(TAG_PING, b"")
                         + _tagged(TAG_MESSAGE, encode_message(hb(7, 2, 1))))
            await writer.drain()
            await n2.wait_for(lambda: n2.seq_from(7) == [1])
            assert n2.t.misdirected == 1
            assert n2.t.pings_received == 1
            assert n2.arrivals.count(7) == 4, "every well-formed frame is a sign of life"
            writer.close()
            # The legitimate peers never noticed.
            n1.t.send(hb(1, 2, 1))
            n2.t.send(hb(2, 1, 0))
            await n2.wait_for(lambda: n2.seq_from(1) == [0, 1])
            await n1.wait_for(lambda: n1.seq_from(2) == [0])
            assert n1.t.stats()[2].failures == 0

    run(body)


# -- liveness ----------------------------------------------------------------------------


def test_arrivals_are_reported_for_messages_and_pings_and_pings_are_not_delivered() -> None:
    async def body() -> None:
        async with cluster(3) as (n1, n2, n3):
            n1.t.send(hb(1, 2, 0))
            assert sorted(n3.t.ping_idle(1.0)) == [1, 2], "new links were never enqueued to"
            await n2.wait_for(lambda: sorted(n2.arrivals) == [1, 3])
            await n1.wait_for(lambda: n1.arrivals == [3])
            # Nothing else travels in this test, so the lists are complete.
            assert n2.received == [hb(1, 2, 0)], "a ping is not a Raft message"
            assert n1.received == []
            assert (n1.t.pings_received, n2.t.pings_received, n3.t.pings_received) == (1, 1, 0)
            await wait_until(lambda: all(s.pings_sent == 1 for s in n3.t.stats().values()))
            assert all(s.sent == 0 for s in n3.t.stats().values()), "pings are not messages"
            await wait_until(lambda: n1.t.stats()[2].sent == 1)
            assert n1.t.stats()[2].pings_sent == 0

    run(body)


def test_ping_idle_pings_only_the_links_that_were_idle() -> None:
    async def body() -> None:
        async with cluster(3) as (n1, n2, n3):
            n1.t.send(hb(1, 2, 0))
            assert n1.t.ping_idle(1.0) == [3], "a message just went to node 2"
            await n2.wait_for(lambda: n2.arrivals == [1])
            await n3.wait_for(lambda: n3.arrivals == [1])
            await asyncio.sleep(0.1)  # both links now idle for longer than 0.05 s
            assert sorted(n1.t.ping_idle(0.05)) == [2, 3]
            assert n1.t.ping_idle(WAIT) == [], "a ping counts as something enqueued"
            await n2.wait_for(lambda: n2.arrivals == [1, 1])
            await n3.wait_for(lambda: n3.arrivals == [1, 1])
            assert n2.seq_from(1) == [0] and n3.received == []

    run(body)


def test_a_link_with_frames_waiting_is_not_pinged_again() -> None:
    async def body() -> None:
        async with cluster(1, backoff_max=0.3) as (n1,):
            n1.t.set_peer(2, HOST, free_port())  # nothing listens there
            assert n1.t.ping_idle(0.05) == [2]
            await wait_until(lambda: n1.saw_unreachable(2))
            await asyncio.sleep(0.1)
            # The first ping still waits: more would only reach the peer as one burst.
            assert n1.t.ping_idle(0.05) == []
            assert (n1.t.stats()[2].queued, n1.t.stats()[2].pings_sent) == (1, 0)

    run(body)


def test_an_on_arrival_that_raises_does_not_cut_the_connection(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="quorumkv.transport.peers")
    calls: list[int] = []

    def boom(sender: int) -> None:
        calls.append(sender)
        raise RuntimeError("detector bug")

    async def body() -> None:
        n1, n2 = Node(1), Node(2, on_arrival=boom)
        try:
            for n in (n1, n2):
                await n.t.start()
            n1.t.set_peer(2, HOST, n2.t.port)
            n1.t.send(hb(1, 2, 0))
            assert n1.t.ping_idle(WAIT) == [], "a message was just enqueued"
            await n2.wait_for(lambda: n2.seq_from(1) == [0])
            assert n1.t.ping_idle(0.0) == [2]
            n1.t.send(hb(1, 2, 1))  # behind the ping, on the same connection
            await n2.wait_for(lambda: n2.seq_from(1) == [0, 1])
            assert n2.t.pings_received == 1
            assert calls == [1, 1, 1]
            assert n1.t.stats()[2].failures == 0
        finally:
            await n1.t.close()
            await n2.t.close()

    run(body)
    assert any("on_arrival failed" in r.getMessage() for r in caplog.records)


# -- snapshots ---------------------------------------------------------------------------


@asynccontextmanager
async def snapshot_pair(leader: SnapshotStore, follower: SnapshotStore, *, way_back: bool = True,
                        **kw: Any) -> AsyncIterator[tuple[Node, Node]]:
    """Node 1 (the leader) with a link to node 2, and (``way_back``) the link back that
    carries node 2's answers to snapshot begins."""
    n1 = Node(1, snapshot_store=leader, **kw)
    n2 = Node(2, snapshot_store=follower, **kw)
    try:
        for n in (n1, n2):
            await n.t.start()
        n1.t.set_peer(2, HOST, n2.t.port)
        if way_back:
            n2.t.set_peer(1, HOST, n1.t.port)
        yield n1, n2
    finally:
        await n1.t.close()
        await n2.t.close()


async def send_snapshot(n1: Node, install: InstallSnapshot) -> bool:
    done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    n1.t.send_snapshot(install, done.set_result)
    return await asyncio.wait_for(done, WAIT)


INSTALL = InstallSnapshot(src=1, dst=2, term=5, snapshot=META)


def test_snapshot_streams_in_chunks_and_arrives_intact(tmp_path: Path) -> None:
    image = random.Random(1).randbytes(3 << 20)

    async def body() -> None:
        leader, follower = SnapshotStore(tmp_path / "n1"), SnapshotStore(tmp_path / "n2")
        make_snapshot(leader, image)
        # Frames are capped at 256 KiB, so the 3 MiB file can only travel in chunks.
        async with snapshot_pair(leader, follower, max_frame=256 << 10) as (n1, n2):
            done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            n1.t.send_snapshot(INSTALL, done.set_result)
            for i in range(200):  # heartbeats interleave with the chunks
                n1.t.send(hb(1, 2, i))
            assert await asyncio.wait_for(done, WAIT) is True
            await n2.wait_for(lambda: len(n2.snapshots) == 1 and len(n2.seq_from(1)) == 200)
            assert n2.snapshots == [(INSTALL, follower.path_for(META))]
            assert n2.seq_from(1) == list(range(200))
            assert image_of(follower) == image
            assert [p.name for p in follower.directory.iterdir()] == [
                follower.path_for(META).name], "no partial or progress file left behind"

    run(body)


def test_a_broken_stream_reports_failure(tmp_path: Path) -> None:
    async def body() -> None:
        leader = SnapshotStore(tmp_path / "n1")
        make_snapshot(leader, random.Random(2).randbytes(8 << 20))
        peer = RawServer()
        await peer.start()
        n1 = Node(1, snapshot_store=leader, snapshot_chunk_size=128 << 10)
        await n1.t.start()
        n1.t.set_peer(2, HOST, peer.port)
        try:
            done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            n1.t.send_snapshot(INSTALL, done.set_result)
            reader, writer = await peer.accept()
            async with asyncio.timeout(WAIT):
                await reader.readexactly(300 << 10)  # part of the stream, then the "crash"
            writer.close()
            assert await asyncio.wait_for(done, WAIT) is False
            await wait_until(lambda: n1.saw_unreachable(2))
        finally:
            await n1.t.close()
            await peer.close()

    run(body)


def _partial_from(source: SnapshotStore, target: SnapshotStore, nbytes: int) -> None:
    """Leave in ``target`` a partial transfer holding the first bytes of source's file."""
    receiver = SnapshotReceiver(target, META)
    with source.open_reader(META) as reader:
        for chunk in reader.read_chunks(64 << 10):
            receiver.write_chunk(chunk.offset, chunk.data, False)
            if receiver.offset >= nbytes:
                break
    receiver.close()


def test_a_retried_transfer_resumes_from_the_partial_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = random.Random(3).randbytes(2 << 20)
    caplog.set_level(logging.INFO, logger="quorumkv.storage.snapshot_receiver")

    async def body() -> None:
        leader, follower = SnapshotStore(tmp_path / "n1"), SnapshotStore(tmp_path / "n2")
        make_snapshot(leader, image)
        _partial_from(leader, follower, 1 << 20)  # an earlier attempt broke halfway
        async with snapshot_pair(leader, follower) as (n1, n2):
            assert await send_snapshot(n1, INSTALL) is True
            await n2.wait_for(lambda: len(n2.snapshots) == 1)
        assert image_of(follower) == image

    run(body)
    assert any("resuming snapshot transfer" in r.getMessage() for r in caplog.records)


def test_a_partial_file_of_another_snapshot_is_discarded_and_the_retry_succeeds(
        tmp_path: Path) -> None:
    image = random.Random(4).randbytes(2 << 20)

    async def body() -> None:
        leader, follower = SnapshotStore(tmp_path / "n1"), SnapshotStore(tmp_path / "n2")
        make_snapshot(leader, image)
        # Another node's snapshot at the same term and index, with different bytes.
        other = SnapshotStore(tmp_path / "other")
        make_snapshot(other, random.Random(5).randbytes(2 << 20))
        _partial_from(other, follower, 1 << 20)
        partial = partial_path(follower, META)
        async with snapshot_pair(leader, follower) as (n1, n2):
            assert await send_snapshot(n1, INSTALL) is True
            # The whole-file checksum fails on the follower, which drops the partial file.
            await wait_until(lambda: not partial.exists())
            assert n2.snapshots == []
            assert not follower.path_for(META).exists()
            # Raft sends the snapshot again; this time from scratch.
            assert await send_snapshot(n1, INSTALL) is True
            await n2.wait_for(lambda: len(n2.snapshots) == 1)
        assert image_of(follower) == image

    run(body)


def test_a_snapshot_to_a_node_without_a_store_is_skipped_and_messages_still_flow(
        tmp_path: Path) -> None:
    async def body() -> None:
        leader = SnapshotStore(tmp_path / "n1")
        make_snapshot(leader, random.Random(6).randbytes(100_000))
        n1 = Node(1, snapshot_store=leader)
        n2 = Node(2)
        try:
            for n in (n1, n2):
                await n.t.start()
            n1.t.set_peer(2, HOST, n2.t.port)
            assert await send_snapshot(n1, INSTALL) is True
            n1.t.send(hb(1, 2, 0))
            await n2.wait_for(lambda: n2.seq_from(1) == [0])
            assert n2.snapshots == []
        finally:
            await n1.t.close()
            await n2.t.close()

    run(body)


def test_a_transfer_broken_midway_resumes_on_the_network(tmp_path: Path) -> None:
    image = random.Random(9).randbytes(2 << 20)

    async def body() -> None:
        leader, follower = SnapshotStore(tmp_path / "n1"), SnapshotStore(tmp_path / "n2")
        make_snapshot(leader, image)
        size = leader.path_for(META).stat().st_size
        relay = RawServer()  # stands between the nodes for the first attempt, then cuts
        await relay.start()
        # A generous wait for the answer: a missed one would resend the whole file.
        async with snapshot_pair(leader, follower, snapshot_chunk_size=128 << 10,
                                 backoff_max=0.3, snapshot_resume_wait=WAIT) as (n1, n2):
            n1.t.set_peer(2, HOST, relay.port)
            done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            n1.t.send_snapshot(INSTALL, done.set_result)
            reader, writer = await relay.accept()
            _, upstream = await asyncio.open_connection(HOST, n2.t.port)
            forwarded = 0
            async with asyncio.timeout(WAIT):
                while forwarded < 700 << 10:  # part of the stream, then the "crash"
                    data = await reader.read((700 << 10) - forwarded)
                    assert data
                    upstream.write(data)
                    await upstream.drain()
                    forwarded += len(data)
            upstream.close()
            await upstream.wait_closed()
            writer.close()
            assert await asyncio.wait_for(done, WAIT) is False
            partial = partial_path(follower, META)
            # The follower has finished with the broken connection (its partial file is
            # final) once it holds no inbound connection.
            await wait_until(lambda: not n2.t._inbound and partial.exists())
            held = partial.stat().st_size
            assert 0 < held < size
            n1.t.set_peer(2, HOST, n2.t.port)
            before = n1.t.stats()[2].snapshot_bytes
            assert await send_snapshot(n1, INSTALL) is True
            await n2.wait_for(lambda: len(n2.snapshots) == 1)
            assert n1.t.stats()[2].snapshot_bytes - before == size - held
        assert image_of(follower) == image
        await relay.close()

    run(body)


def test_a_snapshot_queued_as_its_peer_moves_goes_to_the_new_address(
        tmp_path: Path) -> None:
    image = random.Random(11).randbytes(200_000)

    async def body() -> None:
        leader, follower = SnapshotStore(tmp_path / "n1"), SnapshotStore(tmp_path / "n2")
        make_snapshot(leader, image)
        old_home = RawServer()  # where node 2 used to live: connected, silent
        await old_home.start()
        async with snapshot_pair(leader, follower) as (n1, n2):
            n1.t.set_peer(2, HOST, old_home.port)
            n1.t.send(hb(1, 2, 1))
            await old_home.accept()  # the link is connected to the old address
            # The peer moves and a snapshot is queued before the link notices: the
            # reconnection must carry it, not fail it.
            n1.t.set_peer(2, HOST, n2.t.port)
            assert await send_snapshot(n1, INSTALL) is True
            await n2.wait_for(lambda: len(n2.snapshots) == 1)
        assert image_of(follower) == image
        await old_home.close()

    run(body)


RESUME_WAIT = 8.0


def test_a_snapshot_waits_briefly_for_an_answer_and_messages_keep_flowing(
        tmp_path: Path) -> None:
    image = random.Random(10).randbytes(300_000)

    async def body() -> None:
        leader, follower = SnapshotStore(tmp_path / "n1"), SnapshotStore(tmp_path / "n2")
        make_snapshot(leader, image)
        # The follower has no link back, so no answer comes: the leader waits, then
        # streams the whole file; heartbeats are not held up by the wait.
        async with snapshot_pair(leader, follower, way_back=False,
                                 snapshot_resume_wait=RESUME_WAIT) as (n1, n2):
            done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            n1.t.send_snapshot(INSTALL, done.set_result)
            loop = asyncio.get_running_loop()
            started = loop.time()
            n1.t.send(hb(1, 2, 0))  # written with the begin
            await n2.wait_for(lambda: n2.seq_from(1) == [0])
            n1.t.send(hb(1, 2, 1))  # written during the wait
            await n2.wait_for(lambda: n2.seq_from(1) == [0, 1])
            # Both heartbeats arrived well inside the wait (a margin a busy machine keeps).
            assert loop.time() - started < RESUME_WAIT / 2
            assert not done.done()
            assert await asyncio.wait_for(done, WAIT) is True
            await n2.wait_for(lambda: len(n2.snapshots) == 1)
            assert n1.t.stats()[2].snapshot_bytes == leader.path_for(META).stat().st_size
        assert image_of(follower) == image

    run(body)


# -- shutdown ----------------------------------------------------------------------------


def test_close_mid_transfer_fails_it_and_leaves_no_tasks(tmp_path: Path) -> None:
    async def body() -> None:
        leader = SnapshotStore(tmp_path / "n1")
        make_snapshot(leader, random.Random(7).randbytes(8 << 20))
        stuck = RawServer()
        await stuck.start()
        n1 = Node(1, snapshot_store=leader)
        await n1.t.start()
        n1.t.set_peer(2, HOST, stuck.port)
        n1.t.set_peer(3, HOST, free_port())
        results: list[bool] = []
        for dst in (2, 2, 3):  # one streaming, one waiting behind it, one to a dead peer
            n1.t.send_snapshot(InstallSnapshot(src=1, dst=dst, term=5, snapshot=META),
                               results.append)
        await stuck.accept()
        await wait_until(lambda: n1.t.stats()[3].failures > 0)
        async with asyncio.timeout(WAIT):
            await n1.t.close()  # with a drain() blocked on the stuck peer
        assert sorted(results) == [False, False, False]
        await n1.t.close()  # idempotent
        await stuck.close()

    run(body)
