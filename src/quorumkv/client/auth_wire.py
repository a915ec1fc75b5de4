"""The client protocol's authentication ops (see ``protocol.py`` for the framing).

Signing in::

    "authenticate" {"name": str, "password": str}
                   -> {"token": str, "user": str, "expires_in": float, "header"}
    "auth_token"   {"token": str} -> {"user": str, "expires_in": float|nil, "header"}
                   (nil: the cluster token, which does not expire)

Both make the connection act as that user until the token expires (then
requests fail with ``invalid_token`` and the client signs in again). A
request may instead carry a token of its own, as a fourth element of its
frame (``[request_id, op, args, token]``): a member forwarding a user's
request uses that.

Managing users and roles (``docs/security.md``)::

    "auth" {"action": str, "name": str = "", "role": str = "", "password": str = "",
            "perm": "read"|"write"|"readwrite" = "read", "key": bin = b"",
            "range_end": bin|nil = nil}

    action             uses                  answers (besides "header")
    status             -                     {"enabled", "auth_revision", "user": str|nil}
    enable / disable   -                     {"auth_revision"}
    user_add           name, password        {"auth_revision"}
    user_delete        name                  {"auth_revision"}
    user_passwd        name, password        {"auth_revision"}
    user_grant_role    name, role            {"auth_revision"}
    user_revoke_role   name, role            {"auth_revision"}
    user_get           name                  {"user": {"name", "roles": [str]}}
    user_list          -                     {"users": [str]}
    role_add           role                  {"auth_revision"}
    role_delete        role                  {"auth_revision"}
    role_grant         role, perm, key, range_end   {"auth_revision"}
    role_revoke        role, key, range_end  {"auth_revision"}
    role_get           role                  {"role": {"name", "permissions":
                                              [{"type", "key", "range_end"}]}}
    role_list          -                     {"roles": [str]}

Ranges are as everywhere: range_end nil is the key alone, ``b"\\0"`` every
key from ``key`` on. Passwords travel only inside "authenticate",
"user_add" and "user_passwd" (use TLS), and never appear in a repr.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from quorumkv.client.fields import FieldReader

AUTH_OPS: Final = ("authenticate", "auth_token", "auth")
AUTH_ACTIONS: Final = (
    "status", "enable", "disable", "user_add", "user_delete", "user_passwd",
    "user_grant_role", "user_revoke_role", "user_get", "user_list", "role_add",
    "role_delete", "role_grant", "role_revoke", "role_get", "role_list")
PERM_TYPES: Final = ("read", "write", "readwrite")
MAX_USER_LENGTH: Final = 128
MAX_PASSWORD_LENGTH: Final = 1024
MAX_AUTH_TOKEN_LENGTH: Final = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticateRequest:
    name: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthTokenRequest:
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthRequest:
    action: str
    name: str = ""
    role: str = ""
    password: str = field(default="", repr=False)
    perm: str = "read"
    key: bytes = b""
    range_end: bytes | None = None


AuthWireRequest = AuthenticateRequest | AuthTokenRequest | AuthRequest


def auth_args(req: AuthWireRequest) -> tuple[str, dict[str, Any]]:
    if isinstance(req, AuthenticateRequest):
        return "authenticate", {"name": req.name, "password": req.password}
    if isinstance(req, AuthTokenRequest):
        return "auth_token", {"token": req.token}
    args: dict[str, Any] = {"action": req.action}
    for name, value, default in (("name", req.name, ""), ("role", req.role, ""),
                                 ("password", req.password, ""), ("perm", req.perm, "read"),
                                 ("key", req.key, b""), ("range_end", req.range_end, None)):
        if value != default:
            args[name] = value
    return "auth", args


def _bounded(f: FieldReader, name: str, limit: int, default: str | None = None) -> str:
    value = f.string(name) if default is None else f.string(name, default)
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise f.fail(f"{name!r} is not valid Unicode") from None
    if size > limit:
        # The length only: the value may be a password or a token.
        raise f.fail(f"{name!r} must be at most {limit} bytes (UTF-8), not {size}")
    return value


def parse_auth(op: str, f: FieldReader) -> AuthWireRequest:
    if op == "authenticate":
        return AuthenticateRequest(name=_bounded(f, "name", MAX_USER_LENGTH),
                                   password=_bounded(f, "password", MAX_PASSWORD_LENGTH))
    if op == "auth_token":
        return AuthTokenRequest(token=_bounded(f, "token", MAX_AUTH_TOKEN_LENGTH))
    return AuthRequest(action=f.choice("action", AUTH_ACTIONS),
                       name=_bounded(f, "name", MAX_USER_LENGTH, ""),
                       role=_bounded(f, "role", MAX_USER_LENGTH, ""),
                       password=_bounded(f, "password", MAX_PASSWORD_LENGTH, ""),
                       perm=f.choice("perm", PERM_TYPES, "read"),
                       key=f.binary("key", b""), range_end=f.optional_binary("range_end"))
