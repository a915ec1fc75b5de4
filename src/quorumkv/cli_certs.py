"""``quorumkv certs init | issue``: a development CA and the certificates it signs.

::

    quorumkv certs init --dir certs
    quorumkv certs issue n1 --dir certs --ip 127.0.0.1 --dns localhost
    quorumkv certs issue root --dir certs --client

A node certificate (the default) serves both as a server and as a client
certificate, so one per member covers its client, HTTP and peer ports. For
production, use certificates of your own PKI; these are for trying TLS out.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from quorumkv.cli_common import QuorumKVGroup
from quorumkv.security import certs

_DIR = click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False),
                    required=True, help="The CA's directory (ca.pem, ca-key.pem).")


@click.group("certs", cls=QuorumKVGroup)
def certs_group() -> None:
    """Make a development CA and certificates for nodes and clients."""


@certs_group.command("init")
@_DIR
@click.option("--days", type=click.IntRange(min=1), default=certs.DEFAULT_CA_DAYS,
              show_default=True, help="How long the CA is valid.")
@click.option("--force", is_flag=True, help="Replace an existing CA in the directory.")
def certs_init(directory: Path, days: int, force: bool) -> None:
    """Create a CA: DIR/ca.pem (share it) and DIR/ca-key.pem (keep it private)."""
    made = certs.init_ca(directory, days=days, force=force)
    click.echo(f"CA certificate {made.cert_file}, key {made.key_file}")


@certs_group.command("issue")
@click.argument("name")
@_DIR
@click.option("--ip", "ips", multiple=True,
              help="An IP address the holder is reached at (repeatable).")
@click.option("--dns", "dns", multiple=True,
              help="Another DNS name of the holder (repeatable); NAME is always one.")
@click.option("--days", type=click.IntRange(min=1), default=certs.DEFAULT_CERT_DAYS,
              show_default=True, help="How long the certificate is valid.")
@click.option("--client", "client_only", is_flag=True,
              help="A client-only certificate (for a user), not a node's.")
def certs_issue(name: str, directory: Path, ips: tuple[str, ...], dns: tuple[str, ...],
                days: int, client_only: bool) -> None:
    """Issue DIR/NAME.pem and DIR/NAME-key.pem, signed by DIR's CA (replacing any)."""
    made = certs.issue(directory, name, dns=dns, ips=ips, days=days, client_only=client_only)
    click.echo(f"certificate {made.cert_file}, key {made.key_file} (serial {made.serial:x})")



# -- serve's TLS flags --------------------------------------------------------------------

_SERVE_TLS_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("--cert-file", "cert_file",
     "The node's certificate (PEM) for its client and HTTP ports: they then speak TLS only."),
    ("--key-file", "key_file", "The key of --cert-file."),
    ("--trusted-ca-file", "trusted_ca_file",
     "CA bundle that signs client certificates (--client-cert-auth) and that this node "
     "trusts when it calls other members' client ports."),
    ("--peer-cert-file", "peer_cert_file",
     "The node's certificate for the peer port (mutual TLS); it must name this member. "
     "Also the client certificate this node presents to other members' client ports."),
    ("--peer-key-file", "peer_key_file", "The key of --peer-cert-file."),
    ("--peer-trusted-ca-file", "peer_trusted_ca_file",
     "The cluster CA: a peer's certificate must be signed by it."),
)


def serve_tls_options(f: Callable[..., None]) -> Callable[..., None]:
    """Give ``serve`` the TLS flags; it receives the ones given as ``tls_settings``, a dict
    of NodeConfig fields (so they override a TOML file's like any flag)."""

    @functools.wraps(f)
    def wrapper(*args: Any, client_cert_auth: bool | None, **kwargs: Any) -> None:
        given: dict[str, Any] = {}
        for _, field, _ in _SERVE_TLS_FLAGS:
            value = kwargs.pop(field)
            if value is not None:
                given[field] = value
        if client_cert_auth is not None:
            given["client_cert_auth"] = client_cert_auth
        f(*args, tls_settings=given, **kwargs)

    wrapper = click.option("--client-cert-auth", is_flag=True, default=None,
                           help="Require a client certificate signed by --trusted-ca-file "
                                "on the client and HTTP ports.")(wrapper)
    for flag, field, help_text in reversed(_SERVE_TLS_FLAGS):
        wrapper = click.option(flag, field, default=None, help=help_text,
                               type=click.Path(path_type=Path, dir_okay=False))(wrapper)
    return wrapper
