"""Signing a client's connections in as one user (the ops are in ``auth_wire.py``).

A client given a user name and password signs in every connection it opens,
before the connection's first request (``RetryingCaller`` calls :meth:`SignIn.sign_in`
where it opens connections, so watches and backups are covered too). One token
serves them all: a new connection presents it ("auth_token") while it lasts, so
only the first connection, and one after each expiry or revocation, costs the
node a password check. A node that answers "authenticate" with AuthNotEnabled
needs no sign-in: the connection goes on without a token.

The password stays in this object's memory only: it is in no repr, and nothing
here logs.
"""

from __future__ import annotations

import asyncio
from typing import Final

from quorumkv.client.auth_wire import (
    MAX_PASSWORD_LENGTH,
    MAX_USER_LENGTH,
    AuthenticateRequest,
    AuthTokenRequest,
)
from quorumkv.client.connection import Connection
from quorumkv.errors import AuthNotEnabled, InvalidArgument, InvalidToken, ProtocolError

_MARGIN: Final = 0.1
"""The share of a token's lifetime given up at its end: a token presented just before it
expires would be refused by the time the node reads it."""
_MAX_MARGIN_S: Final = 5.0


class SignIn:
    """One user's credentials and the token they last got; see the module docstring."""

    __slots__ = ("_expires_at", "_password", "_token", "user")

    def __init__(self, user: str, password: str) -> None:
        if not user or len(user) > MAX_USER_LENGTH:
            raise InvalidArgument(f"a user name is 1 to {MAX_USER_LENGTH} characters")
        if not password or len(password) > MAX_PASSWORD_LENGTH:
            # The length only: the value is a secret.
            raise InvalidArgument(f"a password is 1 to {MAX_PASSWORD_LENGTH} characters")
        self.user = user
        self._password = password
        self._token: str | None = None
        self._expires_at = 0.0
        """Event loop time after which the token is no longer presented."""

    def __repr__(self) -> str:
        return f"SignIn(user={self.user!r})"

    def lasts(self, token: str | None) -> bool:
        """Whether ``token`` is the one held and has not (nearly) expired."""
        return (token is not None and token == self._token
                and asyncio.get_running_loop().time() < self._expires_at)

    async def sign_in(self, conn: Connection) -> str | None:
        """Sign ``conn`` in: with the token held while it lasts, else with the password.
        The token the connection now acts with; None if auth is not enabled."""
        token = self._token
        if self.lasts(token):
            assert token is not None
            try:
                await conn.request(AuthTokenRequest(token=token))
                return token
            except InvalidToken:
                pass  # revoked (a password or role change, auth re-enabled): use the password
        return await self.authenticate(conn)

    async def authenticate(self, conn: Connection) -> str | None:
        """Sign ``conn`` in with the password and keep the new token; None if auth is not
        enabled. InvalidCredentials, TooManyLoginAttempts... are the node's answer."""
        loop = asyncio.get_running_loop()
        asked = loop.time()
        try:
            body = await conn.request(self.request())
        except AuthNotEnabled:
            self._token = None
            return None
        return self.accept(body, asked)

    def accept(self, body: dict[str, object], asked: float) -> str:
        """Keep the token of an "authenticate" answer (asked at loop time ``asked``)."""
        token, expires_in = body.get("token"), body.get("expires_in")
        if type(token) is not str or not token or type(expires_in) not in (int, float):
            raise ProtocolError("an authenticate answer without its token and lifetime")
        assert isinstance(expires_in, int | float)
        # Counted from when we asked: the node's clock started before its answer came.
        self._token = token
        self._expires_at = asked + expires_in - min(_MAX_MARGIN_S, expires_in * _MARGIN)
        return token

    def request(self) -> AuthenticateRequest:
        """The "authenticate" request for this user (its answer goes to :meth:`accept`)."""
        return AuthenticateRequest(name=self.user, password=self._password)
