"""etcd's JSON gateway on the HTTP port: ``POST /v3/<service>/<method>``, as etcd 3.4 serves it.

etcd puts grpc-gateway in front of its gRPC services: each RPC answers a POST
whose body is the request message in protobuf's JSON mapping (field names as
in the .proto or in lowerCamelCase, bytes in base64, 64-bit integers as
strings or numbers) with the response message in the same mapping (the
.proto's field names, 64-bit integers as strings, fields at their default
left out). Clients such as etcd3gw speak only this.

Nothing here runs an operation itself: a path names an etcd service and
method (:data:`ROUTES`), the handler is the one the gRPC port calls, taken
from the service classes of :data:`quorumkv.etcd.server.SERVICES` by
registering them on a recording stand-in for a gRPC server, and it gets a
:class:`GatewayContext` that stands in for grpc.aio's ServicerContext. So a
service added to SERVICES is served here at once; a route whose service is
not there yet answers Unimplemented (501).

Errors are grpc-gateway's: ``{"error", "code", "message"}`` with the gRPC
code's number and etcd's text (errors.py), and the HTTP status grpc-gateway
gives that code (:data:`HTTP_STATUS`). A request body that is not the
method's JSON is InvalidArgument (400), as grpc-gateway answers it.

Streams (Watch, LeaseKeepAlive, Snapshot): the body is a sequence of request
objects (one, usually), the answer a chunked response of one
``{"result": {...}}`` line per message; an error once lines were sent is a
last ``{"error": {"grpc_code", "http_code", "message", "http_status"}}``
line. A watch stays open after its body ends, until the client leaves, as
etcd's server keeps a watch stream whose client stops sending.

Who calls: the ``Authorization`` header's token (grpc-gateway hands it to
etcd as metadata; etcd3gw sends it bare, others as ``Bearer <token>``) is
given to the handlers as the ``token`` metadata etcd's gRPC clients send.

grpc and protobuf are imported on first use only, so that this module (its
route table, which openapi.py documents) loads without them.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

if TYPE_CHECKING:
    from quorumkv.etcd.errors import RpcError
    from quorumkv.server.node import Node

EMULATED_ETCD_VERSION: Final = "3.4.0"
"""The etcd version the gateway's paths are (``GET /version`` says it)."""
VERSION_PATH: Final = "/version"
PROTO_PACKAGE: Final = "etcdserverpb"

JSON_CONTENT_TYPE: Final = "application/json"
NOT_IMPLEMENTED_YET: Final = "method not implemented yet"
CLOSED_POLL_S: Final = 1.0
"""How often an idle stream looks whether its client has gone (aiohttp does not cancel a
handler whose client disconnects, and a quiet watch writes nothing that would fail)."""
STREAM_BACKLOG: Final = 64
"""Messages a stream's handler may get ahead of a slow reader before it waits."""

HTTP_STATUS: Final[dict[int, int]] = {
    # grpc-gateway v1's runtime.HTTPStatusFromCode, by gRPC code number.
    0: 200,   # OK
    1: 408,   # Canceled
    2: 500,   # Unknown
    3: 400,   # InvalidArgument
    4: 504,   # DeadlineExceeded
    5: 404,   # NotFound
    6: 409,   # AlreadyExists
    7: 403,   # PermissionDenied
    8: 429,   # ResourceExhausted
    9: 412,   # FailedPrecondition
    10: 409,  # Aborted
    11: 400,  # OutOfRange
    12: 501,  # Unimplemented
    13: 500,  # Internal
    14: 503,  # Unavailable
    15: 500,  # DataLoss
    16: 401,  # Unauthenticated
}


@dataclass(frozen=True, slots=True)
class Route:
    """One gateway path and the etcd RPC it calls."""

    path: str
    service: str
    """The service's name in rpc.proto (``KV``, ``Lease``...)."""
    method: str
    streaming: bool = False
    """Answered with a stream of lines (Watch, LeaseKeepAlive, Snapshot)."""
    hold_open: bool = False
    """A stream that outlives its request body (Watch), as etcd's server keeps one."""

    @property
    def full_name(self) -> str:
        return f"/{PROTO_PACKAGE}.{self.service}/{self.method}"


def _routes() -> tuple[Route, ...]:
    kv = [("range", "Range"), ("put", "Put"), ("deleterange", "DeleteRange"),
          ("txn", "Txn"), ("compaction", "Compact")]
    lease = [("grant", "LeaseGrant"), ("revoke", "LeaseRevoke"),
             ("keepalive", "LeaseKeepAlive"), ("timetolive", "LeaseTimeToLive"),
             ("leases", "LeaseLeases")]
    member = [("list", "MemberList"), ("add", "MemberAdd"), ("remove", "MemberRemove"),
              ("update", "MemberUpdate"), ("promote", "MemberPromote")]
    # etcd's rpc.proto binds Hash and HashKV both to /v3/maintenance/hash; grpc-gateway
    # keeps the last one registered, HashKV.
    maintenance = [("status", "Status"), ("alarm", "Alarm"), ("defragment", "Defragment"),
                   ("hash", "HashKV"), ("snapshot", "Snapshot"),
                   ("transfer-leadership", "MoveLeader")]
    auth = [("authenticate", "Authenticate"), ("enable", "AuthEnable"),
            ("disable", "AuthDisable"), ("status", "AuthStatus"),
            ("user/add", "UserAdd"), ("user/get", "UserGet"), ("user/list", "UserList"),
            ("user/delete", "UserDelete"), ("user/changepw", "UserChangePassword"),
            ("user/grant", "UserGrantRole"), ("user/revoke", "UserRevokeRole"),
            ("role/add", "RoleAdd"), ("role/get", "RoleGet"), ("role/list", "RoleList"),
            ("role/delete", "RoleDelete"), ("role/grant", "RoleGrantPermission"),
            ("role/revoke", "RoleRevokePermission")]
    out = [Route(f"/v3/kv/{p}", "KV", m) for p, m in kv]
    out.append(Route("/v3/watch", "Watch", "Watch", streaming=True, hold_open=True))
    out += [Route(f"/v3/lease/{p}", "Lease", m, streaming=m == "LeaseKeepAlive")
            for p, m in lease]
    # etcd 3.4 also serves these under /v3/kv/lease/ (their paths before 3.3).
    out += [Route(f"/v3/kv/lease/{p}", "Lease", m) for p, m in lease
            if p in ("revoke", "timetolive", "leases")]
    out += [Route(f"/v3/cluster/member/{p}", "Cluster", m) for p, m in member]
    out += [Route(f"/v3/maintenance/{p}", "Maintenance", m, streaming=m == "Snapshot")
            for p, m in maintenance]
    out += [Route(f"/v3/auth/{p}", "Auth", m) for p, m in auth]
    return tuple(out)


ROUTES: Final = _routes()
"""Every gateway path, each a POST."""
STREAMING_PATHS: Final = tuple(r.path for r in ROUTES if r.streaming)


def _protobuf(name: str) -> Any:
    """A module of protobuf's runtime (imported by name: it ships no type stubs)."""
    return importlib.import_module(f"google.protobuf.{name}")


def available() -> bool:
    """Whether the etcd support can load here (grpc and protobuf installed)."""
    try:
        _protobuf("json_format")
        import grpc  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


# -- the handlers: the gRPC services' own ----------------------------------------------


class _Details:
    """What a generic handler is asked with (grpc.HandlerCallDetails)."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata: tuple[tuple[str, str], ...] = ()


class _RecordingServer:
    """Stands in for a grpc.aio server: keeps what each service registers on it."""

    def __init__(self) -> None:
        self.generic: list[Any] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, _service: str, _handlers: Any) -> None:
        pass  # the same handlers as the generic ones, which are looked up instead


class _Bridge:
    """One node's service instances and their method handlers, made on first use."""

    def __init__(self, node: Node) -> None:
        from quorumkv.etcd.server import SERVICES  # noqa: PLC0415 (grpc: on first use)

        recorder = _RecordingServer()
        for service in SERVICES:
            service(node).register(recorder)
        self._generic = recorder.generic

    def handler(self, route: Route) -> Any:
        """The grpc RpcMethodHandler of the route's method, None if no service has it."""
        details = _Details(route.full_name)
        for generic in self._generic:
            found = generic.service(details)
            if found is not None:
                return found
        return None


_BRIDGES: weakref.WeakKeyDictionary[Node, _Bridge] = weakref.WeakKeyDictionary()


async def _bridge(node: Node) -> _Bridge:
    bridge = _BRIDGES.get(node)
    if bridge is None:
        from quorumkv.etcd.generated import etcd_proto  # noqa: PLC0415

        # The first use in a process may compile etcd's protocol: not on the event loop.
        await asyncio.to_thread(etcd_proto)
        bridge = _BRIDGES.setdefault(node, _Bridge(node))
    return bridge


def _request_class(route: Route) -> Any:
    message_factory = _protobuf("message_factory")
    from quorumkv.etcd.generated import etcd_proto  # noqa: PLC0415

    service = etcd_proto().rpc_pb2.DESCRIPTOR.services_by_name[route.service]
    return message_factory.GetMessageClass(service.methods_by_name[route.method].input_type)


# -- the context handlers get --------------------------------------------------------


class GatewayContext:
    """What a handler calls on grpc.aio's ServicerContext, for a call that came as HTTP.

    ``abort`` raises grpc.aio.AbortError as grpc's does (calls.py's ``unary`` lets it
    through); the status it set is then the answer. Streaming handlers may ``read``
    their requests and ``write`` their answers instead of iterating and yielding.
    """

    def __init__(self, request: web.Request) -> None:
        self._token = _token(request)
        self._request = request
        self.status_code: Any = None
        """The grpc.StatusCode set by abort or set_code (None: none set)."""
        self.status_details = ""
        self._done = False
        self._callbacks: list[Callable[[Any], None]] = []
        self.requests: AsyncIterator[Any] | None = None
        self.written: asyncio.Queue[Any] | None = None

    # -- metadata and peer --

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        from quorumkv.etcd.identity import TOKEN_KEY  # noqa: PLC0415

        return ((TOKEN_KEY, self._token),) if self._token is not None else ()

    def peer(self) -> str:
        peer = self._request.transport.get_extra_info("peername") if (
            self._request.transport is not None) else None
        if isinstance(peer, tuple) and len(peer) >= 2:
            host, port = peer[0], peer[1]
            return f"ipv6:[{host}]:{port}" if ":" in str(host) else f"ipv4:{host}:{port}"
        return "unknown"

    def peer_identities(self) -> list[bytes] | None:
        name = _certificate_name(self._request)
        return [name.encode()] if name is not None else None

    def peer_identity_key(self) -> str | None:
        return "x509_common_name" if _certificate_name(self._request) is not None else None

    def auth_context(self) -> dict[str, list[bytes]]:
        """As grpc's: the client certificate's common name when the port speaks TLS."""
        out: dict[str, list[bytes]] = {}
        name = _certificate_name(self._request)
        if name is not None:
            out["x509_common_name"] = [name.encode()]
        if self._request.secure:
            out["transport_security_type"] = [b"ssl"]
        return out

    async def send_initial_metadata(self, _metadata: Any) -> None:
        pass  # an HTTP answer has its headers already; etcd's metadata has no use here

    def set_trailing_metadata(self, _metadata: Any) -> None:
        pass

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def set_compression(self, _compression: Any) -> None:
        pass

    def disable_next_message_compression(self) -> None:
        pass

    # -- status --

    async def abort(self, code: Any, details: str = "", trailing_metadata: Any = ()) -> Any:
        import grpc  # noqa: PLC0415

        self.status_code, self.status_details = code, details
        raise grpc.aio.AbortError(f"aborted: {details}")

    def set_code(self, code: Any) -> None:
        self.status_code = code

    def set_details(self, details: str) -> None:
        self.status_details = details

    def code(self) -> Any:
        return self.status_code

    def details(self) -> str:
        return self.status_details

    # -- lifetime --

    def time_remaining(self) -> float | None:
        return None  # grpc-gateway passes no deadline either

    def cancelled(self) -> bool:
        return self._done and _client_gone(self._request)

    def done(self) -> bool:
        return self._done

    def is_active(self) -> bool:
        return not self._done

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._callbacks.append(callback)

    def finish(self) -> None:
        self._done = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    # -- streams --

    async def read(self) -> Any:
        import grpc  # noqa: PLC0415

        if self.requests is None:
            return grpc.aio.EOF
        try:
            return await anext(self.requests)
        except StopAsyncIteration:
            return grpc.aio.EOF

    async def write(self, message: Any) -> None:
        if self.written is None:
            raise RuntimeError("write() on a unary call")
        await self.written.put(message)


def _token(request: web.Request) -> str | None:
    value = request.headers.get("Authorization")
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    return rest.strip() if scheme.lower() == "bearer" and rest.strip() else value.strip()


def _certificate_name(request: web.Request) -> str | None:
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not isinstance(cert, dict):
        return None
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


# -- JSON in and out -----------------------------------------------------------------


class BadRequest(Exception):
    """A body that is not the method's request message (InvalidArgument)."""


class _BadBody(BaseException):
    """A later object of a stream's body is not the method's request message: the call ends
    with InvalidArgument. A BaseException, so that the handler's catch-all, which answers
    any Exception as a bug of its own, lets it through to the gateway."""


def parse_message(text: str, cls: Any) -> Any:
    """``text`` (one JSON object, or nothing: every field at its default) as ``cls``."""
    json_format = _protobuf("json_format")

    message = cls()
    if not text.strip():
        return message
    try:
        obj = json.loads(text)
    except RecursionError:
        raise BadRequest("the JSON body is nested too deeply") from None
    except ValueError as e:
        raise BadRequest(f"the body is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"the body must be a JSON object ({cls.DESCRIPTOR.name})")
    try:
        json_format.Parse(text, message)
    except json_format.ParseError as e:
        raise BadRequest(str(e)) from None
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as e:
        # Parse lets a few odd inputs through as these (a nested value of an unexpected
        # JSON type, a huge number); all of them are the client's.
        raise BadRequest(f"the body is not a {cls.DESCRIPTOR.name}: {e}") from None
    return message


def message_json(message: Any) -> dict[str, Any]:
    """A response message as grpc-gateway writes it (OrigName, no default-valued fields)."""
    json_format = _protobuf("json_format")

    out: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return out


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _status_number(code: Any) -> int:
    value = code.value[0] if isinstance(getattr(code, "value", None), tuple) else code
    return value if isinstance(value, int) else 2


def error_body(code: int, message: str) -> dict[str, Any]:
    """grpc-gateway's error object for a unary call."""
    return {"error": message, "code": code, "message": message}


def error_response(code: int, message: str) -> web.Response:
    return web.Response(text=_dumps(error_body(code, message)),
                        status=HTTP_STATUS.get(code, 500), content_type=JSON_CONTENT_TYPE)


def stream_error(code: int, message: str) -> dict[str, Any]:
    """grpc-gateway's error line in a stream."""
    http = HTTP_STATUS.get(code, 500)
    return {"error": {"grpc_code": code, "http_code": http, "message": message,
                      "http_status": HTTPStatus(http).phrase}}


def _failure(context: GatewayContext, error: BaseException | None) -> RpcError:
    """The status a call ended with: the one the handler set, else its exception's."""
    from quorumkv.etcd.errors import INTERNAL, RpcError, status_of  # noqa: PLC0415

    if context.status_code is not None and _status_number(context.status_code) != 0:
        return RpcError(context.status_code, context.status_details or "")
    if error is None:
        return INTERNAL
    return status_of(error)


# -- calls ---------------------------------------------------------------------------


async def _call_unary(route: Route, behavior: Any, request: web.Request) -> web.Response:
    import grpc  # noqa: PLC0415

    from quorumkv.etcd.errors import REQUEST_TOO_LARGE  # noqa: PLC0415

    try:
        text = (await request.read()).decode("utf-8")
    except UnicodeDecodeError:
        return error_response(3, "the body is not UTF-8 text")
    except web.HTTPRequestEntityTooLarge:  # above max_http_body_bytes: etcd's own answer
        return error_response(_status_number(REQUEST_TOO_LARGE.code), REQUEST_TOO_LARGE.message)
    try:
        message = parse_message(text, _request_class(route))
    except BadRequest as e:
        return error_response(3, str(e))
    context = GatewayContext(request)
    error: BaseException | None = None
    answer: Any = None
    try:
        answer = behavior(message, context)
        if inspect.isawaitable(answer):
            answer = await answer
    except grpc.aio.AbortError:
        pass
    except Exception as e:  # as on the gRPC port: a status, status_of logs a bug
        error = e
    finally:
        context.finish()
    if answer is None or error is not None or (
            context.status_code is not None and _status_number(context.status_code) != 0):
        failure = _failure(context, error)
        return error_response(_status_number(failure.code), failure.message)
    return web.Response(text=_dumps(message_json(answer)), content_type=JSON_CONTENT_TYPE)


class _Body:
    """The JSON objects of a request body, one after the other, as they arrive."""

    def __init__(self, request: web.Request, limit: int) -> None:
        self._content = request.content
        self._limit = limit
        self._buffer = b""
        self._eof = False

    async def next_text(self) -> str | None:
        """The next object's text, None once the body has ended."""
        decoder = json.JSONDecoder()
        while True:
            stripped = self._buffer.lstrip()
            if stripped != self._buffer:
                self._buffer = stripped
            if self._buffer:
                try:
                    text = self._buffer.decode("utf-8")
                except UnicodeDecodeError:
                    text = None  # a character cut in two, if more is coming
                if text is not None:
                    try:
                        _, end = decoder.raw_decode(text)
                    except RecursionError:
                        raise BadRequest("the JSON body is nested too deeply") from None
                    except ValueError as e:
                        if self._eof:
                            raise BadRequest(f"the body is not valid JSON: {e}") from None
                    else:
                        one = text[:end]
                        self._buffer = self._buffer[len(one.encode("utf-8")):]
                        return one
                elif self._eof:
                    raise BadRequest("the body is not UTF-8 text")
            elif self._eof:
                return None
            if len(self._buffer) > self._limit:
                raise BadRequest(f"a request object is larger than {self._limit} bytes")
            chunk = await self._content.readany()
            if chunk:
                self._buffer += chunk
            else:
                self._eof = True


async def _requests(first: Any, body: _Body, cls: Any, hold_open: bool) -> AsyncIterator[Any]:
    """The stream's requests: the first (already read), then each further object."""
    yield first
    while True:
        try:
            text = await body.next_text()
            if text is None:
                break
            message = parse_message(text, cls)
        except BadRequest as e:
            raise _BadBody(str(e)) from None
        yield message
    if hold_open:
        # A client that has said all it will still listens: as etcd's server does for a
        # watch stream whose client stops sending, keep the stream until it leaves.
        await asyncio.Event().wait()


_END = object()


@dataclass(slots=True)
class _Outcome:
    failed: bool = False
    error: BaseException | None = None


async def _call_stream(route: Route, handler: Any, request: web.Request,
                       limit: int) -> web.StreamResponse:
    import grpc  # noqa: PLC0415

    cls = _request_class(route)
    body = _Body(request, limit)
    try:
        # The first request decides between an error status and a stream: read it now.
        text = await body.next_text()
        first = parse_message(text or "", cls)
    except BadRequest as e:
        return error_response(3, str(e))
    context = GatewayContext(request)
    queue: asyncio.Queue[Any] = asyncio.Queue(STREAM_BACKLOG)
    context.written = queue
    outcome = _Outcome()

    async def produce() -> None:
        try:
            if handler.request_streaming:
                requests = _requests(first, body, cls, route.hold_open)
                context.requests = requests
                result = handler.stream_stream(requests, context)
            else:
                result = handler.unary_stream(first, context)
            if hasattr(result, "__aiter__"):
                async for message in result:
                    await queue.put(message)
            elif inspect.isawaitable(result):
                await result  # the handler writes with context.write
        except grpc.aio.AbortError:
            outcome.failed = True
        except _BadBody as e:
            context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            context.set_details(str(e))
            outcome.failed = True
        except Exception as e:  # as on the gRPC port: a status, status_of logs a bug
            outcome.failed, outcome.error = True, e
        if context.status_code is not None and _status_number(context.status_code) != 0:
            outcome.failed = True
        await queue.put(_END)

    task = asyncio.create_task(produce())
    response: web.StreamResponse | None = None
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), CLOSED_POLL_S)
            except TimeoutError:
                if _client_gone(request):
                    break
                continue
            if item is _END:
                if outcome.failed:
                    rpc = _failure(context, outcome.error)
                    code = _status_number(rpc.code)
                    if response is None:
                        return web.Response(text=_dumps(stream_error(code, rpc.message)),
                                            status=HTTP_STATUS.get(code, 500),
                                            content_type=JSON_CONTENT_TYPE)
                    await response.write((_dumps(stream_error(code, rpc.message)) + "\n")
                                         .encode())
                break
            if response is None:
                response = web.StreamResponse(headers={"Content-Type": JSON_CONTENT_TYPE})
                response.enable_chunked_encoding()
                await response.prepare(request)
            await response.write((_dumps({"result": message_json(item)}) + "\n").encode())
    except (ConnectionResetError, ConnectionError):
        pass  # the client left: nobody is there to answer
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        context.finish()
    if response is None:
        # Ended with no message and no error (or the client left first): an empty stream.
        response = web.StreamResponse(headers={"Content-Type": JSON_CONTENT_TYPE})
        await response.prepare(request)
    await response.write_eof()
    return response


async def call(route: Route, node: Node, request: web.Request) -> web.StreamResponse:
    """Answer ``request`` with the etcd method ``route`` names."""
    bridge = await _bridge(node)
    handler = bridge.handler(route)
    if handler is None:
        return error_response(12, f"{NOT_IMPLEMENTED_YET}: {route.full_name.lstrip('/')}")
    if handler.request_streaming or handler.response_streaming:
        return await _call_stream(route, handler, request, node.config.max_http_body_bytes)
    behavior = handler.unary_unary
    return await _call_unary(route, behavior, request)


async def _version(_request: web.Request) -> web.Response:
    return web.Response(text=_dumps({"etcdserver": EMULATED_ETCD_VERSION,
                                     "etcdcluster": EMULATED_ETCD_VERSION}),
                        content_type=JSON_CONTENT_TYPE)


def routes(node: Node) -> list[web.RouteDef]:
    """The gateway's routes (none if grpc or protobuf is missing: no etcd support)."""
    if not available():
        return []

    def serve(route: Route) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await call(route, node, request)

        return handle

    out = [web.get(VERSION_PATH, _version, allow_head=False)]
    out += [web.post(route.path, serve(route)) for route in ROUTES]
    return out
