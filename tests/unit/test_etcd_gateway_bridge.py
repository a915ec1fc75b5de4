"""The JSON gateway's bridge (etcd/gateway.py) around stand-in handlers: what it makes of
bodies, answers, statuses and streams, without a node. The real services over a cluster:
tests/integration/test_etcd_gateway.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from quorumkv.etcd import gateway
from quorumkv.etcd.generated import etcd_proto


@dataclass
class _Config:
    max_http_body_bytes: int = 1 << 20


@dataclass(eq=False)
class _Node:
    config: _Config = field(default_factory=_Config)


class _Fake:
    """Stand-ins for a few etcd methods, each showing one way a handler answers."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, tuple[tuple[str, str], ...]]] = []

    async def Range(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.seen.append((request, context.invocation_metadata()))
        pb = etcd_proto().rpc_pb2
        return pb.RangeResponse(header=pb.ResponseHeader(revision=7, member_id=2**63 - 1),
                                count=1, kvs=[etcd_proto().kv_pb2.KeyValue(key=b"k", value=b"v")])

    async def Put(self, request: Any, context: Any) -> Any:  # noqa: N802
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided")

    async def DeleteRange(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise RuntimeError("a bug")

    async def Watch(self, requests: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        pb = etcd_proto().rpc_pb2
        async for request in requests:
            yield pb.WatchResponse(header=pb.ResponseHeader(), watch_id=request.create_request
                                   .start_revision, created=True)
        await context.abort(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required "
                                                          "revision has been compacted")

    async def LeaseKeepAlive(self, requests: Any, context: Any) -> None:  # noqa: N802
        pb = etcd_proto().rpc_pb2
        async for request in requests:
            await context.write(pb.LeaseKeepAliveResponse(ID=request.ID, TTL=5))


def _bridge(fake: _Fake) -> Any:
    pb = etcd_proto().rpc_pb2
    kv = grpc.method_handlers_generic_handler("etcdserverpb.KV", {
        name: grpc.unary_unary_rpc_method_handler(getattr(fake, name))
        for name in ("Range", "Put", "DeleteRange")})
    watch = grpc.method_handlers_generic_handler("etcdserverpb.Watch", {
        "Watch": grpc.stream_stream_rpc_method_handler(fake.Watch)})
    lease = grpc.method_handlers_generic_handler("etcdserverpb.Lease", {
        "LeaseKeepAlive": grpc.stream_stream_rpc_method_handler(fake.LeaseKeepAlive)})
    assert pb is not None
    bridge = gateway._Bridge.__new__(gateway._Bridge)
    bridge._generic = [kv, watch, lease]
    return bridge


def _run(check: Callable[[TestClient[Any, Any], _Fake], Awaitable[None]]) -> None:
    async def main() -> None:
        node, fake = _Node(), _Fake()
        gateway._BRIDGES[node] = _bridge(fake)  # type: ignore[index]
        app = web.Application(client_max_size=4096)
        app.add_routes(gateway.routes(node))  # type: ignore[arg-type]
        async with TestClient(TestServer(app)) as client:
            await check(client, fake)

    asyncio.run(main())


def test_a_unary_answer_is_grpc_gateways_json() -> None:
    async def check(client: TestClient[Any, Any], fake: _Fake) -> None:
        answer = await client.post("/v3/kv/range", json={"key": "aw==", "rangeEnd": "bA=="},
                                   headers={"Authorization": "Bearer tok"})
        assert answer.status == 200
        assert await answer.json() == {
            "header": {"member_id": str(2**63 - 1), "revision": "7"},
            "kvs": [{"key": "aw==", "value": "dg=="}], "count": "1"}
        request, metadata = fake.seen[-1]
        assert (request.key, request.range_end, metadata) == (b"k", b"l", (("token", "tok"),))
        # An empty body is every field at its default; etcd3gw's bare token is the token.
        answer = await client.post("/v3/kv/range", data=b"",
                                   headers={"Authorization": "tok2"})
        assert answer.status == 200 and fake.seen[-1][1] == (("token", "tok2"),)

    _run(check)


@pytest.mark.parametrize("body", [b"{", b"[]", b"1", b'{"key": 1}', b'{"unknown": true}',
                                  b'{"key": {"a": 1}}', b"\xff", b'{"limit": "x"}',
                                  b"[" * 100000, b'{"sort_order": "SIDEWAYS"}'])
def test_a_body_that_is_not_the_message_is_invalid_argument(body: bytes) -> None:
    async def check(client: TestClient[Any, Any], _fake: _Fake) -> None:
        answer = await client.post("/v3/kv/range", data=body)
        got = await answer.json()
        assert answer.status == 400 and got["code"] == 3 and got["error"] == got["message"]

    _run(check)


def test_statuses_abort_bugs_and_missing_methods() -> None:
    async def check(client: TestClient[Any, Any], _fake: _Fake) -> None:
        answer = await client.post("/v3/kv/put", json={})
        message = "etcdserver: key is not provided"
        assert (answer.status, await answer.json()) == (
            400, {"error": message, "code": 3, "message": message})
        answer = await client.post("/v3/kv/deleterange", json={})
        assert answer.status == 500 and (await answer.json())["code"] == 2
        answer = await client.post("/v3/lease/grant", json={"TTL": 5})
        got = await answer.json()
        assert answer.status == 501 and got["code"] == 12
        assert got["message"] == f"{gateway.NOT_IMPLEMENTED_YET}: etcdserverpb.Lease/LeaseGrant"
        answer = await client.post("/v3/kv/range", json={"key": "a" * 8000})
        assert (answer.status, (await answer.json())["message"]) == (
            400, "etcdserver: request is too large")
        answer = await client.get("/version")
        assert await answer.json() == {"etcdserver": gateway.EMULATED_ETCD_VERSION,
                                       "etcdcluster": gateway.EMULATED_ETCD_VERSION}

    _run(check)


def test_a_stream_answers_lines_and_ends_with_its_error() -> None:
    async def check(client: TestClient[Any, Any], _fake: _Fake) -> None:
        body = b'{"ID": "1"}\n{"ID": 2} {"ID": "3"}'
        answer = await client.post("/v3/lease/keepalive", data=body)
        assert answer.status == 200
        lines = [json.loads(line) for line in (await answer.text()).splitlines()]
        assert [r["result"]["ID"] for r in lines] == ["1", "2", "3"]
        # A later object that is not a request ends the stream with InvalidArgument.
        answer = await client.post("/v3/lease/keepalive", data=b'{"ID": "1"} {"nope": 1}')
        lines = [json.loads(line) for line in (await answer.text()).splitlines()]
        assert lines[0]["result"]["ID"] == "1"
        assert lines[1]["error"]["grpc_code"] == 3 and lines[1]["error"]["http_code"] == 400
        # A first object that is not a request: no stream, an error status.
        answer = await client.post("/v3/lease/keepalive", data=b"[1]")
        assert answer.status == 400 and (await answer.json())["code"] == 3

    _run(check)


def test_a_watch_stays_open_after_its_body_until_the_handler_ends() -> None:
    async def check(client: TestClient[Any, Any], _fake: _Fake) -> None:
        # The stand-in aborts once its requests end; a hold-open stream's never do, so
        # the line must come and then the stream stay open.
        answer = await client.post("/v3/watch",
                                   json={"create_request": {"start_revision": "4"}})
        assert answer.status == 200
        line = await asyncio.wait_for(answer.content.readline(), 10)
        assert json.loads(line)["result"]["watch_id"] == "4"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(answer.content.readline(), 1.5)
        answer.close()

    _run(check)
