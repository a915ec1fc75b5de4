"""Watches over HTTP: ``GET /v1/watch`` as Server-Sent Events.

The node's WatchHub does the work (order, exactly once, history replay,
slow readers; see server/watches.py); this module is the stream it writes
to, in SSE framing::

    event: created     id: <start - 1>   {"watch_id", "revision", "start_revision", ...}
    event: events      id: <revision>    {"watch_id", "revision", "events": [...], "header"}
    event: progress    id: <revision>    {"watch_id", "revision", "header"}   (while idle)
    event: canceled                      {"watch_id", "code", "reason", "compact_revision"}

Every ``id`` is a revision up to which everything has been delivered, so a
client resumes with ``start_revision = id + 1``; a browser's EventSource
does it by itself, sending the last id as ``Last-Event-ID``, which takes
precedence over ``start_revision``. Ids never go backwards.

The node ends a watch with ``canceled`` (a reader too slow to keep up, a
snapshot installed under it, the node shutting down: resume from the last
id, there or elsewhere), then closes the stream. A watch that cannot start (compacted,
too many watches, bad parameters) is an ordinary JSON error, before any
event. Closing the HTTP connection cancels the watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from quorumkv.client.coordination_wire import WatchRequest
from quorumkv.client.fields import MAX_INT64
from quorumkv.errors import InvalidArgument
from quorumkv.kv.validation import check_key_size
from quorumkv.server.http_auth import check_read
from quorumkv.server.http_json import (
    QueryFields,
    dumps,
    read_encoding,
    read_key_range,
    result_json,
)
from quorumkv.server.watches import Closers

if TYPE_CHECKING:
    from quorumkv.server.node import Node

log = logging.getLogger(__name__)

WATCH_PATH: Final = "/v1/watch"

DISCONNECT_POLL: Final = 0.5
"""Seconds between looks at whether an idle watch's client has gone (aiohttp does not
cancel a handler when its client disconnects)."""
RETRY_MS: Final = 1000
"""How soon an EventSource reconnects after the stream ends."""
SHUTDOWN_WORD: Final = 0.5
"""Seconds a stream's last event may take when the node stops."""

_STREAMS: weakref.WeakKeyDictionary[Node, set[SseStream]] = weakref.WeakKeyDictionary()
"""Each node's open streams, ended when its HTTP server shuts down (aiohttp would wait
for these never-ending handlers, then cancel them)."""


class SseStream:
    """One watch's messages as SSE events on one HTTP response (a ``WatchStream``)."""

    def __init__(self, request: web.Request, encoding: str) -> None:
        self.ready = asyncio.Event()
        self.ended = asyncio.Event()
        """The node ended the watch, or the client went away."""
        self._request = request
        self._encoding = encoding
        self._response: web.StreamResponse | None = None
        self._closers = Closers("an HTTP watch")
        self._last_id = -1
        self.watch_id = 0
        self.owner: object = self
        """One watch per HTTP request: the per-connection watch limit does not apply."""

    def on_close(self, callback: Callable[[], None]) -> None:
        self._closers.add(callback)

    def close(self) -> None:
        """The stream is over: the hub forgets the watch (if it has not already)."""
        if not self._closers.closed:
            self.ended.set()
        self._closers.run()

    async def start(self, response: web.StreamResponse, created: dict[str, Any],
                    first_id: int) -> None:
        self._response = response
        self.watch_id = created["watch_id"]
        await self._write("created", created, first_id, retry=True)
        self.ready.set()

    async def shut_down(self) -> None:
        """The node is stopping: say so (briefly; the client may not be reading), end."""
        if not self._closers.closed and self.ready.is_set():
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(SHUTDOWN_WORD):
                    await self._write("canceled", {
                        "watch_id": self.watch_id, "code": "unavailable",
                        "reason": "the node is shutting down: resume on another node after "
                                  "the last event id", "compact_revision": None}, None)
        self.close()

    async def send(self, body: dict[str, Any]) -> None:
        if body.get("canceled") is True:
            data = {k: body.get(k) for k in ("watch_id", "code", "reason", "compact_revision",
                                             "header")}
            await self._write("canceled", data, None)
            self.ended.set()
            return
        revision = body["revision"]
        if body.get("progress") is True:
            transport = self._request.transport
            if transport is not None and transport.get_write_buffer_size() > 0:
                # A reader that is behind gets no progress notes: they are only hints,
                # and the hub sends them to every watch in turn, so none may wait.
                return
            await self._write("progress", {"watch_id": body["watch_id"], "revision": revision,
                                           "header": body.get("header")}, revision)
            return
        events = [{**result_json(e, self._encoding), "revision": e["kv"]["mod_revision"]}
                  for e in body["events"]]
        await self._write("events", {"watch_id": body["watch_id"], "revision": revision,
                                     "events": events, "header": body.get("header")}, revision)

    async def _write(self, event: str, data: dict[str, Any], event_id: int | None, *,
                     retry: bool = False) -> None:
        response = self._response
        if self._closers.closed or response is None:
            raise ConnectionResetError("the watch's HTTP client is gone")
        lines = [f"event: {event}"]
        if retry:
            lines.append(f"retry: {RETRY_MS}")
        if event_id is not None:
            self._last_id = max(self._last_id, event_id)
            lines.append(f"id: {self._last_id}")
        lines.append(f"data: {dumps(data)}")
        try:
            # Written whole, so the watcher's task and the progress loop never interleave.
            await response.write(("\n".join(lines) + "\n\n").encode())
        except (OSError, RuntimeError):
            self.close()
            raise ConnectionResetError("the watch's HTTP client is gone") from None

    async def wait_until_over(self) -> None:
        while not self.ended.is_set():
            transport = self._request.transport
            if transport is None or transport.is_closing():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ended.wait(), DISCONNECT_POLL)


def _start_revision(request: web.Request, start: int) -> int:
    header = request.headers.get("Last-Event-ID")
    if header is None:
        return start
    text = header.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 19 or int(text) >= MAX_INT64:
        raise InvalidArgument("Last-Event-ID must be a revision (an integer from 0), as this "
                              "stream's event ids are")
    return int(text) + 1


async def _watch(request: web.Request, node: Node) -> web.StreamResponse:
    f = QueryFields(request)
    encoding = read_encoding(f)
    key, end = read_key_range(f, encoding)
    start = _start_revision(request, f.integer("start_revision", 0))
    prev_kv = f.boolean("prev_kv")
    f.finish()
    check_key_size(key, end, node.limits)
    # Before the stream starts: a refusal is an ordinary JSON error, never an event.
    check_read(request, node, key, end)
    stream = SseStream(request, encoding)
    streams = _STREAMS.setdefault(node, set())
    streams.add(stream)
    try:
        created = await node.watch(WatchRequest(key=key, range_end=end, start_revision=start,
                                                prev_kv=prev_kv, progress_notify=True), stream)
        response = web.StreamResponse(headers={"Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        response.content_type = "text/event-stream"
        response.charset = "utf-8"
        await response.prepare(request)
        first = start - 1 if start else created["revision"]
        await stream.start(response, {**created, "start_revision": first + 1}, first)
        await stream.wait_until_over()
        with contextlib.suppress(OSError, RuntimeError):
            await response.write_eof()
        return response
    finally:
        streams.discard(stream)
        stream.close()


async def end_streams(node: Node) -> None:
    """End every open watch stream of ``node`` (its HTTP server is shutting down)."""
    streams = list(_STREAMS.pop(node, ()))
    await asyncio.gather(*(s.shut_down() for s in streams), return_exceptions=True)


def routes(node: Node) -> list[web.RouteDef]:
    async def watch(request: web.Request) -> web.StreamResponse:
        return await _watch(request, node)

    return [web.get(WATCH_PATH, watch, allow_head=False)]
