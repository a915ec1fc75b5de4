"""Authentication on the HTTP port: who a request is from, what it may do, and ``/v1/auth/``.

Who. ``Authorization: Bearer <token>`` with a token from ``/v1/auth/authenticate``
(it starts with ``qkv1.``) names the user. Any other Bearer value is the
cluster token, which only the membership routes read (http_cluster.py); they
also take it as ``X-Cluster-Token``, so one request can carry both. With
``client_cert_auth`` and no token, the client certificate's common name is
the user. The identity is resolved once per request, and only while auth is
enabled: with auth disabled nothing here reads a token, and every route
behaves exactly as it did before auth existed.

What. Each route asks the same question the client port asks for the same
operation (server/client_auth.py ``ClientAuth.authorize``), through the
``check_*`` helpers below, before it acts. What a follower sends on to the
leader carries the user's token as the request's own token, so the leader
checks the same user again (and the state machine once more when a write
applies).

The ``/v1/auth/`` routes are the client protocol's "authenticate" and "auth"
actions (client/auth_wire.py) as JSON; docs/http-api.md describes them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from quorumkv.client.auth_wire import (
    MAX_AUTH_TOKEN_LENGTH,
    MAX_PASSWORD_LENGTH,
    MAX_USER_LENGTH,
    PERM_TYPES,
    AuthRequest,
)
from quorumkv.errors import InvalidArgument
from quorumkv.kv.commands import Write
from quorumkv.kv.keys import LMDB_MAX_KEY
from quorumkv.security import tokens
from quorumkv.security.tls import request_cert_user
from quorumkv.server.http_forward import forwarder_for
from quorumkv.server.http_json import (
    BodyFields,
    Fields,
    QueryFields,
    check_text,
    json_response,
    json_safe,
    key_json,
    read_body,
    read_encoding,
    read_key_range,
)

if TYPE_CHECKING:
    from quorumkv.server.node import Node

CLUSTER_TOKEN_HEADER: Final = "X-Cluster-Token"
MAX_NAME_BYTES: Final = LMDB_MAX_KEY - len("auth/user/")
"""A user or role name is part of a key in the store's meta database (kv/auth.py), which
takes at most LMDB_MAX_KEY bytes: a longer name could not be applied on any replica."""
FORWARD_TOKEN_S: Final = 60.0
"""Lifetime of the token made for a certificate user's request sent on to the leader."""

_CALLER: Final = web.RequestKey("quorumkv_caller", object)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request acts as: ``user`` (None: nobody, or auth is disabled) and the token
    that names them to the leader when the request is sent on (None: none needed)."""

    user: str | None
    token: str | None


NOBODY: Final = Caller(None, None)


def bearer(request: web.Request) -> str | None:
    """The Authorization header's Bearer value; InvalidArgument if the header is malformed.
    Messages give no part of the value: it is a secret."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        raise InvalidArgument("the Authorization header must be 'Bearer TOKEN'")
    return check_text(value, "Authorization")


def user_token(request: web.Request) -> str | None:
    """The user token the request carries, if its Bearer value is one."""
    value = bearer(request)
    if value is None or not tokens.looks_like_token(value):
        return None
    if len(value) > MAX_AUTH_TOKEN_LENGTH:
        raise InvalidArgument(f"a token is at most {MAX_AUTH_TOKEN_LENGTH} characters, "
                              f"not {len(value)}")
    return value


def forward_token(node: Node, user: str) -> str | None:
    """A short-lived token for a certificate user, so that the leader acts as them for a
    request sent on (our connection to it presents this node's certificate, not theirs).
    Signed with the cluster's replicated secret, as every member verifies it."""
    view = node.auth.view()
    record = view.users.get(user)
    if record is None or not view.settings.secret:
        return None  # the local check refuses this user before anything is sent on
    expires_ms = int((time.time() + FORWARD_TOKEN_S) * 1000)
    return tokens.sign(view.settings.secret, tokens.Claims(user, record.generation, expires_ms))


def caller(request: web.Request, node: Node) -> Caller:
    """Who ``request`` acts as, resolved once and kept on the request."""
    known = request.get(_CALLER)
    if isinstance(known, Caller):
        return known
    if not node.auth.enabled:
        # Exactly as before auth existed: a malformed header is nobody's business here.
        try:
            token = user_token(request)
        except InvalidArgument:
            token = None
        found = Caller(None, token)
    else:
        token = user_token(request)
        found = Caller(None, token)
        if token is not None:
            found = Caller(node.auth.user_of(token), token)
        elif node.config.client_cert_auth:
            user = request_cert_user(request)
            if user is not None:
                found = Caller(user, forward_token(node, user))
    # With auth disabled here, a token still goes to the leader with a request sent on:
    # the leader may already have applied the enable this node has not, and checks it.
    request[_CALLER] = found
    return found


def check_read(request: web.Request, node: Node, key: bytes,
               range_end: bytes | None) -> Caller:
    c = caller(request, node)
    if node.auth.enabled:
        node.auth.check_read(c.user, key, range_end)
    return c


def check_write(request: web.Request, node: Node, cmd: Write) -> Caller:
    """A write's needs (kv/auth.py ``needs_of``): its keys; for a txn, every compare and
    the ops of both branches; root for a compaction; only a user for a lease grant."""
    c = caller(request, node)
    if node.auth.enabled:
        node.auth.check_write(c.user, cmd)
    return c


def check_root(request: web.Request, node: Node) -> Caller:
    c = caller(request, node)
    if node.auth.enabled:
        node.auth.check_root(c.user)
    return c


def check_signed_in(request: web.Request, node: Node) -> Caller:
    c = caller(request, node)
    if node.auth.enabled:
        node.auth.check_signed_in(c.user)
    return c


# -- the /v1/auth/ routes ------------------------------------------------------------


def _name(value: str | None, what: str) -> str:
    if value is None or not value:
        raise InvalidArgument(f"{what!r} must be a non-empty string")
    check_text(value, what)
    if len(value) > MAX_USER_LENGTH or len(value.encode()) > MAX_NAME_BYTES:
        raise InvalidArgument(f"{what!r} must be at most {MAX_USER_LENGTH} characters and "
                              f"{MAX_NAME_BYTES} bytes of UTF-8")
    return value


def _password(f: BodyFields) -> str:
    value = f.string("password")
    if not value:
        raise f.fail("'password' must not be empty")
    if len(value) > MAX_PASSWORD_LENGTH:
        # The length only: never a part of a password.
        raise f.fail(f"'password' must be at most {MAX_PASSWORD_LENGTH} characters, "
                     f"not {len(value)}")
    return value


def _path(request: web.Request, name: str) -> str:
    return _name(request.match_info[name], name)


def _permission_json(perm: dict[str, Any], encoding: str) -> dict[str, Any]:
    """A role's permission (``Permission.to_wire``) with its key and range end as text,
    both in one encoding (base64 for both if either is not UTF-8)."""
    key, end = perm["key"], perm["range_end"]
    used = key_json(key, encoding)["encoding"]
    if end is not None and key_json(end, used)["encoding"] != used:
        used = "base64"
    return {"type": perm["type"], "key": key_json(key, used)["key"],
            "range_end": None if end is None else key_json(end, used)["key"],
            "encoding": used}


async def _admin_raw(request: web.Request, node: Node, req: AuthRequest) -> dict[str, Any]:
    """One "auth" action as the request's user; a change is sent on to the leader (as
    the same user) when this node is not it."""
    c = caller(request, node)
    return await forwarder_for(node).call(lambda: node.auth.admin(req, user=c.user), req,
                                          changes=True, token=c.token)


async def _admin(request: web.Request, node: Node, req: AuthRequest) -> dict[str, Any]:
    return dict(json_safe(await _admin_raw(request, node, req)))


async def _authenticate(request: web.Request, node: Node) -> web.Response:
    f = await read_body(request)
    name = _name(f.optional_string("name"), "name")
    password = _password(f)
    f.finish()
    # Failed sign-ins are counted per name and per address here (AuthService), so a
    # guesser spreading over nodes gets each node's allowance, as on the client port.
    result = await node.auth.authenticate(name, password, source=request.remote or "")
    return json_response({"token": result["token"], "user": result["user"],
                          "expires_in": result["expires_in"],
                          "header": json_safe(result["header"])})


async def _simple(request: web.Request, node: Node, action: str, *,
                  body: bool) -> web.Response:
    """An action without arguments: status, enable, disable, user_list, role_list."""
    if body:
        (await read_body(request)).finish()
    else:
        QueryFields(request).finish()
    return json_response(await _admin(request, node, AuthRequest(action=action)))


async def _user_add(request: web.Request, node: Node) -> web.Response:
    f = await read_body(request)
    name = _name(f.optional_string("name"), "name")
    password = _password(f)
    f.finish()
    req = AuthRequest(action="user_add", name=name, password=password)
    return json_response(await _admin(request, node, req))


async def _user_get(request: web.Request, node: Node) -> web.Response:
    name = _path(request, "name")
    QueryFields(request).finish()
    return json_response(await _admin(request, node, AuthRequest(action="user_get", name=name)))


async def _user_delete(request: web.Request, node: Node) -> web.Response:
    name = _path(request, "name")
    QueryFields(request).finish()
    req = AuthRequest(action="user_delete", name=name)
    return json_response(await _admin(request, node, req))


async def _user_passwd(request: web.Request, node: Node) -> web.Response:
    name = _path(request, "name")
    f = await read_body(request)
    password = _password(f)
    f.finish()
    req = AuthRequest(action="user_passwd", name=name, password=password)
    return json_response(await _admin(request, node, req))


async def _user_grant(request: web.Request, node: Node) -> web.Response:
    name = _path(request, "name")
    f = await read_body(request)
    role = _name(f.optional_string("role"), "role")
    f.finish()
    req = AuthRequest(action="user_grant_role", name=name, role=role)
    return json_response(await _admin(request, node, req))


async def _user_revoke(request: web.Request, node: Node) -> web.Response:
    name, role = _path(request, "name"), _path(request, "role")
    QueryFields(request).finish()
    req = AuthRequest(action="user_revoke_role", name=name, role=role)
    return json_response(await _admin(request, node, req))


async def _role_add(request: web.Request, node: Node) -> web.Response:
    f = await read_body(request)
    role = _name(f.optional_string("name"), "name")
    f.finish()
    return json_response(await _admin(request, node, AuthRequest(action="role_add", role=role)))


async def _role_get(request: web.Request, node: Node) -> web.Response:
    role = _path(request, "name")
    f = QueryFields(request)
    encoding = read_encoding(f)
    f.finish()
    result = await _admin_raw(request, node, AuthRequest(action="role_get", role=role))
    found = dict(result["role"])
    # Keys are bytes: as text in the request's encoding, like every key the API answers.
    found["permissions"] = [_permission_json(p, encoding) for p in found["permissions"]]
    return json_response(json_safe({**result, "role": found}))


async def _role_delete(request: web.Request, node: Node) -> web.Response:
    role = _path(request, "name")
    QueryFields(request).finish()
    req = AuthRequest(action="role_delete", role=role)
    return json_response(await _admin(request, node, req))


def _permission_range(f: Fields) -> tuple[bytes, bytes | None]:
    encoding = read_encoding(f)
    return read_key_range(f, encoding)


async def _role_grant(request: web.Request, node: Node) -> web.Response:
    role = _path(request, "name")
    f = await read_body(request)
    perm = f.choice("type", PERM_TYPES)
    key, end = _permission_range(f)
    f.finish()
    req = AuthRequest(action="role_grant", role=role, perm=perm, key=key, range_end=end)
    return json_response(await _admin(request, node, req))


async def _role_revoke(request: web.Request, node: Node) -> web.Response:
    role = _path(request, "name")
    # The range in the query, or in a body (the same fields as a grant's, but its type).
    fields: Fields
    raw = await request.read()
    if raw.strip():
        fields = await read_body(request)
        query = QueryFields(request)
        query.finish()
    else:
        fields = QueryFields(request)
    key, end = _permission_range(fields)
    fields.finish()
    req = AuthRequest(action="role_revoke", role=role, key=key, range_end=end)
    return json_response(await _admin(request, node, req))


AUTH_PATHS: Final = ("/v1/auth/authenticate", "/v1/auth/status", "/v1/auth/enable",
                     "/v1/auth/disable", "/v1/auth/users", "/v1/auth/users/{name}",
                     "/v1/auth/users/{name}/password", "/v1/auth/users/{name}/roles",
                     "/v1/auth/users/{name}/roles/{role}", "/v1/auth/roles",
                     "/v1/auth/roles/{name}", "/v1/auth/roles/{name}/permissions")


def routes(node: Node) -> list[web.RouteDef]:
    def bind(handler: Callable[..., Awaitable[web.Response]], *args: Any, **kw: Any,
             ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def route(request: web.Request) -> web.Response:
            return await handler(request, node, *args, **kw)
        return route

    table = [
        web.post("/v1/auth/authenticate", bind(_authenticate)),
        web.get("/v1/auth/status", bind(_simple, "status", body=False), allow_head=False),
        web.post("/v1/auth/enable", bind(_simple, "enable", body=True)),
        web.post("/v1/auth/disable", bind(_simple, "disable", body=True)),
        web.get("/v1/auth/users", bind(_simple, "user_list", body=False), allow_head=False),
        web.post("/v1/auth/users", bind(_user_add)),
        web.get("/v1/auth/users/{name}", bind(_user_get), allow_head=False),
        web.delete("/v1/auth/users/{name}", bind(_user_delete)),
        web.put("/v1/auth/users/{name}/password", bind(_user_passwd)),
        web.post("/v1/auth/users/{name}/roles", bind(_user_grant)),
        web.delete("/v1/auth/users/{name}/roles/{role}", bind(_user_revoke)),
        web.get("/v1/auth/roles", bind(_simple, "role_list", body=False), allow_head=False),
        web.post("/v1/auth/roles", bind(_role_add)),
        web.get("/v1/auth/roles/{name}", bind(_role_get), allow_head=False),
        web.delete("/v1/auth/roles/{name}", bind(_role_delete)),
        web.post("/v1/auth/roles/{name}/permissions", bind(_role_grant)),
        web.delete("/v1/auth/roles/{name}/permissions", bind(_role_revoke)),
    ]
    assert {r.path for r in table} == set(AUTH_PATHS)
    return table
