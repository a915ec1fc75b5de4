"""Observing a node over HTTP: Prometheus metrics, the event feed, per-second stats.

``GET /metrics``
    The node's registry (server/metrics.py) in the Prometheus text format, or
    OpenMetrics when the scraper's ``Accept`` header asks for it.

``GET /v1/events?since=SEQ&limit=N``
    ``{"events": [...], "last_seq": int}``: the events numbered above ``since``
    (default 0), oldest first, at most ``limit`` (default 200, at most 1000),
    the newest ones if more match. ``last_seq`` is the number of the latest
    event the node has recorded, so polling with ``since=last_seq`` sees every
    later event exactly once (as long as fewer than ``limit`` arrive between
    two polls). Event shape: server/events.py; the fields that carry an id (a
    node's ``id``, ``cluster_id``, a lease) are strings of digits, as every id
    the HTTP API answers with (http_json.py).

``GET /v1/stats``
    ``{"interval_s": 1, "series": [...]}``: one entry per complete second of
    the last ten minutes, oldest first, ``{"t", "reads", "writes", "errors",
    "read_p50_ms", "read_p99_ms", "write_p50_ms", "write_p99_ms"}`` (a
    percentile is null for a second without such requests).

A malformed query parameter is answered 400 with the usual error body.

With auth enabled, ``/v1/events`` and ``/v1/stats`` need a signed-in user
(http_auth.py), and ``/metrics`` too when ``auth_metrics`` is set (a
Prometheus scraper then sends a token as its bearer credentials).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from aiohttp import web

from quorumkv.errors import InvalidArgument
from quorumkv.server.events import DEFAULT_LIMIT, MAX_LIMIT
from quorumkv.server.http_auth import check_signed_in
from quorumkv.server.http_json import event_json, json_response, json_safe

if TYPE_CHECKING:
    from quorumkv.server.http_server import RouteTable
    from quorumkv.server.node import Node


MAX_PARAM_DIGITS: Final = 18
MAX_SINCE: Final = 10**MAX_PARAM_DIGITS - 1


def _int_param(request: web.Request, name: str, default: int, *, low: int,
               high: int | None = None) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    # Plain ASCII digits only: int() would also take signs, spaces, underscores and
    # other scripts' digits, none of which a well-behaved client sends.
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_PARAM_DIGITS):
        raise InvalidArgument(f"query parameter {name!r} must be a non-negative integer, "
                              f"not {text[:40]!r}", parameter=name)
    value = int(text)
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise InvalidArgument(f"query parameter {name!r} must be {bounds}, not {value}",
                              parameter=name)
    return value


def routes(node: Node) -> RouteTable:
    async def metrics(request: web.Request) -> web.Response:
        if node.config.auth_metrics:
            check_signed_in(request, node)
        body, content_type = node.metrics.exposition(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def events(request: web.Request) -> web.Response:
        since = _int_param(request, "since", 0, low=0)
        limit = _int_param(request, "limit", DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
        check_signed_in(request, node)
        feed = node.events
        events = [event_json(json_safe(e)) for e in feed.recent(since, limit)]
        return json_response({"events": events, "last_seq": feed.last_seq})

    async def stats(request: web.Request) -> web.Response:
        check_signed_in(request, node)
        return json_response({"interval_s": 1, "series": node.metrics.series()})

    return [web.get("/metrics", metrics), web.get("/v1/events", events),
            web.get("/v1/stats", stats)]
