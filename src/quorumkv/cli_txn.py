"""``quorumkv txn``: a multi-key transaction written in the readable form of tools/txn_syntax."""

from __future__ import annotations

import sys
from typing import Any

import click

from quorumkv.cli_common import ClientSettings, client_command, emit_json, kv_json
from quorumkv.cli_kv import kv_line
from quorumkv.client import DeleteResult, PutResult, RangeResult, TxnResponse
from quorumkv.kv.commands import TxnOp
from quorumkv.tools.txn_syntax import describe_op, parse_txn


@click.command()
@click.argument("lines", nargs=-1)
@client_command
def txn(lines: tuple[str, ...], *, settings: ClientSettings) -> None:
    """Run a transaction: compares, then ops, then 'else' and ops.

    Each LINE is one line of the transaction; without LINES they are read
    from stdin. Example (the option parser takes '--' for itself, so in
    arguments write 'else'):

    \b
      quorumkv txn 'create("lock") = 0' 'put lock me' else 'get lock'

    \b
    Compares: value("k") = "v", version("k") > 0, create("k") = 0, mod("k") < 5,
              lease("k") = 0 (operators =, !=, >, <)
    Ops:      put KEY VALUE, del KEY [--prefix], get KEY [--prefix]
    """
    if not lines:
        if sys.stdin.isatty():
            click.echo("reading the transaction from stdin; finish with Ctrl-D", err=True)
        source: list[str] = sys.stdin.read().splitlines()
    else:
        source = list(lines)
    parsed = parse_txn(source)
    with settings.client() as c:
        result = c.txn(parsed.compares, parsed.success, parsed.failure)
    ops = parsed.success if result.succeeded else parsed.failure
    if settings.json:
        emit_json({"succeeded": result.succeeded, "revision": result.revision,
                   "responses": [_response_json(op, r)
                                 for op, r in zip(ops, result.responses, strict=True)]})
        return
    click.echo(f"{'SUCCEEDED' if result.succeeded else 'FAILED'} (revision {result.revision})")
    for op, response in zip(ops, result.responses, strict=True):
        click.echo(f"{describe_op(op)}: {_response_text(response)}")


def _response_text(response: TxnResponse) -> str:
    if isinstance(response, PutResult):
        return "OK"
    if isinstance(response, DeleteResult):
        return f"deleted {response.deleted}"
    if not response.kvs:
        return "(not found)"
    lines = [kv_line(kv) for kv in response.kvs]
    return lines[0] if len(lines) == 1 else "\n" + "\n".join(f"  {line}" for line in lines)


def _response_json(op: TxnOp, response: TxnResponse) -> dict[str, Any]:
    doc: dict[str, Any] = {"op": describe_op(op)}
    if isinstance(response, PutResult):
        return doc | {"type": "put", "revision": response.revision}
    if isinstance(response, DeleteResult):
        return doc | {"type": "delete", "deleted": response.deleted,
                      "revision": response.revision}
    assert isinstance(response, RangeResult)
    return doc | {"type": "range", "kvs": [kv_json(kv) for kv in response.kvs],
                  "count": response.count, "more": response.more}
