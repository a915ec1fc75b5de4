"""Who a client-port request comes from, and whether they may make it.

A connection signs in once ("authenticate" with a password, or "auth_token"
with a token it holds) and acts as that user until the token expires or is
revoked; a single request may instead carry a token of its own (members
forwarding a user's request do). With client-certificate authentication, a
connection that has not signed in acts as its certificate's common name. The
cluster token, shown with "auth_token", makes a connection act as ``root``:
members use it among themselves (for the ``all`` levels), and it is the
membership secret already.

While auth is disabled nothing here costs more than one attribute check.
"""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, Any

from quorumkv.client.auth_wire import AuthenticateRequest, AuthRequest, AuthTokenRequest
from quorumkv.client.coordination_wire import (
    LeaseKeepAliveRequest,
    LeaseListRequest,
    LeaseTimeToLiveRequest,
    WatchRequest,
)
from quorumkv.client.protocol import (
    DigestRequest,
    ReadRequest,
    Request,
    SnapshotRequest,
    WaitAppliedRequest,
    WriteRequest,
)
from quorumkv.errors import InvalidArgument, InvalidToken
from quorumkv.kv.auth import ROOT, AuthView
from quorumkv.kv.commands import AuthChange, Authorized, Session

if TYPE_CHECKING:
    from quorumkv.server.auth import AuthService


class ConnectionAuth:
    """One connection's signed-in user, with what it took to check their token last."""

    __slots__ = ("cert_user", "checked", "member", "token", "user")

    def __init__(self, cert_user: str | None) -> None:
        self.cert_user = cert_user
        self.token: str | None = None
        self.user: str | None = None
        self.checked: tuple[AuthView, float] | None = None
        """(the auth state, the time until which the token is good in it)."""
        self.member = False
        """Signed in with the cluster token: another member (or an operator holding the
        membership secret)."""


class ClientAuth:
    def __init__(self, auth: AuthService, cluster_token: str, *,
                 cert_users: bool = False) -> None:
        """``cert_users``: a connection that has not signed in acts as its client
        certificate's common name (client_cert_auth; without it, a certificate a client
        happens to offer names no one)."""
        self._auth = auth
        self._cluster_token = cluster_token.encode()
        self._cert_users = cert_users

    @property
    def enabled(self) -> bool:
        return self._auth.enabled

    def user(self, conn: ConnectionAuth, token: str | None) -> str | None:
        """The user a request acts as (call only while auth is enabled)."""
        if token is not None:
            return self._auth.user_of(token)
        if conn.token is None:
            if conn.user == ROOT:  # signed in with the cluster token
                return ROOT
            return conn.cert_user if self._cert_users else None
        view = self._auth.view()
        checked = conn.checked
        # Checked once per auth state while the token lasts: a change to users or
        # roles (a new view) makes the next request check it again.
        if checked is None or checked[0] is not view or checked[1] <= time.time():
            try:
                conn.user = self._auth.user_of(conn.token)
            except InvalidToken:
                conn.token = conn.user = conn.checked = None
                raise
            conn.checked = (view, time.time() + 1.0)
        return conn.user

    def authorize(self, req: Request, user: str | None) -> None:
        """PermissionDenied or Unauthenticated unless ``user`` may make ``req``."""
        a = self._auth
        if isinstance(req, ReadRequest):
            a.check_read(user, req.range.key, req.range.range_end)
        elif isinstance(req, WriteRequest):
            cmd = req.cmd
            if isinstance(cmd, (Session, AuthChange, Authorized)):
                raise InvalidArgument("a client writes key-value commands only")
            a.check_write(user, cmd)
        elif isinstance(req, WatchRequest):
            a.check_read(user, req.key, req.range_end)
        elif isinstance(req, (SnapshotRequest, DigestRequest)):
            a.check_root(user)
        elif isinstance(req, LeaseTimeToLiveRequest) and req.keys:
            a.check_lease_keys(user, req.id)  # the answer lists them
        elif isinstance(req, (LeaseKeepAliveRequest, LeaseTimeToLiveRequest, LeaseListRequest,
                              WaitAppliedRequest)):
            a.check_signed_in(user)
        # hello, status, member_list: open to all, so clients can find the cluster.
        # Membership changes need the cluster token, which is root's equal already (it
        # signs a connection in as root): a joining node and a leaving one have no other.
        # authenticate, auth_token: how one signs in; auth: checked by AuthService.admin.

    async def serve(self, req: AuthenticateRequest | AuthTokenRequest | AuthRequest,
                    conn: ConnectionAuth, token: str | None, source: str,
                    ) -> dict[str, Any]:
        if isinstance(req, AuthenticateRequest):
            result = await self._auth.authenticate(req.name, req.password, source=source)
            self._bind(conn, result["token"], req.name)
            return result
        if isinstance(req, AuthTokenRequest):
            if hmac.compare_digest(req.token.encode(), self._cluster_token):
                conn.token, conn.user, conn.checked, conn.member = None, ROOT, None, True
                return {"user": ROOT, "expires_in": None, "header": self._auth.header()}
            claims = self._auth.claims_of(req.token)
            self._bind(conn, req.token, claims.user)
            return {"user": claims.user,
                    "expires_in": max(0.0, claims.expires_ms / 1000 - time.time()),
                    "header": self._auth.header()}
        user = self.user(conn, token) if self._auth.enabled else None
        return await self._auth.admin(req, user=user)

    @staticmethod
    def _bind(conn: ConnectionAuth, token: str, user: str) -> None:
        conn.token, conn.user, conn.checked = token, user, None
