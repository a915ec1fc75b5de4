"""Lease expiry: the leader's clock decides, the log carries the decision.

The state machine knows each lease's TTL and the keys attached to it, never
a time (kv/leases.py). Only the leader keeps deadlines, in memory, on its
own monotonic clock: a lease's deadline is set to now + TTL when the leader
first sees it and on every keep-alive. When a deadline passes the leader
proposes a LeaseRevoke, which deletes the lease's keys on every replica at
one revision, like any write. Keep-alives go to the leader only and are not
logged.

A new leader knows no deadlines, so it gives every lease a full TTL from the
moment it leads (etcd does the same): a failover can make a lease live
longer, never shorter, so a holder that keeps its lease alive through the
election does not lose it. TTLs shorter than ``min_ttl`` (two election
timeouts) are stretched to it, so an election alone cannot expire a lease
that is being kept alive.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from quorumkv.errors import LeaseNotFound, QuorumKVError, Timeout
from quorumkv.kv import Applied, encode_command
from quorumkv.kv.commands import LeaseRevoke
from quorumkv.server.events import LEASE_EXPIRED

if TYPE_CHECKING:
    from quorumkv.server.node import Node

log = logging.getLogger(__name__)

SCAN_INTERVAL = 0.25
"""Seconds between the leader's looks for expired leases (and new ones)."""


class LeaseManager:
    def __init__(self, node: Node, *, min_ttl: float) -> None:
        self.node = node
        self.min_ttl = min_ttl
        self._deadlines: dict[int, float] = {}
        self._revoking: set[int] = set()
        self._term = -1
        """The term we lead in; deadlines belong to it."""
        self._tasks: set[asyncio.Task[None]] = set()

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _leading(self) -> bool:
        group = self.node.group
        return group is not None and group.raft.leader == self.node.node_id

    def _effective(self, ttl: int) -> float:
        return max(float(ttl), self.min_ttl)

    def _require_leader(self) -> None:
        if not self._leading():
            raise self.node.leader_error()

    # -- client calls ------------------------------------------------------------------

    async def keepalive(self, lease_id: int) -> dict[str, Any]:
        """Renew a lease for its full TTL. Only the leader keeps deadlines.

        Leadership is confirmed by a majority first (a ReadIndex round): a
        leader that was frozen and deposed must not answer a renewal that the
        new leader, which alone will expire the lease, never granted.
        """
        self._require_leader()
        group, kv = self.node.group, self.node.kv
        assert group is not None and kv is not None
        term = group.raft.term
        try:
            await asyncio.wait_for(group.read_index(), self.node.config.request_timeout_s)
        except TimeoutError:
            raise Timeout("leadership could not be confirmed to renew the lease") from None
        if not self._leading() or group.raft.term != term:
            raise self.node.leader_error()
        if lease_id in self._revoking:
            raise LeaseNotFound(f"lease {lease_id} has expired", lease=lease_id)
        # Asked of the store each time (one record): a cached entry could outlive a revoke.
        ttl = kv.lease_ttl(lease_id)
        if ttl is None:
            self._deadlines.pop(lease_id, None)
            raise LeaseNotFound(f"lease {lease_id} does not exist (expired or revoked)",
                                lease=lease_id)
        self._deadlines[lease_id] = self._now() + self._effective(ttl)
        return {"id": lease_id, "ttl": ttl, "header": self.node.header()}

    async def time_to_live(self, lease_id: int, *, keys: bool) -> dict[str, Any]:
        self._require_leader()
        kv = self.node.kv
        assert kv is not None
        ttl = kv.lease_ttl(lease_id)
        if ttl is None:
            raise LeaseNotFound(f"lease {lease_id} does not exist (expired or revoked)",
                                lease=lease_id)
        deadline = self._deadlines.get(lease_id)
        remaining = self._effective(ttl) if deadline is None else deadline - self._now()
        attached = await asyncio.to_thread(kv.lease_keys, lease_id) if keys else None
        return {"id": lease_id, "ttl": ttl, "remaining": max(0.0, round(remaining, 3)),
                "keys": attached, "header": self.node.header()}

    async def list(self) -> dict[str, Any]:
        kv = self.node.kv
        assert kv is not None
        leases = await asyncio.to_thread(kv.leases)
        return {"leases": [{"id": i, "ttl": t} for i, t in sorted(leases.items())],
                "header": self.node.header()}

    # -- the leader's loop -----------------------------------------------------------------

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SCAN_INTERVAL)
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease expiry round failed")

    async def _round(self) -> None:
        group, kv = self.node.group, self.node.kv
        if group is None or kv is None:
            return
        if not self._leading():
            self._term = -1
            self._deadlines.clear()
            return
        term = group.raft.term
        if term != self._term:
            # A new term of ours: every deadline starts afresh (see the module doc).
            self._term = term
            self._deadlines.clear()
        leases = await asyncio.to_thread(kv.leases)
        now = self._now()
        for lease_id in [i for i in self._deadlines if i not in leases]:
            del self._deadlines[lease_id]
        for lease_id, ttl in leases.items():
            if lease_id not in self._deadlines:
                self._deadlines[lease_id] = now + self._effective(ttl)
        expired = [i for i, d in self._deadlines.items() if d <= now and i not in self._revoking]
        for lease_id in expired:
            self._revoking.add(lease_id)
            task = asyncio.get_running_loop().create_task(self._revoke(lease_id),
                                                          name=f"lease-expire-{lease_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _revoke(self, lease_id: int) -> None:
        group = self.node.group
        assert group is not None
        try:
            data = encode_command(LeaseRevoke(id=lease_id, timestamp=time.time_ns()))
            outcome = await asyncio.wait_for(group.propose(data),
                                             self.node.config.request_timeout_s)
            keys = len(outcome.events) if isinstance(outcome, Applied) else None
            self.node.events.record(
                LEASE_EXPIRED, f"lease {lease_id} expired and was revoked",
                level=logging.DEBUG, lease=lease_id, keys_deleted=keys)
            self._deadlines.pop(lease_id, None)
        except LeaseNotFound:
            self._deadlines.pop(lease_id, None)  # revoked meanwhile
        except (QuorumKVError, TimeoutError) as e:
            log.info("revoking expired lease %d failed (will retry): %s", lease_id, e)
        finally:
            self._revoking.discard(lease_id)
