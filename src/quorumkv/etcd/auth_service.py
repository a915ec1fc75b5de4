"""etcd's Auth service (``/etcdserverpb.Auth/*``): signing in, users, roles, permissions.

Every method is one action of the node's AuthService (server/auth.py,
``admin``), the same the client port and the HTTP API run, as the caller
(identity.py): once auth is on only root may manage users and roles, as in
etcd. A change is sent on to the leader when this member does not lead,
with the caller's token (calls.py does the same for writes).

Authenticate gives a quorumkv token; etcd's clients send it back in the
``token`` metadata of every call, where identity.py reads it. Sign-ins
are rate-limited per user name and client address as on the other ports.

Differences from etcd:

- UserAdd with ``options.no_password``: the user gets a random password
  nobody knows, so it can only be used through a client certificate
  (``--client-cert-auth``), which is what etcd's password-less users are.
- ``hashedPassword`` (etcd's bcrypt hash, sent by some newer clients) is
  refused: quorumkv hashes passwords itself (scrypt), so send the password.
- Permissions: ``range_end`` empty is the key alone and ``"\\0"`` every key
  from ``key`` on, as etcd's; quorumkv stores the same ranges.

Some of quorumkv's refusals are etcd errors only the action tells apart;
:func:`_as_etcd` turns them into etcd's (a missing root role when enabling,
a role not granted, a permission not granted, root's protection while auth
is on).
"""

from __future__ import annotations

import secrets
from typing import Any, Final

from quorumkv.client.auth_wire import PERM_TYPES, AuthRequest
from quorumkv.errors import InvalidArgument, RoleNotFound, RootMissing
from quorumkv.etcd import errors as ee
from quorumkv.etcd.calls import EtcdService, applied_here, unary
from quorumkv.etcd.generated import etcd_proto
from quorumkv.etcd.header import response_header
from quorumkv.etcd.identity import caller_of
from quorumkv.kv.auth import ROOT
from quorumkv.server.http_forward import forwarder_for

HASHED_PASSWORD: Final = ee.RpcError(
    ee.Code.INVALID_ARGUMENT,
    "quorumkv: hashed passwords are not accepted (quorumkv hashes them itself): send the "
    "password")
NO_PASSWORD_BYTES: Final = 32
"""Random bytes of the password a password-less user gets (never given to anyone)."""


def _range_end(range_end: bytes) -> bytes | None:
    """etcd's range end (empty: the key alone) as quorumkv's (None: the key alone)."""
    return range_end or None


class AuthService(EtcdService):
    """The handlers of etcd's Auth service for one node."""

    def register(self, server: Any) -> None:
        etcd_proto().rpc_pb2_grpc.add_AuthServicer_to_server(self, server)

    async def _admin(self, context: Any, req: AuthRequest) -> dict[str, Any]:
        node = self.node
        caller = caller_of(node, context)
        try:
            result = await forwarder_for(node).call(
                lambda: node.auth.admin(req, user=caller.user), req, changes=True,
                token=caller.token)
        except (RootMissing, RoleNotFound, InvalidArgument) as e:
            raise await self._as_etcd(req, e) from None
        await applied_here(node, result)
        return result

    async def _as_etcd(self, req: AuthRequest, err: Exception) -> Exception:
        a = req.action
        if isinstance(err, RootMissing):
            # etcd tells a missing root user from one without the root role (etcdctl's
            # `auth enable` reacts to the latter); the leader's view is ours after a barrier.
            await self.node.read_barrier()
            root = self.node.auth.view().users.get(ROOT)
            return ee.EtcdError(ee.ROOT_USER_NOT_EXIST if root is None
                                else ee.ROOT_ROLE_NOT_EXIST)
        if isinstance(err, RoleNotFound) and a == "user_revoke_role":
            return ee.EtcdError(ee.ROLE_NOT_GRANTED)
        if isinstance(err, InvalidArgument):
            if a == "role_revoke":
                return ee.EtcdError(ee.PERMISSION_NOT_GRANTED)
            if ROOT in (req.name, req.role) and a in ("user_delete", "user_revoke_role",
                                                      "role_delete"):
                return ee.EtcdError(ee.INVALID_AUTH_MGMT)
        return err

    def _header(self, result: dict[str, Any]) -> Any:
        return response_header(self.node, result)

    # -- signing in and switching auth on and off ---------------------------------------

    @unary(None)
    async def Authenticate(self, request: Any, context: Any) -> Any:  # noqa: N802 (etcd's)
        result = await self.node.auth.authenticate(request.name, request.password,
                                                   source=context.peer() or "")
        return etcd_proto().rpc_pb2.AuthenticateResponse(header=self._header(result),
                                                         token=result["token"])

    @unary(None)
    async def AuthEnable(self, request: Any, context: Any) -> Any:  # noqa: N802
        result = await self._admin(context, AuthRequest(action="enable"))
        return etcd_proto().rpc_pb2.AuthEnableResponse(header=self._header(result))

    @unary(None)
    async def AuthDisable(self, request: Any, context: Any) -> Any:  # noqa: N802
        result = await self._admin(context, AuthRequest(action="disable"))
        return etcd_proto().rpc_pb2.AuthDisableResponse(header=self._header(result))

    @unary(None)
    async def AuthStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
        result = await self._admin(context, AuthRequest(action="status"))
        return etcd_proto().rpc_pb2.AuthStatusResponse(
            header=self._header(result), enabled=result["enabled"],
            authRevision=result["auth_revision"] or 0)

    # -- users ------------------------------------------------------------------------------

    @staticmethod
    def _user_name(name: str) -> str:
        if not name:
            raise ee.EtcdError(ee.USER_EMPTY)
        return name

    @unary(None)
    async def UserAdd(self, request: Any, context: Any) -> Any:  # noqa: N802
        name = self._user_name(request.name)
        password = request.password
        if request.HasField("options") and request.options.no_password:
            password = secrets.token_urlsafe(NO_PASSWORD_BYTES)
        elif not password and request.hashedPassword:
            raise ee.EtcdError(HASHED_PASSWORD)
        result = await self._admin(context, AuthRequest(action="user_add", name=name,
                                                        password=password))
        return etcd_proto().rpc_pb2.AuthUserAddResponse(header=self._header(result))

    @unary(None)
    async def UserGet(self, request: Any, context: Any) -> Any:  # noqa: N802
        name = self._user_name(request.name)
        result = await self._admin(context, AuthRequest(action="user_get", name=name))
        return etcd_proto().rpc_pb2.AuthUserGetResponse(
            header=self._header(result), roles=sorted(result["user"]["roles"]))

    @unary(None)
    async def UserList(self, request: Any, context: Any) -> Any:  # noqa: N802
        result = await self._admin(context, AuthRequest(action="user_list"))
        return etcd_proto().rpc_pb2.AuthUserListResponse(header=self._header(result),
                                                         users=result["users"])

    @unary(None)
    async def UserDelete(self, request: Any, context: Any) -> Any:  # noqa: N802
        name = self._user_name(request.name)
        result = await self._admin(context, AuthRequest(action="user_delete", name=name))
        return etcd_proto().rpc_pb2.AuthUserDeleteResponse(header=self._header(result))

    @unary(None)
    async def UserChangePassword(self, request: Any, context: Any) -> Any:  # noqa: N802
        name = self._user_name(request.name)
        if not request.password and request.hashedPassword:
            raise ee.EtcdError(HASHED_PASSWORD)
        result = await self._admin(context, AuthRequest(action="user_passwd", name=name,
                                                        password=request.password))
        return etcd_proto().rpc_pb2.AuthUserChangePasswordResponse(header=self._header(result))

    @unary(None)
    async def UserGrantRole(self, request: Any, context: Any) -> Any:  # noqa: N802
        name = self._user_name(request.user)
        result = await self._admin(context, AuthRequest(action="user_grant_role", name=name,
                                                        role=request.role))
        return etcd_proto().rpc_pb2.AuthUserGrantRoleResponse(header=self._header(result))

    @unary(None)
    async def UserRevokeRole(self, request: Any, context: Any) -> Any:  # noqa: N802
        name = self._user_name(request.name)
        result = await self._admin(context, AuthRequest(action="user_revoke_role", name=name,
                                                        role=request.role))
        return etcd_proto().rpc_pb2.AuthUserRevokeRoleResponse(header=self._header(result))

    # -- roles ------------------------------------------------------------------------------

    @staticmethod
    def _role_name(role: str) -> str:
        if not role:
            raise ee.EtcdError(ee.ROLE_EMPTY)
        return role

    @unary(None)
    async def RoleAdd(self, request: Any, context: Any) -> Any:  # noqa: N802
        role = self._role_name(request.name)
        result = await self._admin(context, AuthRequest(action="role_add", role=role))
        return etcd_proto().rpc_pb2.AuthRoleAddResponse(header=self._header(result))

    @unary(None)
    async def RoleGet(self, request: Any, context: Any) -> Any:  # noqa: N802
        role = self._role_name(request.role)
        result = await self._admin(context, AuthRequest(action="role_get", role=role))
        auth_pb = etcd_proto().auth_pb2
        perms = [auth_pb.Permission(permType=PERM_TYPES.index(p["type"]), key=p["key"],
                                    range_end=p["range_end"] or b"")
                 for p in result["role"]["permissions"]]
        return etcd_proto().rpc_pb2.AuthRoleGetResponse(header=self._header(result),
                                                        perm=perms)

    @unary(None)
    async def RoleList(self, request: Any, context: Any) -> Any:  # noqa: N802
        result = await self._admin(context, AuthRequest(action="role_list"))
        return etcd_proto().rpc_pb2.AuthRoleListResponse(header=self._header(result),
                                                         roles=result["roles"])

    @unary(None)
    async def RoleDelete(self, request: Any, context: Any) -> Any:  # noqa: N802
        role = self._role_name(request.role)
        result = await self._admin(context, AuthRequest(action="role_delete", role=role))
        return etcd_proto().rpc_pb2.AuthRoleDeleteResponse(header=self._header(result))

    @unary(None)
    async def RoleGrantPermission(self, request: Any, context: Any) -> Any:  # noqa: N802
        role = self._role_name(request.name)
        perm = request.perm
        if perm.permType not in range(len(PERM_TYPES)):
            raise InvalidArgument(f"unknown permission type {perm.permType}")
        result = await self._admin(context, AuthRequest(
            action="role_grant", role=role, perm=PERM_TYPES[perm.permType], key=perm.key,
            range_end=_range_end(perm.range_end)))
        return etcd_proto().rpc_pb2.AuthRoleGrantPermissionResponse(header=self._header(result))

    @unary(None)
    async def RoleRevokePermission(self, request: Any, context: Any) -> Any:  # noqa: N802
        role = self._role_name(request.role)
        result = await self._admin(context, AuthRequest(
            action="role_revoke", role=role, key=request.key,
            range_end=_range_end(request.range_end)))
        return etcd_proto().rpc_pb2.AuthRoleRevokePermissionResponse(
            header=self._header(result))

