"""The client port: accepts client connections and serves the client protocol.

The server knows nothing of Raft: it decodes and checks requests, hands them
to a :class:`KVService` (the node implements it; tests use a fake), and
writes back whatever the service answers or raises. The wire format is in
:mod:`quorumkv.client.protocol`.

Tasks. asyncio runs one handler task per connection. The handler owns a
TaskGroup holding the connection's reader task and one task per request in
flight, so a client may pipeline many requests, and each answer is written
as soon as it is ready (completion order, matched by id). A request task
never raises: every failure becomes an error response, so one bad request
cannot take its connection, or its neighbours, down. The exception is the
commonest cheap request, a ``one`` read of a single key: it cannot wait, so
it is answered where its frame is decoded, and its answer leaves with the
others produced in the same loop iteration in one socket write.

Hostile input. A frame that is not msgpack, or whose request id cannot be
recovered, closes the connection (nothing can be answered); a malformed
request with a usable id gets an InvalidArgument answer and the connection
goes on; a frame announced longer than ``max_frame`` closes the connection
before its body is read. The listener and every other connection carry on.

Limits. At most ``max_connections`` connections are served at once: one
beyond it is sent a single ResourceExhausted error (request id 0, which no
client uses) and closed. A client that has begun a frame must send the rest
of it within ``frame_timeout`` seconds of the server waiting for it (time the
server spends not reading, because the connection's ``max_inflight`` requests
are all in flight, does not count), or the connection is closed: a stalled
half frame (slow loris) holds no buffer and no connection slot for long. A
connection with no incomplete frame may stay idle for ever: clients keep
idle connections, and a watch is one. So a connection buffers at most
``max_frame`` bytes of an incomplete request (plus one read chunk), and runs
at most ``max_inflight`` requests. :class:`ClientLimits` adds per-client
bounds (docs/security.md): connections from one address (refused like those
beyond ``max_connections``), leases granted through one connection and still
alive, and a request rate per connection (a token bucket; a request finding
it empty is answered RateLimited at once, never queued).

Streams. A watch's later answers are written by the node's watch hub; a
snapshot's (a backup, ``client/snapshot.py``) by the request's own task, one
chunk at a time, each waiting until the connection takes it, so a slow
client slows the stream rather than filling memory.

Shutdown. :meth:`ClientServer.close` stops accepting, stops reading new
requests, waits for the requests in flight to be answered, then closes the
connections. A snapshot being streamed ends at its next chunk with an
error (the client takes it again elsewhere).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from ssl import SSLContext
from typing import TYPE_CHECKING, Any, Protocol

from quorumkv.client.auth_wire import AuthenticateRequest, AuthRequest, AuthTokenRequest
from quorumkv.client.coordination_wire import (
    LeaseKeepAliveRequest,
    LeaseListRequest,
    LeaseTimeToLiveRequest,
    WatchCancelRequest,
    WatchRequest,
)
from quorumkv.client.protocol import (
    PROTOCOL_VERSION,
    DigestRequest,
    HelloRequest,
    LeaveRequest,
    MemberAddRequest,
    MemberListRequest,
    MemberPromoteRequest,
    MemberRemoveRequest,
    MoveLeaderRequest,
    ReadRequest,
    Request,
    SnapshotRequest,
    StatusRequest,
    WaitAppliedRequest,
    WriteRequest,
    encode_error_response,
    encode_response,
    parse_request,
    request_id_of,
    request_token,
    unpack_payload,
)
from quorumkv.client.snapshot import chunk_to_wire
from quorumkv.errors import (
    InvalidArgument,
    NotBuiltYet,
    QuorumKVError,
    ResourceExhausted,
    StorageError,
    UnavailableError,
)
from quorumkv.kv.commands import Command, LeaseGrant, LeaseRevoke, RangeRequest
from quorumkv.kv.validation import Limits, check_key_size, validate
from quorumkv.security.tls import connection_cert_user
from quorumkv.server.client_auth import ClientAuth, ConnectionAuth
from quorumkv.server.rate_limit import TokenBucket, rate_limited
from quorumkv.transport.framing import FrameDecoder, FrameTooLarge, encode_frame

if TYPE_CHECKING:
    from quorumkv.server.config import NodeConfig

log = logging.getLogger(__name__)

_READ_CHUNK = 64 * 1024
_WRITE_HIGH_WATER = 1 << 20
"""Answers written at once wait for the client to read them beyond this much."""
SNAPSHOT_CHUNK = 1 << 20
"""Bytes of a backup per frame (less if frames are smaller): few frames, little memory."""
_FRAME_OVERHEAD = 256
"""Room in a frame for a chunk's map around its bytes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientLimits:
    """What one client may hold of the node: NodeConfig's settings of the same names
    (docs/security.md). None turns a limit off."""

    max_connections_per_address: int | None = None
    max_leases_per_connection: int = 10_000
    max_requests_per_s: float | None = None
    max_request_burst: int = 1000

    @classmethod
    def of(cls, config: NodeConfig) -> ClientLimits:
        return cls(max_connections_per_address=config.max_connections_per_address,
                   max_leases_per_connection=config.max_leases_per_connection,
                   max_requests_per_s=config.max_requests_per_s,
                   max_request_burst=config.max_request_burst)


class SnapshotSource(Protocol):
    """A backup file the node has ready to send (server/backup.py's BackupSource)."""

    @property
    def size(self) -> int: ...

    async def read(self, max_bytes: int) -> bytes: ...

    async def close(self) -> None: ...


RequestObserver = Callable[[str, str, float, str | None], None]
"""Told of every request answered: (operation, consistency level or "", seconds from
decoding to having the answer, the error code or None)."""

_OP_NAMES: dict[type, str] = {}


def op_name(req: object) -> str:
    """The request's operation as metrics label it: ``MemberAddRequest`` -> ``member_add``."""
    cls = type(req)
    name = _OP_NAMES.get(cls)
    if name is None:
        base = cls.__name__.removesuffix("Request")
        name = _OP_NAMES[cls] = re.sub(r"(?<!^)(?=[A-Z])", "_", base).lower()
    return name


class KVService(Protocol):
    """What the client port needs from a node. Every result map includes ``"header"``.

    Build the maps with :func:`~quorumkv.client.protocol.write_result`,
    :func:`~quorumkv.client.protocol.durable_result` and
    :func:`~quorumkv.client.protocol.range_result`. Raise a QuorumKVError to
    answer with an error (``NotLeader`` should carry ``leader_address``,
    the leader's client "host:port", so clients can follow it).
    """

    async def write(self, cmd: Command, *, consistency: str, client_id: int,
                    seq: int, user: str | None = None) -> dict[str, Any]: ...

    async def range(self, req: RangeRequest, *, consistency: str,
                    min_revision: int, min_index: int = 0) -> dict[str, Any]: ...

    async def wait_applied(self, index: int) -> dict[str, Any]: ...

    def range_now(self, req: RangeRequest) -> dict[str, Any] | None:
        """A ``one`` read answered at once, or None to take the usual path."""

    async def status(self, *, local: bool = False) -> dict[str, Any]: ...

    async def digest(self) -> dict[str, Any]: ...

    async def snapshot(self) -> tuple[dict[str, Any], SnapshotSource]:
        """The first answer of a snapshot stream and the backup to send after it."""
        ...

    async def leave(self, *, token: str) -> dict[str, Any]: ...

    @property
    def membership(self) -> MembershipService: ...

    def hello(self) -> dict[str, Any]: ...

    async def watch(self, req: WatchRequest, stream: Any) -> dict[str, Any]: ...

    def watch_cancel(self, watch_id: int, owner: object) -> dict[str, Any]: ...

    async def lease_keepalive(self, lease_id: int) -> dict[str, Any]: ...

    async def lease_ttl(self, lease_id: int, *, keys: bool) -> dict[str, Any]: ...

    async def lease_list(self) -> dict[str, Any]: ...

    async def leases_granted(self, ids: Collection[int]) -> set[int]:
        """Those of ``ids`` that are granted now (neither revoked nor expired)."""
        ...


class MembershipService(Protocol):
    """Membership changes (server/membership.py); each checks the cluster token."""

    def list(self) -> dict[str, Any]: ...

    async def add(self, name: str, peer_address: str, client_address: str | None, *,
                  learner: bool, token: str) -> dict[str, Any]: ...

    async def remove(self, name: str, *, token: str) -> dict[str, Any]: ...

    async def promote(self, name: str, *, token: str) -> dict[str, Any]: ...

    async def move_leader(self, name: str, *, token: str) -> dict[str, Any]: ...


class _Connection:
    """One client connection's state, shared by its reader and request tasks."""

    __slots__ = ("auth", "bucket", "cert_user", "closers", "done", "handler", "lease_lock",
                 "leases", "leases_pending", "out", "out_bytes", "peer", "reader", "reader_task",
                 "slots", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 max_inflight: int) -> None:
        self.reader = reader
        self.writer = writer
        self.peer = str(writer.get_extra_info("peername"))
        self.cert_user: str | None = connection_cert_user(writer)
        """The common name of the client's verified certificate (None: no TLS, or no
        certificate); with authentication on, the user it signs in as."""
        self.auth = ConnectionAuth(self.cert_user)
        """Who the connection has signed in as (server/client_auth.py)."""
        self.slots = asyncio.Semaphore(max_inflight)
        self.handler = asyncio.current_task()
        self.reader_task: asyncio.Task[None] | None = None
        self.done = asyncio.Event()
        self.closers: list[Callable[[], None]] = []
        """Run when the connection ends (its watches stop)."""
        self.out: list[bytes] = []
        """Answers queued to go out together at the end of this loop iteration."""
        self.out_bytes = 0
        self.bucket: TokenBucket | None = None
        """The request rate limit's bucket; None when there is no limit."""
        self.leases: set[int] = set()
        """Leases granted through this connection, some perhaps revoked or expired since."""
        self.leases_pending = 0
        """Grants in flight: counted against the limit until they are answered."""
        self.lease_lock: asyncio.Lock | None = None

    def queue(self, frame: bytes) -> None:
        """Send ``frame`` with whatever else is answered in this loop iteration: one
        socket write for a burst of answers instead of one each."""
        if not self.out:
            asyncio.get_running_loop().call_soon(self.flush)
        self.out.append(frame)
        self.out_bytes += len(frame)

    def flush(self) -> None:
        out, self.out, self.out_bytes = self.out, [], 0
        if out and not self.writer.is_closing():
            self.writer.write(out[0] if len(out) == 1 else b"".join(out))

    def queued_bytes(self) -> int:
        return self.writer.transport.get_write_buffer_size() + self.out_bytes

    async def send(self, frame: bytes) -> None:
        if self.writer.is_closing():
            return  # closed for a protocol violation, or the client left: no one to tell
        try:
            self.flush()
            self.writer.write(frame)
            await self.writer.drain()  # backpressure: a client that stops reading stalls here
        except OSError as err:
            log.debug("client %s went away before its answer was sent: %s", self.peer, err)

    def hang_up(self, reason: str) -> None:
        log.warning("closing client connection %s: %s", self.peer, reason)
        self.writer.close()

    def closed(self) -> None:
        closers, self.closers = self.closers, []
        for close in closers:
            try:
                close()
            except Exception:
                log.exception("cleaning up after client %s failed", self.peer)


class _Stream:
    """The later answers of one streaming request (a watch) on its connection."""

    __slots__ = ("_max_frame", "conn", "ready", "request_id")

    def __init__(self, conn: _Connection, request_id: int, max_frame: int) -> None:
        self.conn = conn
        self.request_id = request_id
        self._max_frame = max_frame
        self.ready = asyncio.Event()

    @property
    def owner(self) -> object:
        return self.conn

    async def send(self, body: dict[str, Any]) -> None:
        await self.conn.send(encode_frame(encode_response(self.request_id, body),
                                          self._max_frame))

    def on_close(self, callback: Callable[[], None]) -> None:
        if self.conn.writer.is_closing():
            callback()
        else:
            self.conn.closers.append(callback)


class ClientServer:
    def __init__(self, service: KVService, *, host: str, port: int, max_frame: int = 4 << 20,
                 limits: Limits, max_inflight: int = 1024, max_connections: int = 1024,
                 frame_timeout: float = 30.0, observe: RequestObserver | None = None,
                 client_limits: ClientLimits | None = None,
                 ssl: SSLContext | None = None, auth: ClientAuth | None = None) -> None:
        """``max_inflight`` bounds the requests one connection may have in flight;
        beyond it the server stops reading that connection until some finish.
        ``max_connections`` bounds the connections served at once; ``frame_timeout``
        (seconds) is how long a client may take to finish a frame it started."""
        self._service = service
        self._host = host
        self.port = port
        """The port listened on; after :meth:`start`, the real one when 0 was asked."""
        self._max_frame = max_frame
        self._limits = limits
        self._max_inflight = max_inflight
        self._max_connections = max_connections
        self._frame_timeout = frame_timeout
        self._observe = observe
        self._ssl = ssl
        self._auth = auth
        """Users and permissions; None serves everyone (a service without auth)."""
        """TLS only when set (security/tls.py server_context); plaintext is refused in the
        handshake, which asyncio ends without a word (an SSLError is an OSError)."""
        self._client_limits = client_limits or ClientLimits()
        self._per_address: dict[str, int] = {}
        """Connections open per client address, kept only if they are limited."""
        self.refused_connections = 0
        """Connections turned away because ``max_connections`` were open, or
        ``max_connections_per_address`` from their address."""
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._closing = False

    @property
    def connection_count(self) -> int:
        """Client connections open now."""
        return len(self._connections)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self.port,
                                                  ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self, *, grace: float | None = None) -> None:
        """Stop accepting, answer what is in flight, then close every connection.

        ``grace`` bounds the wait (seconds); requests still running then are
        cancelled. None waits for them however long they take.
        """
        self._closing = True
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for conn in connections:
            if conn.reader_task is not None:
                conn.reader_task.cancel()  # stop reading; in-flight requests carry on
        try:
            async with asyncio.timeout(grace):
                await asyncio.gather(*(conn.done.wait() for conn in connections))
        except TimeoutError:
            log.warning("client requests still running after %ss; cancelling them", grace)
            for conn in connections:
                if conn.handler is not None:
                    conn.handler.cancel()
            await asyncio.gather(*(conn.done.wait() for conn in connections))
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            writer.close()
            return
        if len(self._connections) >= self._max_connections:
            await self._refuse(writer, ResourceExhausted(
                f"the node serves {len(self._connections)} client connections, its limit "
                f"(max_client_connections {self._max_connections}); retry later or "
                f"elsewhere", limit=self._max_connections))
            return
        limits = self._client_limits
        per_address = limits.max_connections_per_address
        address = ""
        if per_address is not None:
            address = _address_of(writer)
            open_here = self._per_address.get(address, 0)
            if open_here >= per_address:
                await self._refuse(writer, ResourceExhausted(
                    f"the node serves {open_here} client connections from {address}, the "
                    f"limit for one address (max_connections_per_address {per_address}); "
                    f"close some or retry later", limit=per_address))
                return
        conn = _Connection(reader, writer, self._max_inflight)
        if limits.max_requests_per_s is not None:
            conn.bucket = TokenBucket(limits.max_requests_per_s, limits.max_request_burst,
                                      time.monotonic())
        self._connections.add(conn)
        if per_address is not None:  # here, so the finally below always undoes it
            self._per_address[address] = self._per_address.get(address, 0) + 1
        try:
            async with asyncio.TaskGroup() as tasks:
                conn.reader_task = tasks.create_task(self._read_loop(conn, tasks))
        finally:
            self._connections.discard(conn)
            if per_address is not None:
                left = self._per_address.pop(address) - 1
                if left:
                    self._per_address[address] = left
            conn.flush()
            writer.close()
            conn.closed()
            conn.done.set()

    async def _refuse(self, writer: asyncio.StreamWriter, err: ResourceExhausted) -> None:
        """Turn a connection away: one ResourceExhausted answer (id 0), then close."""
        self.refused_connections += 1
        if self.refused_connections == 1 or self.refused_connections % 1000 == 0:
            log.warning("refusing client connection %s: %s (%d refused so far)",
                        writer.get_extra_info("peername"), err.message,
                        self.refused_connections)
        try:
            writer.write(encode_frame(encode_error_response(0, err), self._max_frame))
            async with asyncio.timeout(1.0):  # a refused client gets no more of our time
                await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    async def _read_loop(self, conn: _Connection, tasks: asyncio.TaskGroup) -> None:
        decoder = FrameDecoder(self._max_frame)
        budget = self._frame_timeout  # seconds left to wait for the rest of a pending frame
        loop = asyncio.get_running_loop()
        while True:
            pending = decoder.pending > 0
            started = loop.time()
            try:
                # Only an incomplete frame is timed: an idle connection may stay idle.
                async with asyncio.timeout(budget if pending else None):
                    data = await conn.reader.read(_READ_CHUNK)
            except TimeoutError:
                conn.hang_up(f"an incomplete request frame ({decoder.pending} bytes) was not "
                             f"completed within {self._frame_timeout} s")
                return
            except OSError:
                return  # reset by the client: nothing more to read
            if pending:
                budget -= loop.time() - started
            if not data:
                return  # the client closed its side; answers to what it sent still go out
            try:
                frames = decoder.feed(data)
            except FrameTooLarge as err:
                conn.hang_up(err.message)
                return
            if frames or not pending:
                budget = self._frame_timeout  # a new frame (if one is pending) starts now
            for frame in frames:
                if not await self._accept(conn, frame, tasks):
                    return

    async def _accept(self, conn: _Connection, frame: bytes, tasks: asyncio.TaskGroup) -> bool:
        """Start serving one frame's request; False if the connection must close."""
        try:
            obj = unpack_payload(frame)
        except InvalidArgument as err:
            conn.hang_up(f"undecodable request ({err.message})")
            return False
        try:
            request_id, req = parse_request(obj)
        except Exception as err:
            if not isinstance(err, InvalidArgument):
                # A gap in the request checks, not the client's fault alone: log
                # it in full, but answer it like any malformed request.
                log.exception("unexpected failure decoding a request from %s", conn.peer)
                err = InvalidArgument(f"malformed request: {type(err).__name__}")
            bad_id = request_id_of(obj)
            if bad_id is None:
                conn.hang_up(f"malformed request without a usable id ({err.message})")
                return False
            await conn.send(encode_frame(encode_error_response(bad_id, err), self._max_frame))
            return True
        # Before the fast path below, so that it too is counted.
        if conn.bucket is not None and self._over_rate(conn, request_id, req):
            if conn.queued_bytes() > _WRITE_HIGH_WATER:
                await conn.send(b"")
            return True
        token = request_token(obj)
        # The commonest cheap request, a one read of one key: no task, no slot, no wait.
        if (isinstance(req, ReadRequest) and req.consistency == "one" and not req.min_index
                and self._answer_now(conn, request_id, req, token)):
            if conn.queued_bytes() > _WRITE_HIGH_WATER:
                await conn.send(b"")  # everything queued goes out, then the usual backpressure
            return True
        await conn.slots.acquire()
        tasks.create_task(self._serve(conn, request_id, req, token))
        return True

    def _over_rate(self, conn: _Connection, request_id: int, req: Request) -> bool:
        """Answer the request RateLimited if its connection's bucket is empty."""
        assert conn.bucket is not None
        wait = conn.bucket.take(time.monotonic())
        if not wait:
            return False
        bucket = conn.bucket
        err = rate_limited(wait, bucket.rate, bucket.capacity, "one connection")
        self._observed(req, 0.0, err.code)
        conn.queue(self._error_frame(request_id, err))
        return True

    def _answer_now(self, conn: _Connection, request_id: int, req: ReadRequest,
                    token: str | None) -> bool:
        """Answer a ``one`` read of one key on the spot; False if the service wants the
        usual path for it."""
        started = time.perf_counter()
        error: str | None = None
        try:
            self._check_key_sizes(req.range)
            if self._auth is not None and self._auth.enabled:
                self._auth.authorize(req, self._auth.user(conn.auth, token))
            result = self._service.range_now(req.range)
            if result is None:
                return False
            frame = encode_frame(encode_response(request_id, result), self._max_frame)
        except QuorumKVError as err:
            frame, error = self._error_frame(request_id, err), err.code
        except Exception as err:
            log.exception("client request %d (read) from %s failed", request_id, conn.peer)
            frame = self._error_frame(
                request_id, QuorumKVError(f"internal error: {type(err).__name__}"))
            error = QuorumKVError.code
        self._observed(req, time.perf_counter() - started, error)
        conn.queue(frame)
        return True

    async def _serve(self, conn: _Connection, request_id: int, req: Request,
                     token: str | None = None) -> None:
        stream: _Stream | None = None
        started = time.perf_counter()
        error: str | None = None
        snapshot: SnapshotSource | None = None
        failed = False
        user: str | None = None
        try:
            try:
                if self._auth is not None and self._auth.enabled and not isinstance(
                        req, (AuthenticateRequest, AuthTokenRequest, AuthRequest)):
                    user = self._auth.user(conn.auth, token)
                    self._auth.authorize(req, user)
                if isinstance(req, (AuthenticateRequest, AuthTokenRequest, AuthRequest)):
                    if self._auth is None:
                        raise NotBuiltYet("this service has no users")
                    result = await self._auth.serve(req, conn.auth, token,
                                                    _address_of(conn.writer))
                    if conn.auth.member:
                        conn.bucket = None  # a member's calls carry many clients' requests
                elif isinstance(req, WatchRequest):
                    self._check_key_sizes(RangeRequest(key=req.key, range_end=req.range_end))
                    stream = _Stream(conn, request_id, self._max_frame)
                    result = await self._service.watch(req, stream)
                elif isinstance(req, WatchCancelRequest):
                    result = self._service.watch_cancel(req.watch_id, conn)
                elif isinstance(req, SnapshotRequest):
                    result, snapshot = await self._service.snapshot()
                elif isinstance(req, WriteRequest) and isinstance(req.cmd,
                                                                  (LeaseGrant, LeaseRevoke)):
                    result = await self._lease_write(conn, req, user)
                else:
                    result = await self._execute(req, user)
                frame = encode_frame(encode_response(request_id, result), self._max_frame)
            except QuorumKVError as err:  # includes an answer too large for a frame
                frame = self._error_frame(request_id, err)
                error = err.code
                failed = True
            except Exception as err:
                log.exception("client request %d (%s) from %s failed", request_id,
                              type(req).__name__, conn.peer)
                frame = self._error_frame(
                    request_id, QuorumKVError(f"internal error: {type(err).__name__}"))
                error = QuorumKVError.code
                failed = True
            self._observed(req, time.perf_counter() - started, error)
            # Queued, to go out with the other answers of this loop iteration in one
            # write; a watch's events and a snapshot's chunks go through conn.send,
            # which writes whatever is queued first, so they follow this answer.
            conn.queue(frame)
            if conn.queued_bytes() > _WRITE_HIGH_WATER:
                await conn.send(b"")  # backpressure, as for the one-level reads
            if stream is not None:
                stream.ready.set()  # the watch's own messages may follow its first answer
            if snapshot is not None and not failed:
                await self._send_snapshot(conn, request_id, snapshot)
        finally:
            if snapshot is not None:
                await snapshot.close()
            conn.slots.release()

    async def _send_snapshot(self, conn: _Connection, request_id: int,
                             snapshot: SnapshotSource) -> None:
        """The backup's bytes after its first answer, in order; an error frame if it cannot
        be finished. Stops quietly if the client goes away."""
        chunk = max(1, min(SNAPSHOT_CHUNK, self._max_frame - _FRAME_OVERHEAD))
        offset = 0
        try:
            while offset < snapshot.size:
                if conn.writer.is_closing():
                    return  # nobody to send it to
                if self._closing:
                    raise UnavailableError("the node is shutting down: take the backup "
                                           "again (from another node)")
                data = await snapshot.read(min(chunk, snapshot.size - offset))
                if not data:
                    raise StorageError(f"the backup ended after {offset} of its "
                                       f"{snapshot.size} bytes")
                body = chunk_to_wire(offset, data, done=offset + len(data) == snapshot.size)
                offset += len(data)
                # send() waits for the connection to take it: the client sets the pace.
                await conn.send(encode_frame(encode_response(request_id, body),
                                             self._max_frame))
        except QuorumKVError as err:
            log.warning("a backup stream to %s ended after %d of %d bytes: %s", conn.peer,
                        offset, snapshot.size, err.message)
            await conn.send(self._error_frame(request_id, err))
        except Exception as err:
            log.exception("streaming a backup to %s failed", conn.peer)
            await conn.send(self._error_frame(
                request_id, QuorumKVError(f"internal error: {type(err).__name__}")))

    async def _lease_write(self, conn: _Connection, req: WriteRequest,
                           user: str | None) -> dict[str, Any]:
        """A lease grant or revoke, keeping count of the connection's leases."""
        cmd = req.cmd
        if isinstance(cmd, LeaseRevoke):
            result = await self._execute(req, user)
            if result.get("type") == "lease_revoke":
                conn.leases.discard(cmd.id)
            return result
        assert isinstance(cmd, LeaseGrant)
        limit = self._client_limits.max_leases_per_connection
        if len(conn.leases) + conn.leases_pending >= limit:
            await self._forget_ended_leases(conn)
            held = len(conn.leases) + conn.leases_pending
            if held >= limit:
                raise ResourceExhausted(
                    f"this connection holds {held} leases, its limit "
                    f"(max_leases_per_connection {limit}); revoke some, let them expire, "
                    f"or grant on another connection", limit=limit)
        conn.leases_pending += 1
        try:
            result = await self._execute(req, user)
        finally:
            conn.leases_pending -= 1
        # "durable" (consistency one): the grant is in the log, its outcome not yet known.
        # Counted; if it fails, the next pruning finds no such lease and drops it.
        if result.get("type") in ("lease_grant", "durable"):
            conn.leases.add(cmd.id)
        return result

    async def _forget_ended_leases(self, conn: _Connection) -> None:
        """Drop the connection's leases the node no longer has (revoked elsewhere, or
        expired). Only at the limit: below it there is nothing to decide."""
        if conn.lease_lock is None:
            conn.lease_lock = asyncio.Lock()
        # One pruning at a time: grants piling up at the limit wait for its verdict
        # rather than each reading every lease again.
        async with conn.lease_lock:
            limit = self._client_limits.max_leases_per_connection
            if len(conn.leases) + conn.leases_pending < limit:
                return  # a pruning just finished made room
            ids = frozenset(conn.leases)
            alive = await self._service.leases_granted(ids)
            conn.leases.difference_update(ids - alive)

    def _observed(self, req: Request, seconds: float, error: str | None) -> None:
        if self._observe is None:
            return
        consistency = getattr(req, "consistency", "")
        try:
            self._observe(op_name(req), consistency if isinstance(consistency, str) else "",
                          seconds, error)
        except Exception:
            # Metrics are never worth a client's answer.
            log.exception("recording a client request's metrics failed")

    def _error_frame(self, request_id: int, err: QuorumKVError) -> bytes:
        try:
            return encode_frame(encode_error_response(request_id, err), self._max_frame)
        except FrameTooLarge:  # a giant message; the code alone still says what happened
            brief = QuorumKVError(f"{err.code}: error message too large to send")
            return encode_frame(encode_error_response(request_id, brief), self._max_frame)

    async def _execute(self, req: Request, user: str | None = None) -> dict[str, Any]:
        result: object
        if isinstance(req, WriteRequest):
            validate(req.cmd, self._limits)  # sizes are checked here, once, before proposing
            result = await self._service.write(req.cmd, consistency=req.consistency,
                                               client_id=req.client_id, seq=req.seq,
                                               user=user)
        elif isinstance(req, ReadRequest):
            self._check_key_sizes(req.range)
            result = await self._service.range(req.range, consistency=req.consistency,
                                               min_revision=req.min_revision,
                                               min_index=req.min_index)
        elif isinstance(req, WaitAppliedRequest):
            result = await self._service.wait_applied(req.index)
        elif isinstance(req, StatusRequest):
            result = await self._service.status(local=req.local)
        elif isinstance(req, MemberListRequest):
            result = self._service.membership.list()
        elif isinstance(req, MemberAddRequest):
            result = await self._service.membership.add(
                req.name, req.peer_address, req.client_address, learner=req.learner,
                token=req.token)
        elif isinstance(req, MemberRemoveRequest):
            result = await self._service.membership.remove(req.name, token=req.token)
        elif isinstance(req, MemberPromoteRequest):
            result = await self._service.membership.promote(req.name, token=req.token)
        elif isinstance(req, MoveLeaderRequest):
            result = await self._service.membership.move_leader(req.name, token=req.token)
        elif isinstance(req, LeaveRequest):
            result = await self._service.leave(token=req.token)
        elif isinstance(req, DigestRequest):
            result = await self._service.digest()
        elif isinstance(req, LeaseKeepAliveRequest):
            result = await self._service.lease_keepalive(req.id)
        elif isinstance(req, LeaseTimeToLiveRequest):
            result = await self._service.lease_ttl(req.id, keys=req.keys)
        elif isinstance(req, LeaseListRequest):
            result = await self._service.lease_list()
        else:
            assert isinstance(req, HelloRequest)
            # The protocol version is this module's to state, not the node's.
            result = {**self._service.hello(), "protocol": PROTOCOL_VERSION}
        if not isinstance(result, dict):
            raise TypeError(f"the service answered {type(result).__name__}, not a map")
        return result

    def _check_key_sizes(self, req: RangeRequest) -> None:
        """A read's keys: a key no write could store is refused."""
        check_key_size(req.key, req.range_end, self._limits)


def _address_of(writer: asyncio.StreamWriter) -> str:
    """The client's IP address (without its port): what max_connections_per_address
    counts by."""
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)
