"""aetcd (an asyncio etcd client) against one member's etcd gRPC port: run as a process of its
own by test_etcd_gateway.py, as aetcd's bundled protobuf modules cannot share a process
with quorumkv's. Prints one "<part> ok" line per part that passed; exits non-zero on a
failure.

Usage: etcd_aetcd_check.py PORT [--LeaseGrant] [--Watch]
(the flags: the services the member serves, whose parts are run too)
"""

from __future__ import annotations

import asyncio
import sys

import aetcd


async def kv(client: aetcd.Client) -> None:
    await client.put(b"aetcd/a", b"1")
    await client.put(b"aetcd/b", b"2")
    got = await client.get(b"aetcd/a")
    assert got is not None and got.value == b"1", got
    assert await client.get(b"aetcd/none") is None
    rng = await client.get_range(b"aetcd/", b"aetcd0")
    assert [kv.key for kv in rng] == [b"aetcd/a", b"aetcd/b"], rng
    prefix = await client.get_prefix(b"aetcd/")
    assert len(prefix) == 2
    deleted = await client.delete(b"aetcd/a")
    assert deleted is not None and deleted.deleted == 1
    assert await client.get(b"aetcd/a") is None
    print("kv ok", flush=True)


async def lease(client: aetcd.Client) -> None:
    granted = await client.lease(60)
    await client.put(b"aetcd/leased", b"x", lease=granted)
    assert 0 < await granted.remaining_ttl() <= 60
    assert await granted.keys() == [b"aetcd/leased"]
    await granted.revoke()
    assert await client.get(b"aetcd/leased") is None
    print("lease ok", flush=True)


async def watch(client: aetcd.Client) -> None:
    stream = await client.watch(b"aetcd/w")

    async def write() -> None:
        await asyncio.sleep(0.3)
        await client.put(b"aetcd/w", b"watched")

    writer = asyncio.create_task(write())
    async for event in stream:
        assert event.kv.value == b"watched", event
        break
    await stream.cancel()
    await writer
    print("watch ok", flush=True)


async def main(port: int, parts: set[str]) -> None:
    async with aetcd.Client(host="127.0.0.1", port=port, timeout=30) as client:
        await kv(client)
        if "--LeaseGrant" in parts:
            await lease(client)
        if "--Watch" in parts:
            await asyncio.wait_for(watch(client), 30)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), set(sys.argv[2:])))
