"""The dashboard: a static page every node serves at ``/`` from the package's files.

The page (``dashboard/index.html``, ``app.js``, ``style.css``) is plain
HTML, CSS and JavaScript with no build step and nothing fetched from
elsewhere, so it works on a machine with no internet access. Everything it
shows comes from this node's JSON API (``/v1/cluster/status``, ``/v1/events``,
``/v1/stats``, ``/v1/kv/...``), polled from the browser.

The files are read once, when the routes are built: they are small, and a
fixed table of names means a request path can never reach anything else on
disk. Caching: ``index.html`` names its assets with ``?v=VERSION`` (a digest
of every file), so an asset asked for with the current version is cached for
good and an upgraded node's page fetches the new ones; anything else is
revalidated by its ETag. Every answer carries a Content-Security-Policy
allowing only this origin's scripts, styles and API, which keeps a key or
value that slipped into the page as markup from running.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from quorumkv.server.http_server import RouteTable
    from quorumkv.server.node import Node

PACKAGE = "quorumkv.server"
FOLDER = "dashboard"
INDEX = "index.html"
VERSION_MARK = "__ASSET_VERSION__"

CONTENT_TYPES: dict[str, str] = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
CACHE_FOREVER = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _asset(body: bytes, suffix: str) -> Asset:
    digest = hashlib.sha256(body).hexdigest()[:20]
    return Asset(body=body, content_type=CONTENT_TYPES[suffix], etag=f'"{digest}"')


def load_assets() -> tuple[Asset, dict[str, Asset], str]:
    """The index page (with the version filled in), the assets by name, and the version."""
    folder = resources.files(PACKAGE).joinpath(FOLDER)
    raw: dict[str, bytes] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in CONTENT_TYPES:
            raw[entry.name] = entry.read_bytes()
    if INDEX not in raw:
        raise FileNotFoundError(f"the dashboard's {INDEX} is missing from {PACKAGE}/{FOLDER}")
    whole = hashlib.sha256()
    for name in sorted(raw):
        whole.update(name.encode() + b"\0" + raw[name] + b"\0")
    version = whole.hexdigest()[:12]
    index = _asset(raw.pop(INDEX).replace(VERSION_MARK.encode(), version.encode()), ".html")
    assets = {name: _asset(body, "." + name.rsplit(".", 1)[-1]) for name, body in raw.items()}
    return index, assets, version


def asset_names() -> list[str]:
    """The files served under ``/dashboard/`` (every packaged file but the index page)."""
    return sorted(load_assets()[1])


def _answer(request: web.Request, asset: Asset, cache_control: str) -> web.Response:
    headers = {**SECURITY_HEADERS, "Cache-Control": cache_control, "ETag": asset.etag}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, content_type=asset.content_type, charset="utf-8",
                        headers=headers)


def routes(_node: Node) -> RouteTable:
    index, assets, version = load_assets()

    async def page(request: web.Request) -> web.Response:
        return _answer(request, index, REVALIDATE)

    async def asset(request: web.Request) -> web.Response:
        found = assets.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(text=f"no dashboard file {request.match_info['name']!r}")
        pinned = request.query.get("v") == version
        return _answer(request, found, CACHE_FOREVER if pinned else REVALIDATE)

    async def to_page(_request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/")

    return [web.get("/", page), web.get("/dashboard", to_page),
            web.get("/dashboard/", to_page), web.get("/dashboard/{name}", asset)]
