"""The dashboard in a real browser, served by a real three-node cluster.

What an operator must see at a glance is asserted through the page's
``data-testid`` attributes: every member as a card with its role and status,
exactly one leader, the key browser finding a written key and its history,
and after a SIGKILL the dead member failed, a (new) leader and the election
in the events feed; with the majority gone, a banner saying plainly that the
node has no leader; with the serving node gone, that it is unreachable, and
recovery once the nodes are back.

Every wait is Playwright's own polling with a generous deadline (the failure
detector marks a silent member failed within ~3 s, 10 s at most; an election
takes a few ticks of 50 ms), never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest
from aiohttp import test_utils, web
from cluster_harness import STARTUP_TIMEOUT, Cluster, NodeProcess, running_cluster
from playwright.sync_api import Browser, ConsoleMessage, Error, Locator, Page, expect

from quorumkv.server import http_dashboard
from quorumkv.server.data_dir import DataDir

if TYPE_CHECKING:
    from quorumkv.server.node import Node

pytestmark = pytest.mark.timeout(300)

LOAD_S = 30.0
"""Deadline for the page to show a healthy cluster it has just been pointed at."""
FAILURE_S = 30.0
"""Deadline for a SIGKILLed member to be shown failed and a new leader elected."""
NEW_LEADER_KINDS = ("election_started", "became_leader", "became_follower", "leader_changed")
"""The events a surviving member records once a new leader is elected (or sought)."""
PORT_TAKEN = "address already in use"
"""In the log of a node that could not bind one of the ports the harness picked."""
STARTS = 3
"""Clusters started before giving up on finding free ports."""
ALLOWED_WHILE_DOWN = "Failed to load resource: net::ERR_"
"""What Chromium logs for a fetch the network failed (refused, reset, empty): expected
once the node serving the page is killed, never an HTTP error status."""


@dataclass
class Console:
    """Every console error and uncaught exception of a page, in order."""

    errors: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console error: {message.text} ({message.location})")

    def on_page_error(self, error: Error) -> None:
        self.errors.append(f"uncaught: {error.message}\n{error.stack or ''}")


@dataclass
class DashboardPage:
    page: Page
    console: Console


@pytest.fixture
def dashboard(browser: Browser) -> Iterator[DashboardPage]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000},
                                  color_scheme="dark")
    try:
        page = context.new_page()
        console = Console()
        page.on("console", console.on_console)
        page.on("pageerror", console.on_page_error)
        yield DashboardPage(page=page, console=console)
    finally:
        context.close()


def _ms(seconds: float) -> float:
    return seconds * 1000


def _card(page: Page, name: str) -> Locator:
    return page.locator(f'[data-testid="member-card"][data-member="{name}"]')


def _http_up(node: NodeProcess) -> bool:
    try:
        with urllib.request.urlopen(node.http_url + "/health", timeout=2.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _log_tail(node: NodeProcess) -> str:
    return node.log_path.read_text(errors="replace")[-3000:] if node.log_path.exists() \
        else "(no log)"


def _wait_http(node: NodeProcess) -> bool:
    """Wait until ``node`` answers on its HTTP port: True, or False if it lost the race
    for one of its ports. Anything else that stops it is a failure, with its log."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not _http_up(node):
        if not node.running() and PORT_TAKEN in _log_tail(node):
            return False
        if time.monotonic() > deadline or not node.running():
            state = "running" if node.running() else "exited"
            raise AssertionError(f"{node.name} ({state}) does not answer on "
                                 f"{node.http_url}; its log ends:\n{_log_tail(node)}")
        time.sleep(0.1)
    return True


@contextlib.contextmanager
def _started_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """``running_cluster`` with every node answering on its HTTP port.

    The harness picks free ports and closes them before the nodes bind, so any
    outbound connection on the machine (a browser's, another test's) may take one
    meanwhile; a node that lost that race is no fault of the dashboard, and the
    cluster is started again on other ports.
    """
    for attempt in range(STARTS):
        root = tmp_path / f"start{attempt}"
        root.mkdir()
        with running_cluster(root) as cluster:
            if all([_wait_http(n) for n in cluster.nodes]):
                yield cluster
                return
    raise AssertionError(f"{STARTS} clusters in a row lost the race for their ports")


def _open(dash: DashboardPage, node: NodeProcess, names: list[str]) -> Page:
    """The page served by ``node``, showing every member active and one leader."""
    page = dash.page
    page.goto(node.http_url + "/")
    expect(page.get_by_test_id("member-card")).to_have_count(len(names), timeout=_ms(LOAD_S))
    for name in names:
        expect(_card(page, name)).to_have_attribute("data-status", "active",
                                                    timeout=_ms(LOAD_S))
    expect(page.get_by_test_id("leader-marker")).to_have_count(1, timeout=_ms(LOAD_S))
    return page


def _request(url: str, body: dict[str, str] | None = None) -> None:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with contextlib.suppress(urllib.error.URLError, OSError), \
            urllib.request.urlopen(req, timeout=5.0) as resp:
        resp.read()


@contextlib.contextmanager
def _traffic(node: NodeProcess) -> Iterator[None]:
    """Reads and writes through ``node``'s HTTP API in the background, so the page's
    charts have something to draw; failures (during an election) are expected."""
    stop = threading.Event()

    def run() -> None:
        i = 0
        while not stop.is_set():
            for _ in range(4):
                _request(node.http_url + "/v1/kv/range?key=dash/greeting&consistency=one")
            _request(node.http_url + "/v1/kv/put", {"key": f"load/{i % 50}", "value": str(i)})
            i += 1
            stop.wait(0.03)  # pacing, so the cluster is loaded and not swamped

    thread = threading.Thread(target=run, name="dashboard-traffic", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


def _max_event_seq(page: Page) -> int:
    return int(page.evaluate(
        "Math.max(0, ...Array.from(document.querySelectorAll('[data-testid=event-row]'),"
        " (r) => Number(r.dataset.seq)))"))


def _settled_screenshot(page: Page, path: Path, busy_seconds: int) -> None:
    """A full-page screenshot once the throughput chart has drawn ``busy_seconds`` of
    the background traffic (a line to read rather than a spike at the edge)."""
    # A function, not an expression: the page's CSP forbids evaluating strings.
    page.wait_for_function(
        "(n) => Number(document.getElementById('chart-throughput').dataset.busySeconds) >= n",
        arg=busy_seconds, timeout=_ms(LOAD_S + busy_seconds))
    page.screenshot(path=str(path), full_page=True)


def _check_ids(page: Page, cluster: Cluster) -> None:
    """The cluster and member ids, 63-bit numbers, shown to the last digit (as JavaScript
    numbers they would be rounded)."""
    infos = {n.name: DataDir(n.data_dir).read_info() for n in cluster.nodes}
    cluster_ids = {info["cluster_id"] for info in infos.values()}
    assert len(cluster_ids) == 1
    expect(page.get_by_test_id("cluster-id")).to_have_text(str(cluster_ids.pop()))
    for name, info in infos.items():
        expect(_card(page, name)).to_have_attribute("data-id", str(info["node_id"]))


def _write_keys(cluster: Cluster) -> None:
    with cluster.client() as c:
        c.put("dash/greeting", "hello, first version")
        c.put("dash/greeting", "hello from the dashboard test")
        c.put("dash/config.json", '{"replicas": 3, "tick_ms": 50}')
        c.put("dash/binary", bytes([0, 1, 2, 0xFF, 0xFE, 0x80, 0x7F]) + b"tail")
        c.put("dash/<b>markup</b>", "<img src=x onerror=\"window.__xss=1\">")
        for i in range(12):
            c.put(f"dash/item/{i:02d}", f"item number {i}")


def _check_key_browser(page: Page) -> None:
    page.get_by_test_id("kv-prefix").fill("dash/")
    # Linearizable, so the follower serving the page answers with every write above.
    page.get_by_test_id("kv-consistency").select_option("quorum")
    page.get_by_test_id("kv-scan").click()
    rows = page.get_by_test_id("kv-row")
    expect(rows).to_have_count(16, timeout=_ms(LOAD_S))
    expect(page.get_by_test_id("kv-count")).to_contain_text("16 keys shown of 16")

    greeting = page.locator('[data-testid="kv-row"][data-key="dash/greeting"]')
    expect(greeting).to_be_visible()
    greeting.click()
    expect(page.get_by_test_id("kv-detail-key")).to_have_text("dash/greeting")
    expect(page.get_by_test_id("kv-value")).to_have_text("hello from the dashboard test")
    history = page.get_by_test_id("kv-history-row")
    expect(history).to_have_count(2, timeout=_ms(LOAD_S))
    expect(history.first).to_contain_text("hello from the dashboard test")
    expect(history.nth(1)).to_contain_text("hello, first version")

    # A binary value is marked as such in the list and shown as a hex dump.
    binary = page.locator('[data-testid="kv-row"][data-key="dash/binary"]')
    expect(binary).to_contain_text("binary, 11 bytes")
    binary.click()
    expect(page.get_by_test_id("kv-value")).to_contain_text("00 01 02 ff fe 80 7f 74")

    # Markup in a key or value is text, never HTML.
    markup = page.locator('[data-testid="kv-row"][data-key="dash/<b>markup</b>"]')
    expect(markup).to_contain_text("dash/<b>markup</b>")
    markup.click()
    expect(page.get_by_test_id("kv-value")).to_have_text('<img src=x onerror="window.__xss=1">')
    assert page.locator("[data-testid=kv-table] b, #kv-value img").count() == 0
    assert page.evaluate("window.__xss") is None

    greeting.click()
    expect(history).to_have_count(2, timeout=_ms(LOAD_S))


def test_dashboard_shows_the_cluster_and_a_failure(tmp_path: Path, dashboard: DashboardPage,
                                                   screenshots: Path) -> None:
    with _started_cluster(tmp_path) as cluster:
        names = [n.name for n in cluster.nodes]
        leader = cluster.leader_name()
        # Served by a follower, so the member killed below is the leader and the page
        # must show a new election from a node that survives it.
        served = next(n for n in cluster.nodes if n.name != leader)
        page = _open(dashboard, served, names)
        expect(_card(page, leader)).to_have_attribute("data-role", "leader")
        expect(_card(page, leader).get_by_test_id("leader-marker")).to_have_count(1)
        expect(_card(page, served.name)).to_have_attribute("data-self", "true")
        _check_ids(page, cluster)
        expect(page.get_by_test_id("banner")).to_be_hidden()
        expect(page.get_by_test_id("conn-status")).to_have_attribute("data-state", "live")

        _write_keys(cluster)
        _check_key_browser(page)
        with _traffic(served):
            # The cluster is seconds old: the one-minute window shows its traffic best.
            page.get_by_test_id("window-60").click()
            _settled_screenshot(page, screenshots / "dashboard.png", busy_seconds=12)
            before = _max_event_seq(page)
            cluster.node(leader).kill()
            _check_failover(page, leader, before)
            _settled_screenshot(page, screenshots / "dashboard-failed.png", busy_seconds=20)

    assert dashboard.console.errors == []


def _check_failover(page: Page, leader: str, before: int) -> None:

    """The killed ``leader`` is shown failed, another member leading, the election in the
    events feed (numbered above ``before``) and a banner saying what is at stake."""
    expect(_card(page, leader)).to_have_attribute("data-status", "failed",
                                                  timeout=_ms(FAILURE_S))
    new_leader = page.locator(
        f'[data-testid="member-card"][data-role="leader"]:not([data-member="{leader}"])')
    expect(new_leader).to_have_count(1, timeout=_ms(FAILURE_S))
    expect(page.get_by_test_id("leader-marker")).to_have_count(1)
    expect(_card(page, leader)).not_to_have_attribute("data-role", "leader")
    page.wait_for_function(
        """([before, kinds]) => Array.from(document.querySelectorAll(
               '[data-testid=event-row][data-cat=election]')).some(
               (r) => Number(r.dataset.seq) > before && kinds.includes(r.dataset.kind))""",
        arg=[before, list(NEW_LEADER_KINDS)], timeout=_ms(FAILURE_S))
    banner = page.get_by_test_id("banner")
    expect(banner).to_contain_text(f"{leader} is down (failed): 2 of 3 voters are up",
                                   timeout=_ms(FAILURE_S))
    expect(banner).to_contain_text("One more failure and the cluster stops accepting writes")


def test_dashboard_without_a_majority_then_unreachable(tmp_path: Path,
                                                       dashboard: DashboardPage,
                                                       screenshots: Path) -> None:
    with _started_cluster(tmp_path) as cluster:
        names = [n.name for n in cluster.nodes]
        served = cluster.nodes[0]
        page = _open(dashboard, served, names)
        others = [n for n in cluster.nodes if n is not served]
        for n in others:
            n.kill()

        banner = page.get_by_test_id("banner")
        expect(banner).to_be_visible(timeout=_ms(FAILURE_S))
        expect(banner).to_contain_text(
            f"{served.name} has no leader: the cluster cannot accept writes (majority lost?)",
            timeout=_ms(FAILURE_S))
        for n in others:
            expect(_card(page, n.name)).to_have_attribute("data-status", "failed",
                                                          timeout=_ms(FAILURE_S))
        expect(page.get_by_test_id("leader-marker")).to_have_count(0)
        expect(page.get_by_test_id("summary-leader")).to_have_text("none")
        expect(banner).to_contain_text("1 of 3 voters are up and a majority needs 2")
        page.screenshot(path=str(screenshots / "dashboard-no-leader.png"), full_page=True)
        assert dashboard.console.errors == []

        # The serving node itself goes: the page says so and keeps what it last saw.
        served.kill()
        expect(banner).to_contain_text(f"This node ({served.name}) is unreachable",
                                       timeout=_ms(FAILURE_S))
        expect(page.get_by_test_id("conn-status")).to_have_attribute("data-state",
                                                                     "unreachable")
        expect(page.get_by_test_id("member-card")).to_have_count(3)
        page.screenshot(path=str(screenshots / "dashboard-unreachable.png"), full_page=True)

        # Everyone comes back: the page recovers without a reload.
        for n in cluster.nodes:
            n.start()
        expect(page.get_by_test_id("conn-status")).to_have_attribute(
            "data-state", "live", timeout=_ms(LOAD_S))
        expect(page.get_by_test_id("leader-marker")).to_have_count(1, timeout=_ms(LOAD_S))
        for name in names:
            expect(_card(page, name)).to_have_attribute("data-status", "active",
                                                        timeout=_ms(LOAD_S))
        expect(banner).to_be_hidden(timeout=_ms(LOAD_S))

    unexpected = [e for e in dashboard.console.errors if ALLOWED_WHILE_DOWN not in e]
    assert unexpected == []


def test_dashboard_files_have_types_and_cache_headers() -> None:
    """The routes alone, without a browser: content types, the version that makes an
    asset cacheable for good, ETag revalidation, and nothing but the packaged files."""

    async def check() -> None:
        app = web.Application()
        app.add_routes(http_dashboard.routes(cast("Node", None)))
        async with test_utils.TestClient(test_utils.TestServer(app)) as client:
            index = await client.get("/")
            assert index.status == 200
            assert index.headers["Content-Type"] == "text/html; charset=utf-8"
            assert index.headers["Cache-Control"] == "no-cache"
            assert "script-src 'self'" in index.headers["Content-Security-Policy"]
            html = await index.text()
            version = re.search(r'/dashboard/app\.js\?v=([0-9a-f]+)"', html)
            assert version is not None, html
            assert http_dashboard.VERSION_MARK not in html

            for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css"),
                                ("favicon.svg", "image/svg+xml")):
                pinned = await client.get(f"/dashboard/{name}?v={version[1]}")
                assert pinned.status == 200
                assert pinned.headers["Content-Type"] == f"{ctype}; charset=utf-8"
                assert pinned.headers["Cache-Control"] == http_dashboard.CACHE_FOREVER
                assert pinned.headers["X-Content-Type-Options"] == "nosniff"
                unpinned = await client.get(f"/dashboard/{name}")
                assert unpinned.headers["Cache-Control"] == "no-cache"
                again = await client.get(f"/dashboard/{name}",
                                         headers={"If-None-Match": unpinned.headers["ETag"]})
                assert again.status == 304
                assert await again.read() == b""

            for missing in ("/dashboard/nope.js", "/dashboard/..%2Fhttp_dashboard.py",
                            "/dashboard/%2e%2e%2f__init__.py"):
                assert (await client.get(missing)).status == 404, missing
            moved = await client.get("/dashboard/", allow_redirects=False)
            assert moved.status == 302 and moved.headers["Location"] == "/"

    # In a thread of its own: Playwright's sync API keeps an event loop running in this one
    # while the module's browser is open.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, check()).result(timeout=60)


def _enable_auth(node: NodeProcess, password: str) -> None:
    """The user root with the role root, then auth on, through the HTTP API."""
    for path, body in (("/v1/auth/users", {"name": "root", "password": password}),
                       ("/v1/auth/roles", {"name": "root"}),
                       ("/v1/auth/users/root/roles", {"role": "root"}),
                       ("/v1/auth/enable", {})):
        req = urllib.request.Request(node.http_url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30.0) as resp:
            assert resp.status == 200, path


UNAUTHORIZED = "the server responded with a status of 401"
"""What Chromium logs for each request the node answered 401 before signing in."""


def test_dashboard_signs_in_when_auth_is_enabled(tmp_path: Path, dashboard: DashboardPage,
                                                 screenshots: Path) -> None:
    with _started_cluster(tmp_path) as cluster:
        served = cluster.nodes[0]
        _enable_auth(served, "dashboard-root-pw")
        page = dashboard.page
        page.goto(served.http_url + "/")
        # The events and statistics need a user: the page asks for one instead.
        expect(page.get_by_test_id("signin-form")).to_be_visible(timeout=_ms(LOAD_S))
        expect(page.get_by_test_id("members")).to_be_hidden()
        page.screenshot(path=str(screenshots / "dashboard-sign-in.png"), full_page=True)

        page.get_by_test_id("signin-user").fill("root")
        page.get_by_test_id("signin-password").fill("wrong password")
        page.get_by_test_id("signin-submit").click()
        expect(page.get_by_test_id("signin-error")).to_have_text(
            "Wrong user name or password.", timeout=_ms(LOAD_S))

        page.get_by_test_id("signin-password").fill("dashboard-root-pw")
        page.get_by_test_id("signin-submit").click()
        expect(page.get_by_test_id("signin")).to_be_hidden(timeout=_ms(LOAD_S))
        expect(page.get_by_test_id("member-card")).to_have_count(3, timeout=_ms(LOAD_S))
        for n in cluster.nodes:
            expect(_card(page, n.name)).to_have_attribute("data-status", "active",
                                                          timeout=_ms(LOAD_S))
        expect(page.get_by_test_id("signed-in")).to_contain_text("signed in as root")
        expect(page.get_by_test_id("events-error")).to_be_hidden(timeout=_ms(LOAD_S))
        # The token is in the tab's session storage, never in a URL.
        token = page.evaluate("() => sessionStorage.getItem('quorumkv.token')")
        assert isinstance(token, str) and token.startswith("qkv1.")
        assert token not in page.url
        page.screenshot(path=str(screenshots / "dashboard-signed-in.png"), full_page=True)

        page.get_by_test_id("sign-out").click()
        expect(page.get_by_test_id("signin-form")).to_be_visible()
        assert page.evaluate("() => sessionStorage.getItem('quorumkv.token')") is None

    unexpected = [e for e in dashboard.console.errors if UNAUTHORIZED not in e]
    assert unexpected == []
