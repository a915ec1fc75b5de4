"""Calls from one member to the others' client ports, for the ``all`` consistency levels.

An ``all`` write must be applied on every voter and an ``all`` read answered
by every voter; the leader asks each one over its client port (the same
protocol clients speak), one pipelined connection per member, opened on
first use and reopened after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from quorumkv.client.auth_wire import AuthTokenRequest
from quorumkv.client.connection import Connection
from quorumkv.client.endpoints import parse_endpoint
from quorumkv.client.protocol import ReadRequest, Request, WaitAppliedRequest
from quorumkv.errors import NetworkError, QuorumKVError, Timeout
from quorumkv.kv import RangeRequest
from quorumkv.security.tls import TLSSettings


class ReplicaClients:
    def __init__(self, *, max_frame: int, tls: TLSSettings | None = None,
                 cluster_token: str = "") -> None:
        """``tls``: how to reach members whose client ports speak TLS (node_client_tls).
        ``cluster_token`` signs each connection in as a member (server/client_auth.py), for
        clusters with auth enabled."""
        self._cluster_token = cluster_token
        self._max_frame = max_frame
        self._tls = tls
        self._conns: dict[str, Connection] = {}
        self._lock = asyncio.Lock()

    async def _connection(self, address: str) -> Connection:
        async with self._lock:
            conn = self._conns.get(address)
            if conn is None or conn.closed:
                conn = await Connection.open(parse_endpoint(address), max_frame=self._max_frame,
                                             tls=self._tls)
                if self._cluster_token:
                    try:
                        await conn.request(AuthTokenRequest(token=self._cluster_token))
                    except BaseException:
                        await conn.close()
                        raise
                self._conns[address] = conn
            return conn

    async def _call(self, address: str, req: Request, timeout: float) -> dict[str, Any]:
        try:
            conn = await asyncio.wait_for(self._connection(address), timeout)
            return await asyncio.wait_for(conn.request(req), timeout)
        except TimeoutError:
            raise Timeout(f"{address} did not answer within {timeout:g}s") from None

    async def on_each(self, addresses: dict[str, str | None], req: Request,
                      timeout: float) -> dict[str, dict[str, Any] | QuorumKVError]:
        """Send ``req`` to every member at once; each one's answer or error, by name."""

        async def one(name: str, address: str | None) -> dict[str, Any] | QuorumKVError:
            if address is None:
                return NetworkError(f"no client address is known for member {name}")
            try:
                return await self._call(address, req, timeout)
            except QuorumKVError as e:
                return e

        names = sorted(addresses)
        results = await asyncio.gather(*(one(n, addresses[n]) for n in names))
        return dict(zip(names, results, strict=True))

    async def wait_applied(self, addresses: dict[str, str | None], index: int,
                           timeout: float) -> dict[str, dict[str, Any] | QuorumKVError]:
        return await self.on_each(addresses, WaitAppliedRequest(index=index), timeout)

    async def read(self, addresses: dict[str, str | None], req: RangeRequest, index: int,
                   timeout: float) -> dict[str, dict[str, Any] | QuorumKVError]:
        return await self.on_each(
            addresses, ReadRequest(range=req, consistency="one", min_index=index), timeout)

    async def close(self) -> None:
        conns, self._conns = self._conns, {}
        for conn in conns.values():
            with contextlib.suppress(Exception):
                await conn.close()
