"""Watches: every change to a key range, in revision order, each exactly once.

The hub is fed by the Raft group after each batch of entries is applied
(:meth:`WatchHub.on_applied`, on the event loop). It only appends to the
matching watchers' buffers, so the apply loop never waits for a watcher;
each watcher has a task that writes its buffer to its client connection.
A watcher whose buffer holds more than ``max_buffered`` events is too slow
to follow: it is cancelled with a reason saying so (code
``watch_canceled``), and its client may start again from the revision
after the last one it received.

No gap, no duplicate. A watcher delivers whole revisions and keeps
``next_revision``, the first revision it has not delivered; every event
below it is dropped. A watch that starts in the past is registered first,
so every later apply reaches its buffer, and then replays the MVCC history
(``kv/watch_history.py``) from its start up to the revision the store had
applied when the replay began; the live events of the buffer that the
replay covered are dropped by ``next_revision``. A watch that starts ahead
of the store (a lagging follower, a resumed client) simply waits.

Limits: at most ``max_watches`` watches on the node and ``max_per_owner`` on one
client connection; a watch beyond either is refused with ResourceExhausted
(nothing is registered). A watch counts until it ends, however it ends.

Progress: a watcher that asked for it and has nothing to send learns the
current revision every ``progress_interval`` seconds, so an idle client can
resume from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from quorumkv.client.coordination_wire import WatchRequest, event_to_wire
from quorumkv.errors import Compacted, QuorumKVError, ResourceExhausted
from quorumkv.kv import KVStore
from quorumkv.kv.keys import ALL_KEYS
from quorumkv.kv.results import Event

log = logging.getLogger(__name__)

REPLAY_BATCH = 1000
"""Events read from history per replay step (a revision is never split)."""


class WatchStream(Protocol):
    """Where a watch's messages go: the client connection it was created on."""

    ready: asyncio.Event
    """Set once the watch's first answer is written: nothing is sent before it."""
    owner: object
    """The connection: only it may cancel the watch."""

    async def send(self, body: dict[str, Any]) -> None: ...

    def on_close(self, callback: Callable[[], None]) -> None: ...


class Closers:
    """What a watch stream runs when it ends (its ``on_close`` callbacks), exactly once;
    a callback registered after the end runs at once."""

    __slots__ = ("_callbacks", "_what", "closed")

    def __init__(self, what: str) -> None:
        self._callbacks: list[Callable[[], None]] = []
        self.closed = False
        self._what = what

    def add(self, callback: Callable[[], None]) -> None:
        if self.closed:
            callback()
        else:
            self._callbacks.append(callback)

    def run(self) -> bool:
        """Run them (False if they had run already)."""
        if self.closed:
            return False
        self.closed = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("ending %s failed", self._what)
        return True


def _in_range(key: bytes, start: bytes, end: bytes | None) -> bool:
    if end is None:
        return key == start
    return key >= start and (end == ALL_KEYS or key < end)


@dataclass(eq=False)
class _Watcher:
    id: int
    req: WatchRequest
    stream: WatchStream
    next_revision: int
    buffer: deque[list[Event]] = field(default_factory=deque)
    """Whole revisions not sent yet, oldest first."""
    buffered_events: int = 0
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    replaying: bool = True
    last_sent: float = 0.0
    ended: bool = False

    def matches(self, event: Event) -> bool:
        return _in_range(event.kv.key, self.req.key, self.req.range_end)


class WatchHub:
    def __init__(self, kv: Callable[[], KVStore], *, max_buffered: int = 10_000,
                 progress_interval: float = 5.0,
                 header: Callable[[], dict[str, Any]] | None = None,
                 max_watches: int = 10_000, max_per_owner: int = 1000) -> None:
        self._kv = kv
        self.max_buffered = max_buffered
        self.max_watches = max_watches
        self.max_per_owner = max_per_owner
        self._per_owner: dict[object, int] = {}
        """Watches open per connection (only connections with at least one)."""
        self.progress_interval = progress_interval
        self._header = header or (lambda: {})
        self._watchers: dict[int, _Watcher] = {}
        self._ids = itertools.count(1)
        self._progress_task: asyncio.Task[None] | None = None
        self._last_words: set[asyncio.Task[None]] = set()
        self._fed_revision = 0
        """The store revision after the last batch handed to on_applied."""
        self.cancelled_slow = 0

    # -- creating and cancelling ------------------------------------------------------

    async def create(self, req: WatchRequest, stream: WatchStream) -> dict[str, Any]:
        """Register a watch; its first answer. Raises Compacted for a start too old,
        ResourceExhausted beyond a limit."""
        if len(self._watchers) >= self.max_watches:
            raise ResourceExhausted(f"this node already serves {len(self._watchers)} watches, "
                                    f"its limit (max_watches {self.max_watches})",
                                    limit=self.max_watches)
        owned = self._per_owner.get(stream.owner, 0)
        if owned >= self.max_per_owner:
            raise ResourceExhausted(f"this connection already has {owned} watches, its limit "
                                    f"(max_watches_per_connection {self.max_per_owner})",
                                    limit=self.max_per_owner)
        kv = self._kv()
        current = kv.revision
        start = req.start_revision or current + 1
        if start <= kv.compact_revision:
            raise Compacted(f"revision {start} is compacted (compact revision "
                            f"{kv.compact_revision}): watch from a later revision",
                            compact_revision=kv.compact_revision)
        w = _Watcher(id=next(self._ids), req=req, stream=stream, next_revision=start)
        self._watchers[w.id] = w
        self._per_owner[stream.owner] = owned + 1
        stream.on_close(lambda: self._end(w))
        w.task = asyncio.get_running_loop().create_task(self._run(w, replay_to=current),
                                                        name=f"watch-{w.id}")
        if self._progress_task is None:
            self._progress_task = asyncio.get_running_loop().create_task(
                self._progress_loop(), name="watch-progress")
        return {"watch_id": w.id, "revision": current,
                "progress_interval": self.progress_interval, "header": self._header()}

    def cancel(self, watch_id: int, owner: object) -> bool:
        """Cancel a watch created on connection ``owner``; False if there is none such."""
        w = self._watchers.get(watch_id)
        if w is None or w.stream.owner is not owner:
            return False
        self._finish(w, "canceled by the client", code="canceled")
        return True

    def _finish(self, w: _Watcher, reason: str, *, code: str,
                compact_revision: int | None = None) -> None:
        """End ``w`` with a last message telling why."""
        if w.ended:
            return
        w.ended = True
        self._forget(w)
        body = {"watch_id": w.id, "canceled": True, "reason": reason, "code": code,
                "compact_revision": compact_revision, "header": self._header()}
        if w.task is not None:
            w.task.cancel()

        async def last_word() -> None:
            with contextlib.suppress(Exception):
                await w.stream.ready.wait()
                await w.stream.send(body)

        task = asyncio.get_running_loop().create_task(last_word(), name=f"watch-{w.id}-end")
        self._last_words.add(task)
        task.add_done_callback(self._last_words.discard)

    def _end(self, w: _Watcher) -> None:
        """The connection is gone: drop the watch without a word."""
        w.ended = True
        self._forget(w)
        if w.task is not None:
            w.task.cancel()

    def _forget(self, w: _Watcher) -> None:
        """Unregister ``w`` (once, however many ways it ends)."""
        if self._watchers.pop(w.id, None) is None:
            return
        owner = w.stream.owner
        left = self._per_owner.get(owner, 0) - 1
        if left > 0:
            self._per_owner[owner] = left
        else:
            self._per_owner.pop(owner, None)

    def restart_all(self) -> None:
        """The store jumped ahead (a snapshot was installed): the events in between were
        never applied here, so every watch ends, telling its client to resume (which
        replays them from history)."""
        for w in list(self._watchers.values()):
            self._finish(w, "the node installed a snapshot; resume from revision "
                            f"{w.next_revision}", code="resume")

    async def close(self) -> None:
        tasks = [w.task for w in self._watchers.values() if w.task is not None]
        tasks.extend(self._last_words)
        if self._progress_task is not None:
            tasks.append(self._progress_task)
        for w in list(self._watchers.values()):
            self._end(w)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def count(self) -> int:
        return len(self._watchers)

    # -- feeding -------------------------------------------------------------------------

    def on_applied(self, events: Sequence[Event], revision: int) -> None:
        """Events of newly applied entries, in order (several revisions at once), and the
        store's revision after them."""
        self._fed_revision = max(self._fed_revision, revision)
        if not self._watchers or not events:
            return
        by_revision: list[list[Event]] = []
        for e in events:
            if by_revision and by_revision[-1][0].kv.mod_revision == e.kv.mod_revision:
                by_revision[-1].append(e)
            else:
                by_revision.append([e])
        for w in list(self._watchers.values()):
            for group in by_revision:
                mine = [e for e in group if w.matches(e)]
                if mine:
                    self._push(w, mine)
            if w.ended:
                continue
            if w.buffered_events > self.max_buffered:
                self.cancelled_slow += 1
                self._finish(w, f"the watcher is too slow: more than {self.max_buffered} "
                                f"events are waiting for it; watch again from revision "
                                f"{w.next_revision}", code="watch_canceled")

    def _push(self, w: _Watcher, events: list[Event]) -> None:
        w.buffer.append(events)
        w.buffered_events += len(events)
        w.wakeup.set()

    # -- delivering ----------------------------------------------------------------------

    async def _run(self, w: _Watcher, *, replay_to: int) -> None:
        try:
            await w.stream.ready.wait()
            if w.next_revision <= replay_to:
                await self._replay(w, replay_to)
            w.replaying = False
            while True:
                await w.wakeup.wait()
                w.wakeup.clear()
                await self._drain(w)
        except asyncio.CancelledError:
            raise
        except Compacted as e:
            self._finish(w, e.message, code=e.code,
                         compact_revision=e.details.get("compact_revision"))
        except QuorumKVError as e:
            self._finish(w, e.message, code=e.code)
        except (OSError, ConnectionError):
            self._end(w)
        except Exception:
            log.exception("watch %d failed", w.id)
            self._finish(w, "internal error", code="internal")

    async def _replay(self, w: _Watcher, replay_to: int) -> None:
        kv = self._kv()
        while w.next_revision <= replay_to:
            found = await asyncio.to_thread(
                kv.events_since, key=w.req.key, range_end=w.req.range_end,
                start_revision=w.next_revision, end_revision=replay_to, limit=REPLAY_BATCH)
            if not found:
                w.next_revision = replay_to + 1
                break
            groups: list[list[Event]] = []
            for e in found:
                if groups and groups[-1][0].kv.mod_revision == e.kv.mod_revision:
                    groups[-1].append(e)
                else:
                    groups.append([e])
            await self._send(w, groups, revision=groups[-1][0].kv.mod_revision)
            if len(found) < REPLAY_BATCH:
                w.next_revision = replay_to + 1

    async def _drain(self, w: _Watcher) -> None:
        while w.buffer:
            groups: list[list[Event]] = []
            count = 0
            while w.buffer and count < REPLAY_BATCH:
                group = w.buffer.popleft()
                w.buffered_events -= len(group)
                if group[0].kv.mod_revision < w.next_revision:
                    continue  # covered by the replay
                groups.append(group)
                count += len(group)
            if groups:
                await self._send(w, groups, revision=groups[-1][0].kv.mod_revision)

    async def _send(self, w: _Watcher, groups: list[list[Event]], *, revision: int) -> None:
        events = [event_to_wire(e, prev_kv=w.req.prev_kv) for g in groups for e in g]
        w.next_revision = revision + 1
        w.last_sent = asyncio.get_running_loop().time()
        await w.stream.send({"watch_id": w.id, "events": events, "revision": revision,
                             "header": self._header()})

    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self.progress_interval / 2)
            now = asyncio.get_running_loop().time()
            # Not the store's own revision: entries applied but not yet handed to
            # on_applied would be claimed as delivered.
            revision = self._fed_revision
            for w in list(self._watchers.values()):
                if (not w.req.progress_notify or w.replaying or w.buffer or w.ended
                        or now - w.last_sent < self.progress_interval):
                    continue
                # Nothing waits for it, so it has had everything up to that revision.
                w.last_sent = now
                await _quietly(w.stream.send({"watch_id": w.id, "events": [],
                                              "progress": True, "revision": revision,
                                              "header": self._header()}))


async def _quietly(aw: Awaitable[None]) -> None:
    with contextlib.suppress(Exception):
        await aw
