"""The limits that keep a node up (docs/security.md), on a real node process.

Each test sets its limits from a TOML file (``serve --config``, beside the
harness's flags), exceeds one limit, checks the error the client sees (its
code, and a message naming the setting), and checks that another client is
served meanwhile and the node stays up. Another loopback address (127.0.0.2)
is another client address to the node.
"""

from __future__ import annotations

import http.client
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cluster_harness import NodeProcess, running_cluster

from quorumkv.client import Client
from quorumkv.client.protocol import HelloRequest, ReadRequest, Response, WriteRequest
from quorumkv.kv.commands import (
    Compare,
    CompareOp,
    CompareTarget,
    LeaseGrant,
    LeaseRevoke,
    Put,
    RangeRequest,
    Txn,
)
from quorumkv.transport.framing import HEADER

sys.path.insert(0, str(Path(__file__).parent.parent / "fuzz"))
from raw_wire import RawConnection, toml_config

pytestmark = pytest.mark.timeout(180)


def _start(tmp_path: Path, **settings: object) -> Any:
    return running_cluster(tmp_path, size=1, extra=toml_config(tmp_path, **settings))


def _ask(conn: RawConnection, rid: int, req: Any) -> Response:
    conn.send(rid, req)
    resp = conn.response()
    assert resp.request_id == rid, resp
    return resp


def _hello(conn: RawConnection, rid: int = 1) -> None:
    resp = _ask(conn, rid, HelloRequest())
    assert resp.ok, resp


def _refused(resp: Response, code: str, *words: str) -> None:
    assert not resp.ok and resp.body["code"] == code, resp
    for word in words:
        assert word in resp.body["message"], resp.body


def _http(node: NodeProcess, method: str, path: str, body: object = None, *,
          raw: bytes | None = None, source: str | None = None
          ) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
    assert node.http_port is not None
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=10,
                                      source_address=None if source is None else (source, 0))
    try:
        data = raw if raw is not None else (None if body is None
                                            else json.dumps(body).encode())
        conn.request(method, path, body=data,
                     headers={"Content-Type": "application/json"} if data is not None else {})
        resp = conn.getresponse()
        text = resp.read()
        parsed = json.loads(text) if resp.headers.get_content_type() == "application/json" \
            else {"text": text.decode()}
        return resp.status, parsed, resp
    finally:
        conn.close()


def _metric(node: NodeProcess, name: str, source: str = "127.0.0.9", **labels: str) -> float:
    """A counter's value from /metrics (0 if the series does not exist yet)."""
    status, body, _ = _http(node, "GET", "/metrics", source=source)
    assert status == 200
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)"
    m = re.search(r"^" + pattern + "$", body["text"], re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def _served_by_another_client(node: NodeProcess, key: str) -> None:
    with Client([node.client_address], timeout=10.0) as c:
        c.put(key, "fine")
        kv = c.get(key)
        assert kv is not None and kv.value == b"fine"


# -- transaction size -----------------------------------------------------------------


def _txn(compares: int, success: int, failure: int) -> Txn:
    return Txn(compares=tuple(Compare(key=b"c%d" % i, target=CompareTarget.VERSION,
                                      op=CompareOp.EQUAL, value=0) for i in range(compares)),
               success=tuple(Put(key=b"s%d" % i, value=b"v") for i in range(success)),
               failure=tuple(Put(key=b"f%d" % i, value=b"v") for i in range(failure)))


def _txn_json(compares: int, success: int, failure: int) -> dict[str, Any]:
    return {"compare": [{"key": f"c{i}", "target": "version", "op": "=", "value": 0}
                        for i in range(compares)],
            "success": [{"put": {"key": f"s{i}", "value": "v"}} for i in range(success)],
            "failure": [{"put": {"key": f"f{i}", "value": "v"}} for i in range(failure)]}


def test_a_transaction_beyond_max_txn_ops_is_refused_on_both_ports(tmp_path: Path) -> None:
    with _start(tmp_path, max_txn_ops=4) as cluster:
        cluster.leader_name()
        node = cluster.nodes[0]
        before = _metric(node, "quorumkv_errors_total", api="client", code="invalid_argument")
        a = RawConnection(node.client_port)
        assert _ask(a, 1, WriteRequest(cmd=_txn(4, 4, 4))).ok  # at the limit: fine
        for rid, (what, shape) in enumerate((("compares", (5, 1, 1)),
                                             ("success ops", (1, 5, 1)),
                                             ("failure ops", (1, 1, 5))), start=2):
            resp = _ask(a, rid, WriteRequest(cmd=_txn(*shape)))
            _refused(resp, "invalid_argument", f"too many {what}", "5 > 4", "max_txn_ops")
            assert resp.body["details"]["limit"] == 4
        _served_by_another_client(node, "txn-other")
        _hello(a, 9)  # the refusals closed nothing

        assert _http(node, "POST", "/v1/kv/txn", _txn_json(4, 4, 4))[0] == 200
        for shape in ((5, 0, 0), (0, 5, 0), (0, 0, 5)):
            status, body, _ = _http(node, "POST", "/v1/kv/txn", _txn_json(*shape))
            assert status == 400 and body["error"]["code"] == "invalid_argument", body
            assert "max_txn_ops" in body["error"]["message"]
        assert _metric(node, "quorumkv_errors_total", api="client",
                       code="invalid_argument") >= before + 3
        assert _metric(node, "quorumkv_errors_total", api="http", code="invalid_argument") >= 3
        a.close()
        assert node.running()


# -- connections per client address ----------------------------------------------------


def test_connections_beyond_max_connections_per_address_are_refused(tmp_path: Path) -> None:
    with _start(tmp_path, max_connections_per_address=3) as cluster:
        cluster.leader_name()
        node = cluster.nodes[0]
        port = node.client_port
        # The harness's own client connection may still be closing: wait for its slot.
        first: list[RawConnection] = []
        deadline = time.monotonic() + 20
        while len(first) < 3:
            conn = RawConnection(port)
            try:
                _hello(conn)
                first.append(conn)
            except (EOFError, AssertionError):
                conn.close()
                assert time.monotonic() < deadline, "the node never freed its slots"
                time.sleep(0.2)
        refused_before = _metric(node, "quorumkv_client_connections_refused_total")
        extra = RawConnection(port)
        resp = extra.response()
        assert resp.request_id == 0
        _refused(resp, "resource_exhausted", "max_connections_per_address 3", "127.0.0.1")
        assert extra.closed_by_server(5.0)
        extra.close()
        # Another address is another client: served while 127.0.0.1 is at its limit.
        other = RawConnection(port, source="127.0.0.2")
        _hello(other)
        assert _ask(other, 2, WriteRequest(cmd=Put(key=b"from-2", value=b"v"))).ok
        for i, conn in enumerate(first):
            _hello(conn, 10 + i)  # those admitted are unaffected
        assert _metric(node, "quorumkv_client_connections_refused_total") >= refused_before + 1
        # A closed connection frees its place for its address.
        first.pop().close()
        deadline = time.monotonic() + 20
        while True:
            again = RawConnection(port)
            try:
                _hello(again)
                break
            except (EOFError, AssertionError):
                again.close()
                assert time.monotonic() < deadline, "the closed connection's slot stayed taken"
                time.sleep(0.2)
        for conn in (*first, again, other):
            conn.close()
        assert node.running()


# -- leases per connection ------------------------------------------------------------


def _grant(conn: RawConnection, rid: int, lease_id: int, ttl: int = 60) -> Response:
    return _ask(conn, rid, WriteRequest(cmd=LeaseGrant(id=lease_id, ttl=ttl)))


def test_leases_beyond_max_leases_per_connection_are_refused(tmp_path: Path) -> None:
    with _start(tmp_path, max_leases_per_connection=3) as cluster:
        cluster.leader_name()
        node = cluster.nodes[0]
        a, b = RawConnection(node.client_port), RawConnection(node.client_port)
        short, kept, third = 1001, 1002, 1003
        assert _grant(a, 1, short, ttl=1).ok  # expires soon: nothing keeps it alive
        assert _grant(a, 2, kept).ok and _grant(a, 3, third).ok
        resp = _grant(a, 4, 1004)
        _refused(resp, "resource_exhausted", "max_leases_per_connection 3")
        assert resp.body["details"]["limit"] == 3
        # Another connection grants at the same time.
        assert _grant(b, 1, 2001).ok
        _hello(b, 2)
        # The expired lease stops counting (the node no longer has it).
        rid = 10
        deadline = time.monotonic() + 30
        while not (resp := _grant(a, rid, 1004)).ok:
            _refused(resp, "resource_exhausted", "max_leases_per_connection")
            assert time.monotonic() < deadline, "the expired lease was never let go"
            rid += 1
            time.sleep(0.2)
        _refused(_grant(a, 100, 1005), "resource_exhausted", "max_leases_per_connection")
        # Revoked through another connection: no longer counted here either.
        assert _ask(b, 3, WriteRequest(cmd=LeaseRevoke(id=kept))).ok
        assert _grant(a, 101, 1005).ok
        # Revoked through this connection.
        assert _ask(a, 102, WriteRequest(cmd=LeaseRevoke(id=third))).ok
        assert _grant(a, 103, 1006).ok
        _refused(_grant(a, 104, 1007), "resource_exhausted", "max_leases_per_connection")
        assert _metric(node, "quorumkv_errors_total", api="client",
                       code="resource_exhausted") >= 3
        # A new connection starts from none.
        a.close()
        c = RawConnection(node.client_port)
        assert all(_grant(c, i, 3000 + i).ok for i in range(1, 4))
        for conn in (b, c):
            conn.close()
        assert node.running()


# -- request rate -----------------------------------------------------------------------


def test_requests_beyond_the_rate_limit_are_refused_at_once(tmp_path: Path) -> None:
    # 1 a second with a burst of 5: 20 requests sent together certainly exceed it.
    with _start(tmp_path, max_requests_per_s=1.0, max_request_burst=5) as cluster:
        cluster.leader_name()
        node = cluster.nodes[0]
        a = RawConnection(node.client_port)
        # "one" reads of one key take the server's fast path: it is limited too.
        one = ReadRequest(range=RangeRequest(key=b"k"), consistency="one")
        for rid in range(1, 21):
            a.send(rid, one)
        answers = [a.response() for _ in range(20)]
        assert sorted(r.request_id for r in answers) == list(range(1, 21))
        refused = [r for r in answers if not r.ok]
        assert len(refused) >= 1 and len(answers) - len(refused) >= 1
        for r in refused:
            _refused(r, "rate_limited", "max_requests_per_s 1", "max_request_burst 5")
            assert r.body["details"]["retry_after_s"] > 0
        # Other requests on the same connection are limited alike (no fast path).
        for rid in range(21, 41):
            a.send(rid, HelloRequest())
        slow = [a.response() for _ in range(20)]
        assert any(not r.ok and r.body["code"] == "rate_limited" for r in slow)
        # Another connection has its own bucket: served meanwhile.
        b = RawConnection(node.client_port)
        _hello(b)
        assert _ask(b, 2, WriteRequest(cmd=Put(key=b"rate", value=b"v"))).ok

        # HTTP: one bucket per client address, answered 429 with Retry-After.
        statuses: list[int] = []
        for _ in range(20):
            status, body, resp = _http(node, "GET", "/v1/kv/range?key=k&consistency=one")
            statuses.append(status)
            if status == 429:
                assert body["error"]["code"] == "rate_limited", body
                assert "max_requests_per_s 1" in body["error"]["message"]
                assert int(resp.headers["Retry-After"]) >= 1
                assert body["error"]["details"]["retry_after_s"] > 0
            else:
                assert status == 200, body
        http_refused = statuses.count(429)
        assert http_refused >= 1
        # Probes are never limited, and another address is served meanwhile.
        assert _http(node, "GET", "/health")[0] == 200
        assert _http(node, "GET", "/v1/kv/range?key=k", source="127.0.0.2")[0] == 200

        assert _metric(node, "quorumkv_errors_total", api="client",
                       code="rate_limited") >= len(refused) + 1
        assert _metric(node, "quorumkv_errors_total", api="http",
                       code="rate_limited") >= http_refused
        for conn in (a, b):
            conn.close()
        assert node.running()


# -- sizes set in the configuration ------------------------------------------------------


def test_configured_size_limits_are_enforced(tmp_path: Path) -> None:
    with _start(tmp_path, max_key_bytes=16, max_value_bytes=64, max_request_bytes=8192,
                max_http_body_bytes=2048) as cluster:
        cluster.leader_name()
        node = cluster.nodes[0]
        a = RawConnection(node.client_port)
        _refused(_ask(a, 1, WriteRequest(cmd=Put(key=b"k" * 17, value=b"v"))),
                 "key_too_large", "max_key_bytes", "16")
        _refused(_ask(a, 2, WriteRequest(cmd=Put(key=b"k", value=b"v" * 65))),
                 "value_too_large", "max_value_bytes", "64")
        _refused(_ask(a, 3, ReadRequest(range=RangeRequest(key=b"k" * 17))),
                 "key_too_large", "max_key_bytes")
        assert _ask(a, 4, WriteRequest(cmd=Put(key=b"k" * 16, value=b"v" * 64))).ok
        # A frame announced beyond max_request_bytes: the connection is closed unread.
        big = RawConnection(node.client_port)
        big.send_raw(HEADER.pack(8193) + b"\x00" * 100)
        assert big.closed_by_server(5.0)
        big.close()
        _hello(a, 5)
        _served_by_another_client(node, "sizes")

        status, body, _ = _http(node, "POST", "/v1/kv/put", {"key": "k" * 17, "value": "v"})
        assert (status, body["error"]["code"]) == (413, "key_too_large")
        assert "max_key_bytes" in body["error"]["message"]
        status, body, _ = _http(node, "POST", "/v1/kv/put", {"key": "k", "value": "v" * 65})
        assert (status, body["error"]["code"]) == (413, "value_too_large")
        status, body, _ = _http(node, "POST", "/v1/kv/put",
                                raw=b'{"key": "k", "value": "' + b"v" * 3000 + b'"}')
        assert (status, body["error"]["code"]) == (413, "message_too_large")
        assert _http(node, "POST", "/v1/kv/put", {"key": "k", "value": "fine"})[0] == 200
        a.close()
        assert node.running()
