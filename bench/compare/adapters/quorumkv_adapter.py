"""quorumkv through its own asyncio client (runs under the project's venv)."""

from __future__ import annotations

from collections.abc import Sequence

from quorumkv.client import AsyncClient


class QuorumKVConnection:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def put(self, key: bytes, value: bytes) -> None:
        # The default write level, quorum: answered once committed and applied on the
        # leader, as etcd answers a put. A follower refuses with the leader's address
        # and the client moves there, so after the first put this connection talks
        # to the leader.
        await self._client.put(key, value, consistency="quorum")

    async def get(self, key: bytes) -> None:
        # ReadIndex: a follower asks the leader for the commit index, then reads locally.
        await self._client.get(key, consistency="quorum")

    async def get_one(self, key: bytes) -> None:
        await self._client.get(key, consistency="one")

    async def close(self) -> None:
        await self._client.close()


async def connect(endpoint: str, endpoints: Sequence[str], timeout: float) -> QuorumKVConnection:
    # The client talks to the first endpoint it is given until that one fails or
    # redirects it, so putting this member first pins reads to it.
    ordered = [endpoint, *(e for e in endpoints if e != endpoint)]
    return QuorumKVConnection(AsyncClient(ordered, timeout=timeout))
