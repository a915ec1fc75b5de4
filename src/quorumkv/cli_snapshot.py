"""Backup commands of the command line: ``snapshot save``, ``status`` and ``restore``.

As etcd splits them: ``save`` asks a running cluster for a backup (like
``etcdctl snapshot save``); ``status`` and ``restore`` work on the file
alone and need no cluster (like ``etcdutl snapshot status`` / ``restore``).
The file format is ``storage/backup_file.py``; what a restore makes is
``server/backup.py``. A damaged, truncated or foreign file is refused by
both ``status`` and ``restore`` with ``error (corrupt_snapshot)`` saying
what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich import filesize
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from quorumkv.cli_common import ClientSettings, client_command, emit_json
from quorumkv.client import DEFAULT_TOKEN
from quorumkv.client.snapshot import DEFAULT_STALL_TIMEOUT
from quorumkv.server.backup import Restored, restore_backup
from quorumkv.server.config import NodeConfig, parse_initial_cluster
from quorumkv.storage.backup_file import BackupInfo, check_file

TOKEN_ENV = "QUORUMKV_TOKEN"


def _json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "json_output", is_flag=True,
                        help="Machine-readable output (JSON).")(f)


def _json_wanted(local: bool) -> bool:
    """``--json`` after the command, or before it (``quorumkv --json snapshot ...``)."""
    outer = click.get_current_context().find_object(ClientSettings)
    return local or (outer is not None and outer.json)


@click.group()
def snapshot() -> None:
    """Back up a cluster (save), check a backup (status), restore it as a new cluster."""


@snapshot.command(name="save")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--stall-timeout", type=click.FloatRange(min=0, min_open=True),
              default=DEFAULT_STALL_TIMEOUT, show_default=True,
              help="Give up once the node has sent nothing for this many seconds.")
@client_command
def snapshot_save(file: Path, stall_timeout: float, *, settings: ClientSettings) -> None:
    """Save a backup of the cluster's store in FILE (from the first endpoint that answers).

    The backup holds every write acknowledged before it was asked for. FILE is
    written as FILE.part and renamed once complete and checked.
    """
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    # The bar goes to stderr, so stdout carries only the summary (or the JSON).
    with Progress(*columns, console=Console(stderr=True), disable=settings.json,
                  transient=True) as bar, settings.client() as c:
        # Until the node's first answer it is copying its store: nothing to count yet.
        task = bar.add_task("copying", total=None)

        def progress(received: int, total: int) -> None:
            bar.update(task, description="saving", completed=received, total=total)

        info = c.snapshot_save(file, progress=progress, stall_timeout=stall_timeout)
    if settings.json:
        emit_json(_info_json(file, info))
        return
    click.echo(f"Snapshot saved at {file}")
    _print_info(info)


@snapshot.command(name="status")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@_json_option
def snapshot_status(file: Path, json_output: bool) -> None:
    """Check the backup FILE whole and show what it holds."""
    info = check_file(file)
    if _json_wanted(json_output):
        emit_json(_info_json(file, info))
        return
    click.echo(f"file:             {file}")
    _print_info(info)
    click.echo("checksum:         OK")


@snapshot.command(name="restore")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--name", required=True, help="The member this data directory is for.")
@click.option("--initial-cluster", required=True,
              help="The NEW cluster's members: NAME=PEERHOST:PORT,... (the same for every "
                   "member, and the same as 'serve' is given).")
@click.option("--data-dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="The new data directory (missing or empty).")
@click.option("--cluster-token", "--token", "cluster_token", envvar=TOKEN_ENV,
              default=DEFAULT_TOKEN, show_envvar=True,
              help="The new cluster's token (part of its id, as for 'serve') [quorumkv].")
@click.option("--client-urls", default=None,
              help="Client addresses of the new members, NAME=HOST:PORT,... (recorded in the "
                   "member registry, as a bootstrap records them).")
@_json_option
def snapshot_restore(file: Path, name: str, initial_cluster: str, data_dir: Path,
                     cluster_token: str, client_urls: str | None, json_output: bool) -> None:
    """Make DATA_DIR a data directory of member NAME of a new cluster holding the backup FILE.

    Run it once per member (each with its own --name and --data-dir, the same
    --initial-cluster), then start each with 'quorumkv serve' and the same
    --name, --data-dir and --initial-cluster. The new cluster keeps every key,
    value and revision of the backup, and its leases; its membership is the
    new members only.
    """
    clients = {n: f"{h}:{p}" for n, (h, p) in parse_initial_cluster(client_urls or "").items()}
    config = NodeConfig(name=name, data_dir=data_dir,
                        initial_cluster=parse_initial_cluster(initial_cluster),
                        client_addresses=clients, cluster_token=cluster_token)
    restored = restore_backup(file, config)
    if _json_wanted(json_output):
        emit_json(_restored_json(file, restored))
        return
    header = restored.backup.header
    members = ", ".join(f"{n}={a}" for n, a in sorted(restored.members.items()))
    click.echo(f"restored {file} (revision {header.revision}, {header.key_count} keys) into "
               f"{restored.data_dir}")
    click.echo(f"member {restored.member} of a new cluster (id {restored.cluster_id}): "
               f"{members}")
    click.echo(f"start it with: quorumkv serve --name {restored.member} --data-dir "
               f"{restored.data_dir} --initial-cluster {initial_cluster}")


# -- output ------------------------------------------------------------------------------


def _created(info: BackupInfo) -> str:
    return datetime.fromtimestamp(info.header.created_ns / 1e9, tz=UTC).isoformat(
        timespec="seconds")


def _print_info(info: BackupInfo) -> None:
    h = info.header
    for label, value in (
            ("revision", h.revision), ("compact revision", h.compact_revision),
            ("applied index", f"{h.applied_index} (term {h.applied_term})"),
            ("keys", h.key_count),
            ("size", f"{info.file_size} bytes ({filesize.decimal(info.file_size)})"),
            ("sha256", info.sha256), ("format version", h.version),
            ("source cluster", h.cluster_id), ("source member", h.member),
            ("created", _created(info))):
        click.echo(f"{label + ':':<18}{value}")


def _info_json(file: Path, info: BackupInfo) -> dict[str, Any]:
    h = info.header
    return {"file": str(file), "revision": h.revision, "compact_revision": h.compact_revision,
            "applied_index": h.applied_index, "applied_term": h.applied_term,
            "key_count": h.key_count, "size": info.file_size, "image_size": h.image_size,
            "sha256": info.sha256, "format_version": h.version, "cluster_id": h.cluster_id,
            "member": h.member, "created": _created(info), "created_ns": h.created_ns,
            "checksum": "ok"}


def _restored_json(file: Path, restored: Restored) -> dict[str, Any]:
    return {"backup": _info_json(file, restored.backup), "data_dir": str(restored.data_dir),
            "member": restored.member, "cluster_id": restored.cluster_id,
            "members": dict(sorted(restored.members.items())),
            "snapshot_index": restored.snapshot.index, "snapshot_term": restored.snapshot.term}
