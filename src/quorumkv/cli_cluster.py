"""Cluster commands of the command line: status, member list/add/remove/promote, leave.

The membership changes take the cluster token (``--token``, else
``QUORUMKV_TOKEN``, else the default every node starts with); it is sent to
the node and never printed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from quorumkv.cli_common import ClientSettings, client_command, emit_json
from quorumkv.client import DEFAULT_TOKEN, Client, Member
from quorumkv.tools.cluster_view import ClusterView, cluster_view

TOKEN_ENV = "QUORUMKV_TOKEN"
UNBOUNDED_WIDTH = 1000


def _console() -> Console:
    console = Console()
    # Without a terminal there is no width to fit, and rich's 80 columns (or a COLUMNS that
    # readline exported in some parent process) would cut the very addresses and numbers a
    # script or a log is after.
    return console if console.is_terminal else Console(width=UNBOUNDED_WIDTH)


def _cell(value: object, style: str = "") -> Text:
    # Text, not markup: an address such as "[::1]:7101" must print as it is.
    return Text("-" if value is None else str(value), style=style)


def _seconds(value: float | None) -> str | None:
    return None if value is None else f"{value:.1f}s"


def _one_decimal(value: float | None) -> str | None:
    return None if value is None else f"{value:.1f}"


def token_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--token", envvar=TOKEN_ENV, default=DEFAULT_TOKEN, show_default=True,
                        show_envvar=True, help="The cluster token.")(f)


@click.command()
@client_command
def status(*, settings: ClientSettings) -> None:
    """Show every member: role, term, commit and applied index, replication, health."""
    view = asyncio.run(cluster_view(settings.endpoints, settings.timeout, settings.tls))
    if settings.json:
        emit_json(view.to_json())
        return
    _print_status(view)


def _print_status(view: ClusterView) -> None:
    console = _console()
    if view.leader:
        console.print(Text.assemble("leader: ", (view.leader, "bold"),
                                    f" (term {'-' if view.term is None else view.term})"))
    else:
        console.print("leader: [bold red]none[/bold red] (no member knows of a leader)")
    table = Table()
    for header in ("name", "address", "role", "term", "commit", "applied", "match", "status",
                   "phi", "last seen", "lag"):
        table.add_column(header, justify="left" if header in ("name", "address", "role",
                                                              "status") else "right")
    for m in view.members:
        style = "bold" if m.role == "leader" else "" if m.reachable else "red"
        table.add_row(_cell(m.name), _cell(m.address), _cell(m.role, style), _cell(m.term),
                      _cell(m.commit), _cell(m.applied), _cell(m.match),
                      _cell(m.status, "" if m.status in (None, "active") else "red"),
                      _cell(_one_decimal(m.phi)), _cell(_seconds(m.last_seen)), _cell(m.lag))
    console.print(table)
    for m in view.members:
        if m.error:
            click.echo(f"{m.name}: {m.error}")  # unwrapped, unlike rich's output
    for m in view.members:
        if m.promotion:
            click.echo(f"{m.name}: not promoted yet: {m.promotion}")


@click.group()
def member() -> None:
    """Cluster membership."""


@member.command(name="list")
@client_command
def member_list(*, settings: ClientSettings) -> None:
    """List the members: name, id, voter or learner, peer and client address."""
    with settings.client() as c:
        listing = c.membership()
    if settings.json:
        emit_json({"members": [asdict(m) for m in listing.members], "leader": listing.leader})
        return
    table = Table()
    for header in ("name", "id", "kind", "peer address", "client address"):
        table.add_column(header)
    for m in listing.members:
        table.add_row(_cell(m.name), _cell(m.id), _cell(_kind(m)), _cell(m.peer_address),
                      _cell(m.client_address))
    _console().print(table)


def _kind(m: Member) -> str:
    return "voter" if m.voter else "learner"


def _show(settings: ClientSettings, m: Member, message: str) -> None:
    if settings.json:
        emit_json(asdict(m))
    else:
        click.echo(message)


@member.command(name="add")
@click.argument("name")
@click.option("--peer-address", required=True, metavar="HOST:PORT",
              help="Where the other members reach the new node.")
@click.option("--client-address", default=None, metavar="HOST:PORT",
              help="Where clients reach the new node (for redirects).")
@click.option("--learner", is_flag=True,
              help="Keep it a learner (not voting) until 'member promote'.")
@token_option
@client_command
def member_add(name: str, peer_address: str, client_address: str | None, learner: bool,
               token: str, *, settings: ClientSettings) -> None:
    """Add the node NAME to the cluster, as a learner that is promoted once caught up."""
    with settings.client() as c:
        m = c.member_add(name, peer_address, client_address=client_address, learner=learner,
                         token=token)
    if m.voter:
        how = "as a voter"
    elif m.auto_promote:
        how = "as a learner; it will be promoted once it has caught up"
    else:
        how = "as a learner"
    _show(settings, m, f"added {m.name} (id {m.id}) {how}")


@member.command(name="remove")
@click.argument("name")
@token_option
@client_command
def member_remove(name: str, token: str, *, settings: ClientSettings) -> None:
    """Remove the member NAME from the cluster."""
    with settings.client() as c:
        m = c.member_remove(name, token=token)
    _show(settings, m, f"removed {m.name} (id {m.id})")


@member.command(name="promote")
@click.argument("name")
@token_option
@client_command
def member_promote(name: str, token: str, *, settings: ClientSettings) -> None:
    """Make the learner NAME a voter."""
    with settings.client() as c:
        m = c.member_promote(name, token=token)
    _show(settings, m, f"promoted {m.name} (id {m.id}) to {_kind(m)}")


@member.command(name="move-leader")
@click.argument("name")
@token_option
@client_command
def member_move_leader(name: str, token: str, *, settings: ClientSettings) -> None:
    """Make the voter NAME the leader (the current leader hands over)."""
    with settings.client() as c:
        leader = c.move_leader(name, token=token)
    if settings.json:
        emit_json({"leader": leader})
    else:
        click.echo(f"{leader} is the leader")


@click.command()
@token_option
@client_command
def leave(token: str, *, settings: ClientSettings) -> None:
    """Make the node of the FIRST endpoint leave the cluster, then stop."""
    # That one endpoint only: a retry must never carry the leave to another node.
    with Client(settings.endpoints[:1], timeout=settings.timeout, tls=settings.tls,
                user=settings.user, password=settings.password) as c:
        m = c.leave(token=token)
    _show(settings, m, f"{m.name} left the cluster")
