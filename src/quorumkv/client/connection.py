"""One pipelined connection from a client to one node.

Requests are written as soon as they are made and answered in whatever
order the node finishes them; a reader task matches each response to its
waiting future by request id. When the connection fails, every waiting
request fails with NetworkError, so the caller can retry elsewhere.

A stream (a watch) is a request whose first response resolves its future
like any other and whose later responses, under the same request id, go to
a callback until one of them ends it (``"canceled": true``, or an error);
if the connection fails, the callback gets the NetworkError.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import Callable
from typing import Any

from quorumkv.client.endpoints import Endpoint, format_endpoint
from quorumkv.client.protocol import Request, encode_request, error_from_wire, response_parts
from quorumkv.errors import NetworkError, ProtocolError, QuorumKVError
from quorumkv.security.tls import TLSSettings
from quorumkv.transport.framing import FrameDecoder, encode_frame

log = logging.getLogger(__name__)

_READ_CHUNK = 64 * 1024
_MAX_REQUEST_ID = (1 << 63) - 1
_FLUSH_AT = 256 << 10
"""Queued request bytes beyond which drain() sends them at once (see Connection.drain)."""
_TLS_RECORDS = (b"\x15\x03", b"\x16\x03")
"""How a TLS alert or handshake record starts: what a TLS port answers plaintext with."""
_USE_TLS = ("the node's client port likely speaks TLS: connect with TLS (--cacert, or "
            "tls=TLSSettings(ca_file=...))")


StreamHandler = Callable[[dict[str, Any] | QuorumKVError], None]
_Forget = Callable[[asyncio.Future[dict[str, Any]]], None]


def _deliver(handler: StreamHandler, message: dict[str, Any] | QuorumKVError) -> None:
    try:
        handler(message)
    except Exception:
        log.exception("a stream handler failed")


class Connection:
    __slots__ = ("_failure", "_flow", "_heard", "_loop", "_max_frame", "_next_id", "_out",
                 "_out_bytes", "_pending", "_reader", "_streams", "_task", "_tls", "_writer",
                 "endpoint")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 endpoint: Endpoint, max_frame: int, *, tls: bool = False) -> None:
        self.endpoint = endpoint
        self._tls = tls
        self._heard = False
        """Some bytes came from the node: a close after that is no sign of a TLS mismatch."""
        self._reader = reader
        self._writer = writer
        self._flow: object = writer.transport.get_protocol()
        """The stream's protocol, whose flow-control state says whether drain() must wait."""
        self._loop = asyncio.get_running_loop()
        self._max_frame = max_frame
        self._pending: dict[int, tuple[asyncio.Future[dict[str, Any]], _Forget]] = {}
        """Each waiting request's future, and the done callback that forgets it."""
        self._out: list[bytes] = []
        """Request frames waiting for the end of this loop iteration (see _send)."""
        self._out_bytes = 0
        self._streams: dict[int, StreamHandler] = {}
        self._next_id = 1
        self._failure: str | None = None
        # Owned by this object and awaited by close(): never left running unowned.
        self._task = self._loop.create_task(
            self._read_loop(), name=f"quorumkv-client-reader {format_endpoint(endpoint)}")

    @classmethod
    async def open(cls, endpoint: Endpoint, *, max_frame: int,
                   tls: TLSSettings | None = None) -> Connection:
        host, port = endpoint
        name = format_endpoint(endpoint)
        if tls is None:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as err:  # refused, unreachable, unresolvable: "try another node"
                raise NetworkError(f"cannot connect to {name}: {err}") from None
            return cls(reader, writer, endpoint, max_frame)
        context = tls.context()
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=tls.server_name or host)
        except ssl.SSLCertVerificationError as err:
            raise NetworkError(f"TLS: {name}'s certificate is not trusted: "
                               f"{err.verify_message or err}") from None
        except ssl.SSLError as err:
            raise NetworkError(f"TLS handshake with {name} failed: {err.reason or err} "
                               "(does its client port speak TLS?)") from None
        except (ConnectionResetError, asyncio.IncompleteReadError, EOFError) as err:
            # A plaintext port reads our ClientHello as a giant frame and hangs up.
            raise NetworkError(f"{name} closed the connection during the TLS handshake: "
                               f"its client port likely does not speak TLS ({err})") from None
        except OSError as err:
            raise NetworkError(f"cannot connect to {name}: {err}") from None
        return cls(reader, writer, endpoint, max_frame, tls=True)

    @property
    def closed(self) -> bool:
        return self._failure is not None

    def send(self, req: Request, *, token: str | None = None
             ) -> asyncio.Future[dict[str, Any]]:
        """Write one request and return the future of its result map; ``token`` makes
        this one request act as the token's user (a member forwarding a user's request).

        Raises before anything is written if the connection is closed or the
        request cannot be encoded, so a caller knows whether it was sent.
        """
        return self._send(req, token)[1]

    def open_stream(self, req: Request, on_message: StreamHandler,
                    ) -> tuple[int, asyncio.Future[dict[str, Any]]]:
        """Send a streaming request: ``(request_id, future of the first answer)``; every
        later answer goes to ``on_message`` (see the module doc)."""
        request_id, future = self._send(req)
        self._streams[request_id] = on_message

        def first_answer(f: asyncio.Future[dict[str, Any]]) -> None:
            if f.cancelled() or f.exception() is not None:
                self._streams.pop(request_id, None)

        future.add_done_callback(first_answer)
        return request_id, future

    def forget_stream(self, request_id: int) -> None:
        """Stop delivering a stream's messages (its watch was cancelled)."""
        self._streams.pop(request_id, None)

    def _send(self, req: Request, token: str | None = None,
              ) -> tuple[int, asyncio.Future[dict[str, Any]]]:
        if self._failure is not None:
            raise NetworkError(self._failure)
        request_id = self._next_id
        self._next_id = 1 if request_id == _MAX_REQUEST_ID else request_id + 1
        frame = encode_frame(encode_request(request_id, req, token), self._max_frame)
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        # A caller that gives up (timeout, cancel) cancels its future; forget it then.
        def forget(_: asyncio.Future[dict[str, Any]]) -> None:
            self._pending.pop(request_id, None)

        future.add_done_callback(forget)
        self._pending[request_id] = (future, forget)
        # Requests made in one loop iteration leave in one socket write: workers woken
        # by one burst of answers send their next requests together.
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(frame)
        self._out_bytes += len(frame)
        return request_id, future

    def _flush(self) -> None:
        out, self._out, self._out_bytes = self._out, [], 0
        if out and self._failure is None and not self._writer.is_closing():
            self._writer.write(out[0] if len(out) == 1 else b"".join(out))

    def needs_drain(self) -> bool:
        """Whether :meth:`drain` could do more than return at once: flush a large queue,
        wait for the transport, or report a lost connection.

        Checks what ``StreamWriter.drain`` checks, so a caller may skip awaiting drain()
        when this is False: a coroutine per request is a measurable share of a small
        request's cost. Anything unexpected answers True (drain then decides).
        """
        if self._out_bytes > _FLUSH_AT or self._writer.transport.is_closing() \
                or self._reader.exception() is not None:
            return True
        flow = self._flow
        return getattr(flow, "_paused", True) is not False \
            or getattr(flow, "_connection_lost", True) is not False

    async def drain(self) -> None:
        """Wait until the transport's buffer has room again (backpressure)."""
        if self._out_bytes > _FLUSH_AT:
            # Much is queued in this iteration: out it goes now, so the transport can
            # push back on the caller rather than on the next iteration's.
            self._flush()
        try:
            await self._writer.drain()
        except OSError as err:  # ConnectionResetError and friends
            message = f"connection to {self._name} lost: {err}"
            if not self._heard:
                message += f"; {self._tls_hint()}"
            self._fail(lambda: NetworkError(message))
            raise NetworkError(message) from None

    async def request(self, req: Request, *, token: str | None = None) -> dict[str, Any]:
        future = self.send(req, token=token)
        await self.drain()
        return await future

    async def close(self) -> None:
        self._fail(lambda: NetworkError(f"connection to {self._name} closed by the client"))
        self._task.cancel()
        # wait() rather than awaiting the task: a cancellation aimed at our
        # caller must still propagate, and the reader's own end is expected.
        await asyncio.wait([self._task])

    def _tls_hint(self) -> str:
        """Why a node may drop a new connection without a word: TLS not matching."""
        if not self._tls:
            return _USE_TLS
        # TLS 1.3: a node that wants a client certificate refuses a client without one
        # only after the client's side of the handshake is done, often without an alert
        # arriving before the connection ends.
        return ("if the node requires a client certificate, give one it trusts (--cert/"
                "--key, or TLSSettings(cert_file=..., key_file=...))")

    @property
    def _name(self) -> str:
        return format_endpoint(self.endpoint)

    def _fail(self, make_error: Callable[[], QuorumKVError]) -> None:
        """Close the connection and fail every waiting request (each with its own exception)."""
        if self._failure is None:
            self._failure = str(make_error())
        self._writer.close()
        pending = [future for future, _ in self._pending.values()]
        self._pending.clear()
        for future in pending:
            if not future.done():
                future.set_exception(make_error())
        streams = list(self._streams.values())
        self._streams.clear()
        for handler in streams:
            _deliver(handler, make_error())

    def _dispatch(self, frame: bytes) -> None:
        request_id, ok, body = response_parts(frame)
        if request_id == 0 and not ok:
            # Id 0 is never a request's: the node refuses the whole connection (it is
            # full) and closes it; every waiting request fails with its reason.
            self._fail(lambda: error_from_wire(body))
            return
        waiting = self._pending.pop(request_id, None)
        if waiting is None:
            handler = self._streams.get(request_id)
            if handler is not None:
                if not ok or body.get("canceled") is True:
                    del self._streams[request_id]
                _deliver(handler, body if ok else error_from_wire(body))
            return
        future, forget = waiting
        # Forgotten already: the loop need not run a callback per answer to do it again.
        future.remove_done_callback(forget)
        if future.done():
            return  # its caller gave up waiting
        if ok:
            future.set_result(body)
        else:
            future.set_exception(error_from_wire(body))

    async def _read_loop(self) -> None:
        decoder = FrameDecoder(self._max_frame)
        try:
            while True:
                data = await self._reader.read(_READ_CHUNK)
                if not data:
                    closed = f"{self._name} closed the connection"
                    if not self._heard:
                        closed += f" before answering; {self._tls_hint()}"
                    self._fail(functools.partial(NetworkError, closed))
                    return
                if not self._heard:
                    self._heard = True
                    if not self._tls and data.startswith(_TLS_RECORDS):
                        tls_answer = f"{self._name} answered in TLS: {_USE_TLS}"
                        self._fail(functools.partial(NetworkError, tls_answer))
                        return
                for frame in decoder.feed(data):
                    self._dispatch(frame)
        except ProtocolError as err:
            # The server sent something we cannot parse (or an oversized
            # frame): the stream can no longer be trusted to line up.
            message = f"{self._name} sent a malformed response: {err.message}"
            self._fail(lambda: ProtocolError(message))
        except ssl.SSLError as err:
            # TLS 1.3 finishes the client's side of the handshake before the node checks
            # the client's certificate: a refusal arrives as the first read's alert.
            refused = (f"TLS: {self._name} ended the connection: {err.reason or err} (a "
                       "client certificate it trusts may be required)")
            self._fail(lambda: NetworkError(refused))
        except OSError as err:
            lost = f"connection to {self._name} lost: {err}"
            if not self._heard:
                lost += f"; {self._tls_hint()}"
            self._fail(lambda: NetworkError(lost))
        except Exception:
            # A bug, not the network: say so loudly, and still release every waiter.
            log.exception("client connection reader for %s failed", self._name)
            self._fail(lambda: NetworkError(f"connection to {self._name} failed"))
