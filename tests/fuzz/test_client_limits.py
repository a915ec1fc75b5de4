"""Resource limits of the client port on a real node: connections, stalled frames, watches."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cluster_harness import running_cluster
from raw_wire import RawConnection, toml_config

from quorumkv.client import Client
from quorumkv.client.coordination_wire import WatchCancelRequest, WatchRequest
from quorumkv.client.protocol import HelloRequest, Response
from quorumkv.errors import NetworkError
from quorumkv.transport.framing import HEADER

pytestmark = pytest.mark.timeout(180)


def _hello(conn: RawConnection, rid: int = 1) -> Response:
    conn.send(rid, HelloRequest())
    resp = conn.response()
    assert resp.request_id == rid and resp.ok, resp
    return resp


def _open_served(port: int, count: int) -> list[RawConnection]:
    """``count`` connections the node serves (a slot freed a moment ago may not be yet)."""
    conns: list[RawConnection] = []
    deadline = time.monotonic() + 20
    while len(conns) < count:
        conn = RawConnection(port)
        try:
            _hello(conn)
        except (EOFError, AssertionError):
            conn.close()
            assert time.monotonic() < deadline, "the node never freed its connection slots"
            time.sleep(0.2)
            continue
        conns.append(conn)
    return conns


def _assert_refused(conn: RawConnection) -> None:
    resp = conn.response()
    assert resp.request_id == 0 and not resp.ok
    assert resp.body["code"] == "resource_exhausted"
    assert "max_client_connections" in resp.body["message"]
    assert conn.closed_by_server(5.0)


def test_connections_beyond_the_limit_get_one_error_and_are_closed(tmp_path: Path) -> None:
    limit = 6
    with running_cluster(tmp_path, size=1,
                         extra=toml_config(tmp_path, max_client_connections=limit)) as cluster:
        cluster.leader_name()
        node = cluster.nodes[0]
        first = _open_served(node.client_port, limit)
        extra = [RawConnection(node.client_port) for _ in range(5)]
        for conn in extra:
            _assert_refused(conn)
            conn.close()
        # The client library says why it could not get in.
        with Client([node.client_address], timeout=1.5) as c, \
                pytest.raises(NetworkError, match=r"resource_exhausted|connections"):
            c.get("k")
        # Those admitted are unaffected.
        for i, conn in enumerate(first):
            _hello(conn, rid=100 + i)
        # Closing some frees their slots: a client is served again.
        for conn in first[:2]:
            conn.close()
        deadline = time.monotonic() + 20
        while True:
            try:
                with Client([node.client_address], timeout=5.0) as c:
                    c.put("after", "limit")
                    kv = c.get("after")
                    assert kv is not None and kv.value == b"limit"
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        more = _open_served(node.client_port, 2)  # the Client's slot is free again too
        refused = RawConnection(node.client_port)
        _assert_refused(refused)
        for conn in [*first[2:], *more, refused]:
            conn.close()
        assert node.running()


def test_a_stalled_frame_is_cut_off_but_an_idle_connection_stays(tmp_path: Path) -> None:
    with running_cluster(tmp_path, size=1,
                         extra=toml_config(tmp_path, client_frame_timeout_s=1.0)) as cluster:
        cluster.leader_name()
        port = cluster.nodes[0].client_port
        idle = RawConnection(port)  # never sends a byte
        used = RawConnection(port)  # a whole request, then nothing
        _hello(used)
        stalled = RawConnection(port)  # a length prefix and some of the body, then nothing
        stalled.send_raw(HEADER.pack(100) + b"\x93\x01")
        header_only = RawConnection(port)  # half a length prefix
        header_only.send_raw(b"\x00\x00")
        trickle = RawConnection(port)  # a frame one byte at a time, too slowly in all
        trickle.send_raw(HEADER.pack(50))
        start = time.monotonic()
        trickle_cut = False
        while time.monotonic() - start < 4.0:
            try:
                trickle.send_raw(b"\x00")
            except OSError:
                trickle_cut = True
                break
            time.sleep(0.25)
        assert stalled.closed_by_server(5.0)
        assert header_only.closed_by_server(5.0)
        assert trickle_cut or trickle.closed_by_server(5.0)
        assert time.monotonic() - start >= 0.9  # not before the timeout
        # Idle connections, with nothing pending, outlived the timeout several times over.
        _hello(idle, rid=7)
        _hello(used, rid=8)
        for conn in (idle, used, stalled, header_only, trickle):
            conn.close()
        assert cluster.nodes[0].running()


def _watch(conn: RawConnection, rid: int, key: bytes) -> Response:
    conn.send(rid, WatchRequest(key=key))
    while (resp := conn.response()).request_id != rid:
        pass  # a frame of another watch's stream (its cancellation)
    return resp


def _assert_exhausted(resp: Response, setting: str) -> None:
    assert not resp.ok and resp.body["code"] == "resource_exhausted", resp
    assert setting in resp.body["message"]


def test_watches_beyond_the_limits_are_refused(tmp_path: Path) -> None:
    config = toml_config(tmp_path, max_watches=4, max_watches_per_connection=2)
    with running_cluster(tmp_path, size=1, extra=config) as cluster:
        cluster.leader_name()
        port = cluster.nodes[0].client_port
        a, b, c = RawConnection(port), RawConnection(port), RawConnection(port)
        a1, a2 = _watch(a, 1, b"a1"), _watch(a, 2, b"a2")
        assert a1.ok and a2.ok
        _assert_exhausted(_watch(a, 3, b"a3"), "max_watches_per_connection")
        assert _watch(b, 1, b"b1").ok and _watch(b, 2, b"b2").ok
        _assert_exhausted(_watch(c, 1, b"c1"), "(max_watches 4)")  # the node's limit
        # Cancelling one frees a place on the node and on its connection.
        a.send(4, WatchCancelRequest(watch_id=a1.body["watch_id"]))
        answers = {}
        while 4 not in answers:
            r = a.response()
            answers[r.request_id] = r
        assert answers[4].ok
        assert _watch(c, 2, b"c2").ok
        _assert_exhausted(_watch(a, 5, b"a5"), "(max_watches 4)")
        # A connection that goes away takes its watches with it.
        a.close()
        d = RawConnection(port)
        deadline = time.monotonic() + 10
        while not (resp := _watch(d, 10, b"d1")).ok:
            _assert_exhausted(resp, "(max_watches 4)")
            assert time.monotonic() < deadline, "the closed connection's watch never ended"
            time.sleep(0.2)
        # Watches still deliver.
        with Client([cluster.nodes[0].client_address], timeout=5.0) as client:
            put = client.put("d1", "v")
        while True:
            r = d.response()
            if r.request_id == 10 and r.body.get("events"):
                assert r.body["events"][0]["kv"]["value"] == b"v"
                assert r.body["revision"] == put.revision
                break
        for conn in (b, c, d):
            conn.close()
        assert cluster.nodes[0].running()
