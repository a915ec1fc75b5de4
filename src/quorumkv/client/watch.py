"""A watch as the client sees it: an async iterator that survives losing its node.

::

    async with client.watch("jobs/", prefix=True, start_revision=rev) as w:
        async for batch in w:           # a WatchResponse: whole revisions, in order
            for event in batch.events:
                ...

The watch rides on the client's shared connection, beside its requests and
other watches. It remembers the revision after the last one it delivered;
when the connection breaks (or the node asks it to resume) it opens the
watch again on whichever node the client reaches next, starting from that
revision, and drops anything it already delivered, so the caller sees every
event exactly once, in order, without gaps. A watch ended by the node for
another reason (the start revision is compacted, the watcher was too slow,
it was cancelled) ends the iteration with that error.

Events that arrive faster than the caller takes them wait in a queue of at
most ``max_pending`` messages; beyond it the watch is cancelled (the same
rule the node applies to a slow watcher): memory stays bounded.

A node can also stop answering without closing the connection (frozen,
cut off by a partition). The watch always asks for progress
notifications, which an idle watch receives every ``progress_interval``
(the node says how often); hearing nothing for three of those, it takes
the node for dead and resumes elsewhere. Progress messages reach the
caller only if it asked for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Any

from quorumkv.client.connection import Connection
from quorumkv.client.coordination_wire import (
    WatchCancelRequest,
    WatchEnd,
    WatchRequest,
    WatchResponse,
    watch_message_from_wire,
)
from quorumkv.client.retrying_caller import RetryingCaller
from quorumkv.errors import (
    Compacted,
    NetworkError,
    QuorumKVError,
    UnavailableError,
    WatchCanceled,
)

log = logging.getLogger(__name__)

_RESUME_CODES = ("resume",)
"""Node-side ends after which the watch simply starts again elsewhere."""


class Watch:
    def __init__(self, caller: RetryingCaller, req: WatchRequest, *,
                 max_pending: int = 10_000) -> None:
        self._caller = caller
        self._req = req
        self._max_pending = max_pending
        self.next_revision = req.start_revision
        """The first revision not delivered yet (0 until the node said where "now" is)."""
        self.watch_id: int | None = None
        self._queue: asyncio.Queue[WatchResponse | QuorumKVError] = asyncio.Queue()
        self._stream_ended: asyncio.Event = asyncio.Event()
        self._stream_end: WatchEnd | QuorumKVError | None = None
        self._conn: Connection | None = None
        self._request_id: int | None = None
        self._created = asyncio.Event()
        self._closed = False
        self._last_heard = 0.0
        self._task = asyncio.get_running_loop().create_task(self._run(), name="quorumkv-watch")

    async def wait_created(self) -> None:
        """Wait until the watch exists on some node (events from then on are captured)."""
        waiter = asyncio.ensure_future(self._created.wait())
        try:
            await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not self._created.is_set() and self._task.done():
            failure = self._queue.get_nowait() if not self._queue.empty() else None
            if isinstance(failure, QuorumKVError):
                raise failure
            raise NetworkError("the watch ended before it was created")

    # -- iteration -------------------------------------------------------------------------

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchResponse:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, QuorumKVError):
            self._closed = True
            if isinstance(item, WatchCanceled) and item.details.get("by_client"):
                raise StopAsyncIteration
            raise item
        return item

    async def __aenter__(self) -> Watch:
        await self.wait_created()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.cancel()

    async def cancel(self) -> None:
        """End the watch (on the node too, if it is connected)."""
        if self._closed and self._task.done():
            return
        self._closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        await self._cancel_on_node()
        self._queue.put_nowait(WatchCanceled("the watch was cancelled", by_client=True))

    # -- the connection loop ---------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while not self._closed:
                end = await self._one_stream()
                if end is None:
                    continue  # the connection broke: open it again elsewhere
                self._queue.put_nowait(end)
                await self._cancel_on_node()
                return
        except QuorumKVError as e:
            self._queue.put_nowait(e)

    async def _cancel_on_node(self) -> None:
        """We gave up on a watch the node may still be feeding (a slow caller): stop it."""
        conn, watch_id = self._conn, self.watch_id
        if conn is None or conn.closed or watch_id is None:
            return
        if self._request_id is not None:
            conn.forget_stream(self._request_id)
        with contextlib.suppress(QuorumKVError, asyncio.TimeoutError):
            await asyncio.wait_for(conn.request(WatchCancelRequest(watch_id=watch_id)), 2.0)

    async def _one_stream(self) -> QuorumKVError | None:
        """Run the watch on one connection; the error that ends it for good, or None to
        resume on another."""
        conn = await self._caller.stream_connection()
        self._conn = conn
        self._stream_ended.clear()
        self._stream_end = None
        req = WatchRequest(key=self._req.key, range_end=self._req.range_end,
                           start_revision=self.next_revision, prev_kv=self._req.prev_kv,
                           progress_notify=True)
        try:
            self._request_id, first = conn.open_stream(req, self._on_message)
            await conn.drain()
            created = await first
        except Compacted as e:
            return e
        except UnavailableError as e:
            log.debug("watch: %s; trying another node", e.message)
            await self._caller.drop_connection(conn)
            return None
        self.watch_id = _int(created.get("watch_id"))
        if self.next_revision == 0:
            self.next_revision = _int(created.get("revision")) + 1
        self._created.set()
        interval = created.get("progress_interval")
        silence = 3 * interval + 1 if isinstance(interval, int | float) and interval > 0 else 30
        if not await self._until_end_or_silence(silence):
            log.info("watch: nothing heard from %s for %.1fs; resuming on another node",
                     (self._caller.server_info or {}).get("name", "the node"), silence)
            if self._request_id is not None:
                conn.forget_stream(self._request_id)
            await self._caller.drop_connection(conn)
            return None
        end = self._stream_end
        if isinstance(end, WatchEnd):
            if end.code in _RESUME_CODES:
                return None
            if end.code == Compacted.code:
                return Compacted(end.reason, compact_revision=end.compact_revision)
            return WatchCanceled(end.reason, code=end.code)
        if isinstance(end, UnavailableError):
            await self._caller.drop_connection(conn)
            return None
        return end

    async def _until_end_or_silence(self, silence: float) -> bool:
        """Wait for the stream to end (True), or for ``silence`` seconds without a word
        from the node (False)."""
        loop = asyncio.get_running_loop()
        self._last_heard = loop.time()
        while True:
            left = self._last_heard + silence - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._stream_ended.wait(), left)
                return True
            except TimeoutError:
                continue

    def _on_message(self, message: dict[str, Any] | QuorumKVError) -> None:
        self._last_heard = asyncio.get_running_loop().time()
        if isinstance(message, QuorumKVError):
            self._end(message)
            return
        try:
            parsed = watch_message_from_wire(message)
        except QuorumKVError as e:
            self._end(e)
            return
        if isinstance(parsed, WatchEnd):
            self._end(parsed)
            return
        events = tuple(e for e in parsed.events if e.kv.mod_revision >= self.next_revision)
        if parsed.revision < self.next_revision and not events:
            return  # already delivered (a resumed stream repeating itself)
        self.next_revision = max(self.next_revision, parsed.revision + 1)
        if events or (parsed.progress and self._req.progress_notify):
            if self._queue.qsize() >= self._max_pending:
                self._end(WatchEnd(watch_id=parsed.watch_id, code="watch_canceled",
                                   reason=f"the caller is too slow: {self._max_pending} "
                                          f"messages are waiting"))
                return
            self._queue.put_nowait(WatchResponse(watch_id=parsed.watch_id, events=events,
                                                 revision=parsed.revision,
                                                 progress=parsed.progress))

    def _end(self, end: WatchEnd | QuorumKVError) -> None:
        if self._stream_end is None:
            self._stream_end = end
        self._stream_ended.set()


def _int(value: object) -> int:
    if type(value) is not int:
        raise NetworkError(f"the node answered a watch with a malformed field ({value!r})")
    return value
