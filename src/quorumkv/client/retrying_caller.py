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

from quorumkv.client.auth_session import SignIn
from quorumkv.client.connection import Connection
from quorumkv.client.endpoints import Backoff, Endpoint, Endpoints, format_endpoint, parse_endpoint
from quorumkv.client.fields import brief
from quorumkv.client.protocol import PROTOCOL_VERSION, HelloRequest, Request, WriteRequest
from quorumkv.errors import (
    InvalidArgument,
    InvalidToken,
    NetworkError,
    NotLeader,
    ProposalDropped,
    Timeout,
    Unauthenticated,
    UnavailableError,
)
from quorumkv.security.tls import TLSSettings

CONNECT_TIMEOUT = 2.0
"""Seconds for a node to accept a connection and answer hello before the next is tried."""


class RetryingCaller:
    __slots__ = ("_backoff", "_closed", "_cluster_id", "_conn", "_conn_token", "_deadlines",
                 "_endpoints", "_lock", "_max_frame", "_sign_in", "_timeout", "_tls",
                 "server_info")

    def __init__(self, endpoints: Endpoints, *, timeout: float, cluster_id: object,
                 max_frame: int, backoff: Backoff, tls: TLSSettings | None = None,
                 sign_in: SignIn | None = None) -> None:
        self._endpoints = endpoints
        self._tls = tls
        self._sign_in = sign_in
        """Who every connection signs in as before its first request (auth_session.py)."""
        self._conn_token: str | None = None
        """The token ``_conn`` is signed in with (None: none, auth being off)."""
        self._timeout = timeout
        self._cluster_id = cluster_id
        self._max_frame = max_frame
        self._backoff = backoff
        self._conn: Connection | None = None
        # Serialises connecting, so a burst of pipelined requests opens one
        # connection rather than one each. (A Lock binds to a loop on first use.)
        self._lock = asyncio.Lock()
        self._closed = False
        self._deadlines = Deadlines()
        self.server_info: dict[str, Any] | None = None
        """What the connected node said in its hello (name, id, cluster id, protocol)."""

    async def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def call(self, req: Request, *, at_most_once: bool = False) -> dict[str, Any]:
        """The result map of ``req``, retried within the timeout; raises the node's error.

        ``at_most_once``: a change that carries no sequence number (a user or role
        change), so a node cannot tell a resend from a second request: it is resent
        only after a node refused it (NotLeader, ProposalDropped, a token refused), and
        an attempt that may have run ends the call with Timeout (outcome unknown).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        sent = maybe_applied = False
        failures = 0
        quick_moves = len(self._endpoints)
        last: UnavailableError | None = None
        signed_in_again = False
        stale: tuple[Connection, str | None] | None = None
        while not self._closed and loop.time() < deadline:
            conn: Connection | None = None
            attempt_sent = False
            token: str | None = None
            try:
                conn = self._ready_connection() if stale is None else None
                if conn is not None:
                    # The common case, without the lock, the timeout context and drain()
                    # when none of them would do anything (see _ready_connection).
                    token = self._conn_token
                    future = conn.send(req)
                    sent = attempt_sent = True
                    if not conn.needs_drain():
                        # Only the future is awaited: failing it at the deadline ends the
                        # wait as timeout_at would (TimeoutError, below), for less.
                        self._deadlines.add(loop, future, deadline)
                        try:
                            return await future
                        finally:
                            self._deadlines.discard(future)
                    async with asyncio.timeout_at(deadline):
                        await conn.drain()
                        return await future
                async with asyncio.timeout_at(deadline):
                    conn = await self._connection()
                    if stale is not None:
                        await self._sign_in_again(*stale)
                        stale = None
                    token = self._conn_token
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
            except (InvalidToken, Unauthenticated) as err:
                # The node refused it before running it (the token expired or was revoked,
                # or auth was enabled since the connection opened): sign the connection in
                # again with the password, and send it once more.
                if self._sign_in is None or signed_in_again or conn is None or not err.remote:
                    raise
                signed_in_again = True
                stale = (conn, token)
                continue
            except UnavailableError as err:
                last = err
                # Only a node's own refusal proves this attempt never entered the log.
                refused = err.remote and isinstance(err, (NotLeader, ProposalDropped))
                maybe_applied |= attempt_sent and not refused
                moved = await self._after_failure(conn, err)
                if at_most_once and maybe_applied:
                    break  # it may have run: not resent (see the docstring)
            failures += 1
            if moved and quick_moves > 0:
                quick_moves -= 1
                continue
            await asyncio.sleep(max(0.0, min(self._backoff.delay(failures),
                                             deadline - loop.time())))
        self._give_up(req, sent=sent, maybe_applied=maybe_applied, last=last,
                      at_most_once=at_most_once)

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
                 last: UnavailableError | None, at_most_once: bool = False) -> NoReturn:
        if self._closed:
            raise NetworkError("the client is closed")
        why = f" (last error: {last.message})" if last is not None else ""
        within = f"within {self._timeout:g}s"
        if not sent:
            raise NetworkError(f"could not reach the cluster {within}; the request was never "
                               f"sent{why}")
        if not isinstance(req, WriteRequest) and not at_most_once:
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

    def _ready_connection(self) -> Connection | None:
        """The open connection if :meth:`_connection` would hand it over at once, with
        nothing to wait for (the lock free) and no token to renew; else None."""
        conn = self._conn
        if conn is None or conn.closed or self._lock.locked():
            return None
        if self._sign_in is not None and self._conn_token is not None \
                and not self._sign_in.lasts(self._conn_token):
            return None
        return conn

    async def _connection(self) -> Connection:
        async with self._lock:
            conn = self._conn
            if conn is not None and not conn.closed:
                if self._sign_in is not None and self._conn_token is not None \
                        and not self._sign_in.lasts(self._conn_token):
                    # Its token is running out: sign in again now, before a stream (a watch,
                    # a backup) that takes the connection as it is gets refused.
                    self._conn_token = await self._signed_in(conn, renew=True)
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
                        conn = await Connection.open(endpoint, max_frame=self._max_frame,
                                                     tls=self._tls)
                        try:
                            await self._hello(conn)
                        except BaseException:
                            await conn.close()
                            raise
                except TimeoutError:
                    raise NetworkError(f"{format_endpoint(endpoint)} did not answer within "
                                       f"{CONNECT_TIMEOUT:g}s") from None
                # Outside CONNECT_TIMEOUT: a password check costs the node a deliberately
                # slow hash, and a read barrier, which a busy node may take a while for.
                token = await self._signed_in(conn, renew=False)
            except NetworkError:
                self._endpoints.rotate_from(endpoint)
                raise
            if self._closed:
                await conn.close()
                raise NetworkError("the client is closed")
            self._conn = conn
            self._conn_token = token
            return conn

    async def _signed_in(self, conn: Connection, *, renew: bool) -> str | None:
        """Sign ``conn`` in (``renew``: with the password); its token. The connection is
        closed if that fails: it must never serve requests as nobody by accident."""
        if self._sign_in is None:
            return None
        try:
            try:
                async with asyncio.timeout(max(self._timeout, CONNECT_TIMEOUT)):
                    if renew:
                        return await self._sign_in.authenticate(conn)
                    return await self._sign_in.sign_in(conn)
            except TimeoutError:
                raise NetworkError(f"{format_endpoint(conn.endpoint)} did not answer the "
                                   f"sign-in within {max(self._timeout, CONNECT_TIMEOUT):g}s"
                                   ) from None
        except BaseException:
            if self._conn is conn:
                self._conn = None
                self._conn_token = None
            await conn.close()
            raise

    async def _sign_in_again(self, conn: Connection, refused: str | None) -> None:
        """A request on ``conn``, signed in with the token ``refused``, was refused for its
        token: sign ``conn`` in again with the password, once however many were refused."""
        async with self._lock:
            if self._conn is not conn or conn.closed:
                return  # replaced: the new connection signed in as it opened
            if self._conn_token != refused:
                return  # another refused request has signed it in again already
            self._conn_token = await self._signed_in(conn, renew=True)

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


class Deadlines:
    """Fails each future it is given with TimeoutError at the future's deadline, all of them
    with one timer.

    A timeout context per request costs a timer handle, pushed on the loop's heap and
    later purged from it; here a request costs a dict entry. The timer is kept at or
    before the earliest deadline, so each future fails when the loop would have run a
    timer for its deadline.
    """

    __slots__ = ("_at", "_loop", "_timer", "_waits")

    def __init__(self) -> None:
        self._waits: dict[asyncio.Future[Any], float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._at = 0.0
        """When ``_timer`` fires."""
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any],
            deadline: float) -> None:
        """Fail ``future`` at ``deadline`` (loop time) unless it is discarded or done first."""
        self._waits[future] = deadline
        # A retry keeps its call's deadline, which may come before a newer call's; and a
        # client may be used from another loop once the first is gone.
        if self._timer is None or deadline < self._at or loop is not self._loop:
            self._arm(loop, deadline)

    def discard(self, future: asyncio.Future[Any]) -> None:
        """Stop watching ``future`` (its waiter has its answer, or gave up)."""
        del self._waits[future]

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._fire)
        self._at = when
        self._loop = loop

    def _fire(self) -> None:
        loop = self._loop
        assert loop is not None
        self._timer = None
        # The loop ran this timer, so its time has come even if the clock reads a hair
        # before it (the loop runs timers within its clock resolution).
        now = max(loop.time(), self._at)
        nearest: float | None = None
        for future, deadline in self._waits.items():
            if future.done():
                continue  # answered; its waiter discards it when it runs
            if deadline <= now:
                future.set_exception(TimeoutError())
                # Retrieved: should the waiter be cancelled before it runs, asyncio must
                # not log the exception as never retrieved.
                future.exception()
            elif nearest is None or deadline < nearest:
                nearest = deadline
        if nearest is not None:
            self._arm(loop, nearest)


def _leader_hint(err: NotLeader) -> Endpoint | None:
    address = err.details.get("leader_address")
    if not isinstance(address, str):
        return None
    try:
        return parse_endpoint(address)
    except InvalidArgument:
        return None  # a garbled hint is no hint

