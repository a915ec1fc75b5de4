"""etcd's JSON gateway on the HTTP port (``POST /v3/...``), as curl and etcd3gw use it, and
etcd's gRPC port as aetcd (an asyncio gRPC client) uses it.

Requests and answers are protobuf JSON: keys and values in base64, 64-bit integers
answered as strings; errors are grpc-gateway's ``{"error", "code", "message"}`` with
etcd's gRPC code and text. The tests of a service skip while it is not in
``quorumkv.etcd.server.SERVICES`` (its paths answer 501 then: test_etcd_gateway_bridge.py).
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from etcd_support import READER_PW, ROOT_PW, EtcdCluster, enable_auth_with_reader, etcd_cluster

from quorumkv.client import Client
from quorumkv.etcd import gateway
from quorumkv.etcd.server import SERVICES

AETCD_SCRIPT = Path(__file__).with_name("etcd_aetcd_check.py")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def served(method: str) -> bool:
    """Whether a service class in SERVICES has the etcd method ``method``."""
    return any(callable(getattr(cls, method, None)) for cls in SERVICES)


def need(method: str) -> None:
    if not served(method):
        pytest.skip(f"etcd's {method} is not served yet (no service in SERVICES has it)")


def post(base: str, path: str, body: object = None, *, raw: bytes | None = None,
         token: str | None = None) -> tuple[int, dict[str, Any]]:
    data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
    request = urllib.request.Request(base + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    if token is not None:
        request.add_header("Authorization", token)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def ec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with etcd_cluster(Path(tmp_path_factory.mktemp("etcd-gateway"))) as c:
        yield c


@pytest.fixture(scope="module")
def url(ec: EtcdCluster) -> str:
    """A follower's HTTP port: writes go on to the leader from there."""
    leader = ec.cluster.leader_name()
    return next(n for n in ec.cluster.nodes if n.name != leader).http_url


def test_put_and_range_in_base64_with_ids_as_strings(url: str) -> None:
    status, put = post(url, "/v3/kv/put", {"key": b64("gw/a"), "value": b64("1")})
    assert status == 200, put
    header = put["header"]
    assert isinstance(header["revision"], str) and int(header["revision"]) > 0
    assert isinstance(header["cluster_id"], str) and isinstance(header["member_id"], str)
    post(url, "/v3/kv/put", {"key": b64("gw/b"), "value": b64("2")})
    post(url, "/v3/kv/put", {"key": b64("gx"), "value": b64("3")})

    status, got = post(url, "/v3/kv/range", {"key": b64("gw/a")})
    assert status == 200
    assert [(unb64(kv["key"]), unb64(kv["value"])) for kv in got["kvs"]] == [("gw/a", "1")]
    assert got["count"] == "1"
    assert got["kvs"][0]["version"] == "1"
    assert "more" not in got  # false: left out, as grpc-gateway does

    # A prefix: range_end is the prefix with its last byte plus one.
    status, got = post(url, "/v3/kv/range", {"key": b64("gw/"), "range_end": b64("gw0"),
                                             "keys_only": True})
    assert status == 200
    assert [unb64(kv["key"]) for kv in got["kvs"]] == ["gw/a", "gw/b"]
    assert all("value" not in kv for kv in got["kvs"])
    # lowerCamelCase names are the same fields.
    status, got = post(url, "/v3/kv/range", {"key": b64("gw/"), "rangeEnd": b64("gw0"),
                                             "countOnly": True})
    assert status == 200 and got["count"] == "2" and "kvs" not in got

    status, missing = post(url, "/v3/kv/range", {"key": b64("gw/none")})
    assert status == 200 and "kvs" not in missing and "header" in missing


def test_txn_and_deleterange(url: str) -> None:
    post(url, "/v3/kv/put", {"key": b64("txn/k"), "value": b64("v1")})
    txn = {"compare": [{"key": b64("txn/k"), "target": "VALUE", "result": "EQUAL",
                        "value": b64("v1")}],
           "success": [{"request_put": {"key": b64("txn/k"), "value": b64("v2")}},
                       {"request_range": {"key": b64("txn/k")}}],
           "failure": [{"request_delete_range": {"key": b64("txn/k")}}]}
    status, got = post(url, "/v3/kv/txn", txn)
    assert status == 200, got
    assert got["succeeded"] is True
    assert unb64(got["responses"][1]["response_range"]["kvs"][0]["value"]) == "v2"
    status, got = post(url, "/v3/kv/txn", txn)  # the value is v2 now: the failure branch
    assert status == 200 and "succeeded" not in got
    assert got["responses"][0]["response_delete_range"]["deleted"] == "1"

    for k in ("del/1", "del/2", "del/3"):
        post(url, "/v3/kv/put", {"key": b64(k), "value": b64(k)})
    status, got = post(url, "/v3/kv/deleterange", {"key": b64("del/"),
                                                   "range_end": b64("del0"),
                                                   "prev_kv": True})
    assert status == 200
    assert got["deleted"] == "3"
    assert sorted(unb64(kv["value"]) for kv in got["prev_kvs"]) == ["del/1", "del/2", "del/3"]


def test_compaction_and_the_compacted_error(url: str) -> None:
    _, put = post(url, "/v3/kv/put", {"key": b64("cmp/k"), "value": b64("old")})
    old = int(put["header"]["revision"])
    _, put = post(url, "/v3/kv/put", {"key": b64("cmp/k"), "value": b64("new")})
    status, got = post(url, "/v3/kv/compaction", {"revision": put["header"]["revision"]})
    assert status == 200 and "header" in got
    status, err = post(url, "/v3/kv/range", {"key": b64("cmp/k"), "revision": str(old)})
    message = "etcdserver: mvcc: required revision has been compacted"
    assert (status, err) == (400, {"error": message, "code": 11, "message": message})


def test_errors_are_etcds_json(url: str) -> None:
    message = "etcdserver: key is not provided"
    assert post(url, "/v3/kv/put", {"value": b64("x")}) == (
        400, {"error": message, "code": 3, "message": message})
    for raw in (b"{not json", b"[1, 2]", b'"text"', b'{"key": 5}', b'{"no_such": 1}',
                b'{"key": "not base64!"}', b"\xff\xfe"):
        status, err = post(url, "/v3/kv/range", raw=raw)
        assert status == 400 and err["code"] == 3 and err["message"], (raw, err)
    # Only POST, as grpc-gateway binds them.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(urllib.error.HTTPError) as info:
        opener.open(url + "/v3/kv/range", timeout=30)
    assert info.value.code == 405


def test_version(url: str) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url + "/version", timeout=30) as answer:
        assert json.loads(answer.read()) == {"etcdserver": gateway.EMULATED_ETCD_VERSION,
                                             "etcdcluster": gateway.EMULATED_ETCD_VERSION}


def _stream_lines(base: str, path: str, body: object) -> tuple[socket.socket, Iterator[str]]:
    """A raw HTTP/1.1 POST whose chunked answer is read line by line (with a timeout)."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=15)
    data = json.dumps(body).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
                 f"\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    reader = sock.makefile("rb")
    status = reader.readline()
    assert b" 200 " in status, status
    while reader.readline() not in (b"\r\n", b""):
        pass  # the headers

    def lines() -> Iterator[str]:
        pending = b""
        while True:
            size = int(reader.readline().strip(), 16)
            if size == 0:
                return
            pending += reader.read(size)
            reader.readline()
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip():
                    yield line.decode()

    return sock, lines()


def test_watch_streams_a_concurrent_writers_events(url: str, ec: EtcdCluster) -> None:
    need("Watch")
    sock, lines = _stream_lines(url, "/v3/watch", {"create_request": {
        "key": b64("w/"), "range_end": b64("w0")}})
    try:
        created = json.loads(next(lines))["result"]
        assert created.get("created") is True

        def write() -> None:
            other = ec.cluster.nodes[0].http_url
            for i in range(3):
                post(other, "/v3/kv/put", {"key": b64(f"w/{i}"), "value": b64(str(i))})

        writer = threading.Thread(target=write)
        writer.start()
        seen: list[tuple[str, str]] = []
        deadline = time.monotonic() + 20
        while len(seen) < 3 and time.monotonic() < deadline:
            result = json.loads(next(lines))["result"]
            seen += [(unb64(e["kv"]["key"]), unb64(e["kv"]["value"]))
                     for e in result.get("events", [])]
        writer.join(30)
        assert seen == [("w/0", "0"), ("w/1", "1"), ("w/2", "2")]
    finally:
        sock.close()


def test_lease_grant_timetolive_revoke(url: str) -> None:
    need("LeaseGrant")
    status, grant = post(url, "/v3/lease/grant", {"TTL": 60})
    assert status == 200, grant
    lease = grant["ID"]
    assert isinstance(lease, str) and grant["TTL"] == "60"
    post(url, "/v3/kv/put", {"key": b64("lease/k"), "value": b64("v"), "lease": lease})
    status, ttl = post(url, "/v3/lease/timetolive", {"ID": lease, "keys": True})
    assert status == 200 and 0 < int(ttl["TTL"]) <= 60
    assert [unb64(k) for k in ttl["keys"]] == ["lease/k"]
    status, _ = post(url, "/v3/kv/lease/timetolive", {"ID": lease})
    assert status == 200
    status, _ = post(url, "/v3/lease/revoke", {"ID": lease})
    assert status == 200
    _, got = post(url, "/v3/kv/range", {"key": b64("lease/k")})
    assert "kvs" not in got
    status, err = post(url, "/v3/kv/lease/revoke", {"ID": lease})
    assert (status, err["code"], err["message"]) == (
        404, 5, "etcdserver: requested lease not found")


def test_etcd3gw_over_the_gateway(ec: EtcdCluster) -> None:
    etcd3gw = pytest.importorskip("etcd3gw", reason="etcd3gw is not installed")
    node = ec.cluster.nodes[1]
    assert node.http_port is not None
    client = etcd3gw.client(host="127.0.0.1", port=node.http_port, timeout=30)
    assert client.put("e3gw/a", "1") is True
    client.put("e3gw/b", "2")
    assert client.get("e3gw/a") == [b"1"]
    assert sorted(v for v, _ in client.get_prefix("e3gw/")) == [b"1", b"2"]
    assert client.delete("e3gw/a") is True
    assert client.get("e3gw/a") == []
    if served("LeaseGrant"):
        lease = client.lease(ttl=60)
        client.put("e3gw/leased", "x", lease=lease)
        assert 0 < lease.ttl() <= 60
        assert list(lease.keys()) == [b"e3gw/leased"]
        assert lease.revoke() is True
        assert client.get("e3gw/leased") == []
    if served("Watch"):
        events, cancel = client.watch("e3gw/w")
        try:
            time.sleep(0.5)  # the watch is created on its own thread
            client.put("e3gw/w", "watched")
            got: list[Any] = []
            done = threading.Thread(target=lambda: got.append(next(events)), daemon=True)
            done.start()
            done.join(20)
            assert got and got[0]["kv"]["value"] == b"watched"
        finally:
            cancel()


def test_aetcd_over_the_grpc_port(ec: EtcdCluster, tmp_path: Path) -> None:
    # aetcd bundles its own compilation of etcd's messages, which protobuf's process-wide
    # descriptor pool refuses beside quorumkv's: it runs in a process of its own.
    probe = subprocess.run([sys.executable, "-c", "import aetcd"], capture_output=True,
                           timeout=60, check=False)
    if probe.returncode != 0:
        pytest.skip(f"aetcd cannot be imported: {probe.stderr.decode()[-300:]}")
    port = ec.ports[sorted(ec.ports)[1]]
    flags = [f"--{m}" for m in ("LeaseGrant", "Watch") if served(m)]
    out = tmp_path / "aetcd.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, str(AETCD_SCRIPT), str(port), *flags],
                                stdout=sink, stderr=subprocess.STDOUT)
    try:
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = out.read_text()
    assert code == 0, text
    assert "kv ok" in text
    assert ("lease ok" in text) == ("--LeaseGrant" in flags)
    assert ("watch ok" in text) == ("--Watch" in flags)


@pytest.fixture(scope="module")
def auth_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    """A one-member cluster with auth on: root, and a reader of ``app/``."""
    with etcd_cluster(Path(tmp_path_factory.mktemp("etcd-gateway-auth")), size=1) as c:
        enable_auth_with_reader(c.cluster, seed={"app/x": "1"})
        yield c.cluster.nodes[0].http_url, c.cluster.endpoints


def _token(endpoints: list[str], user: str, password: str) -> str:
    with Client(endpoints, timeout=30.0, user=user, password=password) as c:
        return c.authenticate()


def test_the_authorization_header_names_the_user(auth_url: tuple[str, list[str]]) -> None:
    url, endpoints = auth_url
    reader = _token(endpoints, "reader", READER_PW)
    for header in (reader, f"Bearer {reader}"):  # etcd3gw's bare form, and the usual one
        status, got = post(url, "/v3/kv/range", {"key": b64("app/x")}, token=header)
        assert status == 200 and unb64(got["kvs"][0]["value"]) == "1"
    denied = "etcdserver: permission denied"
    assert post(url, "/v3/kv/put", {"key": b64("app/x"), "value": b64("2")},
                token=reader) == (403, {"error": denied, "code": 7, "message": denied})
    status, err = post(url, "/v3/kv/range", {"key": b64("app/x")})
    assert (status, err["message"]) == (400, "etcdserver: user name is empty")
    status, err = post(url, "/v3/kv/range", {"key": b64("app/x")}, token="qkv1.forged")
    assert (status, err["code"], err["message"]) == (401, 16,
                                                     "etcdserver: invalid auth token")
    root = _token(endpoints, "root", ROOT_PW)
    status, _ = post(url, "/v3/kv/put", {"key": b64("app/x"), "value": b64("2")}, token=root)
    assert status == 200


def test_authenticate_over_the_gateway(auth_url: tuple[str, list[str]]) -> None:
    need("Authenticate")
    url, _ = auth_url
    status, got = post(url, "/v3/auth/authenticate", {"name": "reader",
                                                      "password": READER_PW})
    assert status == 200, got
    status, read = post(url, "/v3/kv/range", {"key": b64("app/x")}, token=got["token"])
    assert status == 200 and unb64(read["kvs"][0]["key"]) == "app/x"
    status, err = post(url, "/v3/auth/authenticate", {"name": "reader", "password": "no"})
    assert (status, err["code"]) == (400, 3)
