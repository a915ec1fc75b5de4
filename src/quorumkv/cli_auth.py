"""Users, roles and auth on the command line: ``user``, ``role`` and ``auth`` (docs/security.md).

::

    quorumkv user add root --password ...            # asked for twice if not given
    quorumkv auth enable                             # as etcdctl: makes role root if need be
    quorumkv --user root role add app-reader
    quorumkv --user root role grant app-reader read app/ --prefix
    quorumkv --user root user add alice
    quorumkv --user root user grant-role alice app-reader

Once auth is enabled every change, and every listing, needs a user with the
role ``root`` (``--user``/``--password``, see ``cli_credentials.py``). A
password is never printed. ``user add`` and ``user passwd`` take the new
password in their own ``--password`` (or ``--password-stdin``, or a prompt);
the signed-in user's password then goes in ``--user NAME:PASSWORD``, before
the command, or in ``QUORUMKV_PASSWORD``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from quorumkv.cli_common import ClientSettings, bytes_field, client_command, emit_json, text
from quorumkv.cli_credentials import without_password_option
from quorumkv.client import ALL_KEYS
from quorumkv.client.auth_wire import PERM_TYPES
from quorumkv.errors import RootMissing, UserNotFound
from quorumkv.kv.auth import ROOT


def _changed(settings: ClientSettings, message: str, doc: dict[str, Any]) -> None:
    if settings.json:
        emit_json(doc)
    else:
        click.echo(message)


def _new_password(name: str, password: str | None, from_stdin: bool) -> str:
    if password is not None and from_stdin:
        raise click.UsageError("give --password or --password-stdin, not both")
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif password is None:
        # Twice, hidden: a typo would lock the user out.
        password = str(click.prompt(f"Password of {name}", hide_input=True,
                                    confirmation_prompt=True, err=True))
    if not password:
        raise click.UsageError("the password must not be empty")
    return password


def _password_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--password-stdin", is_flag=True,
                     help="Read the new password from the first line of stdin.")(f)
    return click.option("--password", "new_password", default=None,
                        help="The new password (asked for twice if not given). Sign in "
                             "with --user NAME:PASSWORD before the command.")(f)


# -- user ------------------------------------------------------------------------------


@click.group()
def user() -> None:
    """Users: add, delete, passwd, grant-role, revoke-role, get, list."""


@without_password_option
@user.command(name="add")
@click.argument("name")
@_password_options
@client_command
def user_add(name: str, new_password: str | None, password_stdin: bool, *,
             settings: ClientSettings) -> None:
    """Add the user NAME."""
    password = _new_password(name, new_password, password_stdin)
    with settings.client() as c:
        revision = c.user_add(name, password)
    _changed(settings, f"User {name} added", {"user": name, "auth_revision": revision})


@user.command(name="delete")
@click.argument("name")
@client_command
def user_delete(name: str, *, settings: ClientSettings) -> None:
    """Delete the user NAME."""
    with settings.client() as c:
        revision = c.user_delete(name)
    _changed(settings, f"User {name} deleted", {"user": name, "auth_revision": revision})


@without_password_option
@user.command(name="passwd")
@click.argument("name")
@_password_options
@client_command
def user_passwd(name: str, new_password: str | None, password_stdin: bool, *,
                settings: ClientSettings) -> None:
    """Change the password of NAME (their tokens stop working)."""
    password = _new_password(name, new_password, password_stdin)
    with settings.client() as c:
        revision = c.user_passwd(name, password)
    _changed(settings, "Password updated", {"user": name, "auth_revision": revision})


@user.command(name="grant-role")
@click.argument("name")
@click.argument("role")
@client_command
def user_grant_role(name: str, role: str, *, settings: ClientSettings) -> None:
    """Give the user NAME the role ROLE."""
    with settings.client() as c:
        revision = c.user_grant_role(name, role)
    _changed(settings, f"Role {role} is granted to user {name}",
             {"user": name, "role": role, "auth_revision": revision})


@user.command(name="revoke-role")
@click.argument("name")
@click.argument("role")
@client_command
def user_revoke_role(name: str, role: str, *, settings: ClientSettings) -> None:
    """Take the role ROLE from the user NAME."""
    with settings.client() as c:
        revision = c.user_revoke_role(name, role)
    _changed(settings, f"Role {role} is revoked from user {name}",
             {"user": name, "role": role, "auth_revision": revision})


@user.command(name="get")
@click.argument("name")
@client_command
def user_get(name: str, *, settings: ClientSettings) -> None:
    """Show the user NAME and their roles."""
    with settings.client() as c:
        doc = c.user_get(name)
    if settings.json:
        emit_json(doc)
        return
    click.echo(f"User: {doc['name']}")
    click.echo(f"Roles: {' '.join(doc['roles'])}".rstrip())


@user.command(name="list")
@client_command
def user_list(*, settings: ClientSettings) -> None:
    """List the users, one a line."""
    with settings.client() as c:
        names = c.user_list()
    if settings.json:
        emit_json({"users": names})
        return
    for name in names:
        click.echo(name)


# -- role ------------------------------------------------------------------------------


@click.group()
def role() -> None:
    """Roles: add, delete, grant, revoke, get, list."""


def _range_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--from-key", is_flag=True,
                     help="Every key from KEY on (no RANGE_END).")(f)
    return click.option("--prefix", is_flag=True,
                        help="Every key starting with KEY (no RANGE_END).")(f)


def _permission_keys(key: str, range_end: str | None, prefix: bool, from_key: bool,
                     ) -> tuple[str | bytes, str | bytes | None]:
    if sum((range_end is not None, prefix, from_key)) > 1:
        raise click.UsageError("give one of RANGE_END, --prefix and --from-key")
    if from_key:
        return key, ALL_KEYS
    return key, range_end


@role.command(name="add")
@click.argument("role_name", metavar="ROLE")
@client_command
def role_add(role_name: str, *, settings: ClientSettings) -> None:
    """Add the role ROLE."""
    with settings.client() as c:
        revision = c.role_add(role_name)
    _changed(settings, f"Role {role_name} created", {"role": role_name, "auth_revision": revision})


@role.command(name="delete")
@click.argument("role_name", metavar="ROLE")
@client_command
def role_delete(role_name: str, *, settings: ClientSettings) -> None:
    """Delete the role ROLE."""
    with settings.client() as c:
        revision = c.role_delete(role_name)
    _changed(settings, f"Role {role_name} deleted", {"role": role_name, "auth_revision": revision})


@role.command(name="grant")
@click.argument("role_name", metavar="ROLE")
@click.argument("perm", metavar="read|write|readwrite", type=click.Choice(PERM_TYPES))
@click.argument("key")
@click.argument("range_end", required=False)
@_range_options
@client_command
def role_grant(role_name: str, perm: str, key: str, range_end: str | None, prefix: bool,
               from_key: bool, *, settings: ClientSettings) -> None:
    """Let ROLE read, write or both KEY, or [KEY, RANGE_END), or every key with the prefix
    KEY (--prefix), or every key from KEY on (--from-key)."""
    k, end = _permission_keys(key, range_end, prefix, from_key)
    with settings.client() as c:
        revision = c.role_grant(role_name, perm, k, end, prefix=prefix)
    _changed(settings, f"Role {role_name} updated",
             {"role": role_name, "auth_revision": revision})


@role.command(name="revoke")
@click.argument("role_name", metavar="ROLE")
@click.argument("key")
@click.argument("range_end", required=False)
@_range_options
@client_command
def role_revoke(role_name: str, key: str, range_end: str | None, prefix: bool, from_key: bool,
                *, settings: ClientSettings) -> None:
    """Take back ROLE's permission on exactly these keys (given as to ``role grant``)."""
    k, end = _permission_keys(key, range_end, prefix, from_key)
    with settings.client() as c:
        revision = c.role_revoke(role_name, k, end, prefix=prefix)
    _changed(settings, f"Permission revoked from role {role_name}",
             {"role": role_name, "auth_revision": revision})


def _describe(key: bytes, range_end: bytes | None) -> str:
    if range_end is None:
        return text(key)
    if range_end == ALL_KEYS:
        return f"[{text(key)}, <end>) (from key)"
    return f"[{text(key)}, {text(range_end)})"


def _permission_json(p: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": p["type"], **bytes_field("key", p["key"])}
    end = p["range_end"]
    if end is None:
        doc["range_end"] = None
    else:
        doc |= bytes_field("range_end", end)
    return doc


@role.command(name="get")
@click.argument("role_name", metavar="ROLE")
@client_command
def role_get(role_name: str, *, settings: ClientSettings) -> None:
    """Show the role ROLE and what it grants."""
    with settings.client() as c:
        doc = c.role_get(role_name)
    perms = doc["permissions"]
    if settings.json:
        emit_json({"name": doc["name"], "all_keys": doc["all_keys"],
                   "permissions": [_permission_json(p) for p in perms]})
        return
    click.echo(f"Role {doc['name']}")
    if doc["all_keys"]:
        click.echo("Every key and every operation (the root role)")
    for title, types in (("KV Read", ("read", "readwrite")),
                         ("KV Write", ("write", "readwrite"))):
        click.echo(f"{title}:")
        for p in perms:
            if p["type"] in types:
                click.echo(f"\t{_describe(p['key'], p['range_end'])}")


@role.command(name="list")
@client_command
def role_list(*, settings: ClientSettings) -> None:
    """List the roles, one a line."""
    with settings.client() as c:
        names = c.role_list()
    if settings.json:
        emit_json({"roles": names})
        return
    for name in names:
        click.echo(name)


# -- auth ------------------------------------------------------------------------------


@click.group(name="auth")
def auth() -> None:
    """Authentication: enable, disable, status."""


@auth.command(name="enable")
@client_command
def auth_enable(*, settings: ClientSettings) -> None:
    """Turn authentication on. As etcdctl does, makes the role root if it is missing and
    grants it to the user root, which must exist (``quorumkv user add root``)."""
    with settings.client() as c:
        try:
            root = c.user_get(ROOT)
        except UserNotFound:
            raise RootMissing(f"add the user {ROOT!r} first (quorumkv user add {ROOT}): "
                              f"auth enable makes it the cluster's administrator") from None
        if ROOT not in c.role_list():
            c.role_add(ROOT)
        if ROOT not in root["roles"]:
            c.user_grant_role(ROOT, ROOT)
        revision = c.auth_enable()
    _changed(settings, "Authentication Enabled", {"enabled": True, "auth_revision": revision})


@auth.command(name="disable")
@client_command
def auth_disable(*, settings: ClientSettings) -> None:
    """Turn authentication off: every request is allowed again."""
    with settings.client() as c:
        revision = c.auth_disable()
    _changed(settings, "Authentication Disabled", {"enabled": False, "auth_revision": revision})


@auth.command(name="status")
@client_command
def auth_status(*, settings: ClientSettings) -> None:
    """Whether authentication is on, and the revision of the users and roles."""
    with settings.client() as c:
        doc = c.auth_status()
    if settings.json:
        emit_json(doc)
        return
    click.echo(f"Authentication Status: {'true' if doc['enabled'] else 'false'}")
    click.echo(f"AuthRevision: {doc['auth_revision']}")
    if doc["user"] is not None:
        click.echo(f"User: {doc['user']}")
