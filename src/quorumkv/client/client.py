"""The blocking client: the same methods as :class:`AsyncClient`, for code without asyncio.

::

    with Client(["127.0.0.1:2379"]) as kv:
        kv.put("greeting", "hello")
        print(kv.get("greeting"))

Each Client runs one AsyncClient on a private event loop in a background
thread and hands it each call; the calling thread waits for the answer.
Calls are thread-safe, and calls from several threads are pipelined on the
one connection.

Watches and leases have blocking forms too::

    with kv.watch("jobs/", prefix=True) as w:      # created when watch() returns
        for batch in w:                             # blocks for each WatchResponse
            ...
    lease = kv.grant_lease(10)                      # kept alive by the client's loop
    kv.put("service/a", "addr", lease=lease.id)
    lease.revoke()

The locks and elections of :mod:`quorumkv.client.recipes` have blocking
forms as well (``BlockingLock``, ``BlockingElection``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from quorumkv import event_loop
from quorumkv.client.async_client import AsyncClient, KeyLike
from quorumkv.client.auth_admin import BlockingAuthAdmin
from quorumkv.client.coordination_wire import WatchResponse
from quorumkv.client.lease import Lease
from quorumkv.client.members import DEFAULT_TOKEN, Member, Membership
from quorumkv.client.snapshot import DEFAULT_STALL_TIMEOUT, Progress
from quorumkv.client.watch import Watch
from quorumkv.errors import Timeout
from quorumkv.kv.commands import Compare, TxnOp
from quorumkv.kv.results import (
    CompactResult,
    DeleteResult,
    KeyValue,
    LeaseRevokeResult,
    PutResult,
    RangeResult,
    TxnResult,
)
from quorumkv.security.tls import TLSSettings
from quorumkv.storage.backup_file import BackupInfo
from quorumkv.transport.framing import DEFAULT_MAX_FRAME

_T = TypeVar("_T")


class Client(BlockingAuthAdmin):
    """A blocking client of one quorumkv cluster; see :class:`AsyncClient` for the semantics."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 5.0,
                 read_consistency: str = "quorum", write_consistency: str = "quorum",
                 cluster_id: object = None, max_frame: int = DEFAULT_MAX_FRAME,
                 backoff: float = 0.05, max_backoff: float = 1.0,
                 tls: TLSSettings | None = None, user: str | None = None,
                 password: str | None = None) -> None:
        # Built first, so bad arguments raise before a thread exists.
        self._client = AsyncClient(endpoints, timeout=timeout,
                                   read_consistency=read_consistency,
                                   write_consistency=write_consistency, cluster_id=cluster_id,
                                   max_frame=max_frame, backoff=backoff, max_backoff=max_backoff,
                                   tls=tls, user=user, password=password)
        self._timeout = timeout
        self._loop = event_loop.new_event_loop()
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run_loop, name="quorumkv-client",
                                        daemon=True)  # a forgotten close() must not hang exit
        self._thread.start()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            # Background work still running (lease keep-alives, watches) ends here,
            # cancelled as asyncio.run would, rather than being destroyed pending.
            pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            # Host name lookups ran in the default executor; join its threads.
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a blocking Client cannot be called from its own event loop")
        if self._closed:
            coro.close()
            raise RuntimeError("the client is closed")
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: do not leave the call running
            raise

    @property
    def client_id(self) -> int:
        return self._client.client_id

    @property
    def revision(self) -> int:
        return self._client.revision

    @property
    def server_info(self) -> dict[str, Any] | None:
        return self._client.server_info

    def close(self) -> None:
        """Close the connection and stop the background thread (idempotent)."""
        with self._close_lock:
            if self._closed:
                return
            try:
                self._run(self._client.close())
            finally:
                self._closed = True
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def put(self, key: KeyLike, value: KeyLike, *, lease: int = 0, prev_kv: bool = False,
            consistency: str | None = None) -> PutResult:
        return self._run(self._client.put(key, value, lease=lease, prev_kv=prev_kv,
                                          consistency=consistency))

    def get(self, key: KeyLike, *, revision: int = 0,
            consistency: str | None = None) -> KeyValue | None:
        return self._run(self._client.get(key, revision=revision, consistency=consistency))

    def range(self, key: KeyLike, range_end: KeyLike | None = None, *, limit: int = 0,
              revision: int = 0, keys_only: bool = False, count_only: bool = False,
              consistency: str | None = None) -> RangeResult:
        return self._run(self._client.range(key, range_end, limit=limit, revision=revision,
                                            keys_only=keys_only, count_only=count_only,
                                            consistency=consistency))

    def scan_prefix(self, prefix: KeyLike, *, limit: int = 0, revision: int = 0,
                    keys_only: bool = False, count_only: bool = False,
                    consistency: str | None = None) -> RangeResult:
        return self._run(self._client.scan_prefix(prefix, limit=limit, revision=revision,
                                                  keys_only=keys_only, count_only=count_only,
                                                  consistency=consistency))

    def delete(self, key: KeyLike, *, range_end: KeyLike | None = None, prev_kv: bool = False,
               consistency: str | None = None) -> DeleteResult:
        return self._run(self._client.delete(key, range_end=range_end, prev_kv=prev_kv,
                                             consistency=consistency))

    def txn(self, compares: Sequence[Compare], success: Sequence[TxnOp],
            failure: Sequence[TxnOp] = (), *, consistency: str | None = None) -> TxnResult:
        return self._run(self._client.txn(compares, success, failure, consistency=consistency))

    def compare_and_swap(self, key: KeyLike, expected: KeyLike | None, value: KeyLike, *,
                         consistency: str | None = None) -> bool:
        return self._run(self._client.compare_and_swap(key, expected, value,
                                                       consistency=consistency))

    def compact(self, revision: int, *, consistency: str | None = None) -> CompactResult:
        return self._run(self._client.compact(revision, consistency=consistency))

    def status(self, *, local: bool = False) -> dict[str, Any]:
        return self._run(self._client.status(local=local))

    def digest(self) -> dict[str, Any]:
        return self._run(self._client.digest())

    def snapshot_save(self, path: str | Path, *, progress: Progress | None = None,
                      stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> BackupInfo:
        """:meth:`AsyncClient.snapshot_save`, blocking; ``progress`` is called from the
        client's own thread."""
        return self._run(self._client.snapshot_save(path, progress=progress,
                                                    stall_timeout=stall_timeout))

    def membership(self) -> Membership:
        return self._run(self._client.membership())

    def member_list(self) -> list[Member]:
        return self._run(self._client.member_list())

    def member_add(self, name: str, peer_address: str, *, client_address: str | None = None,
                   learner: bool = False, token: str = DEFAULT_TOKEN) -> Member:
        return self._run(self._client.member_add(name, peer_address,
                                                 client_address=client_address,
                                                 learner=learner, token=token))

    def member_remove(self, name: str, *, token: str = DEFAULT_TOKEN) -> Member:
        return self._run(self._client.member_remove(name, token=token))

    def member_promote(self, name: str, *, token: str = DEFAULT_TOKEN) -> Member:
        return self._run(self._client.member_promote(name, token=token))

    def move_leader(self, name: str, *, token: str = DEFAULT_TOKEN) -> str:
        return self._run(self._client.move_leader(name, token=token))

    def leave(self, *, token: str = DEFAULT_TOKEN) -> Member:
        return self._run(self._client.leave(token=token))

    # -- watches and leases ----------------------------------------------------------

    def watch(self, key: KeyLike, range_end: KeyLike | None = None, *, prefix: bool = False,
              start_revision: int = 0, prev_kv: bool = False,
              progress_notify: bool = False) -> BlockingWatch:
        """:meth:`AsyncClient.watch`, blocking: returns once the watch exists on a node
        (events from then on are captured), or raises Timeout after the client's timeout.
        Iterate it for :class:`WatchResponse` batches; ``close()`` (or ``with``) ends it."""
        timeout = self._timeout

        async def create() -> Watch:
            w = self._client.watch(key, range_end, prefix=prefix,
                                   start_revision=start_revision, prev_kv=prev_kv,
                                   progress_notify=progress_notify)
            try:
                async with asyncio.timeout(timeout):
                    await w.wait_created()
            except TimeoutError:
                await w.cancel()
                raise Timeout(f"no node created the watch within {timeout:g}s") from None
            except BaseException:
                await w.cancel()
                raise
            return w

        return BlockingWatch(self, self._run(create()))

    def grant_lease(self, ttl: int, *, keep_alive: bool = True) -> BlockingLease:
        """:meth:`AsyncClient.grant_lease`, blocking; the keep-alive (if any) runs on the
        client's loop until the lease is revoked or the client is closed."""
        return BlockingLease(self, self._run(self._client.grant_lease(ttl,
                                                                      keep_alive=keep_alive)))

    def revoke_lease(self, lease_id: int) -> LeaseRevokeResult:
        return self._run(self._client.revoke_lease(lease_id))

    def lease_keepalive(self, lease_id: int) -> int:
        return self._run(self._client.lease_keepalive(lease_id))

    def lease_ttl(self, lease_id: int, *, keys: bool = False) -> dict[str, Any]:
        return self._run(self._client.lease_ttl(lease_id, keys=keys))

    def leases(self) -> dict[int, int]:
        return self._run(self._client.leases())


class BlockingWatch:
    """A :class:`Watch` driven from a blocking thread: a context manager and an iterator."""

    def __init__(self, client: Client, watch: Watch) -> None:
        self._client = client
        self._watch = watch

    @property
    def watch_id(self) -> int | None:
        return self._watch.watch_id

    @property
    def next_revision(self) -> int:
        """The first revision not delivered yet."""
        return self._watch.next_revision

    def __iter__(self) -> Iterator[WatchResponse]:
        return self

    def __next__(self) -> WatchResponse:
        item = self.get()
        if item is None:
            raise StopIteration
        return item

    def get(self, timeout: float | None = None) -> WatchResponse | None:
        """The next batch; None once the watch was closed, or when ``timeout`` seconds
        pass first. Raises the error that ended the watch (Compacted, WatchCanceled)."""
        async def step() -> WatchResponse | None:
            try:
                async with asyncio.timeout(timeout):
                    return await self._watch.__anext__()
            except (StopAsyncIteration, TimeoutError):
                return None

        return self._client._run(step())

    def close(self) -> None:
        """End the watch (idempotent; a no-op once the client is closed)."""
        if not self._client._closed:
            self._client._run(self._watch.cancel())

    def __enter__(self) -> BlockingWatch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class BlockingLease:
    """A :class:`Lease` seen from a blocking thread; ``with`` revokes it at the end."""

    def __init__(self, client: Client, lease: Lease) -> None:
        self._client = client
        self._lease = lease

    @property
    def id(self) -> int:
        return self._lease.id

    @property
    def ttl(self) -> int:
        return self._lease.ttl

    @property
    def why_lost(self) -> str | None:
        return self._lease.why_lost

    def is_lost(self) -> bool:
        """Known or presumed expired, or revoked (see :mod:`quorumkv.client.lease`)."""
        return self._lease.lost.is_set()

    def wait_lost(self, timeout: float | None = None) -> bool:
        """Block until the lease is lost (True) or ``timeout`` passes (False)."""
        async def wait() -> bool:
            try:
                async with asyncio.timeout(timeout):
                    await self._lease.wait_lost()
            except TimeoutError:
                return False
            return True

        return self._client._run(wait())

    def stop_keep_alive(self) -> None:
        self._client._run(self._lease.stop_keep_alive())

    def revoke(self) -> None:
        """Revoke the lease now: its keys are deleted."""
        self._client._run(self._lease.revoke())

    def __enter__(self) -> BlockingLease:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.revoke()
