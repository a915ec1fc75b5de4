"""The HTTP port: the JSON API, health and readiness, metrics and the dashboard.

Each node serves it on ``--http-listen`` (127.0.0.1:7201 by default). This
module owns the server and what every route shares: the size limit on
bodies, errors as JSON, and the process-level routes ``/health`` and
``/ready``. The routes themselves live in the ``http_*.py`` modules beside
it; each has a ``routes(node)`` that returns its aiohttp route table.

Errors. A :class:`QuorumKVError` becomes ``{"error": {"code", "message",
"details"}}`` with the same ``code`` the client protocol uses and an HTTP
status chosen by its kind (:func:`http_status`). A request aiohttp refuses
itself (unknown path, wrong method, body above ``max_http_body_bytes``)
gets the same JSON shape with code ``invalid_argument`` (``message_too_large``
for the body). Anything else is a bug: it is logged with its traceback and
answered 500 without detail, and the server goes on.

Rate limit. With ``max_requests_per_s`` set, each client address has a token
bucket (server/rate_limit.py); a request finding it empty is answered 429
(``rate_limited``) with a Retry-After header, at once. /health and /ready
are never limited.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from ssl import SSLContext
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from quorumkv.errors import (
    AlreadyExists,
    AuthenticationFailed,
    AuthNotEnabled,
    Compacted,
    ConsistencyError,
    InvalidArgument,
    InvalidCredentials,
    InvalidToken,
    KeyTooLarge,
    LeaseNotFound,
    MembershipError,
    MessageTooLarge,
    NotBuiltYet,
    PermissionDenied,
    ProtocolError,
    QuorumKVError,
    RateLimited,
    RequestError,
    ResourceExhausted,
    RoleNotFound,
    RootMissing,
    Timeout,
    TooManyLoginAttempts,
    Unauthenticated,
    UnavailableError,
    UserNotFound,
    ValueTooLarge,
)
from quorumkv.etcd import gateway as etcd_gateway
from quorumkv.server import (
    http_auth,
    http_cluster,
    http_dashboard,
    http_kv,
    http_lease,
    http_observe,
    http_watch,
    openapi,
)
from quorumkv.server.http_forward import close_forwarder
from quorumkv.server.http_json import error_json
from quorumkv.server.rate_limit import KeyedBuckets, rate_limited

if TYPE_CHECKING:
    from quorumkv.server.node import Node

log = logging.getLogger(__name__)

NODE_KEY: web.AppKey[Node] = web.AppKey("node")

RouteTable = Iterable[web.AbstractRouteDef]
RouteSource = Callable[["Node"], RouteTable]

# Most specific first: the first class an error is an instance of decides.
_STATUS: tuple[tuple[type[QuorumKVError], int], ...] = (
    # Auth errors are request errors: they must come before RequestError.
    (Unauthenticated, 401),
    (InvalidToken, 401),
    (InvalidCredentials, 401),
    (PermissionDenied, 403),
    (TooManyLoginAttempts, 429),
    (UserNotFound, 404),
    (RoleNotFound, 404),
    (AlreadyExists, 409),
    (RootMissing, 409),
    (AuthNotEnabled, 400),
    (KeyTooLarge, 413),
    (ValueTooLarge, 413),
    (MessageTooLarge, 413),
    (LeaseNotFound, 404),
    (Compacted, 410),
    (RequestError, 400),
    (ProtocolError, 400),
    (AuthenticationFailed, 401),
    (MembershipError, 409),
    (ResourceExhausted, 429),
    (Timeout, 504),
    (UnavailableError, 503),
    (ConsistencyError, 502),
    (NotBuiltYet, 501),
)


def http_status(err: QuorumKVError) -> int:
    for cls, status in _STATUS:
        if isinstance(err, cls):
            return status
    return 500


def error_body(err: QuorumKVError) -> dict[str, Any]:
    return {"error": error_json(err.to_dict())}


def error_response(err: QuorumKVError) -> web.Response:
    headers: dict[str, str] | None = None
    if isinstance(err, (Unauthenticated, InvalidToken, InvalidCredentials)):
        # RFC 6750: a 401 names the scheme that would be accepted.
        headers = {"WWW-Authenticate": 'Bearer realm="quorumkv"'}
    if isinstance(err, (RateLimited, TooManyLoginAttempts)):
        # Retry-After takes whole seconds; rounding down would invite an early retry.
        wait = err.details.get("retry_after_s")
        seconds = math.ceil(wait) if isinstance(wait, (int, float)) else 1
        headers = {"Retry-After": str(max(1, seconds))}
    return web.json_response(error_body(err), status=http_status(err), headers=headers)


@web.middleware
async def _errors_as_json(request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
    try:
        return await handler(request)
    except QuorumKVError as e:
        return error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        reason = e.text if e.text and not e.text.startswith(f"{e.status}:") else e.reason
        code = MessageTooLarge.code if e.status == 413 else InvalidArgument.code
        body = {"error": {"code": code, "message": reason, "details": {}}}
        return web.json_response(body, status=e.status, headers={
            k: v for k, v in e.headers.items() if k.lower() == "allow"})
    except (ConnectionResetError, TimeoutError):
        raise
    except Exception:
        log.exception("HTTP %s %s failed", request.method, request.path)
        body = {"error": {"code": QuorumKVError.code,
                          "message": "internal error (logged on the node)", "details": {}}}
        return web.json_response(body, status=500)


KV_READ_PATHS = http_kv.READ_PATHS
KV_WRITE_PATHS = http_kv.WRITE_PATHS
"""The key-value API's reads and writes (http_kv.py's routes): they feed the per-second
request series like the client port's."""
STREAMING_ROUTES = frozenset({http_watch.WATCH_PATH, *etcd_gateway.STREAMING_PATHS})
"""Routes whose answer is a stream that lasts as long as its client listens (a watch).
Its duration says how long someone watched, not how fast the node answered, so these
stay out of the latency histogram and the per-second series (``quorumkv_watchers``
counts the open ones); a refused one still counts in ``quorumkv_errors_total``."""


def _route_label(request: web.Request) -> str | None:
    # The route's template, never the raw path: keys in paths would make a series each.
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


@web.middleware
async def _observe(request: web.Request,
                   handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                   ) -> web.StreamResponse:
    """Time every request (but streams) into the node's metrics; innermost, so it sees
    the error a handler raised before ``_errors_as_json`` turns it into a response."""
    route = _route_label(request)
    started = time.perf_counter()
    error: str | None = None
    try:
        return await handler(request)
    except ConnectionResetError:
        raise  # the client went away: nobody is answered, with an error or otherwise
    except QuorumKVError as e:
        error = e.code
        raise
    except web.HTTPException as e:
        if e.status >= 400:  # the code _errors_as_json answers it with
            error = MessageTooLarge.code if e.status == 413 else InvalidArgument.code
        raise
    except Exception:
        error = QuorumKVError.code
        raise
    finally:
        metrics = request.app[NODE_KEY].metrics
        if route in STREAMING_ROUTES:
            if error is not None:
                metrics.count_error("http", error)
        else:
            kind = ("read" if route in KV_READ_PATHS
                    else "write" if route in KV_WRITE_PATHS else None)
            metrics.observe_http_request(route or "unmatched", request.method,
                                         time.perf_counter() - started, error, kind)


async def _health(request: web.Request) -> web.Response:
    """The process is up and its event loop answers: what a liveness probe needs."""
    node = request.app[NODE_KEY]
    return web.json_response({"status": "ok", "name": node.config.name})


async def _ready(request: web.Request) -> web.Response:
    """Whether this node can serve a linearizable request now: it knows a leader and has
    applied everything it knows to be committed."""
    node = request.app[NODE_KEY]
    reasons: list[str] = []
    group = node.group
    if group is None:
        reasons.append("starting")
    else:
        st = group.status()
        if not st.leader:
            reasons.append("no leader is known")
        if st.applied < st.commit:
            reasons.append(f"applying: {st.applied} of {st.commit} committed entries")
    if node.removed:
        reasons.append("removed from the cluster")
    body: dict[str, Any] = {"ready": not reasons, "name": node.config.name,
                            "leader": node.leader_name() if group is not None else None}
    if reasons:
        body["reasons"] = reasons
    return web.json_response(body, status=200 if not reasons else 503)


def _core_routes(_node: Node) -> RouteTable:
    return [web.get("/health", _health), web.get("/ready", _ready)]


def route_sources() -> list[RouteSource]:
    """Every module's route table, in the order they are matched."""
    return [_core_routes, http_kv.routes, http_lease.routes, http_watch.routes,
            http_cluster.routes, http_auth.routes, openapi.routes, http_dashboard.routes,
            http_observe.routes, etcd_gateway.routes]


UNLIMITED_PATHS = frozenset({"/health", "/ready"})
"""Left out of the rate limit: a probe told 429 could have a healthy node restarted."""


def _rate_limit(rate: float, burst: int) -> Middleware:
    """One token bucket per client address (a client may open a connection per request,
    so per connection would limit nothing)."""
    buckets = KeyedBuckets(rate, burst)

    @web.middleware
    async def rate_limit(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        if request.path not in UNLIMITED_PATHS:
            address = request.remote or ""
            wait = buckets.take(address, time.monotonic())
            if wait:
                raise rate_limited(wait, rate, burst, f"client address {address}")
        return await handler(request)

    return rate_limit


def build_app(node: Node, *, max_body: int) -> web.Application:
    middlewares: list[Middleware] = [_errors_as_json, _observe]
    rate = node.config.max_requests_per_s
    if rate is not None:
        # Innermost: _observe then counts the refusal like any other error.
        middlewares.append(_rate_limit(rate, node.config.max_request_burst))
    app = web.Application(middlewares=middlewares, client_max_size=max_body)
    app[NODE_KEY] = node
    for source in route_sources():
        app.add_routes(source(node))
    app.on_shutdown.append(_end_watches)
    app.on_cleanup.append(_close_forwarding)
    return app


async def _end_watches(app: web.Application) -> None:
    """Watch streams never end by themselves: end them, or shutting down waits for them."""
    await http_watch.end_streams(app[NODE_KEY])


async def _close_forwarding(app: web.Application) -> None:
    """The connections to the leader that forwarded requests used (http_forward.py)."""
    await close_forwarder(app[NODE_KEY])


class HttpServer:
    def __init__(self, node: Node, *, host: str, port: int, max_body: int,
                 ssl: SSLContext | None = None) -> None:
        """``ssl``: serve HTTPS only, with the client port's context (security/tls.py)."""
        self._app = build_app(node, max_body=max_body)
        self._host, self._port = host, port
        self._ssl = ssl
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False,
                                     shutdown_timeout=2.0)
        self._site: web.TCPSite | None = None
        self.port = port

    @property
    def app(self) -> web.Application:
        return self._app

    async def start(self) -> None:
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True,
                                 ssl_context=self._ssl)
        await self._site.start()
        server = self._site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    async def close(self) -> None:
        await self._runner.cleanup()
