"""Coordination recipes built on leases, transactions and watches: a lock and an election.

::

    async with Lock(client, "reports") as token:     # token: the fencing token
        await storage.write(report, fencing_token=token)

    election = Election(client, "scheduler")
    await election.campaign("node-a")                 # returns once node-a leads
    async for leader in election.observe():           # KeyValue of each new leader
        ...

Both are etcd's recipes (``concurrency.Mutex`` and ``concurrency.Election``).
A candidate grants itself a lease, kept alive while it waits and holds, and
creates the key ``prefix + name + "/" + <lease id in hex>`` attached to it
in a transaction that creates it only if it is absent. The key's create
revision is the candidate's place in the queue: the candidate with the
lowest one holds the lock (leads). Every other waits, watching only the key
just ahead of it, from the revision after the read that found it, until it
is deleted (released, or its lease expired), and then reads the queue again:
it never assumes it is first because its predecessor left. So waiters get
the lock in the order they asked for it, a release wakes only one waiter,
and a crashed holder's key is deleted by the cluster when its lease expires.

The fencing token is the holder's create revision. Every later holder
queued behind it, so its create revision is larger: tokens strictly
increase from holder to holder. A lock cannot stop a holder that stalls
(a pause, a partition) past its lease's expiry from acting, so pass the
token to the resource the lock protects and have it refuse any token
smaller than the largest it has seen.

When the lock is lost. The holder keeps its lease alive itself (every
third of the TTL) and tracks :attr:`Lock.valid_until`: the time, on this
host's monotonic clock, at which the cluster may expire the lease, counted
from when the last keep-alive the leader answered was *sent* (the leader
renews from when it receives it, and a new leader gives every lease a full
TTL, so the cluster expires the lease no earlier). Once that time passes
without a renewal, or the leader says the lease is gone, :attr:`Lock.lost`
is set: the holder must stop acting as one. Each keep-alive is bounded by
that time, so a request stuck on an unresponsive node cannot hide it.

Blocking versions for code without asyncio: :class:`BlockingLock` and
:class:`BlockingElection` run the same recipes on a :class:`Client`'s event
loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from quorumkv.client.async_client import AsyncClient, KeyLike, to_bytes
from quorumkv.client.lease import Lease
from quorumkv.errors import (
    Compacted,
    InvalidArgument,
    LeaseNotFound,
    QuorumKVError,
    Timeout,
    UnavailableError,
    WatchCanceled,
)
from quorumkv.kv.commands import Compare, CompareOp, CompareTarget, Put, RangeRequest
from quorumkv.kv.keys import prefix_end
from quorumkv.kv.results import EventType, KeyValue, RangeResult

if TYPE_CHECKING:
    from quorumkv.client.client import Client

log = logging.getLogger(__name__)

LOCK_PREFIX = b"/quorumkv/locks/"
ELECTION_PREFIX = b"/quorumkv/elections/"
_ID_DIGITS = 16
"""A candidate's key ends with its lease id in this many hex digits."""
_T = TypeVar("_T")


def _queue_prefix(prefix: KeyLike, name: KeyLike) -> bytes:
    n = to_bytes("name", name)
    if not n:
        raise InvalidArgument("a lock or election needs a non-empty name")
    return to_bytes("prefix", prefix) + n + b"/"


def _in_queue(queue: bytes, key: bytes) -> bool:
    """A candidate of this queue, not of a longer name that shares its prefix
    ("jobs" and "jobs/daily" are separate queues)."""
    rest = key[len(queue):]
    return key.startswith(queue) and len(rest) == _ID_DIGITS and b"/" not in rest


def _first(kvs: Any) -> KeyValue | None:
    return min(kvs, key=lambda kv: kv.create_revision, default=None)


async def _quietly(aw: Awaitable[object]) -> None:
    with contextlib.suppress(QuorumKVError, asyncio.TimeoutError):
        await aw


class _Ticket:
    """One candidate's place in a queue: its lease, kept alive, and its key."""

    def __init__(self, client: AsyncClient, queue: bytes, ttl: int) -> None:
        if not isinstance(ttl, int) or ttl < 1:
            raise InvalidArgument("ttl must be a positive number of seconds")
        self.client = client
        self.queue = queue
        self.ttl = ttl
        self.lease: Lease | None = None
        self.key: bytes | None = None
        self.revision = 0
        """The key's create revision: the place in the queue, and the fencing token."""
        self.valid_until = 0.0
        self.lost = asyncio.Event()
        self.why_lost: str | None = None
        self._lost_error: QuorumKVError | None = None
        self._keeper: asyncio.Task[None] | None = None

    # -- entering the queue ------------------------------------------------------------

    async def enter(self, value: bytes) -> None:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        # Our own keep-alive (see the module doc), so the lease object keeps none.
        self.lease = lease = await self.client.grant_lease(self.ttl, keep_alive=False)
        self.valid_until = sent + lease.ttl
        self._keeper = loop.create_task(self._keep_alive(), name=f"quorumkv-ticket-{lease.id}")
        key = self.queue + f"{lease.id:0{_ID_DIGITS}x}".encode()
        absent = Compare(key=key, target=CompareTarget.CREATE_REVISION, op=CompareOp.EQUAL,
                         value=0)
        result = await self.client.txn([absent], [Put(key=key, value=value, lease=lease.id)],
                                       [RangeRequest(key=key)])
        if result.succeeded:
            self.revision = result.revision
        else:  # the lease id is fresh, so only an earlier attempt of ours can have made it
            found = result.responses[0] if result.responses else None
            if not isinstance(found, RangeResult) or not found.kvs:
                raise LeaseNotFound(f"the queue key {key!r} vanished as it was created")
            self.revision = found.kvs[0].create_revision
        self.key = key

    async def wait_first(self) -> None:
        """Return once no candidate ahead of us is left in the queue."""
        assert self.key is not None
        while True:
            self.check()
            found = await self.client.range(self.queue, prefix_end(self.queue))
            queue = [kv for kv in found.kvs if _in_queue(self.queue, kv.key)]
            if not any(kv.key == self.key and kv.create_revision == self.revision
                       for kv in queue):
                raise self.fail(LeaseNotFound(
                    f"our key {self.key!r} is gone from the queue: its lease expired or was "
                    f"revoked, or it was deleted", lease=self.lease_id))
            ahead = [kv for kv in queue if kv.create_revision < self.revision]
            if not ahead:
                self.check()
                return
            predecessor = max(ahead, key=lambda kv: kv.create_revision)
            await self._until_deleted(predecessor.key, found.revision + 1)

    async def _until_deleted(self, key: bytes, from_revision: int) -> None:
        """Wait until ``key`` is deleted at or after ``from_revision`` (or the watch ends
        for a reason that makes it worth reading the queue again)."""
        lost = asyncio.ensure_future(self.lost.wait())
        watcher = asyncio.ensure_future(self._watch_delete(key, from_revision))
        try:
            await asyncio.wait({lost, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (lost, watcher):
                task.cancel()
            for task in (lost, watcher):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if watcher.done() and not watcher.cancelled():
            watcher.result()  # its errors
        self.check()

    async def _watch_delete(self, key: bytes, from_revision: int) -> None:
        try:
            async with self.client.watch(key, start_revision=from_revision) as w:
                async for batch in w:
                    if any(e.type is EventType.DELETE for e in batch.events):
                        return
        except (Compacted, WatchCanceled) as e:
            # History we asked for is gone, or the node gave up on us: read the queue again.
            log.debug("waiting for %r: %s; reading the queue again", key, e.message)

    # -- the lease ---------------------------------------------------------------------

    @property
    def lease_id(self) -> int:
        return 0 if self.lease is None else self.lease.id

    def check(self) -> None:
        """Raise why the lease was lost, if it was."""
        if self._lost_error is not None:
            raise self._lost_error
        if self.lease is not None and time.monotonic() >= self.valid_until:
            raise self.fail(self._expired())

    def _expired(self) -> QuorumKVError:
        return UnavailableError(f"lease {self.lease_id} was not renewed within its "
                                f"{self.ttl}s TTL: it may have expired", lease=self.lease_id)

    def fail(self, err: QuorumKVError) -> QuorumKVError:
        """Record that the lease is lost (the first reason wins); the recorded error."""
        if self._lost_error is None:
            self._lost_error = err
            self.why_lost = err.message
        self.lost.set()
        return self._lost_error

    async def _keep_alive(self) -> None:
        try:
            await self._renew()
        except asyncio.CancelledError:
            # Nobody renews the lease any more (released, or the client is closing).
            self.fail(UnavailableError(f"lease {self.lease_id} is no longer kept alive"))
            raise

    async def _renew(self) -> None:
        assert self.lease is not None
        loop = asyncio.get_running_loop()
        lease_id = self.lease.id
        interval = max(0.1, self.ttl / 3)
        retry = max(0.05, min(0.5, interval / 4))
        wait = interval
        while True:
            await asyncio.sleep(max(0.0, min(wait, self.valid_until - loop.time())))
            sent = loop.time()
            if sent >= self.valid_until:
                self.fail(self._expired())
                return
            try:
                async with asyncio.timeout_at(self.valid_until):
                    await self.client.lease_keepalive(lease_id)
            except LeaseNotFound as e:
                self.fail(LeaseNotFound(f"the cluster no longer has lease {lease_id} "
                                         f"(expired or revoked): {e.message}", lease=lease_id))
                return
            except TimeoutError:
                continue  # past valid_until: the next turn declares it lost
            except QuorumKVError as e:
                log.debug("keep-alive of lease %d failed, retrying: %s", lease_id, e.message)
                wait = retry
                continue
            self.valid_until = max(self.valid_until, sent + self.ttl)
            wait = interval

    # -- leaving -----------------------------------------------------------------------

    async def leave(self) -> None:
        """Give up the place: revoke the lease, which deletes the key with it.

        If the revoke fails (the cluster is unreachable), the lease is no longer kept
        alive and expires within its TTL, and the key with it.
        """
        self.fail(LeaseNotFound("the lock was released (the election resigned)"))
        await self._stop_keeper()
        lease = self.lease
        if lease is not None:
            await _quietly(lease.revoke())

    async def _stop_keeper(self) -> None:
        task, self._keeper = self._keeper, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _join(ticket: _Ticket, value: bytes, timeout: float | None, what: str) -> None:
    """Enter the queue and wait to be first; on any failure leave it again."""
    if timeout is not None and timeout < 0:
        raise InvalidArgument("timeout must not be negative")
    try:
        async with asyncio.timeout(timeout):
            await ticket.enter(value)
            await ticket.wait_first()
    except TimeoutError:
        await ticket.leave()
        raise Timeout(f"{what} not obtained within {timeout:g}s") from None
    except BaseException:
        # Cancelled, or the lease was lost while waiting: leave no key behind.
        await ticket.leave()
        raise


# -- the lock ------------------------------------------------------------------------------


class Lock:
    """A distributed mutual-exclusion lock (etcd's ``concurrency.Mutex``); see the module doc.

    One Lock object is one would-be holder; it may acquire again after a release.
    """

    def __init__(self, client: AsyncClient, name: KeyLike, *, ttl: int = 10,
                 prefix: KeyLike = LOCK_PREFIX) -> None:
        self._client = client
        self.name = to_bytes("name", name)
        self._queue = _queue_prefix(prefix, name)
        if not isinstance(ttl, int) or ttl < 1:
            raise InvalidArgument("ttl must be a positive number of seconds")
        self._ttl = ttl
        self._ticket: _Ticket | None = None
        self._held = False

    @property
    def queue_prefix(self) -> bytes:
        """The prefix under which the candidates' keys live."""
        return self._queue

    async def acquire(self, timeout: float | None = None) -> int:
        """Wait for the lock (at most ``timeout`` seconds: then quorumkv.errors.Timeout,
        and this candidate has left the queue); return the fencing token."""
        if self._ticket is not None:
            raise InvalidArgument("this Lock is already held or being acquired")
        ticket = _Ticket(self._client, self._queue, self._ttl)
        self._ticket = ticket
        try:
            await _join(ticket, b"", timeout, f"lock {self.name!r}")
        except BaseException:
            self._ticket = None
            raise
        self._held = True
        return ticket.revision

    async def release(self) -> None:
        """Release the lock (idempotent): the next waiter gets it."""
        ticket, self._ticket = self._ticket, None
        self._held = False
        if ticket is not None:
            await ticket.leave()

    async def __aenter__(self) -> int:
        return await self.acquire()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.release()

    @property
    def held(self) -> bool:
        """Acquired, not released, and not known to be lost."""
        return self._held and self._ticket is not None and not self._ticket.lost.is_set() \
            and time.monotonic() < self._ticket.valid_until

    @property
    def token(self) -> int | None:
        """The fencing token of the current hold (None when not held)."""
        return self._ticket.revision if self._held and self._ticket is not None else None

    @property
    def key(self) -> bytes | None:
        return self._ticket.key if self._ticket is not None else None

    @property
    def lease_id(self) -> int:
        return self._ticket.lease_id if self._ticket is not None else 0

    @property
    def lost(self) -> asyncio.Event:
        """Set once the hold's lease is known or presumed expired, or the lock is released:
        a holder must then stop acting as one. (A new Event before each acquire.)"""
        if self._ticket is None:
            done = asyncio.Event()
            done.set()
            return done
        return self._ticket.lost

    @property
    def why_lost(self) -> str | None:
        return None if self._ticket is None else self._ticket.why_lost

    @property
    def valid_until(self) -> float:
        """The hold is safe until this ``time.monotonic()`` time at least, unless
        renewed; 0.0 when nothing is held."""
        return self._ticket.valid_until if self._ticket is not None else 0.0

    async def wait_lost(self) -> None:
        await self.lost.wait()


# -- the election ----------------------------------------------------------------------


class Election:
    """A leader election (etcd's ``concurrency.Election``); see the module doc.

    Candidates queue like lock waiters; the leader is the candidate with the lowest
    create revision, and its key holds its value.
    """

    def __init__(self, client: AsyncClient, name: KeyLike, *, ttl: int = 10,
                 prefix: KeyLike = ELECTION_PREFIX) -> None:
        self._client = client
        self.name = to_bytes("name", name)
        self._queue = _queue_prefix(prefix, name)
        if not isinstance(ttl, int) or ttl < 1:
            raise InvalidArgument("ttl must be a positive number of seconds")
        self._ttl = ttl
        self._ticket: _Ticket | None = None
        self._leading = False

    @property
    def queue_prefix(self) -> bytes:
        return self._queue

    async def campaign(self, value: KeyLike, *, timeout: float | None = None) -> int:
        """Stand with ``value`` and return once this candidate leads (its create revision,
        usable as a fencing token). ``timeout``: give up (Timeout) and withdraw."""
        data = to_bytes("value", value)
        if self._ticket is not None:
            raise InvalidArgument("this Election is already campaigning or leading")
        ticket = _Ticket(self._client, self._queue, self._ttl)
        self._ticket = ticket
        try:
            await _join(ticket, data, timeout, f"leadership of {self.name!r}")
        except BaseException:
            self._ticket = None
            raise
        self._leading = True
        return ticket.revision

    async def proclaim(self, value: KeyLike) -> int:
        """Change the leader's value (only while leading); returns the write's revision."""
        ticket = self._ticket
        if ticket is None or not self._leading or ticket.key is None:
            raise InvalidArgument("proclaim needs a campaign that won first")
        ticket.check()
        mine = Compare(key=ticket.key, target=CompareTarget.CREATE_REVISION,
                       op=CompareOp.EQUAL, value=ticket.revision)
        result = await self._client.txn(
            [mine], [Put(key=ticket.key, value=to_bytes("value", value), lease=ticket.lease_id)])
        if not result.succeeded:
            raise ticket.fail(LeaseNotFound(
                f"no longer leading {self.name!r}: our key is gone (its lease expired or "
                f"was revoked, or it was deleted)", lease=ticket.lease_id))
        return result.revision

    async def resign(self) -> None:
        """Stop leading (or campaigning): the next candidate leads. Idempotent."""
        ticket, self._ticket = self._ticket, None
        self._leading = False
        if ticket is not None:
            await ticket.leave()

    async def leader(self) -> KeyValue | None:
        """The current leader's key and value, or None if nobody stands."""
        found = await self._client.range(self._queue, prefix_end(self._queue))
        return _first(kv for kv in found.kvs if _in_queue(self._queue, kv.key))

    def observe(self) -> LeaderObserver:
        """An async iterator of the leader's KeyValue, each time it changes (a new leader,
        or a new value proclaimed), starting with the current one; nothing while nobody
        leads. Use ``async with`` (or ``aclose()``) to stop it."""
        return LeaderObserver(self._client, self._queue)

    @property
    def leading(self) -> bool:
        return self._leading and self._ticket is not None and not self._ticket.lost.is_set() \
            and time.monotonic() < self._ticket.valid_until

    @property
    def key(self) -> bytes | None:
        return self._ticket.key if self._ticket is not None else None

    @property
    def lease_id(self) -> int:
        return self._ticket.lease_id if self._ticket is not None else 0

    @property
    def lost(self) -> asyncio.Event:
        """Set once this candidate's lease is known or presumed expired, or it resigned."""
        if self._ticket is None:
            done = asyncio.Event()
            done.set()
            return done
        return self._ticket.lost

    @property
    def valid_until(self) -> float:
        return self._ticket.valid_until if self._ticket is not None else 0.0


class LeaderObserver:
    """The leaders of one election as they change; see :meth:`Election.observe`.

    A task reads the queue, then follows it with a watch from the revision after that
    read (so no change is missed), keeping the candidates in memory, and hands each new
    leader to the iterator; if the watch ends (compaction, a slow reader) it reads the
    queue again. Waiting for the next leader may be cancelled (a timeout) without
    disturbing the observation.
    """

    def __init__(self, client: AsyncClient, queue: bytes) -> None:
        self._client = client
        self._queue = queue
        self._leaders: asyncio.Queue[KeyValue | BaseException] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def __aiter__(self) -> LeaderObserver:
        return self

    async def __anext__(self) -> KeyValue:
        if self._closed:
            raise StopAsyncIteration
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._follow(), name="quorumkv-election-observer")
        item = await self._leaders.get()
        if isinstance(item, BaseException):
            self._closed = True
            raise item
        return item

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> LeaderObserver:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def _follow(self) -> None:
        last: tuple[bytes, int] | None = None

        def offer(candidates: dict[bytes, KeyValue]) -> None:
            nonlocal last
            current = _first(candidates.values())
            if current is not None and (current.key, current.mod_revision) != last:
                last = (current.key, current.mod_revision)
                self._leaders.put_nowait(current)

        try:
            while True:
                found = await self._client.range(self._queue, prefix_end(self._queue))
                candidates = {kv.key: kv for kv in found.kvs if _in_queue(self._queue, kv.key)}
                offer(candidates)
                try:
                    async with self._client.watch(self._queue, prefix=True,
                                                  start_revision=found.revision + 1) as w:
                        async for batch in w:
                            for e in batch.events:
                                if not _in_queue(self._queue, e.kv.key):
                                    continue
                                if e.type is EventType.PUT:
                                    candidates[e.kv.key] = e.kv
                                else:
                                    candidates.pop(e.kv.key, None)
                            offer(candidates)
                except (Compacted, WatchCanceled) as e:
                    log.debug("observing %r: %s; reading the queue again", self._queue,
                              e.message)
        except QuorumKVError as e:
            self._leaders.put_nowait(e)


# -- blocking versions -----------------------------------------------------------------


class BlockingLock:
    """:class:`Lock` for code without asyncio, on a blocking :class:`Client`::

        with BlockingLock(client, "reports") as token:
            ...
    """

    def __init__(self, client: Client, name: KeyLike, *, ttl: int = 10,
                 prefix: KeyLike = LOCK_PREFIX) -> None:
        self._client = client
        self._lock = Lock(client._client, name, ttl=ttl, prefix=prefix)

    def acquire(self, timeout: float | None = None) -> int:
        return self._client._run(self._lock.acquire(timeout))

    def release(self) -> None:
        self._client._run(self._lock.release())

    def __enter__(self) -> int:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._lock.held

    @property
    def lost(self) -> bool:
        """The hold is known or presumed lost (or released): stop acting as the holder."""
        return self._lock.lost.is_set() or time.monotonic() >= self._lock.valid_until

    def wait_lost(self, timeout: float | None = None) -> bool:
        """Block until the hold is lost (True) or ``timeout`` passes (False)."""
        return _wait_event(self._client, self._lock.lost, timeout)

    @property
    def why_lost(self) -> str | None:
        return self._lock.why_lost

    @property
    def token(self) -> int | None:
        return self._lock.token

    @property
    def key(self) -> bytes | None:
        return self._lock.key

    @property
    def lease_id(self) -> int:
        return self._lock.lease_id

    @property
    def valid_until(self) -> float:
        return self._lock.valid_until


class BlockingElection:
    """:class:`Election` for code without asyncio, on a blocking :class:`Client`."""

    def __init__(self, client: Client, name: KeyLike, *, ttl: int = 10,
                 prefix: KeyLike = ELECTION_PREFIX) -> None:
        self._client = client
        self._election = Election(client._client, name, ttl=ttl, prefix=prefix)

    def campaign(self, value: KeyLike, *, timeout: float | None = None) -> int:
        return self._client._run(self._election.campaign(value, timeout=timeout))

    def proclaim(self, value: KeyLike) -> int:
        return self._client._run(self._election.proclaim(value))

    def resign(self) -> None:
        self._client._run(self._election.resign())

    def leader(self) -> KeyValue | None:
        return self._client._run(self._election.leader())

    def observe(self) -> BlockingLeaderObserver:
        async def start() -> LeaderObserver:
            return self._election.observe()

        return BlockingLeaderObserver(self._client, self._client._run(start()))

    @property
    def leading(self) -> bool:
        return self._election.leading

    @property
    def lost(self) -> bool:
        return self._election.lost.is_set() or time.monotonic() >= self._election.valid_until

    def wait_lost(self, timeout: float | None = None) -> bool:
        return _wait_event(self._client, self._election.lost, timeout)

    @property
    def key(self) -> bytes | None:
        return self._election.key


class BlockingLeaderObserver:
    """A blocking iterator of leaders; ``close()`` (or ``with``) stops it."""

    def __init__(self, client: Client, observer: LeaderObserver) -> None:
        self._client = client
        self._observer = observer

    def __iter__(self) -> Iterator[KeyValue]:
        return self

    def __next__(self) -> KeyValue:
        item = self.get()
        if item is None:
            raise StopIteration
        return item

    def get(self, timeout: float | None = None) -> KeyValue | None:
        """The next leader, or None when ``timeout`` passes first (or it was closed)."""
        async def step() -> KeyValue | None:
            try:
                async with asyncio.timeout(timeout):
                    return await self._observer.__anext__()
            except (StopAsyncIteration, TimeoutError):
                return None

        return self._client._run(step())

    def close(self) -> None:
        self._client._run(self._observer.aclose())

    def __enter__(self) -> BlockingLeaderObserver:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _wait_event(client: Client, event: asyncio.Event, timeout: float | None) -> bool:
    async def wait() -> bool:
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        return True

    return client._run(wait())
