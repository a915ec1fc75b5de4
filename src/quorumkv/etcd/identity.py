"""Who an etcd request comes from: the one user resolution every etcd service uses.

etcd's clients send the token Authenticate gave them in the gRPC metadata key
``token`` on every call. With auth enabled here, that token names the user
(:meth:`AuthService.user_of`, which refuses a forged, expired or revoked one
with InvalidToken); without a token, with ``client_cert_auth``, the client
certificate's common name is the user, as on the other ports. With auth
disabled nothing is resolved, but a token is still kept: a request sent on to
the leader carries it, and the leader may already have applied an enable
that this node has not (as http_auth.py does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from quorumkv.client.auth_wire import MAX_AUTH_TOKEN_LENGTH
from quorumkv.errors import InvalidToken
from quorumkv.kv.commands import Write
from quorumkv.server.http_auth import forward_token

if TYPE_CHECKING:
    from quorumkv.server.node import Node

TOKEN_KEY: Final = "token"
"""The metadata key etcd's clients put their token under."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request acts as (None: nobody, or auth is off) and the token that names them
    to the leader when the request is sent on (None: none needed)."""

    user: str | None
    token: str | None


def _metadata_token(context: Any) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == TOKEN_KEY:
            return value if isinstance(value, str) else None
    return None


def _certificate_user(context: Any) -> str | None:
    names = context.auth_context().get("x509_common_name") or []
    return names[0].decode(errors="replace") if names else None


def caller_of(node: Node, context: Any) -> Caller:
    """Who the call on ``context`` (a grpc.aio ServicerContext) acts as."""
    token = _metadata_token(context)
    if not node.auth.enabled:
        return Caller(None, token)
    if token is not None:
        if len(token) > MAX_AUTH_TOKEN_LENGTH:
            raise InvalidToken("the token is too long to be one")
        return Caller(node.auth.user_of(token), token)
    if node.config.client_cert_auth:
        user = _certificate_user(context)
        if user is not None:
            return Caller(user, forward_token(node, user))
    return Caller(None, None)


def check_read(node: Node, caller: Caller, key: bytes, range_end: bytes | None) -> None:
    """PermissionDenied (or Unauthenticated) unless the caller may read the range."""
    if node.auth.enabled:
        node.auth.check_read(caller.user, key, range_end)


def check_write(node: Node, caller: Caller, cmd: Write) -> None:
    """PermissionDenied (or Unauthenticated) unless the caller may make the write."""
    if node.auth.enabled:
        node.auth.check_write(caller.user, cmd)
