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
gets the same JSON shape with code ``invalid_argument``. Anything else is a
bug: it is logged with its traceback and answered 500 without detail, and
the server goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from quorumkv.errors import (
    AuthenticationFailed,
    Compacted,
    ConsistencyError,
    InvalidArgument,
    KeyTooLarge,
    LeaseNotFound,
    MembershipError,
    MessageTooLarge,
    NotBuiltYet,
    ProtocolError,
    QuorumKVError,
    RequestError,
    ResourceExhausted,
    Timeout,
    UnavailableError,
    ValueTooLarge,
)

if TYPE_CHECKING:
    from quorumkv.server.node import Node

log = logging.getLogger(__name__)

NODE_KEY: web.AppKey[Node] = web.AppKey("node")

RouteTable = Iterable[web.AbstractRouteDef]
RouteSource = Callable[["Node"], RouteTable]

# Most specific first: the first class an error is an instance of decides.
_STATUS: tuple[tuple[type[QuorumKVError], int], ...] = (
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
    return {"error": err.to_dict()}


def error_response(err: QuorumKVError) -> web.Response:
    return web.json_response(error_body(err), status=http_status(err))


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
        body = {"error": {"code": InvalidArgument.code, "message": reason, "details": {}}}
        return web.json_response(body, status=e.status, headers={
            k: v for k, v in e.headers.items() if k.lower() == "allow"})
    except (ConnectionResetError, TimeoutError):
        raise
    except Exception:
        log.exception("HTTP %s %s failed", request.method, request.path)
        body = {"error": {"code": QuorumKVError.code,
                          "message": "internal error (logged on the node)", "details": {}}}
        return web.json_response(body, status=500)


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
    return [_core_routes]


def build_app(node: Node, *, max_body: int) -> web.Application:
    app = web.Application(middlewares=[_errors_as_json], client_max_size=max_body)
    app[NODE_KEY] = node
    for source in route_sources():
        app.add_routes(source(node))
    return app


class HttpServer:
    def __init__(self, node: Node, *, host: str, port: int, max_body: int) -> None:
        self._app = build_app(node, max_body=max_body)
        self._host, self._port = host, port
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False,
                                     shutdown_timeout=2.0)
        self._site: web.TCPSite | None = None
        self.port = port

    @property
    def app(self) -> web.Application:
        return self._app

    async def start(self) -> None:
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await self._site.start()
        server = self._site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    async def close(self) -> None:
        await self._runner.cleanup()
