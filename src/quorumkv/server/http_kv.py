"""The key-value routes of the HTTP API: range, put, delete, txn, compact, history.

Each maps onto the node's client service exactly as the client port does
(``client_api.ClientServer._execute``): the same commands, the same size
checks before proposing, the same consistency levels and result maps, with
keys and values as text (``http_json.py``). What a follower cannot serve
itself goes to the leader (``http_forward.py``). docs/http-api.md describes
every route.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from quorumkv.client.coordination_wire import event_to_wire
from quorumkv.client.protocol import ReadRequest, WriteRequest
from quorumkv.errors import Compacted, InvalidArgument
from quorumkv.kv.commands import (
    Compact,
    DeleteRange,
    LeaseGrant,
    LeaseRevoke,
    Put,
    RangeRequest,
    Txn,
    Write,
)
from quorumkv.kv.results import Event
from quorumkv.kv.store import KVStore
from quorumkv.kv.validation import check_key_size, check_range_request, validate
from quorumkv.server.http_auth import check_read, check_write
from quorumkv.server.http_forward import forwarder_for
from quorumkv.server.http_json import (
    READ_LEVELS,
    WRITE_LEVELS,
    BodyFields,
    Fields,
    QueryFields,
    json_response,
    read_body,
    read_bytes,
    read_encoding,
    read_key_range,
    result_json,
)
from quorumkv.server.http_txn import parse_txn

if TYPE_CHECKING:
    from quorumkv.server.node import Node

RANGE_PATH: Final = "/v1/kv/range"
HISTORY_PATH: Final = "/v1/kv/history"
READ_PATHS: Final = frozenset({RANGE_PATH, HISTORY_PATH})
"""The key-value routes that read (the others write): /v1/stats counts them apart."""
WRITE_PATHS: Final = frozenset({"/v1/kv/put", "/v1/kv/delete", "/v1/kv/txn", "/v1/kv/compact"})

HISTORY_LIMIT: Final = 100
MAX_HISTORY_LIMIT: Final = 10_000
HISTORY_BATCH: Final = 1000
_RESULT_TYPES: Final[dict[type, str]] = {Put: "put", DeleteRange: "delete", Txn: "txn",
                                         Compact: "compact", LeaseGrant: "lease_grant",
                                         LeaseRevoke: "lease_revoke"}


# -- reads ---------------------------------------------------------------------------


async def _range(request: web.Request, node: Node, f: Fields) -> dict[str, Any]:
    encoding = read_encoding(f)
    key, end = read_key_range(f, encoding)
    req = RangeRequest(key=key, range_end=end, limit=f.integer("limit", 0),
                       revision=f.integer("revision", 0), keys_only=f.boolean("keys_only"),
                       count_only=f.boolean("count_only"))
    consistency = f.choice("consistency", READ_LEVELS, "quorum")
    min_revision = f.integer("min_revision", 0)
    f.finish()
    check_key_size(key, end, node.limits)
    check_range_request(req)
    caller = check_read(request, node, key, end)
    result = await forwarder_for(node).call(
        lambda: node.range(req, consistency=consistency, min_revision=min_revision),
        ReadRequest(range=req, consistency=consistency, min_revision=min_revision),
        changes=False, token=caller.token)
    return result_json(result, encoding)


def _read_history(kv: KVStore, key: bytes, range_end: bytes | None, limit: int,
                  ) -> tuple[list[Event], bool, int]:
    """The newest ``limit`` retained events, oldest first; whether older ones were left
    out; the compact revision the history starts after."""
    for _ in range(3):
        compact, end = kv.compact_revision, kv.revision
        kept: deque[Event] = deque(maxlen=limit)
        seen = 0
        start = compact + 1
        try:
            while start <= end:
                batch = kv.events_since(key=key, range_end=range_end, start_revision=start,
                                        end_revision=end, limit=HISTORY_BATCH)
                if not batch:
                    break
                seen += len(batch)
                kept.extend(batch)
                start = batch[-1].kv.mod_revision + 1
        except Compacted:
            continue  # compacted while we read: start again after the new compact revision
        return list(kept), seen > len(kept), compact
    raise Compacted("the history was compacted repeatedly while it was read; retry",
                    compact_revision=kv.compact_revision)


def _event_json(event: Event, encoding: str) -> dict[str, Any]:
    wire = event_to_wire(event, prev_kv=False)
    del wire["prev_kv"]
    return {**result_json(wire, encoding), "revision": event.kv.mod_revision}


async def _history(request: web.Request, node: Node) -> web.Response:
    f = QueryFields(request)
    encoding = read_encoding(f)
    key, end = read_key_range(f, encoding)
    limit = f.integer("limit", HISTORY_LIMIT, low=1, high=MAX_HISTORY_LIMIT)
    consistency = f.choice("consistency", READ_LEVELS, "quorum")
    min_revision = f.integer("min_revision", 0)
    f.finish()
    check_key_size(key, end, node.limits)
    caller = check_read(request, node, key, end)
    # A one-key read at the level asked waits exactly as that read would, so the
    # history that follows is at least as fresh as the level promises.
    probe = RangeRequest(key=key, count_only=True)
    answer = await forwarder_for(node).call(
        lambda: node.range(probe, consistency=consistency, min_revision=min_revision),
        ReadRequest(range=probe, consistency=consistency, min_revision=min_revision),
        changes=False, token=caller.token)
    if answer["header"]["member"] != node.config.name:
        # The leader answered (an "all" read): the history is ours, so catch up to it.
        await node.wait_applied(answer["header"]["applied_index"])
    assert node.kv is not None
    events, more, compact = await asyncio.to_thread(_read_history, node.kv, key, end, limit)
    return json_response({"header": node.header(), "compact_revision": compact, "more": more,
                          "events": [_event_json(e, encoding) for e in events]})


# -- writes --------------------------------------------------------------------------


async def submit_write(request: web.Request, node: Node, cmd: Write, f: BodyFields, *,
                       levels: tuple[str, ...] = WRITE_LEVELS) -> dict[str, Any]:
    """Read the write options (``consistency``, ``dedup``) and the end of the body,
    check the command as the client port would (its sizes, then the request's user's
    permission), and run it as that user (on the leader).

    ``dedup: {"client_id", "seq"}`` numbers the write as the client library does: the
    cluster applies a retry with the same pair at most once (thesis §6.3)."""
    consistency = f.choice("consistency", levels, "quorum")
    client_id = seq = 0
    if "dedup" in f.obj:
        dedup = BodyFields(f.raw("dedup"), "dedup")
        client_id, seq = dedup.identifier("client_id", low=1), dedup.integer("seq", low=1)
        dedup.finish()
    f.finish()
    validate(cmd, node.limits)
    caller = check_write(request, node, cmd)
    result = await forwarder_for(node).call(
        lambda: node.write(cmd, consistency=consistency, client_id=client_id, seq=seq,
                           user=caller.user),
        WriteRequest(cmd=cmd, consistency=consistency, client_id=client_id, seq=seq),
        changes=True, token=caller.token)
    kind = result.get("type")
    if kind not in (_RESULT_TYPES[type(cmd)], "durable"):
        # The pair already numbered another write, whose outcome this is: this one
        # was not applied.
        raise InvalidArgument(f"dedup client_id {client_id} and seq {seq} already numbered "
                              f"an earlier, different write (a {kind}); this write was not "
                              f"applied: number it with a new seq")
    return result


def _respond(result: Mapping[str, Any], encoding: str) -> web.Response:
    return json_response(result_json(result, encoding))


async def _put(request: web.Request, node: Node) -> web.Response:
    f = await read_body(request)
    encoding = read_encoding(f)
    cmd = Put(key=read_bytes(f, "key", encoding), value=read_bytes(f, "value", encoding),
              lease=f.identifier("lease", 0), prev_kv=f.boolean("prev_kv"))
    return _respond(await submit_write(request, node, cmd, f), encoding)


async def _delete(request: web.Request, node: Node) -> web.Response:
    f = await read_body(request)
    encoding = read_encoding(f)
    key, end = read_key_range(f, encoding)
    cmd = DeleteRange(key=key, range_end=end, prev_kv=f.boolean("prev_kv"))
    return _respond(await submit_write(request, node, cmd, f), encoding)


async def _txn(request: web.Request, node: Node) -> web.Response:
    f = await read_body(request)
    encoding = read_encoding(f)
    txn = parse_txn(f, encoding)
    # "one" answers before the outcome is known, and a txn is all outcome.
    result = await submit_write(request, node, txn, f, levels=("quorum", "all"))
    return _respond(result, encoding)


async def _compact(request: web.Request, node: Node) -> web.Response:
    f = await read_body(request)
    cmd = Compact(revision=f.integer("revision", low=1))
    return json_response(await submit_write(request, node, cmd, f))


def routes(node: Node) -> list[web.RouteDef]:
    async def range_get(request: web.Request) -> web.Response:
        return json_response(await _range(request, node, QueryFields(request)))

    async def range_post(request: web.Request) -> web.Response:
        return json_response(await _range(request, node, await read_body(request)))

    async def history(request: web.Request) -> web.Response:
        return await _history(request, node)

    async def put(request: web.Request) -> web.Response:
        return await _put(request, node)

    async def delete(request: web.Request) -> web.Response:
        return await _delete(request, node)

    async def txn(request: web.Request) -> web.Response:
        return await _txn(request, node)

    async def compact(request: web.Request) -> web.Response:
        return await _compact(request, node)

    table = [web.get(RANGE_PATH, range_get, allow_head=False),
             web.post(RANGE_PATH, range_post),
             web.get(HISTORY_PATH, history, allow_head=False),
             web.post("/v1/kv/put", put), web.post("/v1/kv/delete", delete),
             web.post("/v1/kv/txn", txn), web.post("/v1/kv/compact", compact)]
    assert {r.path for r in table} == READ_PATHS | WRITE_PATHS
    return table
