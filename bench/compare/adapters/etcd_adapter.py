"""etcd through aetcd, an asyncio client of etcd's v3 gRPC API (runs under .venv-peers).

aetcd speaks only the v3 KV API (Range, Put), which etcd 3.4 serves as 3.5
does, so no fallback client is needed. One aetcd.Client is one gRPC channel
(one HTTP/2 connection) to one member; concurrent calls multiplex on it, as
the clients of etcd's own ``benchmark`` tool share a few connections.
"""

from __future__ import annotations

from collections.abc import Sequence

import aetcd  # type: ignore[import-not-found]


class EtcdConnection:
    # No asyncio.wait_for around the calls: aetcd hands its timeout to every gRPC
    # call, and a wrapping task per request would be client overhead that etcd
    # would be charged for.
    def __init__(self, client: aetcd.Client) -> None:
        self._client = client

    async def put(self, key: bytes, value: bytes) -> None:
        # A follower forwards the proposal to the leader inside etcd; the answer
        # comes once the entry is committed and applied on this member.
        await self._client.put(key, value)

    async def get(self, key: bytes) -> None:
        # serializable=False is etcd's default: a linearizable read (ReadIndex).
        await self._client.get(key, serializable=False)

    async def get_one(self, key: bytes) -> None:
        await self._client.get(key, serializable=True)

    async def close(self) -> None:
        await self._client.close()


async def connect(endpoint: str, endpoints: Sequence[str], timeout: float) -> EtcdConnection:
    host, _, port = endpoint.rpartition(":")
    client = aetcd.Client(host=host, port=int(port), timeout=timeout)
    await client.connect()
    return EtcdConnection(client)
