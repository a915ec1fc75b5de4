"""The client's per-request fast paths: each must behave exactly as the general path does.

RetryingCaller skips the lock, the timeout context and drain() when a connection is
open and ready, failing overdue answers from one shared timer (Deadlines); the result
readers take well-formed maps apart without FieldReader and leave anything else to the
checked reading. These tests hold each shortcut to the behaviour of what it replaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from quorumkv.client.async_client import AsyncClient
from quorumkv.client.connection import Connection
from quorumkv.client.endpoints import Backoff, Endpoints
from quorumkv.client.protocol import (
    PROTOCOL_VERSION,
    Header,
    ReadRequest,
    decode_request,
    decode_response,
    encode_response,
    response_parts,
)
from quorumkv.client.results_wire import (
    kv_from_wire,
    range_parts_from_wire,
    range_result,
    range_result_from_wire,
    write_parts_from_wire,
    write_result_from_wire,
)
from quorumkv.client.retrying_caller import Deadlines, RetryingCaller
from quorumkv.errors import NetworkError, ProtocolError, Timeout
from quorumkv.kv.commands import RangeRequest
from quorumkv.kv.packing import pack
from quorumkv.kv.results import KeyValue, RangeResult
from quorumkv.transport.framing import FrameDecoder, encode_frame

HEADER = Header(revision=7, raft_term=2, member="n1", applied_index=9)
KV = KeyValue(key=b"k", value=b"v", create_revision=3, mod_revision=7, version=2, lease=0,
              timestamp=11)


# -- a node that answers hello, and reads as told --------------------------------------


class FakeNode:
    """A client port: answers hello, then each read with ``KV`` unless ``silent``."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self.silent = False
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def address(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        decoder = FrameDecoder()
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                for frame in decoder.feed(data):
                    request_id, req = decode_request(frame)
                    if isinstance(req, ReadRequest):
                        self.requests += 1
                        if self.silent:
                            continue
                        body = range_result(RangeResult(kvs=(KV,), count=1, more=False,
                                                        revision=7), HEADER)
                    else:
                        body = {"protocol": PROTOCOL_VERSION, "name": "n1", "cluster_id": 1}
                    writer.write(encode_frame(encode_response(request_id, body)))


@contextlib.asynccontextmanager
async def running_node() -> AsyncIterator[FakeNode]:
    node = FakeNode()
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


def caller_for(node: FakeNode, timeout: float = 5.0) -> RetryingCaller:
    return RetryingCaller(Endpoints([node.address]), timeout=timeout, cluster_id=None,
                          max_frame=1 << 20, backoff=Backoff(0.01, 0.05, random.Random(1)))


READ = ReadRequest(range=RangeRequest(key=b"k"), consistency="one")
EARLY = 0.001
"""A loop runs a timer once its clock is within its resolution of the deadline: how much
a check that a deadline has passed allows for that."""


def count_slow_path(caller: RetryingCaller, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How often ``caller`` takes the general path (through ``_connection``)."""
    calls = [0]
    original = RetryingCaller._connection

    async def counted(self: RetryingCaller) -> Connection:
        if self is caller:
            calls[0] += 1
        return await original(self)

    monkeypatch.setattr(RetryingCaller, "_connection", counted)
    return calls


# -- RetryingCaller --------------------------------------------------------------------


def test_an_open_connection_is_used_without_the_general_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with running_node() as node:
            caller = caller_for(node)
            slow = count_slow_path(caller, monkeypatch)
            first = await caller.call(READ)  # connects
            assert slow[0] == 1
            answers = await asyncio.gather(*(caller.call(READ) for _ in range(50)))
            assert slow[0] == 1 and node.connections == 1
            assert all(a == first for a in answers)
            await caller.close()

    asyncio.run(main())


def test_a_closed_connection_sends_the_call_down_the_general_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with running_node() as node:
            caller = caller_for(node)
            slow = count_slow_path(caller, monkeypatch)
            await caller.call(READ)
            conn = caller._conn
            assert conn is not None
            await conn.close()  # as if the node had gone: the next call reconnects
            await caller.call(READ)
            assert slow[0] == 2 and node.connections == 2
            assert caller._conn is not conn
            await caller.close()

    asyncio.run(main())


class ExpiringSignIn:
    """A sign-in whose token has run out: every use must renew it (renew=True)."""

    def __init__(self) -> None:
        self.renewals = 0

    def lasts(self, token: str | None) -> bool:
        return False

    async def sign_in(self, conn: Connection) -> str | None:
        return "t0"

    async def authenticate(self, conn: Connection) -> str | None:
        self.renewals += 1
        return f"t{self.renewals}"


def test_a_token_to_renew_sends_the_call_down_the_general_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with running_node() as node:
            caller = caller_for(node)
            sign_in = ExpiringSignIn()
            caller._sign_in = sign_in  # type: ignore[assignment]
            slow = count_slow_path(caller, monkeypatch)
            await caller.call(READ)
            await caller.call(READ)
            assert slow[0] == 2 and sign_in.renewals == 1
            assert caller._conn_token == "t1"
            await caller.close()

    asyncio.run(main())


def test_a_held_lock_sends_the_call_down_the_general_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with running_node() as node:
            caller = caller_for(node)
            slow = count_slow_path(caller, monkeypatch)
            await caller.call(READ)
            # Someone is (say) signing the connection in again: the call waits for them.
            await caller._lock.acquire()
            call = asyncio.create_task(caller.call(READ))
            await asyncio.sleep(0.05)
            assert not call.done() and node.requests == 1
            caller._lock.release()
            await call
            assert slow[0] == 2 and node.requests == 2
            await caller.close()

    asyncio.run(main())


def test_a_node_that_never_answers_times_the_call_out_and_is_dropped() -> None:
    async def main() -> None:
        async with running_node() as node:
            caller = caller_for(node, timeout=0.3)
            await caller.call(READ)
            conn = caller._conn
            assert conn is not None
            node.silent = True
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(Timeout, match=r"no answer within 0\.3s"):
                await caller.call(READ)
            # Not a retry's or a reconnect's later deadline: well under ten timeouts.
            assert 0.29 <= loop.time() - started < 3.0
            assert caller._conn is None and conn.closed  # the next call starts afresh
            assert not caller._deadlines._waits
            node.silent = False
            await caller.call(READ)
            assert node.connections == 2
            await caller.close()

    asyncio.run(main())


def test_a_write_blocked_transport_is_drained_within_the_timeout() -> None:
    async def main() -> None:
        async with running_node() as node:
            caller = caller_for(node, timeout=0.3)
            await caller.call(READ)
            conn = caller._conn
            assert conn is not None and not conn.needs_drain()
            protocol = conn._writer.transport.get_protocol()
            # As the transport does over its high-water mark: drain() must now wait.
            protocol.pause_writing()
            assert conn.needs_drain()
            with pytest.raises(Timeout):
                await caller.call(READ)
            assert conn.closed  # dropped, as a node that took nothing for a timeout is
            await caller.close()

    asyncio.run(main())


def test_a_closed_client_refuses_calls() -> None:
    async def main() -> None:
        async with running_node() as node:
            caller = caller_for(node)
            await caller.call(READ)
            await caller.close()
            with pytest.raises(NetworkError, match="the client is closed"):
                await caller.call(READ)

    asyncio.run(main())


def test_the_async_client_reads_through_the_fast_paths() -> None:
    async def main() -> None:
        async with running_node() as node, AsyncClient([node.address]) as client:
            assert await client.get("k", consistency="one") == KV
            result = await client.range(b"k", consistency="one")
            assert result == RangeResult(kvs=(KV,), count=1, more=False, revision=7)
            assert client.revision == 7

    asyncio.run(main())


# -- Deadlines ----------------------------------------------------------------------


def test_deadlines_fail_each_future_at_its_own_deadline() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        now = loop.time()
        late: asyncio.Future[Any] = loop.create_future()
        early: asyncio.Future[Any] = loop.create_future()
        answered: asyncio.Future[Any] = loop.create_future()
        # A second apart, so a loop stalled on a busy machine still fires them apart.
        deadlines.add(loop, late, now + 1.05)
        deadlines.add(loop, early, now + 0.05)  # earlier than the timer: re-armed for it
        deadlines.add(loop, answered, now + 0.05)
        answered.set_result({})
        with pytest.raises(TimeoutError):
            await early
        assert loop.time() >= now + 0.05 - EARLY and not late.done()
        assert answered.result() == {}
        deadlines.discard(early)
        deadlines.discard(answered)
        with pytest.raises(TimeoutError):
            await late
        assert loop.time() >= now + 1.05 - EARLY
        deadlines.discard(late)

    asyncio.run(main())


def test_deadlines_leave_discarded_futures_alone() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        future: asyncio.Future[Any] = loop.create_future()
        deadlines.add(loop, future, loop.time() + 0.02)
        deadlines.discard(future)
        await asyncio.sleep(0.05)
        assert not future.done()

    asyncio.run(main())


def test_deadlines_work_on_a_new_loop() -> None:
    deadlines = Deadlines()

    async def first() -> None:
        # Leaves the timer armed on this loop, which then goes away.
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        deadlines.add(loop, future, loop.time() + 0.05)
        deadlines.discard(future)

    async def second() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        deadlines.add(loop, future, loop.time() + 0.2)  # after the dead loop's timer
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.shield(future), 2)
            assert future.done()
        finally:
            deadlines.discard(future)

    asyncio.run(first())
    asyncio.run(second())


# -- Connection ---------------------------------------------------------------------


def test_an_answer_leaves_no_waiter_behind() -> None:
    async def main() -> None:
        async with running_node() as node:
            caller = caller_for(node)
            await caller.call(READ)
            conn = caller._conn
            assert conn is not None
            await asyncio.gather(*(caller.call(READ) for _ in range(20)))
            assert not conn._pending
            node.silent = True
            future = conn.send(READ)
            future.cancel()  # a caller that gives up: forgotten too
            await asyncio.sleep(0)
            assert not conn._pending
            await caller.close()

    asyncio.run(main())


# -- reading results ----------------------------------------------------------------


def range_body() -> dict[str, Any]:
    return range_result(RangeResult(kvs=(KV, KV), count=2, more=False, revision=7), HEADER)


def mutations() -> list[Callable[[dict[str, Any]], object]]:
    """Ways a server could get a range answer wrong (or merely unusual)."""

    def setter(path: tuple[Any, ...], value: object) -> Callable[[dict[str, Any]], object]:
        def change(body: dict[str, Any]) -> object:
            target: Any = body
            for step in path[:-1]:
                target = target[step]
            target[path[-1]] = value
            return body
        return change

    def deleter(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], object]:
        def change(body: dict[str, Any]) -> object:
            target: Any = body
            for step in path[:-1]:
                target = target[step]
            del target[path[-1]]
            return body
        return change

    out: list[Callable[[dict[str, Any]], object]] = [lambda _: [], lambda _: None]
    for field in ("type", "revision", "count", "more", "kvs", "header"):
        out += [deleter((field,)), setter((field,), None), setter((field,), "x"),
                setter((field,), True), setter((field,), -1), setter((field,), 1 << 63)]
    for field in ("revision", "raft_term", "member", "applied_index"):
        out += [deleter(("header", field)), setter(("header", field), b"x"),
                setter(("header", field), 1 << 64), setter(("header", field), -1)]
    for field in ("key", "value", "create_revision", "mod_revision", "version", "lease",
                  "timestamp"):
        out += [deleter(("kvs", 1, field)), setter(("kvs", 1, field), None),
                setter(("kvs", 1, field), "s"), setter(("kvs", 1, field), False),
                setter(("kvs", 1, field), (1 << 63) - 1), setter(("kvs", 1, field), 1 << 63)]
    out += [setter(("kvs", 0), None), setter(("kvs",), []), setter(("extra",), 1),
            setter(("kvs", 0, "extra"), 1), setter(("header", "raft_term"), (1 << 64) - 1),
            setter(("type",), "put"), setter(("type",), "durable")]
    return out


def outcome(read: Callable[[object], Any], obj: object) -> object:
    try:
        return ("ok", read(obj))
    except ProtocolError as err:
        return ("error", type(err), err.message)


def checked_write(obj: object) -> object:
    """What the checked reading makes of a write answer, as write_parts_from_wire gives it."""
    result, header = write_result_from_wire(obj)
    return result, header.revision


@pytest.mark.parametrize("mutate", mutations())
def test_range_parts_read_as_the_checked_reading_does(
        mutate: Callable[[dict[str, Any]], object]) -> None:
    obj = mutate(range_body())

    def checked(o: object) -> object:
        result, header = range_result_from_wire(o)
        return result.kvs, result.count, result.more, result.revision, header.revision

    assert outcome(range_parts_from_wire, obj) == outcome(checked, obj)


@pytest.mark.parametrize("mutate", mutations())
def test_write_parts_read_as_the_checked_reading_does(
        mutate: Callable[[dict[str, Any]], object]) -> None:
    # The same mutations, on put and durable answers.
    for body in ({"type": "put", "revision": 7, "prev_kv": None, "header": HEADER.to_wire()},
                 {"type": "put", "revision": 7, "prev_kv": {**range_body()["kvs"][0]},
                  "kvs": range_body()["kvs"], "header": HEADER.to_wire()},
                 {"type": "durable", "index": 5, "header": HEADER.to_wire(),
                  "kvs": range_body()["kvs"]}):
        try:
            obj = mutate(body)
        except (KeyError, IndexError, TypeError):
            continue  # the mutation does not apply to this shape

        assert outcome(write_parts_from_wire, obj) == outcome(checked_write, obj)


@pytest.mark.parametrize("prev", [None, {"key": b"k"}, KV])
def test_put_parts_with_a_previous_value(prev: object) -> None:
    wire = prev if not isinstance(prev, KeyValue) else range_body()["kvs"][0]
    body = {"type": "put", "revision": 7, "prev_kv": wire, "header": HEADER.to_wire()}

    assert outcome(write_parts_from_wire, body) == outcome(checked_write, body)


def test_kv_from_wire_defaults_and_refusals() -> None:
    wire = {"key": b"k", "value": b"", "create_revision": 1, "mod_revision": 1, "version": 1}
    assert kv_from_wire(wire) == KeyValue(key=b"k", value=b"", create_revision=1,
                                          mod_revision=1, version=1)
    with pytest.raises(ProtocolError, match="key-value: 'lease' must be an integer"):
        kv_from_wire({**wire, "lease": True})
    with pytest.raises(ProtocolError, match="key-value must be a map, not array"):
        kv_from_wire([])


@pytest.mark.parametrize("payload, message", [
    ([1, True], "a response is an array"),
    ([-1, True, {}], "starts with an integer request_id"),
    ([True, True, {}], "starts with an integer request_id"),
    ([1, 1, {}], "starts with an integer request_id"),
    ([1, True, []], "a map with string keys, not array"),
    ([1, True, {b"k": 1}], "a map with string keys, not map"),
])
def test_response_parts_refuse_as_decode_response_does(payload: object, message: str) -> None:
    data = pack(payload)
    for decode in (decode_response, response_parts):
        with pytest.raises(ProtocolError, match=message):
            decode(data)
    good = pack([3, True, {"a": 1}])
    assert response_parts(good) == (3, True, {"a": 1})
    assert decode_response(good).body == {"a": 1}
