"""Send a request to the cluster and get its answer: one connection, failover, retries.

The caller keeps one connection, to one node, shared by every request in
flight. A request that meets a retryable failure is sent again until the
client's timeout runs out:

* ``NotLeader`` with a ``leader_address`` hint: reconnect to that node and
  retry at once; without a hint: move to the next endpoint.
* a connection that cannot be made, breaks or is refused by the hello check:
  move to the next endpoint.
* any other UnavailableError from the node (proposal dropped, leadership
  transfer, a node-side timeout): retry on the same node after a backoff.
* no answer at all before the call's timeout: the call fails, and the
  connection is dropped so the next call starts on another node.

Moves to another node are tried at once while there are untried nodes (a
quick failover pass), then with exponential backoff, so a cluster in the
middle of an election is not hammered.

Writes are safe to resend because the request object, and so its
``(client_id, seq)``, is the same on every attempt: the node answers a
duplicate from the first attempt's result (thesis §6.3). Whether a write was
ever handed to a socket, and how each attempt ended, decide what running out
of time means: never sent, or only ever refused by a node (NotLeader,
ProposalDropped), it surely did not happen (NetworkError, UnavailableError);
otherwise its outcome is unknown (Timeout). Any request that never reached a node
fails with NetworkError.
"""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

from quorumkv.client.connection import Connection
from quorumkv.client.endpoints import Backoff, Endpoint, Endpoints, format_endpoint, parse_endpoint
from quorumkv.client.fields import brief
from quorumkv.client.protocol import PROTOCOL_VERSION, HelloRequest, Request, WriteRequest
from quorumkv.errors import (
    InvalidArgument,
    NetworkError,
    NotLeader,
    ProposalDropped,
    Timeout,
    UnavailableError,
)

CONNECT_TIMEOUT = 2.0
"""Seconds for a node to accept a connection and answer hello before the next is tried."""


class RetryingCaller:
    __slots__ = ("_backoff", "_closed", "_cluster_id", "_conn", "_endpoints", "_lock",
                 "_max_frame", "_timeout", "server_info")

    def __init__(self, endpoints: Endpoints, *, timeout: float, cluster_id: object,
                 max_frame: int, backoff: Backoff) -> None:
        self._endpoints = endpoints
        self._timeout = timeout
        self._cluster_id = cluster_id
        self._max_frame = max_frame
        self._backoff = backoff
        self._conn: Connection | None = None
        # Serialises connecting, so a burst of pipelined requests opens one
        # connection rather than one each. (A Lock binds to a loop on first use.)
        self._lock = asyncio.Lock()
        self._closed = False
        self.server_info: dict[str, Any] | None = None
        """What the connected node said in its hello (name, id, cluster id, protocol)."""

    async def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def call(self, req: Request) -> dict[str, Any]:
        """The result map of ``req``, retried within the timeout; raises the node's error."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        sent = maybe_applied = False
        failures = 0
        quick_moves = len(self._endpoints)
        last: UnavailableError | None = None
        while not self._closed and loop.time() < deadline:
            conn: Connection | None = None
            attempt_sent = False
            try:
                async with asyncio.timeout_at(deadline):
                    conn = await self._connection()
                    future = conn.send(req)
                    sent = attempt_sent = True
                    await conn.drain()
                    return await future
            except TimeoutError:
                maybe_applied |= attempt_sent
                if conn is not None:
                    # A node that answers nothing in a whole timeout (frozen, cut off)
                    # must not hold the next calls too: they start on another node.
                    await self._drop(conn, None)
                break
            except UnavailableError as err:
                last = err
                # Only a node's own refusal proves this attempt never entered the log.
                refused = err.remote and isinstance(err, (NotLeader, ProposalDropped))
                maybe_applied |= attempt_sent and not refused
                moved = await self._after_failure(conn, err)
            failures += 1
            if moved and quick_moves > 0:
                quick_moves -= 1
                continue
            await asyncio.sleep(max(0.0, min(self._backoff.delay(failures),
                                             deadline - loop.time())))
        self._give_up(req, sent=sent, maybe_applied=maybe_applied, last=last)

    async def stream_connection(self) -> Connection:
        """A live connection for a stream (a watch), trying the endpoints in turn with
        backoff for as long as it takes: a watch outlives any one node."""
        failures = 0
        while True:
            if self._closed:
                raise NetworkError("the client is closed")
            try:
                return await self._connection()
            except NetworkError:
                failures += 1
                await asyncio.sleep(self._backoff.delay(failures))

    async def drop_connection(self, conn: Connection) -> None:
        """The stream on ``conn`` broke: the next call moves to another endpoint."""
        await self._drop(conn, None)

    async def _after_failure(self, conn: Connection | None, err: UnavailableError) -> bool:
        """Move to another node if ``err`` argues for it; whether the client moved."""
        if isinstance(err, NotLeader):
            if conn is not None:
                hint = _leader_hint(err)
                # No hint, or one naming this very node: another node may know better.
                await self._drop(conn, None if hint == conn.endpoint else hint)
            return True
        if err.remote:
            return False  # the node's own "unavailable" says nothing against the node
        if conn is not None:  # (a failed connect has already moved on)
            await self._drop(conn, None)
        return True

    def _give_up(self, req: Request, *, sent: bool, maybe_applied: bool,
                 last: UnavailableError | None) -> NoReturn:
        if self._closed:
            raise NetworkError("the client is closed")
        why = f" (last error: {last.message})" if last is not None else ""
        within = f"within {self._timeout:g}s"
        if not sent:
            raise NetworkError(f"could not reach the cluster {within}; the request was never "
                               f"sent{why}")
        if not isinstance(req, WriteRequest):
            raise Timeout(f"no answer {within}{why}")
        if maybe_applied:
            raise Timeout(f"write not confirmed {within}; its outcome is unknown: it may or "
                          f"may not have been applied{why}", outcome="unknown")
        raise UnavailableError(f"no node accepted the write {within}; it was not "
                               f"applied{why}")

    async def _drop(self, conn: Connection, go_to: Endpoint | None) -> None:
        """Stop using ``conn``: go to ``go_to`` or else the next endpoint.

        Only the first request to report a given connection moves the client;
        the others see it already replaced and just retry.
        """
        if self._conn is conn:
            self._conn = None
            if go_to is None:
                self._endpoints.rotate_from(conn.endpoint)
            else:
                self._endpoints.prefer(go_to)
        await conn.close()

    async def _connection(self) -> Connection:
        async with self._lock:
            conn = self._conn
            if conn is not None and not conn.closed:
                return conn
            if conn is not None:
                self._conn = None
                await conn.close()
            endpoint = self._endpoints.current
            try:
                try:
                    # A frozen node still completes TCP handshakes (the kernel does):
                    # only an answer to hello shows someone is there.
                    async with asyncio.timeout(CONNECT_TIMEOUT):
                        conn = await Connection.open(endpoint, max_frame=self._max_frame)
                        try:
                            await self._hello(conn)
                        except BaseException:
                            await conn.close()
                            raise
                except TimeoutError:
                    raise NetworkError(f"{format_endpoint(endpoint)} did not answer within "
                                       f"{CONNECT_TIMEOUT:g}s") from None
            except NetworkError:
                self._endpoints.rotate_from(endpoint)
                raise
            if self._closed:
                await conn.close()
                raise NetworkError("the client is closed")
            self._conn = conn
            return conn

    async def _hello(self, conn: Connection) -> None:
        """Check the node speaks our protocol and belongs to the expected cluster."""
        name = format_endpoint(conn.endpoint)
        try:
            info = await conn.request(HelloRequest())
        except NetworkError:
            raise
        except Exception as err:
            raise NetworkError(f"{name} did not answer hello: {err}") from None
        version = info.get("protocol")
        if version != PROTOCOL_VERSION:
            raise NetworkError(f"{name} speaks client protocol {brief(version)}; this client "
                               f"speaks {PROTOCOL_VERSION}")
        if self._cluster_id is not None and info.get("cluster_id") != self._cluster_id:
            raise NetworkError(f"{name} belongs to cluster {brief(info.get('cluster_id'))}, "
                               f"not {brief(self._cluster_id)}")
        self.server_info = info


def _leader_hint(err: NotLeader) -> Endpoint | None:
    address = err.details.get("leader_address")
    if not isinstance(address, str):
        return None
    try:
        return parse_endpoint(address)
    except InvalidArgument:
        return None  # a garbled hint is no hint

