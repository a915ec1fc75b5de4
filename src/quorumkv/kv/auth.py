"""Users, roles and permissions: the replicated half of authentication (pure, like all of kv/).

The model is etcd v3's. A *role* grants permissions, each READ, WRITE or
READWRITE on one key, a key range ``[key, range_end)`` or everything from a
key on (``range_end`` :data:`~quorumkv.kv.keys.ALL_KEYS`), exactly as ranges
are written everywhere else. A *user* has a password hash and roles. The role
``root`` (created like any other) grants everything, whatever permissions it lists; the
user ``root`` must exist and hold it before
auth can be enabled, so that enabling auth never locks everyone out.

All of it lives in the state machine's ``meta`` database under ``auth/`` and
changes only through :class:`~quorumkv.kv.commands.AuthChange` entries, so it
is the same on every replica, survives restarts and travels in snapshots and
backups. The password hash and the token-signing secret are computed by the
node that proposes the change (``server/auth.py``): applying an entry never
draws a random number.

Every client write is logged inside an
:class:`~quorumkv.kv.commands.Authorized` naming its user (or no user), and
the store checks it again *when it applies*, against the auth state at that
point of the log: a permission revoked between the node's check and the
commit still denies the write, the same way on every replica.

Improving on etcd: a permission check over a range asks whether the union of
the user's grants covers the whole range (etcd merges grants too), a
transaction needs every operation of *both* branches (the branch taken must
not depend on what the user may see), and a token dies when its user's
password changes or the user is deleted (each user has a generation).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from quorumkv.errors import (
    AlreadyExists,
    InvalidArgument,
    PermissionDenied,
    RoleNotFound,
    RootMissing,
    Unauthenticated,
    UserNotFound,
)
from quorumkv.kv.commands import (
    AuthChange,
    Compact,
    DeleteRange,
    LeaseGrant,
    LeaseRevoke,
    Put,
    RangeRequest,
    Session,
    Txn,
    Write,
)
from quorumkv.kv.history import Txn as LmdbTxn
from quorumkv.kv.keys import ALL_KEYS
from quorumkv.kv.packing import pack, unpack

ROOT = "root"
AUTH_PREFIX = b"auth/"
_SETTINGS_KEY = b"auth/settings"
_USER_PREFIX = b"auth/user/"
_ROLE_PREFIX = b"auth/role/"


class PermType(enum.IntEnum):
    READ = 0
    WRITE = 1
    READWRITE = 2

    def allows(self, *, write: bool) -> bool:
        return self is PermType.READWRITE or self is (PermType.WRITE if write else PermType.READ)


@dataclass(frozen=True, slots=True, kw_only=True)
class Permission:
    type: PermType
    key: bytes
    range_end: bytes | None = None
    """None: the key alone; ALL_KEYS: every key from ``key`` on; else ``[key, range_end)``."""

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type.name.lower(), "key": self.key, "range_end": self.range_end}


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    name: str
    password_hash: str = ""
    roles: tuple[str, ...] = ()
    generation: int = 1
    """Bumped when the password changes: tokens carry it, so older ones die."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Role:
    name: str
    permissions: tuple[Permission, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthSettings:
    enabled: bool = False
    revision: int = 0
    """Counts applied auth changes."""
    secret: bytes = b""
    """Signs tokens; new at every enable, so disabling and enabling revokes every token."""


@dataclass(frozen=True, slots=True)
class Need:
    """What an operation needs: READ or WRITE on a range, or ``root``."""

    key: bytes
    range_end: bytes | None
    write: bool


ROOT_NEED = Need(b"", None, True)
"""Marks an operation only root may do (compaction, auth changes, backups)."""


def _interval(key: bytes, range_end: bytes | None) -> tuple[bytes, bytes | None]:
    """``[start, end)`` with end None meaning "no end"."""
    if range_end is None:
        return key, key + b"\0"
    if range_end == ALL_KEYS:
        return key, None
    return key, range_end


def covers(grants: Iterable[tuple[bytes, bytes | None]], key: bytes,
           range_end: bytes | None) -> bool:
    """Whether the union of the intervals ``grants`` covers the range of ``key``/``range_end``."""
    start, end = _interval(key, range_end)
    if end is not None and end <= start:
        return True  # an empty range reads or writes nothing
    pos = start
    for g_start, g_end in sorted(grants, key=lambda g: g[0]):
        if g_start > pos:
            break  # a gap before this grant, and the rest start later still
        if g_end is None:
            return True
        if g_end > pos:
            pos = g_end
            if end is not None and pos >= end:
                return True
    return False


@dataclass(frozen=True, slots=True)
class AuthView:
    """The auth state at one point of the log, for checks (immutable)."""

    settings: AuthSettings
    users: dict[str, User]
    roles: dict[str, Role]

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def is_root(self, user: str) -> bool:
        u = self.users.get(user)
        return u is not None and ROOT in u.roles

    def _grants(self, user: User, *, write: bool) -> list[tuple[bytes, bytes | None]]:
        out = []
        for name in user.roles:
            role = self.roles.get(name)
            if role is None:
                continue
            for perm in role.permissions:
                if perm.type.allows(write=write):
                    out.append(_interval(perm.key, perm.range_end))
        return out

    def check(self, user: str | None, needs: Iterable[Need]) -> None:
        """Raise Unauthenticated or PermissionDenied unless ``user`` may do all of
        ``needs``; nothing is needed while auth is disabled."""
        if not self.settings.enabled:
            return
        if user is None:
            raise Unauthenticated("auth is enabled: sign in (user and password) first")
        record = self.users.get(user)
        if record is None:
            raise PermissionDenied(f"user {user!r} no longer exists", user=user)
        if ROOT in record.roles:
            return
        for need in needs:
            if need is ROOT_NEED:
                raise PermissionDenied(f"only a user with the role {ROOT!r} may do this",
                                       user=user)
            if not covers(self._grants(record, write=need.write), need.key, need.range_end):
                what = "write" if need.write else "read"
                raise PermissionDenied(
                    f"user {user!r} may not {what} {_describe(need.key, need.range_end)}",
                    user=user)


def _describe(key: bytes, range_end: bytes | None) -> str:
    if range_end is None:
        return f"key {key[:80]!r}"
    if range_end == ALL_KEYS:
        return f"keys from {key[:80]!r} on"
    return f"keys [{key[:80]!r}, {range_end[:80]!r})"


def needs_of(cmd: Write, lease_keys: Iterable[bytes] = ()) -> list[Need]:
    """What ``cmd`` needs. ``lease_keys``: the keys attached to a revoked lease (revoking
    deletes them, so it needs WRITE on each, as in etcd)."""
    if isinstance(cmd, Put):
        return [Need(cmd.key, None, True)]
    if isinstance(cmd, DeleteRange):
        return [Need(cmd.key, cmd.range_end, True)]
    if isinstance(cmd, Txn):
        out = [Need(c.key, c.range_end, False) for c in cmd.compares]
        for op in (*cmd.success, *cmd.failure):
            if isinstance(op, RangeRequest):
                out.append(Need(op.key, op.range_end, False))
            else:
                out.append(Need(op.key, op.range_end if isinstance(op, DeleteRange) else None,
                                True))
        return out
    if isinstance(cmd, Compact):
        return [ROOT_NEED]
    if isinstance(cmd, LeaseGrant):
        return []  # any signed-in user may hold a lease; attaching a key is a Put
    if isinstance(cmd, LeaseRevoke):
        return [Need(k, None, True) for k in lease_keys]
    raise InvalidArgument(f"not a write: {type(cmd).__name__}")


def inner_write(cmd: Write | Session | AuthChange) -> Write | AuthChange:
    return cmd.command if isinstance(cmd, Session) else cmd


# -- records in the meta database ------------------------------------------------------


def _encode_settings(s: AuthSettings) -> bytes:
    return pack([s.enabled, s.revision, s.secret])


def _encode_user(u: User) -> bytes:
    return pack([u.password_hash, list(u.roles), u.generation])


def _encode_role(r: Role) -> bytes:
    return pack([[[int(p.type), p.key, p.range_end] for p in r.permissions]])


def _decode(data: bytes, what: str) -> list[Any]:
    obj = unpack(data)
    if not isinstance(obj, list):
        raise InvalidArgument(f"malformed {what} record")
    return obj


def _read_settings(data: bytes | None) -> AuthSettings:
    if data is None:
        return AuthSettings()
    enabled, revision, secret = _decode(data, "auth settings")
    return AuthSettings(enabled=bool(enabled), revision=int(revision), secret=bytes(secret))


def _read_user(name: str, data: bytes) -> User:
    password_hash, roles, generation = _decode(data, "user")
    return User(name=name, password_hash=str(password_hash),
                roles=tuple(str(r) for r in roles), generation=int(generation))


def _read_role(name: str, data: bytes) -> Role:
    (perms,) = _decode(data, "role")
    return Role(name=name, permissions=tuple(
        Permission(type=PermType(t), key=bytes(k), range_end=None if e is None else bytes(e))
        for t, k, e in perms))


class AuthTable:
    """Auth records inside the store's LMDB write transactions (``meta`` database)."""

    def __init__(self, meta_db: Any) -> None:
        self._db = meta_db

    def _scan(self, txn: LmdbTxn, prefix: bytes) -> Iterator[tuple[str, bytes]]:
        cursor = txn.cursor(db=self._db)
        if cursor.set_range(prefix):
            for key, value in cursor:
                if not key.startswith(prefix):
                    break
                yield key[len(prefix):].decode(), value

    def view(self, txn: LmdbTxn) -> AuthView:
        return AuthView(_read_settings(txn.get(_SETTINGS_KEY, db=self._db)),
                        {n: _read_user(n, v) for n, v in self._scan(txn, _USER_PREFIX)},
                        {n: _read_role(n, v) for n, v in self._scan(txn, _ROLE_PREFIX)})

    def items(self, txn: LmdbTxn) -> Iterator[tuple[bytes, bytes]]:
        """Every auth record, for the store's digest."""
        cursor = txn.cursor(db=self._db)
        if cursor.set_range(AUTH_PREFIX):
            for key, value in cursor:
                if not key.startswith(AUTH_PREFIX):
                    break
                yield key, value

    def apply(self, txn: LmdbTxn, view: AuthView, change: AuthChange) -> int:
        """Apply ``change`` (checked completely before its first write); the new auth
        revision."""
        users, roles = view.users, view.roles
        a = change.action
        settings = view.settings
        put_users: dict[str, User | None] = {}
        put_roles: dict[str, Role | None] = {}
        if a == "enable":
            root = users.get(ROOT)
            if root is None or ROOT not in root.roles:
                raise RootMissing(f"auth cannot be enabled before the user {ROOT!r} exists "
                                  f"with the role {ROOT!r}")
            if not settings.enabled:
                settings = replace(settings, enabled=True, secret=change.secret)
        elif a == "disable":
            settings = replace(settings, enabled=False, secret=b"")
        elif a == "user_add":
            if change.name in users:
                raise AlreadyExists(f"user {change.name!r} already exists", user=change.name)
            put_users[change.name] = User(name=change.name, password_hash=change.password_hash)
        elif a == "user_delete":
            self._user(users, change.name)
            if change.name == ROOT and settings.enabled:
                raise InvalidArgument(f"the user {ROOT!r} cannot be deleted while auth is "
                                      f"enabled")
            put_users[change.name] = None
        elif a == "user_passwd":
            u = self._user(users, change.name)
            put_users[u.name] = replace(u, password_hash=change.password_hash,
                                        generation=u.generation + 1)
        elif a == "user_grant_role":
            u = self._user(users, change.name)
            if change.role not in roles:
                raise RoleNotFound(f"role {change.role!r} not found", role=change.role)
            if change.role not in u.roles:
                put_users[u.name] = replace(u, roles=(*u.roles, change.role))
        elif a == "user_revoke_role":
            u = self._user(users, change.name)
            if change.role not in u.roles:
                raise RoleNotFound(f"user {u.name!r} does not have the role {change.role!r}",
                                   role=change.role)
            if u.name == ROOT and change.role == ROOT and settings.enabled:
                raise InvalidArgument(f"the user {ROOT!r} cannot lose the role {ROOT!r} while "
                                      f"auth is enabled")
            put_users[u.name] = replace(u, roles=tuple(r for r in u.roles if r != change.role),
                                        generation=u.generation + 1)
        elif a == "role_add":
            if change.role in roles:
                raise AlreadyExists(f"role {change.role!r} already exists", role=change.role)
            put_roles[change.role] = Role(name=change.role)
        elif a == "role_delete":
            self._role(roles, change.role)
            if change.role == ROOT and settings.enabled:
                raise InvalidArgument(f"the role {ROOT!r} cannot be deleted while auth is "
                                      f"enabled")
            put_roles[change.role] = None
            for u in users.values():  # nobody keeps a role that is gone (as in etcd)
                if change.role in u.roles:
                    put_users[u.name] = replace(
                        u, roles=tuple(r for r in u.roles if r != change.role))
        elif a == "role_grant":
            r = self._role(roles, change.role)
            if change.perm not in PermType.__members__.values():
                raise InvalidArgument(f"unknown permission type {change.perm}")
            perm = Permission(type=PermType(change.perm), key=change.key,
                              range_end=change.range_end)
            kept = tuple(p for p in r.permissions
                         if (p.key, p.range_end) != (perm.key, perm.range_end))
            put_roles[r.name] = replace(r, permissions=(*kept, perm))
        elif a == "role_revoke":
            r = self._role(roles, change.role)
            kept = tuple(p for p in r.permissions
                         if (p.key, p.range_end) != (change.key, change.range_end))
            if len(kept) == len(r.permissions):
                raise InvalidArgument(f"role {r.name!r} has no permission on "
                                      f"{_describe(change.key, change.range_end)}")
            put_roles[r.name] = replace(r, permissions=kept)
        else:
            raise InvalidArgument(f"unknown auth change {a!r}")
        settings = replace(settings, revision=settings.revision + 1)
        txn.put(_SETTINGS_KEY, _encode_settings(settings), db=self._db)
        for name, user in put_users.items():
            key = _USER_PREFIX + name.encode()
            if user is None:
                txn.delete(key, db=self._db)
            else:
                txn.put(key, _encode_user(user), db=self._db)
        for name, role in put_roles.items():
            key = _ROLE_PREFIX + name.encode()
            if role is None:
                txn.delete(key, db=self._db)
            else:
                txn.put(key, _encode_role(role), db=self._db)
        return settings.revision

    @staticmethod
    def _user(users: dict[str, User], name: str) -> User:
        u = users.get(name)
        if u is None:
            raise UserNotFound(f"user {name!r} not found", user=name)
        return u

    @staticmethod
    def _role(roles: dict[str, Role], name: str) -> Role:
        r = roles.get(name)
        if r is None:
            raise RoleNotFound(f"role {name!r} not found", role=name)
        return r
