"""Authentication and authorization on a node: signing in, tokens, permission checks, and
the user and role changes it proposes (the replicated records are ``kv/auth.py``).

Every front end (the client port, the HTTP API, the dashboard) resolves a
request to a user, or to no user, and asks this service before it acts:
reads and watches are checked here against this node's applied auth state;
writes are checked here too (to refuse early) and again by the state machine
when they apply, since only the log orders a write after a permission change.

Sign-ins cost a scrypt hash, computed in a worker thread. Failed ones are
rate-limited per user name and per client address: after
``login_failures_allowed`` failures in a row for a name (ten times as many
from one address, which many clients may share), its sign-ins are refused
for ``login_lockout_s``, doubling with each further failure (up to a
minute), until one succeeds. Passwords and tokens are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quorumkv.client.auth_wire import PERM_TYPES, AuthRequest
from quorumkv.errors import (
    AuthNotEnabled,
    InvalidArgument,
    InvalidCredentials,
    InvalidToken,
    RoleNotFound,
    TooManyLoginAttempts,
    UserNotFound,
)
from quorumkv.kv.auth import ROOT, ROOT_NEED, AuthView, Need, needs_of
from quorumkv.kv.commands import AuthChange, LeaseRevoke, Write
from quorumkv.security import passwords, tokens

if TYPE_CHECKING:
    from quorumkv.server.node import Node

log = logging.getLogger(__name__)

_MAX_LOCKOUT_S = 60.0
_TRACKED = 10_000
"""Failure records kept (the oldest go first): a flood of names cannot exhaust memory."""

_CHANGES = frozenset({"enable", "disable", "user_add", "user_delete", "user_passwd",
                      "user_grant_role", "user_revoke_role", "role_add", "role_delete",
                      "role_grant", "role_revoke"})


@dataclass(slots=True)
class _Failures:
    count: int = 0
    locked_until: float = 0.0


class LoginLimiter:
    """Failed sign-ins per key (a user name, a client address); time is passed in."""

    def __init__(self, allowed: int, lockout_s: float) -> None:
        self._allowed = allowed
        self._lockout = lockout_s
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def check(self, keys: list[str], now: float) -> None:
        for key in keys:
            f = self._failures.get(key)
            if f is not None and f.locked_until > now:
                raise TooManyLoginAttempts(
                    "too many failed sign-ins; try again later",
                    retry_after_s=round(f.locked_until - now, 3))

    def failed(self, keys: list[str], now: float) -> None:
        for key in keys:
            f = self._failures.pop(key, None) or _Failures()
            f.count += 1
            if f.count >= self._allowed:
                over = f.count - self._allowed
                f.locked_until = now + min(_MAX_LOCKOUT_S, self._lockout * (2 ** min(over, 16)))
            self._failures[key] = f
            while len(self._failures) > _TRACKED:
                self._failures.popitem(last=False)

    def succeeded(self, keys: list[str]) -> None:
        for key in keys:
            self._failures.pop(key, None)


class AuthService:
    def __init__(self, node: Node) -> None:
        self._node = node
        cfg = node.config
        self._ttl = cfg.auth_token_ttl_s
        self._limiter = LoginLimiter(cfg.login_failures_allowed, cfg.login_lockout_s)
        # Many users may share an address (a NAT, a proxy, every local client): one
        # address's guessing gets ten times the room before it is slowed down.
        self._address_limiter = LoginLimiter(cfg.login_failures_allowed * 10,
                                             cfg.login_lockout_s)

    def view(self) -> AuthView:
        kv = self._node.kv
        assert kv is not None
        return kv.auth_view()

    @property
    def enabled(self) -> bool:
        return self._node.kv is not None and self.view().enabled

    # -- who is asking ---------------------------------------------------------------

    def user_of(self, token: str) -> str:
        """The user a token stands for; InvalidToken if it is forged, expired or revoked."""
        return self.claims_of(token).user

    def claims_of(self, token: str) -> tokens.Claims:
        """A genuine, current token's claims; InvalidToken otherwise."""
        view = self.view()
        claims = tokens.verify(view.settings.secret, token, now_ms=int(time.time() * 1000))
        user = view.users.get(claims.user)
        if user is None:
            raise InvalidToken(f"user {claims.user!r} no longer exists", reason="revoked")
        if user.generation != claims.generation:
            raise InvalidToken("the token was revoked (the user's password or roles "
                               "changed): sign in again", reason="revoked")
        return claims

    async def authenticate(self, name: str, password: str, *, source: str) -> dict[str, Any]:
        """Check a user's password; a token and its lifetime."""
        now = time.monotonic()
        keys, addresses = [name], [source]
        self._limiter.check(keys, now)
        self._address_limiter.check(addresses, now)
        await self._node.read_barrier()  # a user added a moment ago, anywhere, can sign in
        view = self.view()
        if not view.enabled:
            raise AuthNotEnabled("auth is not enabled: no sign-in is needed")
        user = view.users.get(name)
        # Hash even for an unknown user, so the answer's timing does not tell the two apart.
        stored = user.password_hash if user is not None else await asyncio.to_thread(_dummy)
        ok = await asyncio.to_thread(passwords.check_password, password, stored)
        if not ok or user is None:
            self._limiter.failed(keys, time.monotonic())
            self._address_limiter.failed(addresses, time.monotonic())
            log.warning("failed sign-in for user %r from %s", name[:64], source)
            raise InvalidCredentials("authentication failed: invalid user name or password")
        self._limiter.succeeded(keys)
        self._address_limiter.succeeded(addresses)
        expires_ms = int((time.time() + self._ttl) * 1000)
        token = tokens.sign(view.settings.secret,
                            tokens.Claims(name, user.generation, expires_ms))
        return {"token": token, "user": name, "expires_in": self._ttl, "header": self.header()}

    def header(self) -> dict[str, Any]:
        return self._node.header()

    # -- what they may do ------------------------------------------------------------

    def check(self, user: str | None, needs: list[Need]) -> None:
        self.view().check(user, needs)

    def check_read(self, user: str | None, key: bytes, range_end: bytes | None) -> None:
        self.view().check(user, [Need(key, range_end, False)])

    def check_write(self, user: str | None, cmd: Write) -> None:
        view = self.view()
        if not view.enabled:
            return
        keys: list[bytes] = []
        if isinstance(cmd, LeaseRevoke):
            kv = self._node.kv
            assert kv is not None
            keys = kv.lease_keys(cmd.id)
        view.check(user, needs_of(cmd, keys))

    def check_lease_keys(self, user: str | None, lease_id: int) -> None:
        """Read on every key attached to the lease (its time-to-live lists them)."""
        view = self.view()
        if view.enabled:
            kv = self._node.kv
            assert kv is not None
            view.check(user, [Need(k, None, False) for k in kv.lease_keys(lease_id)])

    def check_root(self, user: str | None) -> None:
        self.view().check(user, [ROOT_NEED])

    def check_signed_in(self, user: str | None) -> None:
        self.view().check(user, [])

    # -- users and roles -------------------------------------------------------------

    async def admin(self, req: AuthRequest, *, user: str | None) -> dict[str, Any]:
        """One "auth" action (see ``client/auth_wire.py``) on behalf of ``user``."""
        view = self.view()
        if req.action == "status":
            await self._node.read_barrier()
            view = self.view()
            return {"enabled": view.enabled, "auth_revision": view.settings.revision,
                    "user": user, "header": self.header()}
        # Root only, once auth is on (as in etcd); while it is off anyone may prepare users.
        view.check(user, [ROOT_NEED])
        if req.action not in _CHANGES:
            await self._node.read_barrier()
            return {**self._read(req, self.view()), "header": self.header()}
        change = await self._change(req)
        result = await self._node.write(change, consistency="quorum", client_id=0, seq=0,
                                        user=user)
        auth_revision = result.get("auth_revision")
        log.info("auth change %s%s applied", req.action,
                 f" ({req.name or req.role})" if req.name or req.role else "")
        return {"auth_revision": auth_revision, "header": result.get("header")}

    async def _change(self, req: AuthRequest) -> AuthChange:
        a = req.action
        if a in ("user_add", "user_delete", "user_passwd", "user_grant_role",
                 "user_revoke_role") and not req.name:
            raise InvalidArgument(f"{a} needs a user name")
        if (a.startswith("role_") or a in ("user_grant_role", "user_revoke_role")) and not req.role:
                raise InvalidArgument(f"{a} needs a role name")
        if a in ("role_grant", "role_revoke") and not req.key:
            raise InvalidArgument(f"{a} needs a key")
        password_hash = ""
        if a in ("user_add", "user_passwd"):
            if not req.password:
                raise InvalidArgument("a password must not be empty")
            password_hash = await asyncio.to_thread(passwords.hash_password, req.password)
        return AuthChange(action=a, name=req.name, role=req.role, password_hash=password_hash,
                          perm=PERM_TYPES.index(req.perm), key=req.key,
                          range_end=req.range_end,
                          secret=os.urandom(32) if a == "enable" else b"")

    @staticmethod
    def _read(req: AuthRequest, view: AuthView) -> dict[str, Any]:
        if req.action == "user_list":
            return {"users": sorted(view.users)}
        if req.action == "role_list":
            return {"roles": sorted(view.roles)}
        if req.action == "user_get":
            u = view.users.get(req.name)
            if u is None:
                raise UserNotFound(f"user {req.name!r} not found", user=req.name)
            return {"user": {"name": u.name, "roles": list(u.roles)}}
        assert req.action == "role_get"
        r = view.roles.get(req.role)
        if r is None:
            raise RoleNotFound(f"role {req.role!r} not found", role=req.role)
        # The role root grants everything whatever it lists (kv/auth.py).
        return {"role": {"name": r.name, "permissions": [p.to_wire() for p in r.permissions],
                         "all_keys": r.name == ROOT}}


_dummy_hash: str | None = None


def _dummy() -> str:
    """A hash to check an unknown user's password against (made once, when first needed)."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = passwords.hash_password("quorumkv-no-such-user")
    return _dummy_hash
