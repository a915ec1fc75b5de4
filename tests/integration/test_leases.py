"""Leases on a real cluster: expiry takes the keys, keep-alive keeps them, failover is safe."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from cluster_harness import running_cluster

from quorumkv.client import AsyncClient
from quorumkv.errors import LeaseNotFound
from quorumkv.kv.results import EventType

pytestmark = pytest.mark.timeout(300)


def test_an_expired_lease_takes_its_keys_and_a_kept_alive_one_keeps_them(
        tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.leader_name()

        async def main() -> None:
            async with AsyncClient(cluster.endpoints, timeout=10.0) as c:
                kept = await c.grant_lease(2)
                dropped = await c.grant_lease(2, keep_alive=False)
                assert set(await c.leases()) >= {kept.id, dropped.id}
                await c.put("svc/kept", "1", lease=kept.id)
                await c.put("svc/dropped", "1", lease=dropped.id)
                await c.put("svc/plain", "1")
                info = await c.lease_ttl(dropped.id, keys=True)
                assert info["ttl"] == 2 and info["keys"] == [b"svc/dropped"]
                async with c.watch("svc/", prefix=True) as w:
                    async with asyncio.timeout(60):
                        async for resp in w:
                            deleted = [e for e in resp.events if e.type is EventType.DELETE]
                            if deleted:
                                assert [e.kv.key for e in deleted] == [b"svc/dropped"]
                                break
                with pytest.raises(LeaseNotFound):
                    await c.lease_ttl(dropped.id)
                # Well past its TTL, the kept-alive lease and its key are still there.
                await asyncio.sleep(5)
                assert not kept.lost.is_set()
                assert await c.get("svc/kept") is not None
                assert await c.get("svc/plain") is not None
                with pytest.raises(LeaseNotFound):
                    await c.put("svc/x", "1", lease=dropped.id)
                await kept.revoke()
                assert await c.get("svc/kept") is None
                assert kept.id not in await c.leases()
        asyncio.run(main())


def test_a_leader_failover_does_not_expire_a_kept_alive_lease(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.node(cluster.leader_name())

        async def main() -> None:
            async with AsyncClient(cluster.endpoints, timeout=15.0) as c:
                lease = await c.grant_lease(3)
                await c.put("lock/holder", "me", lease=lease.id)
                leader.kill()

                def new_leader() -> str:
                    # The survivors may still name the dead leader until they elect anew.
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        name = cluster.leader_name()
                        if name != leader.name:
                            return name
                        time.sleep(0.1)
                    raise AssertionError("no new leader")

                await asyncio.to_thread(new_leader)
                # Several TTLs under the new leader: keep-alives keep it.
                deadline = time.monotonic() + 9
                while time.monotonic() < deadline:
                    assert await c.get("lock/holder") is not None
                    await asyncio.sleep(0.5)
                assert not lease.lost.is_set()
                info = await c.lease_ttl(lease.id)
                assert 0 < info["remaining"] <= 3
                # Once nobody keeps it alive, the new leader expires it.
                await lease.stop_keep_alive()
                async with asyncio.timeout(60):
                    while await c.get("lock/holder") is not None:
                        await asyncio.sleep(0.2)
                with pytest.raises(LeaseNotFound):
                    await c.lease_keepalive(lease.id)

        asyncio.run(main())
