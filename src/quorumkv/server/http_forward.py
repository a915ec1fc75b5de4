"""Serving from any node: what only the leader can do is sent on to it.

A write, an ``all`` read, a lease keep-alive or time-to-live and a
membership change are refused by a follower with NotLeader, which carries
the leader's client address. The HTTP API answers them anyway: it sends the
same request, at the same consistency level, to the leader over the client
protocol (one pipelined connection per leader address, opened on first use,
closed with the HTTP server) and relays the answer or the error.

Never twice. A request is sent again only after a refusal that proves it
did not happen: NotLeader (leadership moved on; its hint is followed) or a
connection that could not be made. Once a change has been written to the
leader's connection, losing the connection or the answer makes its outcome
unknown: that is reported as Timeout (``outcome: "unknown"``), exactly as
the client library does, never retried behind the caller's back.

With no leader known (an election), the node waits for one up to its
request timeout, then tries again locally or at the new leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from quorumkv.client.connection import Connection
from quorumkv.client.endpoints import parse_endpoint
from quorumkv.client.protocol import Request
from quorumkv.errors import InvalidArgument, NetworkError, NotLeader, QuorumKVError, Timeout
from quorumkv.security.tls import node_client_tls
from quorumkv.server.http_json import json_safe

if TYPE_CHECKING:
    from quorumkv.server.node import Node

MAX_HOPS = 3
"""Leader hints followed for one request (each follows a change of leader)."""
CONNECT_TIMEOUT = 2.0


class Forwarder:
    def __init__(self, node: Node) -> None:
        self._node = node
        self._conns: dict[str, Connection] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def _timeout(self) -> float:
        # Longer than the leader's own worst case (an "all" write waits for the commit,
        # then for every voter, each up to the request timeout), so a slow success is
        # not turned into an unknown outcome here.
        return 2 * self._node.config.request_timeout_s + 1.0

    async def call(self, local: Callable[[], Awaitable[dict[str, Any]]], remote: Request, *,
                   changes: bool, token: str | None = None) -> dict[str, Any]:
        """``local()``'s answer, or ``remote``'s from the leader if this node is not it.

        ``changes``: the request changes the cluster's state, so an answer lost on
        the way back is an unknown outcome. ``token``: the caller's user token, sent
        with ``remote`` so that the leader checks the same user (http_auth.py).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._node.config.request_timeout_s
        try:
            return await local()
        except NotLeader as e:
            refusal = e
        for _ in range(MAX_HOPS):
            address = refusal.details.get("leader_address")
            try:
                if isinstance(address, str) and address:
                    return await self._send(address, remote, changes=changes, token=token)
                if not await self._leader_elected(deadline):
                    break
                return await local()
            except NotLeader as e:
                refusal = e
        raise refusal

    async def _leader_elected(self, deadline: float) -> bool:
        group = self._node.group
        assert group is not None
        loop = asyncio.get_running_loop()
        while not group.raft.leader:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(self._node.config.tick_ms / 1000)
        return True

    async def _send(self, address: str, req: Request, *, changes: bool,
                    token: str | None = None) -> dict[str, Any]:
        conn = await self._connection(address)
        try:
            future = conn.send(req, token=token)
        except NetworkError:
            # Closed before anything was written: the request surely did not happen.
            await self._drop(address, conn)
            conn = await self._connection(address)
            future = conn.send(req, token=token)
        timeout = self._timeout
        try:
            async with asyncio.timeout(timeout):
                await conn.drain()
                return await future
        except TimeoutError:
            future.cancel()
            await self._drop(address, conn)
            raise self._lost(address, changes, f"no answer within {timeout:g}s") from None
        except QuorumKVError as e:
            if e.remote:
                raise _relayable(e) from None
            # Our side: the connection broke or garbled the answer.
            await self._drop(address, conn)
            raise self._lost(address, changes, e.message) from None

    @staticmethod
    def _lost(address: str, changes: bool, why: str) -> Timeout:
        if changes:
            return Timeout(f"the request was sent to the leader ({address}) but its answer "
                           f"was lost ({why}): its outcome is unknown, it may or may not "
                           f"have been applied", outcome="unknown")
        return Timeout(f"the leader ({address}) did not answer: {why}")

    async def _connection(self, address: str) -> Connection:
        async with self._lock:
            if self._closed:
                raise NetworkError("the HTTP server is shutting down")
            conn = self._conns.get(address)
            if conn is None or conn.closed:
                try:
                    endpoint = parse_endpoint(address)
                except InvalidArgument:
                    raise NetworkError(f"the leader's address {address!r} is unusable"
                                       ) from None
                try:
                    conn = await asyncio.wait_for(
                        Connection.open(endpoint, max_frame=self._node.config.max_request_bytes,
                                        tls=node_client_tls(self._node.config)),
                        CONNECT_TIMEOUT)
                except TimeoutError:
                    raise NetworkError(f"the leader ({address}) did not accept a connection "
                                       f"within {CONNECT_TIMEOUT:g}s") from None
                self._conns[address] = conn
            return conn

    async def _drop(self, address: str, conn: Connection) -> None:
        async with self._lock:
            if self._conns.get(address) is conn:
                del self._conns[address]
        with contextlib.suppress(Exception):
            await conn.close()

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.close()


def _relayable(err: QuorumKVError) -> QuorumKVError:
    """The leader's error as ours, its details made JSON-safe for the HTTP answer."""
    err.details = json_safe(err.details)
    return err


_FORWARDERS: weakref.WeakKeyDictionary[Node, Forwarder] = weakref.WeakKeyDictionary()


def forwarder_for(node: Node) -> Forwarder:
    """The node's one forwarder, shared by every route module."""
    fwd = _FORWARDERS.get(node)
    if fwd is None:
        fwd = _FORWARDERS[node] = Forwarder(node)
    return fwd


async def close_forwarder(node: Node) -> None:
    fwd = _FORWARDERS.pop(node, None)
    if fwd is not None:
        await fwd.close()
