"""A lease kept alive in the background, as the client sees it.

::

    lease = await client.grant_lease(ttl=10)      # kept alive until revoked or closed
    await client.put("service/a", "addr", lease=lease.id)
    ...
    await lease.revoke()                          # or: async with client.grant_lease(10)

A task sends a keep-alive to the leader every third of the TTL. If the
keep-alives fail for longer than the TTL (the client is cut off from the
cluster), or the leader answers that the lease is gone, the lease is lost:
:attr:`Lease.lost` is set and :meth:`Lease.wait_lost` returns, so a lock
holder knows to stop acting as one. The node, not this object, decides
expiry; this object only reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

from quorumkv.errors import LeaseNotFound, QuorumKVError

log = logging.getLogger(__name__)


class Lease:
    def __init__(self, *, lease_id: int, ttl: int,
                 keepalive: Callable[[int], Awaitable[int]],
                 revoke: Callable[[int], Awaitable[object]], keep_alive: bool = True,
                 requested_at: float | None = None) -> None:
        """``requested_at``: loop time the grant was sent (the lease cannot have been
        granted earlier, so it is surely alive until then plus its TTL)."""
        self.id = lease_id
        self.ttl = ttl
        self._keepalive = keepalive
        self._revoke = revoke
        self.lost = asyncio.Event()
        """Set once the lease is known or presumed expired (or revoked)."""
        self.why_lost: str | None = None
        now = asyncio.get_running_loop().time()
        self.valid_until = (now if requested_at is None else requested_at) + ttl
        """Loop time until which the lease is surely alive (while kept alive)."""
        self._task: asyncio.Task[None] | None = None
        if keep_alive:
            self._task = asyncio.get_running_loop().create_task(
                self._keep_alive(), name=f"quorumkv-lease-{lease_id}")

    async def _keep_alive(self) -> None:
        loop = asyncio.get_running_loop()
        interval = max(0.2, self.ttl / 3)
        # The lease is surely alive until TTL after the *sending* of the last
        # keep-alive that was answered: the leader renewed it no earlier.
        try:
            while True:
                await asyncio.sleep(interval)
                sent = loop.time()
                remaining = self.valid_until - sent
                if remaining <= 0:
                    self._lose(f"no keep-alive was answered for {self.ttl}s; the lease may "
                               f"have expired")
                    return
                try:
                    await asyncio.wait_for(self._keepalive(self.id), remaining)
                    self.valid_until = sent + self.ttl
                except LeaseNotFound as e:
                    self._lose(f"the cluster no longer has lease {self.id}: {e.message}")
                    return
                except (QuorumKVError, TimeoutError) as e:
                    log.debug("keep-alive of lease %d failed, retrying: %s", self.id, e)
        except asyncio.CancelledError:
            if not self.lost.is_set():
                self._lose("no longer kept alive")
            raise

    def _lose(self, why: str) -> None:
        self.why_lost = why
        self.lost.set()

    async def wait_lost(self) -> None:
        await self.lost.wait()

    async def stop_keep_alive(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def revoke(self) -> None:
        """Revoke the lease now: its keys are deleted."""
        await self.stop_keep_alive()
        with contextlib.suppress(LeaseNotFound):  # already expired: its keys are gone anyway
            await self._revoke(self.id)
        self._lose("revoked")

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.revoke()
