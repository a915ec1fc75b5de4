"""etcd's Watch service (``/etcdserverpb.Watch/Watch``): many watches on one stream.

The node's WatchHub does the work (order, exactly once, history replay, slow
watchers; server/watches.py), as for the client port and the HTTP API
(http_watch.py); this module turns etcd's requests into the hub's and the
hub's messages into etcd's WatchResponses. Each watch of a stream is a
:class:`_Sink` (the hub's ``WatchStream``); all of them write to the one
gRPC call, one message at a time.

What etcd's clients rely on, and how it is kept:

- ``watch_id``: the client's own (``WatchCreateRequest.watch_id``) or, if 0,
  the lowest free one of the stream from 0 up, as etcd assigns them. The
  hub's own watch ids never reach the client.
- ``header.revision``: clientv3 resumes a broken stream, on any member, from
  the last event's revision + 1, or, before any event, from the created
  answer's header revision (the store's revision the watch started after),
  or else from the header revision of the last progress answer. So a created
  answer carries the revision the hub started after, an events answer the
  revision of its last event, a progress answer the revision up to which
  everything was delivered.
- A start revision that is compacted is created, then canceled with
  ``compact_revision`` (etcd's order: clientv3 drops a cancel that comes
  with the created flag). A refused watch (permission, a bad key, a limit)
  is created and canceled at once with ``watch_id`` -1 and the reason, which
  clientv3 reports as the watch's error.
- The ``hasleader`` metadata key ("true"): the stream is refused, and later
  ended, with "etcdserver: no leader" while the member knows no leader for
  more than a few election timeouts (etcd's ``WithRequireLeader``).

Backpressure: a message is written only once the previous one has gone (gRPC
flow control), so a slow client leaves the hub's buffer growing until the hub
cancels that watch; the client is told with an etcd cancel (``canceled``
and the reason), as etcd's own cancellations are. Progress notes are only
hints: one that would wait behind a message in flight is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Final

from quorumkv.client.coordination_wire import WatchRequest
from quorumkv.errors import Compacted, QuorumKVError
from quorumkv.etcd import errors as ee
from quorumkv.etcd.calls import EtcdService, streaming
from quorumkv.etcd.errors import RpcError, status_of
from quorumkv.etcd.generated import etcd_proto
from quorumkv.etcd.identity import Caller, caller_of, check_read
from quorumkv.etcd.kv_convert import key_range
from quorumkv.kv.validation import check_key_size
from quorumkv.server.watches import Closers

if TYPE_CHECKING:
    from quorumkv.server.node import Node

log = logging.getLogger(__name__)

HAS_LEADER_KEY: Final = "hasleader"
"""The metadata key etcd's clients set (to "true") to require a leader."""
LEADER_CHECK_S: Final = 0.5
NO_LEADER_ELECTIONS: Final = 3
"""Election timeouts without a leader before a stream that requires one ends (etcd
waits a few too, so that a routine election does not end every watch)."""
INVALID_WATCH_ID: Final = -1
"""clientv3's id for an answer that belongs to no watch."""
NOPUT, NODELETE = 0, 1
"""etcd's WatchCreateRequest.FilterType."""
PUT, DELETE = 0, 1
"""mvccpb.Event.EventType."""
DUPLICATE_ID: Final = "mvcc: duplicate watch ID provided on the WatchStream"


def requires_leader(context: Any) -> bool:
    """Whether the call carries etcd's ``hasleader`` = "true" metadata."""
    return any(key == HAS_LEADER_KEY and value == "true"
               for key, value in context.invocation_metadata() or ())


def has_leader(node: Node) -> bool:
    group = node.group
    return group is not None and bool(group.raft.leader)


async def watch_leader(node: Node) -> None:
    """Return once ``node`` has known no leader for too long (see NO_LEADER_ELECTIONS)."""
    config = node.config
    patience = NO_LEADER_ELECTIONS * config.election_ticks * config.tick_ms / 1000
    loop = asyncio.get_running_loop()
    lost: float | None = None
    while True:
        await asyncio.sleep(LEADER_CHECK_S)
        if has_leader(node):
            lost = None
        elif lost is None:
            lost = loop.time()
        elif loop.time() - lost > patience:
            return


def _event(wire: dict[str, Any]) -> Any:
    pb = etcd_proto().kv_pb2
    kv = wire["kv"]
    if wire["type"] == "put":
        return pb.Event(type=PUT, kv=_kv(kv), prev_kv=_kv(wire["prev_kv"]))
    # etcd's DELETE event names the key and the deletion's revision only.
    return pb.Event(type=DELETE, kv=pb.KeyValue(key=kv["key"], mod_revision=kv["mod_revision"]),
                    prev_kv=_kv(wire["prev_kv"]))


def _kv(kv: dict[str, Any] | None) -> Any:
    if kv is None:
        return None
    return etcd_proto().kv_pb2.KeyValue(
        key=kv["key"], value=kv["value"], create_revision=kv["create_revision"],
        mod_revision=kv["mod_revision"], version=kv["version"], lease=kv.get("lease", 0))


class _Sink:
    """One etcd watch of a stream: where the hub sends its messages (a ``WatchStream``)."""

    def __init__(self, call: _WatchCall, watch_id: int, *, no_put: bool,
                 no_delete: bool) -> None:
        self.ready = asyncio.Event()
        self.owner: object = call
        """The stream: only it may cancel its watches; the per-connection limit counts it."""
        self.call = call
        self.watch_id = watch_id
        self.hub_id = 0
        self.no_put = no_put
        self.no_delete = no_delete
        self.delivered = 0
        """The revision up to which this watch has told the client everything."""
        self._closers = Closers("an etcd watch")

    def on_close(self, callback: Callable[[], None]) -> None:
        self._closers.add(callback)

    def close(self) -> None:
        self._closers.run()

    async def send(self, body: dict[str, Any]) -> None:
        call = self.call
        if body.get("canceled") is True:
            call.forget(self)
            await call.write(self._canceled(body))
            return
        revision = body["revision"]
        if body.get("progress") is True:
            self.delivered = max(self.delivered, revision)
            call.write_hint(call.response(self.watch_id, revision))
            return
        events = [_event(e) for e in body["events"] if self._wanted(e)]
        self.delivered = max(self.delivered, revision)
        if events:  # all filtered out: the client needs nothing for them
            await call.write(call.response(self.watch_id, revision, events=events))

    def _wanted(self, event: dict[str, Any]) -> bool:
        return not (self.no_put if event["type"] == "put" else self.no_delete)

    def _canceled(self, body: dict[str, Any]) -> Any:
        code = body.get("code")
        compact = body.get("compact_revision") or 0
        if code == "canceled":
            reason = ""  # the client's own cancel: etcd gives no reason
        elif compact:
            reason = ee.COMPACTED.message
        else:
            reason = str(body.get("reason") or "")
        return self.call.response(self.watch_id, self.call.revision(), canceled=True,
                                  compact_revision=compact, cancel_reason=reason)


class _WatchCall:
    """One Watch RPC: its watches by etcd id, and the writes to its client."""

    def __init__(self, node: Node, context: Any, caller: Caller) -> None:
        self.node = node
        self.context = context
        self.caller = caller
        self.sinks: dict[int, _Sink] = {}
        self._next_id = 0
        self._lock = asyncio.Lock()
        self._hints: set[asyncio.Task[None]] = set()
        self.broken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Fails when the stream can no longer be written to."""

    # -- writing ----------------------------------------------------------------------

    def revision(self) -> int:
        return int(self.node.header()["revision"])

    def response(self, watch_id: int, revision: int, **fields: Any) -> Any:
        pb = etcd_proto().rpc_pb2
        header = self.node.header()
        return pb.WatchResponse(
            header=pb.ResponseHeader(cluster_id=self.node.cluster_id,
                                     member_id=self.node.node_id, revision=revision,
                                     raft_term=header["raft_term"]),
            watch_id=watch_id, **fields)

    async def write(self, message: Any) -> None:
        """Write one message, after those before it (gRPC takes one write at a time)."""
        async with self._lock:
            try:
                await self.context.write(message)
            except Exception as e:
                if not self.broken.done():
                    self.broken.set_exception(ConnectionResetError(str(e)))
                # The hub ends the watch quietly on a connection error.
                raise ConnectionResetError("the etcd watch stream is gone") from None

    def write_hint(self, message: Any) -> None:
        """Write a message nobody waits for, unless another is being written."""
        if self._lock.locked():
            return

        async def hint() -> None:
            with contextlib.suppress(ConnectionResetError):
                await self.write(message)

        task = asyncio.get_running_loop().create_task(hint())
        self._hints.add(task)
        task.add_done_callback(self._hints.discard)

    # -- requests ---------------------------------------------------------------------

    async def read(self, requests: AsyncIterator[Any]) -> None:
        async for request in requests:
            kind = request.WhichOneof("request_union")
            if kind == "create_request":
                await self.create(request.create_request)
            elif kind == "cancel_request":
                self.cancel(request.cancel_request.watch_id)
            elif kind == "progress_request":
                await self.progress()
        # The client closed its side; etcd keeps sending until the call ends.
        await asyncio.Event().wait()

    def _watch_id(self, asked: int) -> int | None:
        if asked:
            return None if asked in self.sinks else asked
        while self._next_id in self.sinks:
            self._next_id += 1
        chosen = self._next_id
        self._next_id += 1
        return chosen

    async def create(self, req: Any) -> None:
        node = self.node
        try:
            key, range_end = key_range(req.key, req.range_end)
            check_key_size(key, range_end, node.limits)
            check_read(node, self.caller, key, range_end)
            watch_id = self._watch_id(req.watch_id)
            if watch_id is None:
                await self.write(self.response(req.watch_id, self.revision(), created=True,
                                               canceled=True, cancel_reason=DUPLICATE_ID))
                return
        except (QuorumKVError, ee.EtcdError) as e:
            await self._refuse(status_of(e))
            return
        filters = set(req.filters)
        sink = _Sink(self, watch_id, no_put=NOPUT in filters, no_delete=NODELETE in filters)
        start = max(0, req.start_revision)
        wreq = WatchRequest(key=key, range_end=range_end, start_revision=start,
                            prev_kv=req.prev_kv, progress_notify=req.progress_notify)
        try:
            created = await node.watch(wreq, sink)
        except Compacted as e:
            # etcd creates the watch, then cancels it: the client learns compact_revision.
            compact = int(e.details.get("compact_revision") or 0)
            revision = self.revision()
            await self.write(self.response(watch_id, revision, created=True))
            await self.write(self.response(watch_id, revision, canceled=True,
                                           compact_revision=compact,
                                           cancel_reason=ee.COMPACTED.message))
            return
        except QuorumKVError as e:
            await self._refuse(status_of(e))
            return
        self.sinks[watch_id] = sink
        sink.hub_id = created["watch_id"]
        sink.delivered = start - 1 if start else created["revision"]
        try:
            await self.write(self.response(watch_id, created["revision"], created=True))
        finally:
            sink.ready.set()  # also when the write failed: the hub's task ends on its own

    async def _refuse(self, error: RpcError) -> None:
        await self.write(self.response(INVALID_WATCH_ID, self.revision(), created=True,
                                       canceled=True, cancel_reason=error.message))

    def cancel(self, watch_id: int) -> None:
        sink = self.sinks.get(watch_id)
        if sink is not None:
            # The hub answers through the sink (its "canceled" message); an unknown id is
            # ignored, as etcd does.
            self.node.watches.cancel(sink.hub_id, self)

    def forget(self, sink: _Sink) -> None:
        if self.sinks.get(sink.watch_id) is sink:
            del self.sinks[sink.watch_id]

    async def progress(self) -> None:
        """etcd's progress request: a revision up to which every watch of the stream
        has had everything (the lowest of theirs; the store's with no watch)."""
        delivered = [s.delivered for s in self.sinks.values()]
        revision = min(delivered) if delivered else self.revision()
        await self.write(self.response(INVALID_WATCH_ID, revision))

    def close(self) -> None:
        for sink in list(self.sinks.values()):
            sink.close()
        self.sinks.clear()
        for task in list(self._hints):
            task.cancel()


class WatchService(EtcdService):
    """The handler of etcd's Watch service for one node."""

    def register(self, server: Any) -> None:
        etcd_proto().rpc_pb2_grpc.add_WatchServicer_to_server(self, server)

    @streaming
    async def Watch(self, request_iterator: Any, context: Any) -> None:  # noqa: N802
        node = self.node
        caller = caller_of(node, context)
        need_leader = requires_leader(context)
        if need_leader and not has_leader(node):
            raise ee.EtcdError(ee.NO_LEADER)
        call = _WatchCall(node, context, caller)
        reader = asyncio.ensure_future(call.read(request_iterator))
        waits: set[asyncio.Future[None]] = {reader, call.broken}
        monitor = asyncio.ensure_future(watch_leader(node)) if need_leader else None
        if monitor is not None:
            waits.add(monitor)
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if monitor is not None and monitor.done():
                raise ee.EtcdError(ee.NO_LEADER)
            if call.broken.done():
                return  # the client is gone: nobody to tell
            reader.result()  # the request stream's own error, if any
        finally:
            for task in (reader, monitor):
                if task is not None:
                    task.cancel()
            call.close()
            if call.broken.done() and not call.broken.cancelled():
                call.broken.exception()  # retrieved: nothing to log
