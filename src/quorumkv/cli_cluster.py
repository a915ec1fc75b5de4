"""Cluster commands of the command line: status, member list."""

from __future__ import annotations

import asyncio

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from quorumkv.cli_common import ClientSettings, client_command, emit_json
from quorumkv.tools.cluster_view import ClusterView, cluster_view, membership


def _cell(value: object, style: str = "") -> Text:
    # Text, not markup: an address such as "[::1]:7101" must print as it is.
    return Text("-" if value is None else str(value), style=style)


@click.command()
@client_command
def status(*, settings: ClientSettings) -> None:
    """Show every member: role, term, commit and applied index, replication."""
    view = asyncio.run(cluster_view(settings.endpoints, settings.timeout))
    if settings.json:
        emit_json(view.to_json())
        return
    _print_status(view)


def _print_status(view: ClusterView) -> None:
    console = Console()
    if view.leader:
        console.print(Text.assemble("leader: ", (view.leader, "bold"),
                                    f" (term {'-' if view.term is None else view.term})"))
    else:
        console.print("leader: [bold red]none[/bold red] (no member knows of a leader)")
    table = Table()
    for header in ("name", "address", "role", "term", "commit", "applied", "match"):
        table.add_column(header, justify="left" if header in ("name", "address", "role")
                         else "right")
    for m in view.members:
        style = "bold" if m.role == "leader" else "" if m.reachable else "red"
        table.add_row(_cell(m.name), _cell(m.address), _cell(m.role, style), _cell(m.term),
                      _cell(m.commit), _cell(m.applied), _cell(m.match))
    console.print(table)
    for m in view.members:
        if m.error:
            click.echo(f"{m.name}: {m.error}")  # unwrapped, unlike rich's output


@click.group()
def member() -> None:
    """Cluster membership."""


@member.command(name="list")
@client_command
def member_list(*, settings: ClientSettings) -> None:
    """List the members: name, id, voter or learner, client address."""
    st = asyncio.run(membership(settings.endpoints, settings.timeout))
    rows = [{"name": m.get("name"), "id": m.get("id"), "voter": bool(m.get("voter")),
             "client_address": m.get("client_address")} for m in st.get("members") or []]
    if settings.json:
        emit_json({"members": rows, "leader": st.get("leader")})
        return
    table = Table()
    for header in ("name", "id", "kind", "client address"):
        table.add_column(header)
    for r in rows:
        table.add_row(_cell(r["name"]), _cell(r["id"]),
                      _cell("voter" if r["voter"] else "learner"), _cell(r["client_address"]))
    Console().print(table)
