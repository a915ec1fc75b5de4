"""Users, roles and auth on the clients: the "auth" op's actions as methods.

:class:`AuthAdmin` gives :class:`~quorumkv.client.AsyncClient` its methods and
:class:`BlockingAuthAdmin` the blocking :class:`~quorumkv.client.Client` their
twins (same names and arguments)::

    async with AsyncClient(endpoints, user="root", password=pw) as kv:
        await kv.user_add("alice", "her-password")
        await kv.role_add("app-reader")
        await kv.role_grant("app-reader", "read", "app/", prefix=True)
        await kv.user_grant_role("alice", "app-reader")

Changes go to the leader (a follower's NotLeader moves the client there, as for
writes). They carry no sequence number, so, unlike writes, one that may have
run is never resent: if the answer is lost the call fails with Timeout (outcome
unknown) and the caller looks (``user_get``, ``role_get``, ``auth_status``)
before trying again. Once auth is enabled they need the role ``root``.

Permissions cover one key (``range_end`` None), the keys in ``[key, range_end)``,
every key from ``key`` on (``range_end`` ``b"\\0"``), or with ``prefix=True``
every key starting with ``key``.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from quorumkv.client.auth_session import SignIn
from quorumkv.client.auth_wire import PERM_TYPES, AuthRequest
from quorumkv.errors import InvalidArgument, ProtocolError
from quorumkv.kv.keys import prefix_end

if TYPE_CHECKING:
    from quorumkv.client.async_client import AsyncClient
    from quorumkv.client.retrying_caller import RetryingCaller

_T = TypeVar("_T")
KeyLike = bytes | str


def _key_bytes(what: str, value: KeyLike) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise InvalidArgument(f"{what} must be bytes or str, not {type(value).__name__}")


def permission_range(key: KeyLike, range_end: KeyLike | None = None, *,
                     prefix: bool = False) -> tuple[bytes, bytes | None]:
    """``(key, range_end)`` as a permission holds them (see the module docstring)."""
    k = _key_bytes("key", key)
    if not k:
        raise InvalidArgument("a permission needs a key")
    if prefix:
        if range_end is not None:
            raise InvalidArgument("give range_end or prefix, not both")
        return k, prefix_end(k)
    return k, None if range_end is None else _key_bytes("range_end", range_end)


def _string_list(body: dict[str, Any], field: str) -> list[str]:
    items = body.get(field)
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ProtocolError(f"an auth answer without its list of {field}")
    return list(items)


def _mapping(body: dict[str, Any], field: str) -> dict[str, Any]:
    value = body.get(field)
    if not isinstance(value, dict):
        raise ProtocolError(f"an auth answer without its {field}")
    return dict(value)


def _revision(body: dict[str, Any]) -> int:
    revision = body.get("auth_revision")
    return revision if type(revision) is int else 0


class AuthAdmin:
    """The auth methods of :class:`AsyncClient` (mixed in; it provides ``_caller``)."""

    __slots__ = ()

    if TYPE_CHECKING:
        _caller: RetryingCaller
        _sign_in: SignIn | None

    async def authenticate(self) -> str:
        """Sign in with the client's user and password and return a new token (for the
        HTTP API, say). The client's own connections sign themselves in: this is not
        needed to use the client. AuthNotEnabled if auth is off."""
        if self._sign_in is None:
            raise InvalidArgument("this client was given no user and password")
        body = await self._caller.call(self._sign_in.request())
        token = body.get("token")
        if type(token) is not str or not token:
            raise ProtocolError("an authenticate answer without its token")
        return token

    async def auth_status(self) -> dict[str, Any]:
        """``{"enabled": bool, "auth_revision": int, "user": str | None}``: whether auth
        is on, the revision of the users and roles, and who this client is signed in as."""
        body = await self._caller.call(AuthRequest(action="status"))
        return {"enabled": body.get("enabled") is True, "auth_revision": _revision(body),
                "user": body.get("user") if isinstance(body.get("user"), str) else None}

    async def _change(self, req: AuthRequest) -> int:
        """Apply one change on the leader; the auth revision it made."""
        return _revision(await self._caller.call(req, at_most_once=True))

    async def auth_enable(self) -> int:
        """Turn auth on (RootMissing unless the user ``root`` has the role ``root``)."""
        return await self._change(AuthRequest(action="enable"))

    async def auth_disable(self) -> int:
        return await self._change(AuthRequest(action="disable"))

    async def user_add(self, name: str, password: str) -> int:
        return await self._change(AuthRequest(action="user_add", name=name, password=password))

    async def user_delete(self, name: str) -> int:
        return await self._change(AuthRequest(action="user_delete", name=name))

    async def user_passwd(self, name: str, password: str) -> int:
        """Change a password; the user's tokens stop working (clients that know the new
        password sign in again by themselves)."""
        return await self._change(AuthRequest(action="user_passwd", name=name,
                                              password=password))

    async def user_grant_role(self, name: str, role: str) -> int:
        return await self._change(AuthRequest(action="user_grant_role", name=name, role=role))

    async def user_revoke_role(self, name: str, role: str) -> int:
        return await self._change(AuthRequest(action="user_revoke_role", name=name, role=role))

    async def user_get(self, name: str) -> dict[str, Any]:
        """``{"name": str, "roles": [str]}``; UserNotFound if there is no such user."""
        body = await self._caller.call(AuthRequest(action="user_get", name=name))
        user = _mapping(body, "user")
        return {"name": str(user.get("name", name)), "roles": _string_list(user, "roles")}

    async def user_list(self) -> list[str]:
        return _string_list(await self._caller.call(AuthRequest(action="user_list")), "users")

    async def role_add(self, role: str) -> int:
        return await self._change(AuthRequest(action="role_add", role=role))

    async def role_delete(self, role: str) -> int:
        return await self._change(AuthRequest(action="role_delete", role=role))

    async def role_grant(self, role: str, perm: str, key: KeyLike,
                         range_end: KeyLike | None = None, *, prefix: bool = False) -> int:
        """Let ``role`` read, write or both (``perm``: "read", "write", "readwrite") the
        keys given as in the module docstring."""
        if perm not in PERM_TYPES:
            raise InvalidArgument(f"perm must be one of {', '.join(PERM_TYPES)}, not {perm!r}")
        k, end = permission_range(key, range_end, prefix=prefix)
        return await self._change(AuthRequest(action="role_grant", role=role, perm=perm,
                                              key=k, range_end=end))

    async def role_revoke(self, role: str, key: KeyLike, range_end: KeyLike | None = None,
                          *, prefix: bool = False) -> int:
        """Take back the permission on exactly these keys (as granted)."""
        k, end = permission_range(key, range_end, prefix=prefix)
        return await self._change(AuthRequest(action="role_revoke", role=role, key=k,
                                              range_end=end))

    async def role_get(self, role: str) -> dict[str, Any]:
        """``{"name": str, "permissions": [{"type", "key", "range_end"}], "all_keys": bool}``
        (``all_keys``: the role ``root``, which grants everything whatever it lists);
        RoleNotFound if there is no such role."""
        body = await self._caller.call(AuthRequest(action="role_get", role=role))
        doc = _mapping(body, "role")
        perms = doc.get("permissions")
        if not isinstance(perms, list) or not all(isinstance(p, dict) for p in perms):
            raise ProtocolError("a role without its list of permissions")
        permissions = []
        for p in perms:
            key, end, kind = p.get("key"), p.get("range_end"), p.get("type")
            if type(key) is not bytes or not (end is None or type(end) is bytes) \
                    or kind not in PERM_TYPES:
                raise ProtocolError("a malformed permission in a role")
            permissions.append({"type": kind, "key": key, "range_end": end})
        return {"name": str(doc.get("name", role)), "permissions": permissions,
                "all_keys": doc.get("all_keys") is True}

    async def role_list(self) -> list[str]:
        return _string_list(await self._caller.call(AuthRequest(action="role_list")), "roles")


class BlockingAuthAdmin:
    """The blocking twins of :class:`AuthAdmin`, for :class:`~quorumkv.client.Client`."""

    __slots__ = ()

    if TYPE_CHECKING:
        _client: AsyncClient

        def _run(self, coro: Coroutine[Any, Any, _T]) -> _T: ...

    def authenticate(self) -> str:
        return self._run(self._client.authenticate())

    def auth_status(self) -> dict[str, Any]:
        return self._run(self._client.auth_status())

    def auth_enable(self) -> int:
        return self._run(self._client.auth_enable())

    def auth_disable(self) -> int:
        return self._run(self._client.auth_disable())

    def user_add(self, name: str, password: str) -> int:
        return self._run(self._client.user_add(name, password))

    def user_delete(self, name: str) -> int:
        return self._run(self._client.user_delete(name))

    def user_passwd(self, name: str, password: str) -> int:
        return self._run(self._client.user_passwd(name, password))

    def user_grant_role(self, name: str, role: str) -> int:
        return self._run(self._client.user_grant_role(name, role))

    def user_revoke_role(self, name: str, role: str) -> int:
        return self._run(self._client.user_revoke_role(name, role))

    def user_get(self, name: str) -> dict[str, Any]:
        return self._run(self._client.user_get(name))

    def user_list(self) -> list[str]:
        return self._run(self._client.user_list())

    def role_add(self, role: str) -> int:
        return self._run(self._client.role_add(role))

    def role_delete(self, role: str) -> int:
        return self._run(self._client.role_delete(role))

    def role_grant(self, role: str, perm: str, key: KeyLike, range_end: KeyLike | None = None,
                   *, prefix: bool = False) -> int:
        return self._run(self._client.role_grant(role, perm, key, range_end, prefix=prefix))

    def role_revoke(self, role: str, key: KeyLike, range_end: KeyLike | None = None, *,
                    prefix: bool = False) -> int:
        return self._run(self._client.role_revoke(role, key, range_end, prefix=prefix))

    def role_get(self, role: str) -> dict[str, Any]:
        return self._run(self._client.role_get(role))

    def role_list(self) -> list[str]:
        return self._run(self._client.role_list())


__all__ = ["AuthAdmin", "BlockingAuthAdmin", "permission_range"]
