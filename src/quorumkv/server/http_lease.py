"""The lease routes of the HTTP API: grant, revoke, keep-alive, time-to-live, list.

Grant and revoke are writes through the log (``LeaseGrant`` / ``LeaseRevoke``);
keep-alive and time-to-live are answered by the leader, which alone keeps the
deadlines (server/leases.py); the list is read from this node's store. A
follower sends what only the leader can answer on to it.

An HTTP keep-alive is one renewal: a client keeps a lease alive by calling it
well within the TTL (every TTL/3, as etcd's clients do).

Lease ids are 64-bit: answers write them as strings of digits, and requests
may give them as integers or as such strings (http_json.py).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from aiohttp import web

from quorumkv.client.coordination_wire import LeaseKeepAliveRequest, LeaseTimeToLiveRequest
from quorumkv.kv.commands import MAX_LEASE_TTL, LeaseGrant, LeaseRevoke
from quorumkv.server.http_auth import check_signed_in
from quorumkv.server.http_forward import forwarder_for
from quorumkv.server.http_json import (
    BodyFields,
    QueryFields,
    json_response,
    key_json,
    lease_json,
    read_body,
    read_encoding,
)
from quorumkv.server.http_kv import submit_write

if TYPE_CHECKING:
    from quorumkv.server.node import Node

_WRITE_LEVELS = ("quorum", "all")
"""A grant or revoke is answered with its outcome, which "one" does not wait for."""


def _lease_id(f: BodyFields) -> int:
    return f.identifier("id", low=1)


async def _grant(request: web.Request, node: Node) -> web.Response:
    f = await read_body(request)
    ttl = f.integer("ttl", low=1, high=MAX_LEASE_TTL)
    # Answers write ids as text; 53 bits keep even a client that turns this one into a
    # JavaScript number exact.
    lease_id = f.identifier("id", 0) or secrets.randbits(53) or 1
    result = await submit_write(request, node, LeaseGrant(id=lease_id, ttl=ttl), f,
                                levels=_WRITE_LEVELS)
    return json_response(lease_json(result))


async def _revoke(request: web.Request, node: Node) -> web.Response:
    f = await read_body(request)
    result = await submit_write(request, node, LeaseRevoke(id=_lease_id(f)), f,
                                levels=_WRITE_LEVELS)
    return json_response(result)


async def _keepalive(request: web.Request, node: Node) -> web.Response:
    f = await read_body(request)
    lease_id = _lease_id(f)
    f.finish()
    caller = check_signed_in(request, node)
    result = await forwarder_for(node).call(
        lambda: node.lease_keepalive(lease_id), LeaseKeepAliveRequest(id=lease_id),
        changes=False, token=caller.token)
    return json_response(lease_json(result))


async def _time_to_live(request: web.Request, node: Node) -> web.Response:
    f = await read_body(request)
    lease_id = _lease_id(f)
    keys = f.boolean("keys")
    encoding = read_encoding(f)
    f.finish()
    caller = check_signed_in(request, node)
    result: dict[str, Any] = await forwarder_for(node).call(
        lambda: node.lease_ttl(lease_id, keys=keys),
        LeaseTimeToLiveRequest(id=lease_id, keys=keys), changes=False, token=caller.token)
    attached = result.get("keys")
    out = {**result, "keys": None if attached is None else [key_json(k, encoding)
                                                             for k in attached]}
    return json_response(lease_json(out))


async def _list(request: web.Request, node: Node) -> web.Response:
    QueryFields(request).finish()
    check_signed_in(request, node)
    return json_response(lease_json(await node.lease_list()))


def routes(node: Node) -> list[web.RouteDef]:
    async def grant(request: web.Request) -> web.Response:
        return await _grant(request, node)

    async def revoke(request: web.Request) -> web.Response:
        return await _revoke(request, node)

    async def keepalive(request: web.Request) -> web.Response:
        return await _keepalive(request, node)

    async def time_to_live(request: web.Request) -> web.Response:
        return await _time_to_live(request, node)

    async def leases(request: web.Request) -> web.Response:
        return await _list(request, node)

    return [web.post("/v1/lease/grant", grant), web.post("/v1/lease/revoke", revoke),
            web.post("/v1/lease/keepalive", keepalive),
            web.post("/v1/lease/timetolive", time_to_live),
            web.get("/v1/lease/list", leases, allow_head=False)]
