"""Key-value commands of the command line: put, get, del, scan."""

from __future__ import annotations

import click

from quorumkv.cli_common import (
    ClientSettings,
    client_command,
    emit_json,
    kv_json,
    lease_id_option,
    text,
)
from quorumkv.client import ALL_KEYS, KeyValue, RangeResult, prefix_end
from quorumkv.errors import InvalidArgument

WRITE_LEVELS = ("one", "quorum", "all")
READ_LEVELS = ("one", "session", "quorum", "all")


def _arg_bytes(value: str) -> bytes:
    # surrogateescape gives back the exact bytes of a non-UTF-8 command-line argument.
    return value.encode("utf-8", errors="surrogateescape")


@click.command()
@click.argument("key")
@click.argument("value")
@click.option("--consistency", type=click.Choice(WRITE_LEVELS), default="quorum",
              show_default=True, help="When the write is acknowledged.")
@click.option("--lease", "lease", default=None, callback=lease_id_option,
              help="Attach the key to this lease (from `quorumkv lease grant`): it is deleted "
                   "when the lease expires or is revoked.")
@client_command
def put(key: str, value: str, consistency: str, lease: int | None, *,
        settings: ClientSettings) -> None:
    """Set KEY to VALUE."""
    with settings.client() as c:
        result = c.put(_arg_bytes(key), _arg_bytes(value), consistency=consistency,
                       lease=lease or 0)
    if settings.json:
        emit_json({"revision": result.revision})
    elif result.revision:
        click.echo(f"OK (revision {result.revision})")
    else:
        # A "one" write is answered before it is applied, so its revision is not known.
        click.echo("OK (durable on the leader, not yet committed)")


@click.command()
@click.argument("key")
@click.option("--consistency", type=click.Choice(READ_LEVELS), default="quorum",
              show_default=True, help="How fresh the answer must be.")
@click.option("--revision", type=int, default=0, help="Read the key as of this revision.")
@client_command
def get(key: str, consistency: str, revision: int, *, settings: ClientSettings) -> None:
    """Print the value of KEY (exit code 1 if it does not exist)."""
    with settings.client() as c:
        result = c.range(_arg_bytes(key), revision=revision, consistency=consistency)
    kv = result.kvs[0] if result.kvs else None
    if settings.json:
        emit_json({"found": kv is not None, "revision": result.revision,
                   "kv": None if kv is None else kv_json(kv)})
    elif kv is not None:
        click.echo(kv.value)  # the exact bytes: `quorumkv get k > file` keeps them
    else:
        click.echo(f"key not found: {key}", err=True)
    if kv is None:
        raise click.exceptions.Exit(1)


@click.command(name="del")
@click.argument("key")
@click.option("--prefix", is_flag=True, help="Delete every key starting with KEY.")
@click.option("--consistency", type=click.Choice(WRITE_LEVELS), default="quorum",
              show_default=True, help="When the delete is acknowledged.")
@client_command
def delete(key: str, prefix: bool, consistency: str, *, settings: ClientSettings) -> None:
    """Delete KEY (or, with --prefix, every key starting with it)."""
    k = _arg_bytes(key)
    with settings.client() as c:
        result = c.delete(k, range_end=prefix_end(k) if prefix else None,
                          consistency=consistency)
    if settings.json:
        emit_json({"deleted": result.deleted, "revision": result.revision})
    else:
        click.echo(f"deleted {result.deleted}")


@click.command()
@click.argument("prefix_arg", metavar="[PREFIX]", required=False)
@click.option("--prefix", "prefix_opt", default=None, help="Keys starting with this.")
@click.option("--from", "start", default=None, help="Keys from this one on (inclusive).")
@click.option("--to", "end", default=None, help="Keys before this one (exclusive).")
@click.option("--limit", type=click.IntRange(min=0), default=0,
              help="At most this many keys (0: no limit).")
@click.option("--keys-only", is_flag=True, help="Print keys without their values.")
@click.option("--revision", type=int, default=0, help="Read as of this revision.")
@click.option("--consistency", type=click.Choice(READ_LEVELS), default="quorum",
              show_default=True, help="How fresh the answer must be.")
@client_command
def scan(prefix_arg: str | None, prefix_opt: str | None, start: str | None, end: str | None,
         limit: int, keys_only: bool, revision: int, consistency: str, *,
         settings: ClientSettings) -> None:
    """List keys in order: all, by PREFIX, or in the range [--from, --to)."""
    key, range_end = _scan_range(prefix_arg, prefix_opt, start, end)
    with settings.client() as c:
        result = c.range(key, range_end, limit=limit, revision=revision, keys_only=keys_only,
                         consistency=consistency)
    if settings.json:
        emit_json({"kvs": [kv_json(kv, keys_only=keys_only) for kv in result.kvs],
                   "count": result.count, "more": result.more, "revision": result.revision})
        return
    for line in kv_lines(result, keys_only=keys_only):
        click.echo(line)
    # The summary goes to stderr so the listing itself pipes cleanly.
    more = f", {result.count - len(result.kvs)} more beyond --limit" if result.more else ""
    click.echo(f"({len(result.kvs)} keys at revision {result.revision}{more})", err=True)


def _scan_range(prefix_arg: str | None, prefix_opt: str | None, start: str | None,
                end: str | None) -> tuple[bytes, bytes]:
    if prefix_arg is not None and prefix_opt is not None:
        raise InvalidArgument("give the prefix once: as an argument or as --prefix")
    prefix = prefix_arg if prefix_arg is not None else prefix_opt
    if prefix is not None and (start is not None or end is not None):
        raise InvalidArgument("a scan is by prefix or by --from/--to, not both")
    if prefix:
        p = _arg_bytes(prefix)
        return p, prefix_end(p)
    # The empty key is not a key, so b"\0" is the smallest one; ALL_KEYS as an end: no bound.
    first = _arg_bytes(start) if start else b"\x00"
    return first, _arg_bytes(end) if end else ALL_KEYS


def kv_lines(result: RangeResult, *, keys_only: bool) -> list[str]:
    return [kv_line(kv, keys_only=keys_only) for kv in result.kvs]


def kv_line(kv: KeyValue, *, keys_only: bool = False) -> str:
    return text(kv.key) if keys_only else f"{text(kv.key)} = {text(kv.value)}"
