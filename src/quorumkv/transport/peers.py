"""Peer connections: how Raft messages and snapshots travel between nodes (asyncio).

Theory of operation
-------------------
There is one TCP connection per peer *direction*. Our outbound connection to
a peer carries only our messages to it; a connection a peer opens to our
listener only brings its messages to us. Nothing is ever answered on the
connection it came in on, so each side has exactly one writer per socket and
a message's reply simply travels on the replier's own outbound connection.

Each peer has a link (``_PeerLink``): a bounded queue and one task that
connects, writes the handshake, then drains the queue. ``send`` only appends
to the queue, so it never blocks and never fails because a peer is slow or
dead. When the queue is full the *oldest* message is dropped and counted:
Raft tolerates loss (appends are retried, heartbeats repeat) and the newest
messages are the useful ones. Snapshots wait in a queue of their own and are
never dropped for room. The task writes everything queued with one
``write`` and one ``drain``: one system call for a burst of messages.

A link that fails to connect, or whose connection breaks, marks its peer
unreachable (``unreachable()``, for ``report_unreachable``), fails any
snapshot transfer to it, and reconnects after an exponential backoff with
jitter (so peers that lost each other at the same moment do not reconnect in
lock step), reset once a connection proves stable. Messages keep queueing
while it is down. When a peer's address changes (``set_peer``), the link
reconnects at once; a transfer cut short fails, and those still waiting go
to the new address.

Liveness
--------
The node runs a failure detector (cluster/failure_detector.py) fed by
``on_arrival(sender)``, called for every well-formed frame a peer sends after
its handshake: Raft messages, snapshot frames, resume answers and pings. It
is called once the frame has been handled, so a frame that closes the
connection as malformed never counts as a sign of health. Raft heartbeats
already flow from a leader to its followers; every other direction would be
silent between elections, so the node calls ``ping_idle(interval)`` every
interval and each link to which nothing was enqueued for that long gets a
ping. A link whose queue still holds frames is not pinged: they prove the
same thing once they arrive, and pings piling up behind a dead peer would
reach it as one burst, which a detector would read as a peer that suddenly
speaks every microsecond.

Wire format
-----------
Every frame is length-prefixed (framing.py). The first frame on a connection
is the handshake::

    magic b"QKV-PEER" (8 bytes), protocol version u16, cluster id u64, sender node id u64

big-endian, exactly ``HANDSHAKE.size`` bytes. It is read with a frame limit
of its own size, so a stranger cannot make us buffer more than that before
proving it is a peer of this cluster, and it must arrive within
``handshake_timeout``. A wrong magic, version or cluster id closes the
connection with a warning. Every later frame starts with a one-byte tag::

    0 MESSAGE         a Raft message (peer_codec), never an InstallSnapshot
    1 SNAPSHOT_BEGIN  an InstallSnapshot; its file follows in chunks
    2 SNAPSHOT_CHUNK  msgpack [group, term, index, offset, data, done]
    3 SNAPSHOT_RESUME msgpack [group, term, index, offset]: the receiver of a
                      SNAPSHOT_BEGIN tells its sender where to start streaming
    4 PING            empty: "I am alive"; only feeds on_arrival, never answered

(snapshot_stream.py describes a transfer.) SNAPSHOT_RESUME is an answer, so
it travels like any reply: on the receiver's own outbound link to the
snapshot's sender. The sender waits for it at most ``snapshot_resume_wait``
seconds before streaming from 0, writing queued messages meanwhile; one that
names no snapshot the link is waiting on is ignored. (A node without tag 3
never answers, so its senders stream from 0 after the wait; it would close an
answer's connection as an unknown tag, and the answering link reconnects.)
Likewise a node without tag 4 closes a connection that carries a ping as an
unknown tag; the pinging link reconnects after its backoff, and whatever it
wrote after the ping is lost, as on any broken connection.

Any frame that is oversized, malformed (a ping with a body included), of an
unknown tag, or whose message
claims another sender than the handshake's, closes that connection with a
warning; the listener keeps serving every other. A well-formed message
addressed to another node id is dropped and counted (``misdirected``): after
a membership change an address may serve a different node.

Mutual TLS
----------
Given SSL contexts (security/tls.py ``peer_contexts``), both directions speak
TLS and each side requires the other's certificate to be signed by the
cluster CA. A valid certificate is not enough: it must also name the member
it speaks for, i.e. carry a name (a SAN DNS name or the common name) whose
``node_id_for`` is that member's id. Our outbound link checks the listener
it reached (before writing the handshake) against the peer it meant to
reach; an inbound connection is checked against the sender id of its
handshake. A mismatch is a ProtocolError ("certificate names X, not member
Y") that closes the connection with a warning. Snapshots travel on the
same connections, so they are covered too.

Tasks
-----
Every task (one per link, one per inbound connection) is created by the
transport, kept in ``_tasks`` and cancelled and awaited by ``close()``; a task
that dies of an unexpected error is logged when it ends. All methods must be
called on the event loop's thread; callbacks run on the loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import ssl
import struct
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quorumkv.errors import NetworkError, ProtocolError, StorageError
from quorumkv.raft.messages import InstallSnapshot, Message
from quorumkv.security.tls import names_member
from quorumkv.storage.snapshot_store import DEFAULT_CHUNK_SIZE, SnapshotStore
from quorumkv.transport.framing import HEADER, FrameDecoder, FrameTooLarge, encode_frame
from quorumkv.transport.peer_codec import decode_message, encode_message
from quorumkv.transport.snapshot_stream import (
    CHUNK_OVERHEAD,
    InboundSnapshots,
    OutboundSnapshot,
    decode_chunk,
    decode_resume,
    encode_resume,
)

log = logging.getLogger(__name__)

MAGIC = b"QKV-PEER"
PROTOCOL_VERSION = 1
HANDSHAKE = struct.Struct(">8sHQQ")

TAG_MESSAGE = 0
TAG_SNAPSHOT_BEGIN = 1
TAG_SNAPSHOT_CHUNK = 2
TAG_SNAPSHOT_RESUME = 3
TAG_PING = 4

DEFAULT_MAX_QUEUE = 4096
_MAX_BATCH = 1 << 20
"""Bytes of messages taken off the queue per write. Without a cap a stuck peer's whole
backlog would move into the socket's write buffer, where the queue bound cannot drop it."""
_READ_SIZE = 256 << 10
_STABLE_AFTER = 1.0
"""Seconds a connection must live before the reconnect backoff starts over. Resetting on
mere connect would let a listener that accepts and then rejects us (wrong cluster id) be
hammered every few milliseconds."""


_PING_FRAME = encode_frame(bytes((TAG_PING,)))
"""Every ping is this very object, so a link tells its pings apart by identity."""


def encode_handshake(cluster_id: int, node_id: int) -> bytes:
    """The first frame of every outbound connection."""
    return encode_frame(HANDSHAKE.pack(MAGIC, PROTOCOL_VERSION, cluster_id, node_id))


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerStats:
    """What one outbound link has done so far (counters only grow)."""

    host: str
    port: int
    connected: bool
    queued: int
    """Frames waiting in the queue (pings included)."""
    sent: int
    """Messages and snapshot resume answers written to the connection (pings not)."""
    pings_sent: int
    """Pings written to the connection."""
    dropped: int
    """Frames dropped because the queue was full."""
    failures: int
    """Connection attempts that failed plus connections that broke."""
    snapshot_bytes: int
    """Bytes of snapshot files written to the connection (chunk data only)."""


class _Backoff:
    """Exponential backoff with jitter from a random.Random the transport owns."""

    def __init__(self, rng: random.Random, initial: float, maximum: float) -> None:
        self._rng = rng
        self._initial = initial
        self._maximum = maximum
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self._maximum)
        return delay * (0.5 + self._rng.random() / 2)

    def reset(self) -> None:
        self._next = self._initial


@dataclass(frozen=True, slots=True, kw_only=True)
class _LinkConfig:
    node_id: int
    cluster_id: int
    max_frame: int
    max_queue: int
    connect_timeout: float
    write_timeout: float
    backoff_initial: float
    backoff_max: float
    chunk_size: int
    resume_wait: float
    ssl: ssl.SSLContext | None = None


class _PeerLink:
    """Our outbound connection to one peer: its queue, its task, its snapshots."""

    def __init__(self, peer_id: int, host: str, port: int, config: _LinkConfig,
                 rng: random.Random, on_failure: Callable[[int], None]) -> None:
        self.peer_id = peer_id
        self.host = host
        self.port = port
        self._cfg = config
        self._on_failure = on_failure
        self._backoff = _Backoff(rng, config.backoff_initial, config.backoff_max)
        self._queue: collections.deque[bytes] = collections.deque()
        self._snapshots: collections.deque[OutboundSnapshot] = collections.deque()
        self._streaming: OutboundSnapshot | None = None
        self._wakeup = asyncio.Event()
        self._address_changed = asyncio.Event()
        self._overflowing = False
        self._down: str | None = None
        """What the last attempt failed with (None: it did not): further failures of the
        same kind are logged quietly until one succeeds."""
        self.task: asyncio.Task[None] | None = None
        self.connected = False
        self.sent = self.pings_sent = self.dropped = self.failures = self.snapshot_bytes = 0
        self.last_enqueued: float | None = None
        """Loop time of the last frame or snapshot enqueued; None if none ever was."""

    def stats(self) -> PeerStats:
        return PeerStats(host=self.host, port=self.port, connected=self.connected,
                         queued=len(self._queue), sent=self.sent, pings_sent=self.pings_sent,
                         dropped=self.dropped, failures=self.failures,
                         snapshot_bytes=self.snapshot_bytes)

    # -- called by the transport (on the loop) --------------------------------------------

    def enqueue(self, frame: bytes) -> None:
        self.last_enqueued = asyncio.get_running_loop().time()
        if len(self._queue) >= self._cfg.max_queue:
            self._queue.popleft()
            self.dropped += 1
            if not self._overflowing:
                # Once per episode: a peer down for minutes would otherwise flood the log.
                self._overflowing = True
                log.warning("queue to node %d is full (%d messages): dropping the oldest",
                            self.peer_id, self._cfg.max_queue)
        self._queue.append(frame)
        self._wakeup.set()

    def enqueue_snapshot(self, job: OutboundSnapshot) -> None:
        self.last_enqueued = asyncio.get_running_loop().time()
        self._snapshots.append(job)
        self._wakeup.set()

    def ping_if_idle(self, now: float, interval: float) -> bool:
        """Enqueue a ping if nothing was enqueued for ``interval`` seconds and nothing
        waits in the queue; True if it did."""
        if self._queue or (self.last_enqueued is not None
                           and now - self.last_enqueued < interval):
            return False
        self.enqueue(_PING_FRAME)
        return True

    def resume(self, group: int, term: int, index: int, offset: int) -> None:
        """The peer's answer to a snapshot begin: stream from ``offset``. Ignored unless it
        names the transfer waiting for that answer."""
        job = self._streaming
        if job is None or not job.awaiting_resume or (group, term, index) != (
                job.message.group, job.message.snapshot.term, job.message.snapshot.index):
            log.debug("ignoring an unexpected snapshot resume (term %d, index %d) from node %d",
                      term, index, self.peer_id)
            return
        job.start(offset)
        self._wakeup.set()

    def set_address(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._address_changed.set()
        self._wakeup.set()

    def _fail_streaming(self) -> None:
        if self._streaming is not None:
            self._streaming.finish(False)
            self._streaming = None

    def fail_snapshots(self) -> None:
        """Report every snapshot transfer in progress or waiting as failed."""
        if self._streaming is not None:
            self._streaming.finish(False)
            self._streaming = None
        while self._snapshots:
            self._snapshots.popleft().finish(False)

    # -- the link's task ------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    reader, writer = await self._connect()
                # OSError includes refused, unreachable, TimeoutError and TLS failures;
                # ProtocolError is a certificate naming another member.
                except (OSError, ProtocolError) as e:
                    self._failed(f"cannot connect to {self.host}:{self.port}: "
                                 f"{e or type(e).__name__}", type(e).__name__)
                    await self._pause()
                    continue
                connected_at = loop.time()
                moved = False
                try:
                    await self._pump(reader, writer)
                    moved = True
                except OSError as e:
                    self._failed(f"connection to {self.host}:{self.port} broke: "
                                 f"{e or type(e).__name__}", type(e).__name__)
                finally:
                    self.connected = False
                    if moved:
                        # The peer moved: a transfer cut short fails, but those still
                        # waiting their turn go to the new address.
                        self._fail_streaming()
                    else:
                        self.fail_snapshots()
                    await _close_writer(writer)
                if loop.time() - connected_at >= _STABLE_AFTER:
                    self._backoff.reset()
                if not self._address_changed.is_set():
                    await self._pause()
        finally:
            self.fail_snapshots()

    def _failed(self, why: str, kind: str) -> None:
        self.failures += 1
        # Warn once per outage, and again when its cause changes (refused while the peer
        # starts, then its certificate is not trusted): a peer that stays down is retried
        # for a long time.
        log.log(logging.DEBUG if self._down == kind else logging.WARNING, "peer %d: %s",
                self.peer_id, why)
        self._down = kind
        self.connected = False
        self.fail_snapshots()
        self._on_failure(self.peer_id)

    async def _pause(self) -> None:
        """Sleep for the next backoff delay, or until the peer's address changes."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._backoff.next()):
                await self._address_changed.wait()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self._address_changed.clear()
        host, port = self.host, self.port
        async with asyncio.timeout(self._cfg.connect_timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=_READ_SIZE,
                                                           ssl=self._cfg.ssl)
        try:
            if self._cfg.ssl is not None:
                check_peer_identity(writer, self.peer_id)
            writer.write(encode_handshake(self._cfg.cluster_id, self._cfg.node_id))
            async with asyncio.timeout(self._cfg.write_timeout):
                await writer.drain()
        except BaseException:
            await _close_writer(writer)
            raise
        self.connected = True
        self._down = None
        log.info("connected to node %d at %s:%d", self.peer_id, host, port)
        return reader, writer

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Write queued messages and snapshot chunks until the connection fails (raises
        OSError) or the peer's address changes (returns)."""
        while True:
            if self._address_changed.is_set():
                log.info("node %d moved to %s:%d: reconnecting", self.peer_id, self.host,
                         self.port)
                return
            # Peers never write to us on this connection, so end-of-file means the peer
            # closed it (restart, or it rejected our handshake). Checking before taking
            # messages off the queue keeps them for the next connection.
            if reader.at_eof() or writer.is_closing():
                raise ConnectionResetError("closed by the peer")
            self._wakeup.clear()
            parts: list[bytes] = []
            job = await self._next_snapshot_frame(parts)
            # Messages are taken after the (threaded) chunk read, so they wait no longer.
            batch, pings = self._take_batch(parts)
            if parts:
                writer.write(b"".join(parts))
                async with asyncio.timeout(self._cfg.write_timeout):
                    await writer.drain()
                self.sent += batch - pings
                self.pings_sent += pings
            if job is not None:
                self.snapshot_bytes += job.last_chunk_bytes
                if job.sent_all:
                    self._streaming = None
                    job.finish(True)
            await self._idle()

    async def _idle(self) -> None:
        """Wait for something to write, or for the end of a wait for a resume answer."""
        streaming = self._streaming
        if streaming is None:
            if self._queue or self._snapshots:
                return
            await self._wakeup.wait()
            return
        deadline = streaming.resume_deadline
        if deadline is None or self._queue:
            return  # chunks (or messages) to write
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._wakeup.wait()

    def _take_batch(self, parts: list[bytes]) -> tuple[int, int]:
        """Move queued frames to ``parts`` (at least one, up to _MAX_BATCH bytes); return
        how many frames moved and how many of them are pings."""
        queue = self._queue
        size = count = pings = 0
        while queue and (count == 0 or size + len(queue[0]) <= _MAX_BATCH):
            frame = queue.popleft()
            parts.append(frame)
            size += len(frame)
            count += 1
            if frame is _PING_FRAME:
                pings += 1
        if not queue:
            self._overflowing = False
        return count, pings

    async def _next_snapshot_frame(self, parts: list[bytes]) -> OutboundSnapshot | None:
        """Append the next frames of the snapshot transfer, if any, to ``parts``: one chunk
        per round, so queued messages (heartbeats) go out between chunks."""
        while self._streaming is None and self._snapshots:
            # Owned by ``_streaming`` before the first await, so a cancellation mid-open
            # still reports it (fail_snapshots).
            self._streaming = self._snapshots.popleft()
            if await self._streaming.open():
                parts.append(_frame(TAG_SNAPSHOT_BEGIN, encode_message(self._streaming.message),
                                    self._cfg.max_frame))
                # Chunks wait for the receiver's answer (resume()); messages do not.
                self._streaming.resume_deadline = (asyncio.get_running_loop().time()
                                                   + self._cfg.resume_wait)
            else:
                self._streaming = None  # already reported
        job = self._streaming
        if job is None:
            return None
        if job.resume_deadline is not None:
            if asyncio.get_running_loop().time() < job.resume_deadline:
                return None
            job.start(0)  # no answer in time: the whole file, as before resuming existed
        try:
            body = await job.next_chunk()
        except StorageError as e:  # unreadable, or shrank under us: fails this transfer only
            log.error("reading snapshot for node %d failed: %s", self.peer_id, e)
            self._streaming = None
            job.finish(False)
            return None
        parts.append(_frame(TAG_SNAPSHOT_CHUNK, body, self._cfg.max_frame))
        return job


def check_peer_identity(writer: asyncio.StreamWriter, node_id: int) -> None:
    """Raise ProtocolError unless the connection's TLS certificate names member ``node_id``
    (see "Mutual TLS" in the module doc)."""
    ok, names = names_member(writer.get_extra_info("ssl_object"), node_id)
    if not ok:
        raise ProtocolError(f"certificate names {', '.join(names) or 'nothing'}, not member "
                            f"{node_id}")


def _frame(tag: int, body: bytes, max_frame: int) -> bytes:
    return encode_frame(bytes((tag,)) + body, max_frame)


def _report(on_done: Callable[[bool], None], ok: bool) -> None:
    try:
        on_done(ok)
    except Exception:
        log.exception("snapshot on_done callback failed")


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    # abort, not close: close() first flushes the write buffer, which never happens on a
    # connection to a peer that stopped reading (it would hang close()). Whatever is
    # unsent is lost, as Raft allows.
    writer.transport.abort()
    # The connection is gone either way; a failure was already reported where it happened.
    with contextlib.suppress(OSError):
        await writer.wait_closed()


class PeerTransport:
    """Sends this node's Raft messages to its peers and receives theirs (see module doc)."""

    def __init__(self, *, node_id: int, listen_host: str, listen_port: int,
                 on_message: Callable[[Message], None],
                 on_snapshot: Callable[[InstallSnapshot, Path], None] | None = None,
                 on_arrival: Callable[[int], None] | None = None,
                 snapshot_store: SnapshotStore | None = None,
                 max_frame: int = 16 << 20, cluster_id: int = 0,
                 max_queue: int = DEFAULT_MAX_QUEUE,
                 snapshot_chunk_size: int = DEFAULT_CHUNK_SIZE,
                 connect_timeout: float = 5.0, write_timeout: float = 10.0,
                 handshake_timeout: float = 10.0,
                 backoff_initial: float = 0.05, backoff_max: float = 2.0,
                 snapshot_resume_wait: float = 1.0,
                 max_inbound: int = 1024, rng: random.Random | None = None,
                 server_ssl: ssl.SSLContext | None = None,
                 client_ssl: ssl.SSLContext | None = None) -> None:
        """``server_ssl``/``client_ssl``: mutual TLS for connections peers open to us and
        for ours to them (security/tls.py peer_contexts); both or neither."""
        if (server_ssl is None) != (client_ssl is None):
            raise ValueError("mutual TLS needs both server_ssl and client_ssl")
        if max_frame < 4 * CHUNK_OVERHEAD:
            raise ValueError(f"max_frame of {max_frame} bytes is too small")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.node_id = node_id
        self._host = listen_host
        self._port = listen_port
        self._on_message = on_message
        self._on_snapshot = on_snapshot
        self._on_arrival = on_arrival
        self._store = snapshot_store
        self._max_frame = max_frame
        self._cluster_id = cluster_id
        self._handshake_timeout = handshake_timeout
        self._max_inbound = max_inbound
        self._server_ssl = server_ssl
        # Chunks travel as frames, so they must fit the frame limit both sides enforce.
        self._cfg = _LinkConfig(
            node_id=node_id, cluster_id=cluster_id, max_frame=max_frame, max_queue=max_queue,
            connect_timeout=connect_timeout, write_timeout=write_timeout,
            backoff_initial=backoff_initial, backoff_max=backoff_max,
            chunk_size=min(snapshot_chunk_size, max_frame - CHUNK_OVERHEAD),
            resume_wait=snapshot_resume_wait, ssl=client_ssl)
        self._rng = rng if rng is not None else random.Random()
        self._links: dict[int, _PeerLink] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._inbound: dict[asyncio.StreamWriter, int | None] = {}
        self._inbound_by_sender: dict[int, asyncio.StreamWriter] = {}
        self._receiving: set[tuple[int, int, int]] = set()
        self._unreachable: set[int] = set()
        self._server: asyncio.Server | None = None
        self._closed = False
        self.misdirected = 0
        """Inbound messages dropped because they were addressed to another node id."""
        self.unknown_destination = 0
        """Outbound messages dropped because no address is known for their destination."""
        self.pings_received = 0
        """Well-formed pings received from every peer."""

    @property
    def port(self) -> int:
        """The listening port (the bound one once started, even if 0 was asked for)."""
        return self._port

    async def start(self) -> None:
        """Listen (NetworkError if the address cannot be bound) and start every link."""
        if self._server is not None or self._closed:
            raise RuntimeError("PeerTransport.start() may be called once, before close()")
        try:
            # A stranger stalling its TLS handshake holds no inbound slot: bound it as the
            # plaintext handshake is.
            self._server = await asyncio.start_server(
                self._accept, self._host, self._port, limit=_READ_SIZE, ssl=self._server_ssl,
                ssl_handshake_timeout=self._handshake_timeout if self._server_ssl else None)
        except OSError as e:
            raise NetworkError(f"cannot listen for peers on {self._host}:{self._port}: {e}",
                               host=self._host, port=self._port) from e
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("node %d listening for peers on %s:%d", self.node_id, self._host, self._port)
        for link in self._links.values():
            self._start_link(link)

    # -- membership ----------------------------------------------------------------------

    def set_peer(self, node_id: int, host: str, port: int) -> None:
        """Add a peer or change its address (queued messages are kept)."""
        if node_id == self.node_id:
            raise ValueError(f"node {node_id} is this node; it is not its own peer")
        if self._closed:
            return
        link = self._links.get(node_id)
        if link is None:
            link = _PeerLink(node_id, host, port, self._cfg, self._rng, self._mark_unreachable)
            self._links[node_id] = link
            if self._server is not None:
                self._start_link(link)
        elif (link.host, link.port) != (host, port):
            link.set_address(host, port)

    def remove_peer(self, node_id: int) -> None:
        """Forget a peer: its queued messages are dropped, its snapshot transfers fail."""
        link = self._links.pop(node_id, None)
        self._unreachable.discard(node_id)
        if link is None:
            return
        if link.task is not None:
            link.task.cancel()  # close() awaits it; when it ends its snapshots fail
        else:
            # on_done is never called from inside the caller's own call into the transport.
            asyncio.get_running_loop().call_soon(link.fail_snapshots)

    def _start_link(self, link: _PeerLink) -> None:
        task = self._spawn(link.run(), f"peer-link-{self.node_id}-to-{link.peer_id}")
        # Only once the task has ended: failing a transfer closes its file, which must not
        # happen while the task's thread may still be reading it. A task cancelled before
        # its first step never runs its own cleanup, so this is also the backstop.
        task.add_done_callback(lambda _: link.fail_snapshots())
        link.task = task

    def _mark_unreachable(self, node_id: int) -> None:
        self._unreachable.add(node_id)

    # -- sending -------------------------------------------------------------------------

    def send(self, m: Message) -> None:
        """Queue ``m`` for its destination. Never blocks, never fails for a dead peer."""
        if isinstance(m, InstallSnapshot):
            raise TypeError("an InstallSnapshot needs its image: use send_snapshot()")
        if self._closed:
            return
        link = self._links.get(m.dst)
        if link is None:
            self.unknown_destination += 1
            log.debug("dropping %s to node %d: no address known", type(m).__name__, m.dst)
            return
        try:
            frame = _frame(TAG_MESSAGE, encode_message(m), self._max_frame)
        except FrameTooLarge as e:
            # Raft's max message size should prevent this; the entries will be resent.
            link.dropped += 1
            log.error("dropping %s to node %d: %s", type(m).__name__, m.dst, e)
            return
        link.enqueue(frame)

    def send_snapshot(self, m: InstallSnapshot, on_done: Callable[[bool], None], *,
                      source: SnapshotStore | None = None) -> None:
        """Stream the snapshot file of ``m.snapshot`` (from ``source``, by default our own
        snapshot store), then deliver ``m``. ``on_done(success)`` is called exactly once,
        later, on the loop: True once every byte was written to the peer's connection."""
        store = source if source is not None else self._store
        link = self._links.get(m.dst)
        if store is None or link is None or self._closed:
            log.warning("cannot send a snapshot to node %d: %s", m.dst,
                        "no snapshot store" if store is None else
                        "transport closed" if self._closed else "no address known")
            asyncio.get_running_loop().call_soon(_report, on_done, False)
            return
        link.enqueue_snapshot(OutboundSnapshot(m, store, on_done, self._cfg.chunk_size))

    def ping_idle(self, interval: float) -> list[int]:
        """Enqueue a ping on every link to which nothing (message, snapshot, ping) was
        enqueued for at least ``interval`` seconds of the loop's clock (a new link: ever),
        unless frames still wait in its queue; return the peers pinged. The node calls it
        every ``interval`` so that each direction carries something its peer's failure
        detector can time: Raft heartbeats where they flow, a ping otherwise."""
        if self._closed:
            return []
        now = asyncio.get_running_loop().time()
        return [peer for peer, link in self._links.items() if link.ping_if_idle(now, interval)]

    def unreachable(self) -> set[int]:
        """Peers whose connection failed (or could not be made) since the last call."""
        out, self._unreachable = self._unreachable, set()
        return out

    def stats(self) -> dict[int, PeerStats]:
        return {peer: link.stats() for peer, link in self._links.items()}

    # -- receiving -----------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """asyncio's callback for a new inbound connection: hand it to a task we own."""
        if self._closed:
            writer.close()
            return
        if len(self._inbound) >= self._max_inbound:
            log.warning("refusing a peer connection from %s: %d connections already open",
                        writer.get_extra_info("peername"), len(self._inbound))
            writer.close()
            return
        self._inbound[writer] = None
        self._spawn(self._serve_inbound(reader, writer), f"peer-inbound-{self.node_id}")

    async def _serve_inbound(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        snapshots = InboundSnapshots(node_id=self.node_id, store=self._store,
                                     on_snapshot=self._on_snapshot, busy=self._receiving,
                                     answer=self._answer_begin)
        sender: int | None = None
        try:
            try:
                async with asyncio.timeout(self._handshake_timeout):
                    sender = await self._read_handshake(reader)
            except TimeoutError:
                raise ProtocolError(f"no handshake within {self._handshake_timeout} s") from None
            except asyncio.IncompleteReadError:
                raise ProtocolError("connection closed during the handshake") from None
            if self._server_ssl is not None:
                check_peer_identity(writer, sender)
            self._register(writer, sender)
            decoder = FrameDecoder(self._max_frame)
            on_arrival = self._on_arrival
            while data := await reader.read(_READ_SIZE):
                for frame in decoder.feed(data):
                    await self._dispatch(frame, sender, snapshots)
                    # Only now: a frame that closes the connection as malformed (raised
                    # above) is no sign that the peer is healthy.
                    if on_arrival is not None:
                        try:
                            on_arrival(sender)
                        except Exception:
                            # A bug in the detector must not cut a healthy peer's connection.
                            log.exception("on_arrival failed for node %d", sender)
            log.debug("node %s closed its connection to us", sender)
        except ProtocolError as e:
            log.warning("closing peer connection from %s (node %s): %s", peer, sender, e)
        except OSError as e:
            log.info("peer connection from %s (node %s) broke: %s", peer, sender, e)
        finally:
            snapshots.close()
            self._inbound.pop(writer, None)
            if sender is not None and self._inbound_by_sender.get(sender) is writer:
                del self._inbound_by_sender[sender]
            await _close_writer(writer)

    async def _read_handshake(self, reader: asyncio.StreamReader) -> int:
        (length,) = HEADER.unpack(await reader.readexactly(HEADER.size))
        if length != HANDSHAKE.size:
            raise ProtocolError(f"not a quorumkv peer: a first frame of {length} bytes "
                                f"instead of a {HANDSHAKE.size}-byte handshake")
        magic, version, cluster_id, sender = HANDSHAKE.unpack(
            await reader.readexactly(HANDSHAKE.size))
        if magic != MAGIC:
            raise ProtocolError(f"not a quorumkv peer: handshake magic {magic!r}")
        if version != PROTOCOL_VERSION:
            raise ProtocolError(f"peer protocol version {version}; we speak "
                                f"{PROTOCOL_VERSION}")
        if cluster_id != self._cluster_id:
            raise ProtocolError(f"node {sender} belongs to cluster {cluster_id}, not to ours "
                                f"({self._cluster_id})")
        if sender == self.node_id:
            raise ProtocolError(f"a peer claims our own node id {sender} (duplicate id, or "
                                "a peer address that points back at us)")
        return int(sender)

    def _register(self, writer: asyncio.StreamWriter, sender: int) -> None:
        self._inbound[writer] = sender
        old = self._inbound_by_sender.get(sender)
        if old is not None:
            # A peer reconnects only when it believes its old connection dead; ours may be
            # half-open (it crashed, or a partition ate the FIN) and would linger forever.
            log.info("node %d reconnected: closing its previous connection", sender)
            old.close()
        self._inbound_by_sender[sender] = writer

    async def _dispatch(self, frame: bytes, sender: int, snapshots: InboundSnapshots) -> None:
        if not frame:
            raise ProtocolError("empty frame")
        tag, body = frame[0], frame[1:]
        if tag == TAG_PING:
            if body:
                raise ProtocolError(f"a ping carries no body, this one {len(body)} bytes")
            self.pings_received += 1
            return
        if tag == TAG_SNAPSHOT_CHUNK:
            await snapshots.chunk(decode_chunk(body))
            return
        if tag == TAG_SNAPSHOT_RESUME:
            r = decode_resume(body)
            link = self._links.get(sender)
            if link is None:
                log.debug("ignoring a snapshot resume from node %d: not a peer", sender)
            else:
                link.resume(r.group, r.term, r.index, r.offset)
            return
        if tag not in (TAG_MESSAGE, TAG_SNAPSHOT_BEGIN):
            raise ProtocolError(f"unknown peer frame kind {tag}")
        m = decode_message(body)
        if m.src != sender:
            raise ProtocolError(f"node {sender} sent a message from node {m.src}")
        if isinstance(m, InstallSnapshot) != (tag == TAG_SNAPSHOT_BEGIN):
            raise ProtocolError("InstallSnapshot travels only as the start of a snapshot "
                                "stream, and nothing else does")
        if isinstance(m, InstallSnapshot):
            await snapshots.begin(m)
            return
        if m.dst != self.node_id:
            self.misdirected += 1
            log.debug("dropping %s from node %d addressed to node %d", type(m).__name__,
                      m.src, m.dst)
            return
        try:
            self._on_message(m)
        except Exception:
            # A bug in the node's handler must not cut the connection to a healthy peer.
            log.exception("on_message failed for %s from node %d", type(m).__name__, m.src)

    def _answer_begin(self, m: InstallSnapshot, offset: int) -> None:
        """Tell the sender of a snapshot begin where to stream from (on our link to it)."""
        link = self._links.get(m.src)
        if link is None or self._closed:
            return  # the sender streams from 0 once its wait ends
        body = encode_resume(m.group, m.snapshot.term, m.snapshot.index, offset)
        link.enqueue(_frame(TAG_SNAPSHOT_RESUME, body, self._max_frame))

    # -- tasks and shutdown --------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("transport task %s died", task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        """Stop listening, close every connection, cancel and await every task. Snapshot
        transfers still in progress report failure."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        for link in self._links.values():
            if link.task is None:
                link.fail_snapshots()  # never started: nothing else will report them
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in list(self._inbound):
            # Accepted, but its task was cancelled before its first step (so before its
            # own cleanup could run).
            await _close_writer(writer)
        if self._server is not None:
            await self._server.wait_closed()
        log.info("node %d peer transport closed", self.node_id)

