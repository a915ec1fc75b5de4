"""The client port and the clients, end to end over loopback, against an in-memory service.

The service here is a dict-backed fake of the node, so these tests exercise
only the wire, the server's handling and the clients' failover and retries.
Waits are on events with generous timeouts; nothing sleeps for correctness.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest

from quorumkv.client import AsyncClient, Client
from quorumkv.client.protocol import Header, range_result, write_result
from quorumkv.errors import (
    InvalidArgument,
    NetworkError,
    NotLeader,
    ProposalDropped,
    QuorumKVError,
    Timeout,
    UnavailableError,
)
from quorumkv.kv import (
    Command,
    Compact,
    CompactResult,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    DeleteResult,
    KeyValue,
    Limits,
    Put,
    PutResult,
    RangeRequest,
    RangeResult,
    Result,
    Txn,
    TxnOp,
    TxnResponse,
    TxnResult,
    encode_command,
)
from quorumkv.kv.keys import in_range
from quorumkv.server.client_api import ClientServer
from quorumkv.transport.framing import FrameDecoder, encode_frame

WAIT = 10.0  # generous: the machine may be busy
T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 60)
    return asyncio.run(bounded())


# -- a fake node ------------------------------------------------------------------------


class FakeKV:
    """Just enough of a node: a dict of keys, one revision counter, write deduplication."""

    def __init__(self, name: str = "n1") -> None:
        self.name = name
        self.kvs: dict[bytes, KeyValue] = {}
        self.revision = 1
        self.write_calls: list[tuple[int, int]] = []
        self.range_calls: list[tuple[str, int]] = []
        self._done: dict[tuple[int, int], dict[str, Any]] = {}
        # Tests replace these to hold, fail or inspect requests.
        self.before_write: Callable[[Command], Awaitable[None]] | None = None
        self.after_write: Callable[[Command], Awaitable[None]] | None = None
        self.before_range: Callable[[RangeRequest], Awaitable[None]] | None = None

    def header(self) -> Header:
        return Header(revision=self.revision, raft_term=1, member=self.name,
                      applied_index=self.revision + 10)

    def hello(self) -> dict[str, Any]:
        return {"name": self.name, "id": 1, "cluster_id": "test-cluster"}

    async def status(self, *, local: bool = False) -> dict[str, Any]:
        return {"node": {"name": self.name}, "members": [{"name": self.name}],
                "leader": self.name, "header": self.header().to_wire()}

    async def write(self, cmd: Command, *, consistency: str, client_id: int,
                    seq: int, user: str | None = None) -> dict[str, Any]:
        self.write_calls.append((client_id, seq))
        if self.before_write is not None:
            await self.before_write(cmd)
        if (client_id, seq) not in self._done:
            self._done[(client_id, seq)] = write_result(self._apply(cmd), self.header())
        if self.after_write is not None:
            await self.after_write(cmd)
        return self._done[(client_id, seq)]

    async def wait_applied(self, index: int) -> dict[str, Any]:
        return {"header": self.header().to_wire()}

    def range_now(self, req: RangeRequest) -> dict[str, Any] | None:
        return None  # every read through range(), which the tests observe

    async def range(self, req: RangeRequest, *, consistency: str,
                    min_revision: int, min_index: int = 0) -> dict[str, Any]:
        self.range_calls.append((consistency, min_revision))
        if self.before_range is not None:
            await self.before_range(req)
        return range_result(self._range(req), self.header())

    def _range(self, req: RangeRequest) -> RangeResult:
        keys = sorted(k for k in self.kvs if in_range(k, req.key, req.range_end))
        picked = keys[:req.limit] if req.limit else keys
        kvs = [self.kvs[k] for k in picked]
        if req.keys_only:
            kvs = [KeyValue(key=kv.key, value=b"", create_revision=kv.create_revision,
                            mod_revision=kv.mod_revision, version=kv.version) for kv in kvs]
        return RangeResult(kvs=() if req.count_only else tuple(kvs), count=len(keys),
                           more=len(picked) < len(keys), revision=self.revision)

    def _holds(self, c: Compare) -> bool:
        kv = self.kvs.get(c.key)
        if c.target is CompareTarget.VALUE:
            if kv is None:
                return False
            actual: bytes | int = kv.value
        else:
            actual = 0 if kv is None else kv.version
        return {CompareOp.EQUAL: actual == c.value,
                CompareOp.NOT_EQUAL: actual != c.value}[c.op]

    def _op(self, op: TxnOp, rev: int) -> TxnResponse:
        if isinstance(op, Put):
            prev = self.kvs.get(op.key)
            self.kvs[op.key] = KeyValue(
                key=op.key, value=op.value, mod_revision=rev, lease=op.lease,
                create_revision=prev.create_revision if prev else rev,
                version=prev.version + 1 if prev else 1)
            return PutResult(revision=rev, prev_kv=prev if op.prev_kv else None)
        if isinstance(op, DeleteRange):
            gone = [self.kvs.pop(k) for k in sorted(self.kvs) if in_range(k, op.key, op.range_end)]
            return DeleteResult(revision=rev, deleted=len(gone),
                                prev_kvs=tuple(gone) if op.prev_kv else ())
        return self._range(op)

    def _apply(self, cmd: Command) -> Result:
        if isinstance(cmd, Compact):
            return CompactResult(revision=self.revision, compact_revision=cmd.revision)
        self.revision += 1
        if isinstance(cmd, Txn):
            ok = all(self._holds(c) for c in cmd.compares)
            ops = cmd.success if ok else cmd.failure
            return TxnResult(succeeded=ok, revision=self.revision,
                             responses=tuple(self._op(o, self.revision) for o in ops))
        result = self._op(cmd, self.revision)
        assert isinstance(result, (PutResult, DeleteResult))
        return result


@asynccontextmanager
async def serving(service: FakeKV, *, limits: Limits | None = None,
                  **kw: Any) -> AsyncIterator[ClientServer]:
    server = ClientServer(service, host="127.0.0.1", port=0, limits=limits or Limits(), **kw)
    await server.start()
    try:
        yield server
    finally:
        await server.close(grace=WAIT)


def endpoint(server: ClientServer) -> str:
    return f"127.0.0.1:{server.port}"


# -- a raw connection for hostile frames ----------------------------------------------------


class Raw:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder()
        self.frames: list[Any] = []

    @classmethod
    async def connect(cls, server: ClientServer) -> Raw:
        return cls(*await asyncio.open_connection("127.0.0.1", server.port))

    def send(self, obj: Any) -> None:
        self.send_payload(msgpack.packb(obj, use_bin_type=True))

    def send_payload(self, payload: bytes) -> None:
        self.writer.write(encode_frame(payload))

    async def recv(self) -> list[Any]:
        while not self.frames:
            data = await asyncio.wait_for(self.reader.read(65536), WAIT)
            assert data, "the server closed the connection"
            self.frames += [msgpack.unpackb(f) for f in self.decoder.feed(data)]
        return list(self.frames.pop(0))

    async def closed_by_server(self) -> bool:
        try:
            data = await asyncio.wait_for(self.reader.read(65536), WAIT)
        except ConnectionResetError:
            return True
        return data == b""

    def close(self) -> None:
        self.writer.close()


# -- pipelining ----------------------------------------------------------------------------


def test_many_pipelined_requests_are_answered_in_completion_order() -> None:
    n = 100

    async def main() -> None:
        service = FakeKV()
        turns = [asyncio.Event() for _ in range(n + 2)]
        arrived: list[int] = []

        async def hold(req: RangeRequest) -> None:
            # Request i may finish only after request i+1: the reverse of arrival.
            i = int(req.key)
            arrived.append(i)
            if len(arrived) == n:
                turns[n + 1].set()
            await turns[i + 1].wait()
            turns[i].set()

        service.before_range = hold
        async with serving(service) as server:
            raw = await Raw.connect(server)
            for i in range(1, n + 1):
                raw.send([i, "range", {"key": str(i).encode()}])
            ids = [(await raw.recv())[0] for _ in range(n)]
            raw.close()
        # Every request was in flight at once (else the first would wait forever),
        # and each answer went out when it was ready, not in request order.
        assert ids == list(range(n, 0, -1))

    run(main())


def test_async_client_pipelines_concurrent_calls_on_one_connection() -> None:
    n = 50

    async def main() -> None:
        service = FakeKV()
        everyone_here = asyncio.Event()
        count = 0

        async def barrier(_: RangeRequest) -> None:
            nonlocal count
            count += 1
            if count == n:
                everyone_here.set()
            await everyone_here.wait()

        service.before_range = barrier
        async with serving(service) as server, AsyncClient([endpoint(server)]) as client:
            results = await asyncio.gather(*(client.get(f"k{i}") for i in range(n)))
            assert results == [None] * n
            puts = await asyncio.gather(*(client.put(f"k{i}", f"v{i}") for i in range(n)))
            assert sorted(p.revision for p in puts) == list(range(2, n + 2))
            assert len(server._connections) == 1

    run(main())


# -- the clients' methods -------------------------------------------------------------------


def test_async_client_put_get_range_delete_txn_cas() -> None:
    async def main() -> None:
        service = FakeKV()
        async with serving(service) as server, AsyncClient([endpoint(server)]) as c:
            assert c.server_info is None  # connects lazily, on the first call
            first = await c.put("a/1", "one")
            assert c.server_info is not None and c.server_info["protocol"] == 1
            assert first == PutResult(revision=2)
            second = await c.put(b"a/1", b"uno", prev_kv=True)
            assert second.prev_kv is not None and second.prev_kv.value == b"one"
            await c.put("a/2", "two")
            await c.put("b", "other")
            kv = await c.get("a/1")
            assert kv is not None and (kv.value, kv.version) == (b"uno", 2)
            assert await c.get("missing") is None

            scan = await c.scan_prefix("a/")
            assert [k.key for k in scan.kvs] == [b"a/1", b"a/2"] and scan.count == 2
            limited = await c.range("a", "c", limit=1, keys_only=True)
            assert (len(limited.kvs), limited.count, limited.more) == (1, 3, True)
            assert limited.kvs[0].value == b""
            assert (await c.scan_prefix("", count_only=True)).count == 3

            assert await c.compare_and_swap("a/1", "uno", "eins")
            assert not await c.compare_and_swap("a/1", "uno", "ichi")
            assert await c.compare_and_swap("new", None, "fresh")
            assert not await c.compare_and_swap("new", None, "again")
            txn = await c.txn([Compare(key=b"b", target=CompareTarget.VALUE,
                                       op=CompareOp.EQUAL, value=b"other")],
                              [Put(key=b"b", value=b"changed"), RangeRequest(key=b"a/2")],
                              [DeleteRange(key=b"b")])
            assert txn.succeeded and isinstance(txn.responses[1], RangeResult)
            assert txn.responses[1].kvs[0].value == b"two"

            deleted = await c.delete("a/", range_end="a0", prev_kv=True)
            assert deleted.deleted == 2 and len(deleted.prev_kvs) == 2
            assert (await c.compact(3)).compact_revision == 3
            status = await c.status()
            assert status["leader"] == "n1" and status["header"]["member"] == "n1"

    run(main())


def test_session_reads_carry_the_highest_revision_seen() -> None:
    async def main() -> None:
        service = FakeKV()
        async with serving(service) as server, \
                AsyncClient([endpoint(server)], read_consistency="session") as c:
            await c.get("k")
            result = await c.put("k", "v")
            await c.get("k")
            await c.get("k", consistency="one")
            assert service.range_calls == [("session", 0), ("session", result.revision),
                                           ("one", 0)]
            assert c.revision == result.revision

    run(main())


def test_blocking_client_has_the_same_methods() -> None:
    def scenario(address: str) -> None:
        with Client([address]) as c:
            assert c.put("x", "1").revision > 0
            kv = c.get("x")
            assert kv is not None and kv.value == b"1"
            assert c.compare_and_swap("x", "1", "2")
            assert c.range("x", "y").count == 1
            assert c.scan_prefix("x").kvs[0].value == b"2"
            txn = c.txn([], [Put(key=b"y", value=b"3")])
            assert txn.succeeded
            assert c.delete("x").deleted == 1
            assert c.get("x") is None
            assert c.status()["leader"] == "n1"
            with pytest.raises(InvalidArgument):
                c.put("", "empty key")
        with pytest.raises(RuntimeError):
            c.get("x")  # closed

    async def main() -> None:
        async with serving(FakeKV()) as server:
            await asyncio.to_thread(scenario, endpoint(server))

    run(main())


# -- failover and retries -----------------------------------------------------------------


def test_not_leader_redirects_to_the_leader_address() -> None:
    async def main() -> None:
        follower, leader = FakeKV("n1"), FakeKV("n2")
        async with serving(leader) as leader_server, serving(follower) as follower_server:
            async def refuse(_: object) -> None:
                raise NotLeader(leader=2, leader_address=endpoint(leader_server))

            follower.before_write = refuse
            follower.before_range = refuse
            async with AsyncClient([endpoint(follower_server)]) as c:
                await c.put("k", "v")
                kv = await c.get("k")
                assert kv is not None and kv.value == b"v"
                assert c.server_info is not None and c.server_info["name"] == "n2"
            assert len(follower.write_calls) == 1 and len(leader.write_calls) == 1
            assert not follower.kvs

    run(main())


def test_a_retried_write_carries_the_same_seq_and_applies_once() -> None:
    async def main() -> None:
        service = FakeKV()
        failures = [ProposalDropped("leader stepping down"),
                    Timeout("applied, but the answer was lost")]

        async def drop_first(_: Command) -> None:
            if failures and isinstance(failures[0], ProposalDropped):
                raise failures.pop(0)

        async def lose_answer(_: Command) -> None:
            if failures:
                raise failures.pop(0)

        service.before_write = drop_first
        service.after_write = lose_answer
        async with serving(service) as server, \
                AsyncClient([endpoint(server)], backoff=0.001) as c:
            result = await c.put("k", "v")
            await c.put("k", "w")
        me = c.client_id
        assert service.write_calls == [(me, 1), (me, 1), (me, 1), (me, 2)]
        assert result.revision == 2 and service.revision == 3  # applied exactly once

    run(main())


def test_a_write_that_times_out_says_its_outcome_is_unknown() -> None:
    async def main() -> None:
        service = FakeKV()
        entered = asyncio.Event()

        async def hang(_: Command) -> None:
            entered.set()
            await asyncio.Event().wait()

        service.before_write = hang
        async with serving(service) as server:
            async with AsyncClient([endpoint(server)], timeout=0.5) as c:
                with pytest.raises(Timeout, match="unknown") as info:
                    await c.put("k", "v")
                assert info.value.details["outcome"] == "unknown"
            assert entered.is_set()
            await server.close(grace=0.01)  # the hung request is cancelled

    run(main())


def test_a_write_only_ever_refused_is_known_not_applied() -> None:
    async def main() -> None:
        service = FakeKV()

        async def refuse(_: Command) -> None:
            raise NotLeader()  # an election in progress: no leader to point at

        service.before_write = refuse
        async with serving(service) as server, \
                AsyncClient([endpoint(server)], timeout=0.3, backoff=0.01) as c:
            with pytest.raises(UnavailableError, match="not applied") as info:
                await c.put("k", "v")
        assert not isinstance(info.value, Timeout)
        assert len(service.write_calls) > 1  # it was retried meanwhile
        assert len(set(service.write_calls)) == 1  # ...always as the same write

    run(main())


def test_a_request_never_sent_is_a_network_error() -> None:
    async def main() -> None:
        async with serving(FakeKV()) as server:
            dead = endpoint(server)
        async with AsyncClient([dead], timeout=0.3, backoff=0.01) as c:
            with pytest.raises(NetworkError, match="never sent"):
                await c.put("k", "v")
            with pytest.raises(NetworkError, match="never sent"):
                await c.get("k")

    run(main())


def test_client_fails_over_to_a_live_endpoint() -> None:
    async def main() -> None:
        async with serving(FakeKV()) as gone:
            dead = endpoint(gone)
        async with serving(FakeKV("n2")) as server, \
                AsyncClient([dead, endpoint(server)], backoff=0.01) as c:
            await c.put("k", "v")
            assert c.server_info is not None and c.server_info["name"] == "n2"

    run(main())


def test_wrong_cluster_is_refused() -> None:
    async def main() -> None:
        async with serving(FakeKV()) as server, \
                AsyncClient([endpoint(server)], cluster_id="another", timeout=0.3) as c:
            with pytest.raises(NetworkError, match="cluster"):
                await c.get("k")

    run(main())


# -- hostile input --------------------------------------------------------------------------


def test_hostile_frames_get_errors_or_a_closed_connection(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        service = FakeKV()

        async def crash(_: RangeRequest) -> None:
            raise RuntimeError("a bug in the service")

        async with serving(service, max_frame=1 << 16,
                           limits=Limits(max_value_size=1000)) as server:
            raw = await Raw.connect(server)
            put = encode_command(Put(key=b"k", value=b"v"))
            cases: list[tuple[Any, str]] = [
                ([7, "range", {"key": "not binary"}], "invalid_argument"),
                ([8, "frobnicate", {}], "invalid_argument"),
                ([9, "write", {"cmd": b"\xc1garbage"}], "invalid_argument"),
                ([10, "write", {"cmd": put, "consistency": "sometimes"}], "invalid_argument"),
                ([11, "range", {"key": b"k" * 5000}], "key_too_large"),
                ([12, "status"], "invalid_argument"),
                ([13, "write", {"cmd": encode_command(Put(key=b"k", value=b"v" * 60000))}],
                 "value_too_large"),
            ]
            for request, code in cases:
                raw.send(request)
                request_id, ok, body = await raw.recv()
                assert (request_id, ok, body["code"]) == (request[0], False, code), body
            service.before_range = crash
            raw.send([14, "range", {"key": b"k"}])
            assert (await raw.recv())[2]["code"] == "error"
            service.before_range = None
            raw.send([15, "status", {}])
            assert (await raw.recv())[:2] == [15, True]  # the connection survived it all
            raw.close()

            for payload in (b"\xc1", msgpack.packb(["no id", "status", {}])):
                raw = await Raw.connect(server)
                raw.send_payload(payload)
                assert await raw.closed_by_server()
                raw.close()

            raw = await Raw.connect(server)
            raw.writer.write(struct.pack(">I", (1 << 16) + 1) + b"x" * 100)
            assert await raw.closed_by_server()
            raw.close()

            async with AsyncClient([endpoint(server)]) as c:  # others are still served
                await c.put("still", "serving")

        assert "a bug in the service" in caplog.text
        assert any("closing client connection" in r.message and r.levelno == logging.WARNING
                   for r in caplog.records)

    with caplog.at_level(logging.WARNING, logger="quorumkv.server.client_api"):
        run(main())


# -- shutdown ---------------------------------------------------------------------------------


def test_close_waits_for_the_request_in_flight() -> None:
    async def main() -> None:
        service = FakeKV()
        entered, release = asyncio.Event(), asyncio.Event()

        async def hold(_: Command) -> None:
            entered.set()
            await release.wait()

        service.before_write = hold
        server = ClientServer(service, host="127.0.0.1", port=0, limits=Limits())
        await server.start()
        async with AsyncClient([endpoint(server)], timeout=WAIT) as c:
            put = asyncio.create_task(c.put("k", "v"))
            await asyncio.wait_for(entered.wait(), WAIT)
            closing = asyncio.create_task(server.close())
            done, _ = await asyncio.wait({closing, put}, timeout=0.2)
            assert not done, "close() returned while a request was in flight"
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", server.port)  # no longer accepting
            release.set()
            assert (await asyncio.wait_for(put, WAIT)).revision == 2
            await asyncio.wait_for(closing, WAIT)

    run(main())


def test_errors_from_the_service_reach_the_client_as_the_same_class() -> None:
    async def main() -> None:
        service = FakeKV()

        async def refuse(_: Command) -> None:
            raise InvalidArgument("no writes today", reason="test")

        service.before_write = refuse
        async with serving(service) as server, AsyncClient([endpoint(server)]) as c:
            with pytest.raises(InvalidArgument, match="no writes today") as info:
                await c.put("k", "v")
            assert info.value.remote and info.value.details == {"reason": "test"}
            with pytest.raises(InvalidArgument, match="quorum"):
                await c.txn([], [], consistency="one")
            assert isinstance(info.value, QuorumKVError)

    run(main())
