"""The cluster routes of the HTTP API: status, members, and membership changes.

Status and the member list are this node's own view, answered at once
(the status asks the leader for its view of the members, bounded to about
two seconds by ``Node.status``, so it answers even without a leader or a
majority). Membership changes need the cluster token, in an
``Authorization: Bearer TOKEN`` header, an ``X-Cluster-Token`` header or a
``token`` field; the leader checks it, and it is never logged or echoed. A
follower sends them on to the leader. As on the client port, the cluster
token is the credential for membership changes whether or not auth is
enabled: it is root's equal (docs/security.md), and a joining or leaving node
holds nothing else. With a user token in ``Authorization``, send the cluster
token in ``X-Cluster-Token``.

Member and cluster ids are written as strings of digits (http_json.py): as
JSON numbers, JavaScript would round them. Names, not ids, identify members
in requests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from quorumkv.client.protocol import (
    MAX_ADDRESS_LENGTH,
    MAX_NAME_LENGTH,
    MAX_TOKEN_LENGTH,
    MemberAddRequest,
    MemberPromoteRequest,
    MemberRemoveRequest,
    MoveLeaderRequest,
)
from quorumkv.errors import InvalidArgument
from quorumkv.security import tokens
from quorumkv.server.http_auth import CLUSTER_TOKEN_HEADER, bearer
from quorumkv.server.http_forward import forwarder_for
from quorumkv.server.http_json import (
    BodyFields,
    QueryFields,
    check_text,
    cluster_json,
    json_response,
    json_safe,
    read_body,
)
from quorumkv.server.member_status import member_statuses

if TYPE_CHECKING:
    from quorumkv.server.node import Node


def _bounded(f: BodyFields, name: str, limit: int, *, required: bool = True) -> str | None:
    value = f.optional_string(name, nullable=not required)
    if value is None and required:
        raise f.fail(f"missing field {name!r}")
    if value is not None and len(value) > limit:
        raise f.fail(f"{name!r} must be at most {limit} characters, not {len(value)}")
    return value


def _name(f: BodyFields) -> str:
    value = _bounded(f, "name", MAX_NAME_LENGTH)
    assert value is not None
    return value


def _token(request: web.Request, f: BodyFields) -> str:
    """The cluster token from a header or the body. Messages give lengths only: a
    token is never echoed."""
    in_body = f.optional_string("token")
    given: list[str] = []
    value = bearer(request)
    if value is not None and not tokens.looks_like_token(value):  # not a user's token
        given.append(value)
    extra = request.headers.get(CLUSTER_TOKEN_HEADER)
    if extra is not None:
        given.append(check_text(extra.strip(), CLUSTER_TOKEN_HEADER))
    if in_body is not None:
        given.append(in_body)
    if len(set(given)) > 1:
        raise InvalidArgument("two different cluster tokens were given (headers and body)")
    token = given[0] if given else ""
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidArgument(f"the token must be at most {MAX_TOKEN_LENGTH} characters, "
                              f"not {len(token)}")
    return token


async def _status(request: web.Request, node: Node) -> web.Response:
    f = QueryFields(request)
    local = f.boolean("local")
    f.finish()
    return json_response(cluster_json(json_safe(await node.status(local=local))))


async def _members(request: web.Request, node: Node) -> web.Response:
    QueryFields(request).finish()
    assert node.group is not None
    st = node.group.status()
    listing = node.membership.list()
    body = {**listing, "members": member_statuses(node),
            "node": {"name": node.config.name, "role": st.role, "term": st.term,
                     "commit": st.commit, "applied": st.applied,
                     "last_index": st.last_index}}
    return json_response(cluster_json(json_safe(body)))


async def _add(request: web.Request, node: Node) -> web.Response:
    f = await read_body(request)
    token = _token(request, f)
    name = _name(f)
    peer = _bounded(f, "peer_address", MAX_ADDRESS_LENGTH)
    assert peer is not None
    client = _bounded(f, "client_address", MAX_ADDRESS_LENGTH, required=False)
    learner = f.boolean("learner")
    f.finish()
    result = await forwarder_for(node).call(
        lambda: node.membership.add(name, peer, client, learner=learner, token=token),
        MemberAddRequest(name=name, peer_address=peer, client_address=client, learner=learner,
                         token=token), changes=True)
    return json_response(cluster_json(json_safe(result)))


async def _named_change(request: web.Request, node: Node, kind: str) -> web.Response:
    f = await read_body(request)
    token = _token(request, f)
    name = _name(f)
    f.finish()
    membership = node.membership
    result: dict[str, Any]
    fwd = forwarder_for(node)
    if kind == "remove":
        result = await fwd.call(lambda: membership.remove(name, token=token),
                                MemberRemoveRequest(name=name, token=token), changes=True)
    elif kind == "promote":
        result = await fwd.call(lambda: membership.promote(name, token=token),
                                MemberPromoteRequest(name=name, token=token), changes=True)
    else:
        result = await fwd.call(lambda: membership.move_leader(name, token=token),
                                MoveLeaderRequest(name=name, token=token), changes=True)
    return json_response(cluster_json(json_safe(result)))


def routes(node: Node) -> list[web.RouteDef]:
    async def status(request: web.Request) -> web.Response:
        return await _status(request, node)

    async def members(request: web.Request) -> web.Response:
        return await _members(request, node)

    async def add(request: web.Request) -> web.Response:
        return await _add(request, node)

    async def remove(request: web.Request) -> web.Response:
        return await _named_change(request, node, "remove")

    async def promote(request: web.Request) -> web.Response:
        return await _named_change(request, node, "promote")

    async def move_leader(request: web.Request) -> web.Response:
        return await _named_change(request, node, "move_leader")

    return [web.get("/v1/cluster/status", status, allow_head=False),
            web.get("/v1/cluster/members", members, allow_head=False),
            web.post("/v1/cluster/members/add", add),
            web.post("/v1/cluster/members/remove", remove),
            web.post("/v1/cluster/members/promote", promote),
            web.post("/v1/cluster/move-leader", move_leader)]
