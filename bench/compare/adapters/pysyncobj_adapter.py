"""PySyncObj through the client port of ``pysyncobj_node.py`` (runs under .venv-peers).

PySyncObj ships no network client (it is a library, the replicated object
lives inside the application), so this speaks the node script's protocol:
length-prefixed msgpack, requests pipelined on one connection and answered
by id, the same shape as quorumkv's own client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
from collections.abc import Sequence

import msgpack

HEADER = struct.Struct(">I")


class PySyncObjError(Exception):
    """The node answered with an error (a FAIL_REASON from the library, or a refusal)."""


class PySyncObjConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout = timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[object]] = {}
        self._receiver = asyncio.create_task(self._receive())

    async def _receive(self) -> None:
        error: BaseException = ConnectionError("connection closed")
        try:
            while True:
                (length,) = HEADER.unpack(await self._reader.readexactly(HEADER.size))
                req_id, failure, result = msgpack.unpackb(await self._reader.readexactly(length))
                future = self._pending.pop(req_id, None)
                if future is None or future.done():
                    continue
                if failure is None:
                    future.set_result(result)
                else:
                    future.set_exception(PySyncObjError(failure))
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            error = e
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError(f"connection lost: {error!r}"))
            self._pending.clear()

    async def call(self, op: str, key: bytes = b"", value: bytes = b"") -> object:
        if self._receiver.done():
            raise ConnectionError("connection lost")
        req_id = next(self._ids)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = future
        body = msgpack.packb([req_id, op, key, value])
        self._writer.write(HEADER.pack(len(body)) + body)
        # A timer handle rather than asyncio.wait_for: no extra task per request.
        timer = asyncio.get_running_loop().call_later(self._timeout, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()
            self._pending.pop(req_id, None)

    async def put(self, key: bytes, value: bytes) -> None:
        await self.call("put", key, value)

    async def get(self, key: bytes) -> None:
        await self.call("get", key)

    async def get_one(self, key: bytes) -> None:
        await self.call("get_one", key)

    async def status(self) -> object:
        return await self.call("status")

    async def close(self) -> None:
        self._writer.close()
        self._receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._receiver
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


def _expire(future: asyncio.Future[object]) -> None:
    if not future.done():
        future.set_exception(TimeoutError("no answer in time"))


async def connect(endpoint: str, endpoints: Sequence[str], timeout: float) -> PySyncObjConnection:
    host, _, port = endpoint.rpartition(":")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    return PySyncObjConnection(reader, writer, timeout)
