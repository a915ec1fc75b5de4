"""What every client command of the command line shares: where the cluster is, output, errors.

The connection options (``--endpoints``, ``--timeout``, ``--json``) are
accepted both before the command (``quorumkv --json get k``) and after it
(``quorumkv get k --json``), as etcdctl accepts its global flags anywhere.
A value given after the command wins; otherwise the one before it, then
``QUORUMKV_ENDPOINTS``, then the defaults of a local development cluster.
The TLS options ``--cacert``, ``--cert`` and ``--key`` (docs/security.md) follow
the same rules, with ``QUORUMKV_CACERT``, ``QUORUMKV_CERT`` and
``QUORUMKV_KEY``; given any of them, the client speaks TLS. So do ``--user``
and ``--password``, with ``QUORUMKV_USER`` and ``QUORUMKV_PASSWORD``
(``cli_credentials.py``).

Machine output (``--json``) is one JSON document on stdout. Keys and values
are bytes; one that is valid UTF-8 appears as ``"key"``/``"value"``, any
other as ``"key_base64"``/``"value_base64"``, so nothing is lost.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from quorumkv.cli_credentials import (
    PASSWORD_PARAM,
    USER_PARAM,
    credential_options,
    resolve_credentials,
)
from quorumkv.client import Client, KeyValue, TLSSettings
from quorumkv.errors import InvalidArgument, QuorumKVError

DEFAULT_ENDPOINTS = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103"
ENDPOINTS_ENV = "QUORUMKV_ENDPOINTS"
DEFAULT_TIMEOUT = 5.0
_TLS_OPTIONS = (
    ("cacert", "QUORUMKV_CACERT",
     "CA certificate(s) to verify the nodes' TLS certificates with; turns TLS on."),
    ("cert", "QUORUMKV_CERT", "Client certificate, for nodes that require one (TLS)."),
    ("key", "QUORUMKV_KEY", "The key of --cert."),
)
_F = TypeVar("_F", bound=Callable[..., Any])
_TLS_META = "quorumkv.tls_options"
"""Where the TLS options given before the command wait (click's meta is shared by the
group's context and the command's)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings:
    endpoints: tuple[str, ...]
    timeout: float
    json: bool
    tls: TLSSettings | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def client(self, **kw: Any) -> Client:
        return Client(self.endpoints, timeout=self.timeout, tls=self.tls, user=self.user,
                      password=self.password, **kw)


def lease_id_option(ctx: click.Context, param: click.Parameter, value: str | None,
                    ) -> int | None:
    """A lease id given in decimal or ``0x`` hex (click callback); None if not given."""
    if value is None:
        return None
    s = value.strip().lower()
    try:
        lease_id = int(s[2:], 16) if s.startswith("0x") else int(s, 10)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a lease id (decimal, or hex with 0x)",
                                 ctx, param) from None
    if not 0 < lease_id < 1 << 63:
        raise click.BadParameter("a lease id is a positive 63-bit integer", ctx, param)
    return lease_id


def parse_endpoints(text: str) -> tuple[str, ...]:
    endpoints = tuple(p.strip() for p in text.split(",") if p.strip())
    if not endpoints:
        raise InvalidArgument("no endpoints given: expected HOST:PORT,...")
    return endpoints


class QuorumKVGroup(click.Group):
    """A command group that turns quorumkv's own errors into one line and exit code 1.

    Only errors of the one hierarchy are caught: anything else is a bug and
    keeps its traceback.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except QuorumKVError as err:
            fail(err)


def fail(err: QuorumKVError) -> None:
    click.echo(f"error ({err.code}): {err.message}", err=True)
    raise click.exceptions.Exit(1)


def group_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The connection options on the top-level group, where the environment variable applies."""
    f = click.option("--json", "json_output", is_flag=True,
                     help="Machine-readable output (JSON).")(f)
    f = click.option("--timeout", type=float, default=DEFAULT_TIMEOUT, show_default=True,
                     help="Seconds for each request, retries included.")(f)
    f = _tls_options(f, group=True)
    f = credential_options(f, group=True)
    return click.option("--endpoints", envvar=ENDPOINTS_ENV, default=DEFAULT_ENDPOINTS,
                        show_default=True, show_envvar=True,
                        help="Client addresses of the cluster's members, HOST:PORT,...")(f)


def client_command(f: Callable[..., None]) -> Callable[..., None]:
    """Give a command the connection options and pass it the resolved ``settings``."""

    @functools.wraps(f)
    def wrapper(*args: Any, endpoints: str | None, timeout: float | None, json_output: bool,
                tls_cacert: Path | None, tls_cert: Path | None, tls_key: Path | None,
                **kwargs: Any) -> None:
        # Popped, not named: a command may drop its --password (cli_credentials.py).
        user, password = resolve_credentials(kwargs.pop(USER_PARAM, None),
                                             kwargs.pop(PASSWORD_PARAM, None))
        outer = click.get_current_context().find_object(ClientSettings)
        if outer is None:  # the command was invoked on its own, not through the group
            outer = ClientSettings(endpoints=parse_endpoints(DEFAULT_ENDPOINTS),
                                   timeout=DEFAULT_TIMEOUT, json=False)
        settings = ClientSettings(
            endpoints=outer.endpoints if endpoints is None else parse_endpoints(endpoints),
            timeout=outer.timeout if timeout is None else timeout,
            json=outer.json or json_output,
            tls=_tls_settings(tls_cacert=tls_cacert, tls_cert=tls_cert, tls_key=tls_key),
            user=user, password=password)
        f(*args, settings=settings, **kwargs)

    # No envvar here: it would override an explicit --endpoints before the command.
    wrapper = _tls_options(wrapper, group=False)
    wrapper = credential_options(wrapper, group=False)
    wrapper = click.option("--json", "json_output", is_flag=True,
                           help="Machine-readable output (JSON).")(wrapper)
    wrapper = click.option("--timeout", type=float, default=None,
                           help="Seconds for each request, retries included.")(wrapper)
    return click.option("--endpoints", default=None,
                        help=f"Cluster endpoints HOST:PORT,... [${ENDPOINTS_ENV}, else "
                        "127.0.0.1:7101-7103].")(wrapper)


def _remember_tls(ctx: click.Context, param: click.Parameter, value: Path | None,
                  ) -> Path | None:
    if value is not None and param.name is not None:
        ctx.meta.setdefault(_TLS_META, {})[param.name] = value
    return value


def _tls_options(f: _F, *, group: bool) -> _F:
    """--cacert, --cert, --key: on the group (with their environment variables, kept in
    the context's meta, so the group's own signature does not change), or on a command."""
    for name, env, help_text in reversed(_TLS_OPTIONS):
        kind = click.Path(path_type=Path, dir_okay=False, exists=True)
        if group:
            f = click.option(f"--{name}", f"tls_{name}", type=kind, default=None, envvar=env,
                             show_envvar=True, expose_value=False, callback=_remember_tls,
                             help=help_text)(f)
        else:
            # Not plain "key": the kv commands' KEY argument would clash with it.
            f = click.option(f"--{name}", f"tls_{name}", type=kind, default=None,
                             help=f"{help_text} [${env}]")(f)
    return f


def _tls_settings(**after: Path | None) -> TLSSettings | None:
    """The TLS options after the command, else those before it (or their environment
    variables); None if none was given (plaintext)."""
    ctx = click.get_current_context()
    before: dict[str, Path] = ctx.meta.get(_TLS_META, {})
    given = {name: after[name] if after.get(name) is not None else before.get(name)
             for name in (f"tls_{n}" for n, _, _ in _TLS_OPTIONS)}
    if all(v is None for v in given.values()):
        return None
    return TLSSettings(ca_file=given["tls_cacert"], cert_file=given["tls_cert"],
                       key_file=given["tls_key"])


# -- output ------------------------------------------------------------------------------


def emit_json(doc: object) -> None:
    click.echo(json.dumps(doc))


def text(data: bytes) -> str:
    """Bytes for a human: UTF-8, with anything else shown as escapes rather than lost."""
    return data.decode("utf-8", errors="backslashreplace")


def bytes_field(name: str, data: bytes) -> dict[str, str]:
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(data).decode("ascii")}


def kv_json(kv: KeyValue, *, keys_only: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = bytes_field("key", kv.key)
    if not keys_only:
        doc |= bytes_field("value", kv.value)
    doc |= {"create_revision": kv.create_revision, "mod_revision": kv.mod_revision,
            "version": kv.version, "lease": kv.lease, "timestamp": kv.timestamp}
    return doc
