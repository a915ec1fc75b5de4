"""What every etcd service's handlers share: errors answered as etcd's, timing, writes.

A service module (kv_service.py, and the Watch, Lease, Cluster, Maintenance
and Auth ones to come) is a class derived from :class:`EtcdService` whose
methods carry etcd's RPC names; :func:`unary` wraps each unary one, so that
whatever it raises reaches the client as etcd's status (errors.py) and the
call is timed into the node's metrics like a request on the other ports.

:func:`submit_write` runs a write exactly as the HTTP API does (http_kv.py
``submit_write``): the command's checks, the caller's permission, then the
node's ``write`` here if this member leads, or sent on to the leader over the
client protocol (http_forward.py) with the caller's token, so that a follower
answers writes as etcd's followers do. It is sent at most once: an answer lost
on the way back is an unknown outcome ("request timed out"), never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from quorumkv.client.protocol import WriteRequest
from quorumkv.etcd.errors import RpcError, status_of
from quorumkv.etcd.identity import Caller, check_write
from quorumkv.kv.commands import Write
from quorumkv.kv.validation import validate
from quorumkv.server.http_forward import forwarder_for
from quorumkv.server.metrics import READ, WRITE

if TYPE_CHECKING:
    from quorumkv.server.node import Node

__all__ = ["READ", "WRITE", "EtcdService", "submit_write", "unary"]

S = TypeVar("S", bound="EtcdService")


class EtcdService:
    """Base of the etcd service classes: the node they answer for, and their timing."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def register(self, server: Any) -> None:
        """Add the handlers to a grpc.aio server (the generated ``add_*Servicer_to_server``)."""
        raise NotImplementedError

    def observe(self, kind: str | None, started: float, error: RpcError | None) -> None:
        seconds = time.perf_counter() - started
        metrics = self.node.metrics
        if error is not None:
            metrics.count_error("etcd", error.code.name.lower())
        if kind is not None:
            metrics.requests.observe(kind, seconds, error is not None)


def unary(kind: str | None) -> Callable[[Callable[[S, Any, Any], Awaitable[Any]]],
                                        Callable[[S, Any, Any], Awaitable[Any]]]:
    """Wrap a unary handler ``(self, request, context) -> response``. ``kind``: READ or
    WRITE for a key-value request (it feeds the per-second series), else None."""

    def wrap(method: Callable[[S, Any, Any], Awaitable[Any]]
             ) -> Callable[[S, Any, Any], Awaitable[Any]]:
        @functools.wraps(method)
        async def handler(self: S, request: Any, context: Any) -> Any:
            started = time.perf_counter()
            try:
                answer = await method(self, request, context)
            except grpc.aio.AbortError:
                raise  # the handler chose its status itself
            except Exception as e:  # every error becomes a status; status_of logs bugs
                error = status_of(e)
            else:
                self.observe(kind, started, None)
                return answer
            self.observe(kind, started, error)
            await context.abort(error.code, error.message)

        return handler

    return wrap


async def submit_write(node: Node, caller: Caller, cmd: Write) -> dict[str, Any]:
    """Run ``cmd`` as ``caller`` on the leader (here or sent on); its result map."""
    validate(cmd, node.limits)
    check_write(node, caller, cmd)
    result = await forwarder_for(node).call(
        lambda: node.write(cmd, consistency="quorum", client_id=0, seq=0, user=caller.user),
        WriteRequest(cmd=cmd, consistency="quorum", client_id=0, seq=0),
        changes=True, token=caller.token)
    await applied_here(node, result)
    return result


async def applied_here(node: Node, result: dict[str, Any]) -> None:
    """Wait, up to the request timeout, until this member has applied what the leader had
    when it answered ``result``. etcd's member answers a change once it applied it
    itself, so a serializable read on the same member sees the caller's own write; a
    follower that sent the change on does the same. At once on the leader."""
    header = result.get("header")
    index = header.get("applied_index") if isinstance(header, dict) else None
    if not isinstance(index, int) or node.group is None:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(node.config.request_timeout_s):
            await node.group.wait_applied(index)


def streaming(method: Callable[[S, Any, Any], Awaitable[None]]
              ) -> Callable[[S, Any, Any], Awaitable[None]]:
    """Wrap a streaming handler ``(self, request_iterator, context) -> None`` that writes
    its answers itself (``context.write``): whatever it raises ends the stream with etcd's
    status, counted as an error like a unary call's. A stream's length says nothing about
    the node's speed, so it is not timed into the per-second series."""

    @functools.wraps(method)
    async def handler(self: S, request_iterator: Any, context: Any) -> None:
        started = time.perf_counter()
        try:
            await method(self, request_iterator, context)
        except grpc.aio.AbortError:
            raise
        except Exception as e:  # as in unary: every error becomes a status
            error = status_of(e)
        else:
            return
        self.observe(None, started, error)
        await context.abort(error.code, error.message)

    return handler
