"""Who the command line signs in as: ``--user NAME[:PASSWORD]`` and ``--password``.

As etcdctl's: the password rides in ``--user`` after a colon, or in
``--password``, or in ``QUORUMKV_PASSWORD``; given only a name, the command
asks for it when stdin is a terminal and fails otherwise (a script must not hang
on a prompt nobody sees). ``QUORUMKV_USER`` stands for ``--user``. Like the other
connection options (``cli_common.py``) they are accepted before the command
and after it; a value after it wins.

The password is handed to the client and kept nowhere else: never printed,
never in a repr.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

USER_ENV = "QUORUMKV_USER"
PASSWORD_ENV = "QUORUMKV_PASSWORD"
USER_PARAM = "auth_user"
PASSWORD_PARAM = "auth_password"
_META = "quorumkv.credentials"
"""Where the options given before the command wait (click's meta is shared by the group's
context and the command's), so the group's own signature does not change."""
_F = TypeVar("_F", bound=Callable[..., Any])

_USER_HELP = "Sign in as this user (NAME, or NAME:PASSWORD)."
_PASSWORD_HELP = "The password of --user (else asked for on a terminal)."


def _remember(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and param.name is not None:
        ctx.meta.setdefault(_META, {})[param.name] = value
    return value


def credential_options(f: _F, *, group: bool) -> _F:
    """--user and --password: on the group (with their environment variables), or on a
    command (whose values reach it as ``auth_user``/``auth_password``)."""
    if group:
        f = click.option("--password", PASSWORD_PARAM, default=None, envvar=PASSWORD_ENV,
                         show_envvar=True, expose_value=False, callback=_remember,
                         help=_PASSWORD_HELP)(f)
        return click.option("--user", USER_PARAM, default=None, envvar=USER_ENV,
                            show_envvar=True, expose_value=False, callback=_remember,
                            help=_USER_HELP)(f)
    # No envvar here: it would override an explicit --user before the command.
    f = click.option("--password", PASSWORD_PARAM, default=None,
                     help=f"{_PASSWORD_HELP} [${PASSWORD_ENV}]")(f)
    return click.option("--user", USER_PARAM, default=None,
                        help=f"{_USER_HELP} [${USER_ENV}]")(f)


def without_password_option(command: click.Command) -> click.Command:
    """Drop the command's own --password of :func:`credential_options` (for a command
    whose --password is the password it sets: ``user add``, ``user passwd``); the
    signed-in user's password then goes before the command, in --user or in
    QUORUMKV_PASSWORD."""
    command.params = [p for p in command.params if p.name != PASSWORD_PARAM]
    return command


def resolve_credentials(user: str | None, password: str | None,
                        ) -> tuple[str | None, str | None]:
    """``(user, password)`` from the options after the command, else those before it
    (or their environment variables); ``(None, None)`` if no user is given."""
    before: dict[str, str] = click.get_current_context().meta.get(_META, {})
    if user is None:
        user = before.get(USER_PARAM)
    if password is None:
        password = before.get(PASSWORD_PARAM)
    if not user:
        if password:
            raise click.UsageError("--password needs --user")
        return None, None
    name, colon, inline = user.partition(":")
    if not name:
        raise click.UsageError("--user needs a name: NAME or NAME:PASSWORD")
    if colon:
        password = inline
    if not password:
        if not sys.stdin.isatty():
            raise click.UsageError(f"no password for user {name!r}: give --password, "
                                   f"--user NAME:PASSWORD or ${PASSWORD_ENV}")
        password = str(click.prompt(f"Password for {name}", hide_input=True, err=True))
    return name, password
