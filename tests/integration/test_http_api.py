"""The HTTP/JSON API on a real cluster: every route, from a follower and from the leader.

One 3-node cluster serves the whole module (each test uses its own keys).
Requests go to 127.0.0.1 only, through urllib with proxies turned off, and
watches through aiohttp's client (Server-Sent Events) or a raw socket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from cluster_harness import Cluster, NodeProcess, running_cluster, wait_until

from quorumkv.kv.commands import Put

pytestmark = pytest.mark.timeout(600)

TOKEN = "http-test-token"
WATCH_BUFFER = 64
LEASE_TTL = 6
"""Events that may wait for one watcher (small, so a reader that stops is cancelled soon)."""
BODY_LIMIT = 2 << 20

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(node: NodeProcess, path: str, body: object = None, *, raw: bytes | None = None,
         method: str | None = None, headers: dict[str, str] | None = None,
         ) -> tuple[int, dict[str, Any]]:
    """``(status, parsed JSON body)`` of one request to ``node``'s HTTP port."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(node.http_url + path, data=data, headers=headers or {},
                                 method=method or ("GET" if data is None else "POST"))
    try:
        with _OPENER.open(req, timeout=60) as resp:
            # An event stream never ends: reading it whole would hang the test.
            assert not resp.headers.get("Content-Type", "").startswith("text/event-stream")
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def ok(node: NodeProcess, path: str, body: object = None, **kw: Any) -> dict[str, Any]:
    status, answer = call(node, path, body, **kw)
    assert status == 200, (path, body, status, answer)
    return answer


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("http")
    config = tmp / "node.toml"
    config.write_text(f"watch_progress_s = 0.5\nwatch_buffer_events = {WATCH_BUFFER}\n"
                      f"cluster_token = {TOKEN!r}\n")
    with running_cluster(tmp, extra=["--config", str(config)]) as c:
        c.leader_name()
        for n in c.nodes:
            # Its HTTP port opens after its client port: refused for a moment is "not yet".
            wait_until(lambda n=n: call(n, "/ready")[0] == 200, what=f"{n.name} ready",
                       ignore=(OSError,))
        yield c


def roles(cluster: Cluster) -> tuple[NodeProcess, NodeProcess]:
    """``(leader, a follower)`` as the cluster reports them now."""
    name = cluster.leader_name()
    return cluster.node(name), next(n for n in cluster.nodes if n.name != name)


def both(cluster: Cluster) -> list[tuple[str, NodeProcess]]:
    leader, follower = roles(cluster)
    return [("leader", leader), ("follower", follower)]


# -- key-value -----------------------------------------------------------------------


def test_put_get_on_every_level_from_follower_and_leader_matches_the_native_client(
        cluster: Cluster) -> None:
    with cluster.client(timeout=10.0) as native:
        for where, node in both(cluster):
            for level in ("quorum", "all"):
                key = f"levels/{where}/{level}"
                put = ok(node, "/v1/kv/put", {"key": key, "value": "v1", "consistency": level})
                assert put["type"] == "put" and put["revision"] > 0
                assert put["header"]["revision"] >= put["revision"]
                item = native.get(key)
                assert item is not None and item.mod_revision == put["revision"]
                for read in ("one", "session", "quorum", "all"):
                    path = (f"/v1/kv/range?key={key}&consistency={read}"
                            f"&min_revision={put['revision']}")
                    if read == "one":  # may be stale on a follower, never wrong
                        wait_until(lambda n=node, p=path: ok(n, p)["count"] == 1,
                                   what="a 'one' read to catch up")
                    got = ok(node, path)
                    kv = got["kvs"][0]
                    assert (kv["key"], kv["value"], kv["encoding"]) == (key, "v1", "utf8")
                    assert kv["mod_revision"] == kv["create_revision"] == put["revision"]
                    assert kv["version"] == 1 and kv["lease"] == "0" and kv["timestamp"] > 0
                    assert got["count"] == 1 and got["more"] is False
                    assert got["header"]["revision"] >= put["revision"]
            # "one": durable in the leader's log, not applied yet, so no revision.
            key = f"levels/{where}/one"
            durable = ok(node, "/v1/kv/put", {"key": key, "value": "v", "consistency": "one"})
            assert durable["type"] == "durable" and durable["index"] > 0
            wait_until(lambda key=key: native.get(key) is not None, what="the 'one' write")
            # A POST range (a body instead of a query) answers the same.
            got = ok(node, "/v1/kv/range", {"key": key, "consistency": "quorum"})
            assert got["kvs"][0]["value"] == "v"


def test_writes_answer_with_previous_values_and_deletes_by_key_range_and_prefix(
        cluster: Cluster) -> None:
    leader, follower = roles(cluster)
    for i in range(5):
        ok(follower, "/v1/kv/put", {"key": f"del/p/{i}", "value": str(i)})
    ok(follower, "/v1/kv/put", {"key": "del/q", "value": "q"})
    again = ok(follower, "/v1/kv/put", {"key": "del/q", "value": "q2", "prev_kv": True})
    assert again["prev_kv"]["value"] == "q" and again["prev_kv"]["version"] == 1
    one = ok(leader, "/v1/kv/delete", {"key": "del/p/0", "prev_kv": True})
    assert one["deleted"] == 1 and [kv["value"] for kv in one["prev_kvs"]] == ["0"]
    ranged = ok(follower, "/v1/kv/delete", {"key": "del/p/1", "range_end": "del/p/3"})
    assert ranged["deleted"] == 2 and ranged["prev_kvs"] == []
    left = ok(follower, "/v1/kv/range?key=del/&prefix=true&keys_only=true")
    assert [kv["key"] for kv in left["kvs"]] == ["del/p/3", "del/p/4", "del/q"]
    assert all(kv["value"] == "" for kv in left["kvs"])
    prefixed = ok(leader, "/v1/kv/delete", {"key": "del/p/", "prefix": True})
    assert prefixed["deleted"] == 2
    count = ok(follower, "/v1/kv/range?key=del/&prefix=true&count_only=true")
    assert count["count"] == 1 and count["kvs"] == []
    missing = ok(follower, "/v1/kv/delete", {"key": "del/none"})
    assert missing["deleted"] == 0


def test_range_limit_revision_and_every_key(cluster: Cluster) -> None:
    leader, follower = roles(cluster)
    revisions = [ok(leader, "/v1/kv/put", {"key": f"scan/{i}", "value": f"v{i}"})["revision"]
                 for i in range(4)]
    ok(leader, "/v1/kv/put", {"key": "scan/0", "value": "changed"})
    page = ok(follower, "/v1/kv/range?key=scan/&prefix=true&limit=2")
    assert [kv["key"] for kv in page["kvs"]] == ["scan/0", "scan/1"]
    assert page["count"] == 4 and page["more"] is True
    past = ok(follower, f"/v1/kv/range?key=scan/0&revision={revisions[0]}")
    assert past["kvs"][0]["value"] == "v0"
    every = ok(follower, "/v1/kv/range?key=&prefix=true&keys_only=true")
    assert {"scan/0", "scan/3"} <= {kv["key"] for kv in every["kvs"]}
    from_key = ok(follower, "/v1/kv/range?key=scan/2&from_key=true&keys_only=true")
    assert [kv["key"] for kv in from_key["kvs"]][:2] == ["scan/2", "scan/3"]


def test_txn_compares_and_branches(cluster: Cluster) -> None:
    leader, follower = roles(cluster)
    first = ok(follower, "/v1/kv/put", {"key": "txn/a", "value": "1"})
    ok(follower, "/v1/kv/put", {"key": "txn/b", "value": "x"})
    lease = ok(follower, "/v1/lease/grant", {"ttl": 600})["id"]
    ok(follower, "/v1/kv/put", {"key": "txn/l", "value": "l", "lease": lease})
    compares = [
        {"key": "txn/a", "target": "value", "op": "=", "value": "1"},
        {"key": "txn/a", "target": "version", "op": "<", "value": 2},
        {"key": "txn/a", "target": "create_revision", "op": "=", "value": first["revision"]},
        {"key": "txn/a", "target": "mod_revision", "op": "!=", "value": 0},
        {"key": "txn/b", "target": "value", "op": ">", "value": "w"},
        {"key": "txn/l", "target": "lease", "op": "=", "value": lease},
    ]
    won = ok(follower, "/v1/kv/txn", {
        "compare": compares,
        "success": [{"put": {"key": "txn/a", "value": "2", "prev_kv": True}},
                    {"delete": {"key": "txn/b", "prev_kv": True}},
                    {"range": {"key": "txn/", "prefix": True}}],
        "failure": [{"put": {"key": "txn/lost", "value": "!"}}]})
    assert won["type"] == "txn" and won["succeeded"] is True
    put, delete, scan = won["responses"]
    assert put["type"] == "put" and put["prev_kv"]["value"] == "1"
    assert delete["deleted"] == 1 and delete["prev_kvs"][0]["value"] == "x"
    assert [(kv["key"], kv["value"]) for kv in scan["kvs"]] == [("txn/a", "2"), ("txn/l", "l")]
    assert put["revision"] == delete["revision"] == won["revision"]
    lost = ok(leader, "/v1/kv/txn", {
        "compare": [{"key": "txn/a", "target": "value", "op": "=", "value": "1"}],
        "success": [{"put": {"key": "txn/won", "value": "!"}}],
        "failure": [{"range": {"key": "txn/a"}}]})
    assert lost["succeeded"] is False and lost["responses"][0]["kvs"][0]["value"] == "2"
    assert ok(leader, "/v1/kv/range?key=txn/won")["count"] == 0
    # A txn's outcome is all it answers with: "one" would answer before knowing it.
    status, refused = call(leader, "/v1/kv/txn", {"consistency": "one"})
    assert status == 400 and refused["error"]["code"] == "invalid_argument"


def test_binary_keys_and_values_in_both_encodings(cluster: Cluster) -> None:
    _, follower = roles(cluster)
    key, value = b"bin/\xff\x00k", bytes(range(256))
    put = ok(follower, "/v1/kv/put", {"key": b64(key), "value": b64(value),
                                      "encoding": "base64"})
    ok(follower, "/v1/kv/put", {"key": "bin/text", "value": "héllo ✓"})
    with cluster.client(timeout=10.0) as native:
        item = native.get(key)
        assert item is not None and item.value == value and item.mod_revision == put["revision"]
        assert native.get("bin/text").value == "héllo ✓".encode()  # type: ignore[union-attr]
    # utf8 (the default): the binary item alone falls back to base64, and says so.
    mixed = ok(follower, "/v1/kv/range?key=bin/&prefix=true")["kvs"]
    by_encoding = {kv["encoding"]: kv for kv in mixed}
    assert by_encoding["base64"]["key"] == b64(key)
    assert base64.b64decode(by_encoding["base64"]["value"]) == value
    assert by_encoding["utf8"]["value"] == "héllo ✓"
    # base64 asked: every item in base64.
    coded = ok(follower, "/v1/kv/range?encoding=base64&prefix=true&key=" + b64(b"bin/")
               .replace("+", "%2B").replace("/", "%2F").replace("=", "%3D"))["kvs"]
    assert {kv["encoding"] for kv in coded} == {"base64"}
    assert {base64.b64decode(kv["key"]) for kv in coded} == {key, b"bin/text"}
    # A binary key in a query, URL-safe alphabet.
    urlsafe = base64.urlsafe_b64encode(key).decode()
    got = ok(follower, f"/v1/kv/range?encoding=base64&key={urlsafe}")["kvs"]
    assert base64.b64decode(got[0]["value"]) == value
    # history and txn speak the same encodings.
    events = ok(follower, f"/v1/kv/history?encoding=base64&key={urlsafe}")["events"]
    assert base64.b64decode(events[0]["kv"]["value"]) == value
    txn = ok(follower, "/v1/kv/txn", {
        "encoding": "base64",
        "compare": [{"key": b64(key), "target": "value", "op": "=", "value": b64(value)}],
        "success": [{"put": {"key": b64(key), "value": b64(b"\x00")}}]})
    assert txn["succeeded"] is True


def test_history_keeps_the_newest_revisions_and_stops_at_compaction(cluster: Cluster) -> None:
    leader, follower = roles(cluster)
    revisions = [ok(leader, "/v1/kv/put", {"key": "hist/k", "value": f"v{i}"})["revision"]
                 for i in range(5)]
    gone = ok(leader, "/v1/kv/delete", {"key": "hist/k"})["revision"]
    back = ok(leader, "/v1/kv/put", {"key": "hist/k", "value": "again"})["revision"]
    full = ok(follower, "/v1/kv/history?key=hist/k")
    assert [(e["type"], e["revision"]) for e in full["events"]] == [
        *(("put", r) for r in revisions), ("delete", gone), ("put", back)]
    assert full["more"] is False
    assert [e["kv"]["version"] for e in full["events"]] == [1, 2, 3, 4, 5, 0, 1]
    newest = ok(follower, "/v1/kv/history?key=hist/k&limit=2&consistency=all")
    assert [e["revision"] for e in newest["events"]] == [gone, back] and newest["more"] is True
    assert newest["header"]["member"] == follower.name  # this node's history
    compacted = ok(leader, "/v1/kv/compact", {"revision": revisions[2]})
    assert compacted["compact_revision"] == revisions[2]
    after = ok(follower, "/v1/kv/history?key=hist/k")
    assert after["compact_revision"] == revisions[2]
    assert [e["revision"] for e in after["events"]] == [*revisions[3:], gone, back]
    status, old = call(follower, f"/v1/kv/range?key=hist/k&revision={revisions[0]}")
    assert status == 410 and old["error"]["code"] == "compacted"


def test_a_numbered_write_retried_is_applied_once(cluster: Cluster) -> None:
    leader, follower = roles(cluster)
    dedup = {"client_id": 77_000_001, "seq": 1}
    first = ok(follower, "/v1/kv/put", {"key": "dedup/k", "value": "a", "dedup": dedup})
    again = ok(leader, "/v1/kv/put", {"key": "dedup/k", "value": "a", "dedup": dedup})
    assert again["revision"] == first["revision"]
    assert ok(leader, "/v1/kv/range?key=dedup/k")["kvs"][0]["version"] == 1
    # The same pair on another kind of write: refused, not answered with the put's result.
    status, err = call(follower, "/v1/kv/delete", {"key": "dedup/k", "dedup": dedup})
    assert status == 400 and "already numbered" in err["error"]["message"]
    assert ok(leader, "/v1/kv/range?key=dedup/k")["count"] == 1
    # JSON has one number type: 600.0 is the integer 600.
    assert ok(follower, "/v1/lease/grant", {"ttl": 600.0})["ttl"] == 600


def test_a_forwarded_write_whose_leader_freezes_is_an_unknown_outcome_never_resent(
        cluster: Cluster) -> None:
    for attempt in range(3):
        leader, follower = roles(cluster)
        key = f"frozen/{attempt}"
        leader.pause()
        try:
            # Sent at once, while the follower still takes the frozen node for the leader.
            status, body = call(follower, "/v1/kv/put", {"key": key, "value": "v"})
        finally:
            leader.resume()
        for n in cluster.nodes:
            wait_until(lambda n=n: call(n, "/ready")[0] == 200, what=f"{n.name} ready")
        if status == 200:
            continue  # a new leader was known already and took it: try again
        assert status == 504, body
        assert body["error"]["code"] == "timeout"
        assert body["error"]["details"]["outcome"] == "unknown"
        # Whatever became of it, it was not sent twice.
        assert len(ok(follower, f"/v1/kv/history?key={key}")["events"]) <= 1
        return
    pytest.fail("the follower never forwarded to the frozen leader")


# -- leases --------------------------------------------------------------------------


def test_leases_keep_their_keys_while_kept_alive_and_take_them_when_they_expire(
        cluster: Cluster) -> None:
    leader, follower = roles(cluster)
    # Long enough for the calls below on a busy machine; expiry is awaited, not timed.
    granted = ok(follower, "/v1/lease/grant", {"ttl": LEASE_TTL})
    assert granted["type"] == "lease_grant" and granted["ttl"] == LEASE_TTL
    lease = granted["id"]
    assert isinstance(lease, str) and lease.isdigit()  # an id is written as text
    put = ok(follower, "/v1/kv/put", {"key": "lease/a", "value": "held", "lease": lease})
    kv = ok(leader, "/v1/kv/range?key=lease/a")["kvs"][0]
    assert kv["lease"] == lease and kv["mod_revision"] == put["revision"]
    # An id is taken as text or as an integer.
    alive = ok(follower, "/v1/lease/keepalive", {"id": int(lease)})
    assert (alive["id"], alive["ttl"]) == (lease, LEASE_TTL)
    ttl = ok(follower, "/v1/lease/timetolive", {"id": lease, "keys": True})
    assert ttl["keys"] == [{"key": "lease/a", "encoding": "utf8"}] and ttl["remaining"] > 0
    assert {"id": lease, "ttl": LEASE_TTL} in ok(follower, "/v1/lease/list")["leases"]
    # Left alone, it expires and takes its key with it.
    wait_until(lambda: ok(follower, "/v1/kv/range?key=lease/a")["count"] == 0,
               what="the lease's key to go")
    status, err = call(follower, "/v1/lease/keepalive", {"id": lease})
    assert status == 404 and err["error"]["code"] == "lease_not_found"
    # Revoking deletes the attached keys at once.
    other = ok(leader, "/v1/lease/grant", {"ttl": 600, "id": 4242})["id"]
    assert other == "4242"
    ok(leader, "/v1/kv/put", {"key": "lease/b", "value": "b", "lease": other})
    revoked = ok(follower, "/v1/lease/revoke", {"id": other})
    assert revoked["type"] == "lease_revoke" and revoked["deleted"] == 1
    assert ok(follower, "/v1/kv/range?key=lease/b&consistency=quorum")["count"] == 0
    status, err = call(follower, "/v1/kv/put", {"key": "lease/c", "value": "c", "lease": other})
    assert status == 404 and err["error"]["code"] == "lease_not_found"


def test_ids_beyond_2_to_the_53_are_exact_as_text(cluster: Cluster) -> None:
    """A lease id a native client would pick (63 bits) survives every route as text,
    given as text or as an integer; so do the member and cluster ids."""
    leader, follower = roles(cluster)
    big = (1 << 62) + 123_456_789  # no float near it is exact
    granted = ok(follower, "/v1/lease/grant", {"ttl": 600, "id": str(big)})
    assert granted["id"] == str(big)
    ok(follower, "/v1/kv/put", {"key": "ids/a", "value": "a", "lease": str(big)})
    ok(follower, "/v1/kv/put", {"key": "ids/b", "value": "b", "lease": big})
    kvs = ok(follower, "/v1/kv/range?key=ids/&prefix=true&consistency=quorum")["kvs"]
    assert [kv["lease"] for kv in kvs] == [str(big), str(big)]
    txn = ok(follower, "/v1/kv/txn", {
        "compare": [{"key": "ids/a", "target": "lease", "op": "=", "value": str(big)},
                    {"key": "ids/b", "target": "lease", "op": "=", "value": big}],
        "success": [{"put": {"key": "ids/c", "value": "c", "lease": str(big)}},
                    {"range": {"key": "ids/a"}}]})
    assert txn["succeeded"] is True and txn["responses"][1]["kvs"][0]["lease"] == str(big)
    ttl = ok(follower, "/v1/lease/timetolive", {"id": str(big), "keys": True})
    assert ttl["id"] == str(big) and len(ttl["keys"]) == 3
    assert {"id": str(big), "ttl": 600} in ok(leader, "/v1/lease/list")["leases"]
    assert ok(follower, "/v1/lease/revoke", {"id": str(big)})["deleted"] == 3
    status, err = call(follower, "/v1/lease/keepalive", {"id": str(big)})
    assert status == 404 and err["error"]["details"]["lease"] == str(big)

    with cluster.client(timeout=10.0) as native:
        native_status = native.status(local=True)
    raft = native_status["node"]
    cluster_id = str(raft["cluster_id"])
    ids = {m["name"]: str(m["id"]) for m in native_status["members"]}
    status_ = ok(follower, "/v1/cluster/status")
    node = status_["node"]
    assert node["cluster_id"] == cluster_id and node["id"] == ids[follower.name]
    assert node["leader"] == ids[leader.name]
    assert node["voters"] == [str(i) for i in raft["voters"]]
    assert node["learners"] == [str(i) for i in raft["learners"]]
    assert {m["name"]: m["id"] for m in status_["members"]} == ids
    view = status_["leader_view"]
    assert view["node"]["id"] == ids[leader.name] and view["node"]["cluster_id"] == cluster_id
    assert set(view["node"]["progress"]) == set(ids.values())
    assert {m["name"]: m["id"] for m in view["members"]} == ids
    members = ok(follower, "/v1/cluster/members")
    assert members["cluster_id"] == cluster_id
    assert {m["name"]: m["id"] for m in members["members"]} == ids


# -- watches -------------------------------------------------------------------------


class SseReader:
    """The events of one Server-Sent Events response, parsed as they arrive."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self) -> tuple[str, str | None, dict[str, Any]]:
        """``(event, id, data)`` of the next event."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(60):
            while True:
                line = (await self.response.content.readline()).decode()
                if not line:
                    raise EOFError("the stream ended")
                line = line.rstrip("\n")
                if not line:
                    if "data" in fields:
                        return fields.get("event", "message"), fields.get("id"), json.loads(
                            fields["data"])
                    continue
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")


async def _events_until(reader: SseReader, revision: int, seen: list[tuple[int, str]],
                        ids: list[int]) -> None:
    # Bounded as a whole: progress events would keep a stream missing events going.
    async with asyncio.timeout(120):
        while not seen or seen[-1][0] < revision:
            await _one_event(reader, seen, ids)


async def _one_event(reader: SseReader, seen: list[tuple[int, str]], ids: list[int]) -> None:
    event, event_id, data = await reader.next()
    if event_id is not None:
        ids.append(int(event_id))
    if event == "events":
        assert int(event_id or 0) == data["revision"]
        seen.extend((e["revision"], e["kv"]["key"]) for e in data["events"])


def test_watch_streams_a_concurrent_writers_events_in_order_and_resumes(
        cluster: Cluster) -> None:
    _, follower = roles(cluster)
    url = follower.http_url + "/v1/watch?key=watch/&prefix=true"
    acked: list[tuple[int, str]] = []

    def write(start: int, count: int) -> None:
        with cluster.client(timeout=10.0) as native:
            for i in range(start, start + count):
                key = f"watch/{i % 3}"
                acked.append((native.put(key, str(i)).revision, key))

    async def main() -> None:
        seen: list[tuple[int, str]] = []
        ids: list[int] = []
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/event-stream")
                reader = SseReader(response)
                event, created_id, created = await reader.next()
                assert event == "created" and created["watch_id"] > 0
                assert int(created_id or -1) == created["start_revision"] - 1
                writer = threading.Thread(target=write, args=(0, 20))
                writer.start()
                await asyncio.to_thread(writer.join)
                await _events_until(reader, acked[-1][0], seen, ids)
            assert seen == acked  # every event, in revision order, once
            # Disconnected; more writes; resume from the last id received.
            await asyncio.to_thread(write, 20, 10)
            async with session.get(url, headers={"Last-Event-ID": str(ids[-1])}) as response:
                reader = SseReader(response)
                assert (await reader.next())[0] == "created"
                await _events_until(reader, acked[-1][0], seen, ids)
            assert seen == acked
            assert ids == sorted(ids)  # ids never go backwards
            # start_revision replays the past the same way.
            middle = acked[10][0]
            async with session.get(f"{url}&start_revision={middle}") as response:
                reader = SseReader(response)
                await reader.next()
                replay: list[tuple[int, str]] = []
                await _events_until(reader, acked[-1][0], replay, [])
            assert replay == acked[10:]
    asyncio.run(main())


def test_an_idle_watch_gets_progress_and_a_compacted_start_is_refused(
        cluster: Cluster) -> None:
    leader, follower = roles(cluster)
    revisions = [ok(leader, "/v1/kv/put", {"key": "quiet/x", "value": str(i)})["revision"]
                 for i in range(3)]

    async def main() -> None:
        url = follower.http_url + "/v1/watch?key=quiet/nothing"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            reader = SseReader(resp)
            await reader.next()
            event, event_id, data = await reader.next()
            assert event == "progress" and int(event_id or 0) == data["revision"]
            assert data["revision"] >= revisions[-1]
    asyncio.run(main())
    ok(leader, "/v1/kv/compact", {"revision": revisions[1]})
    ok(follower, "/v1/kv/range?key=quiet/x")  # a quorum read: the follower applied it too
    status, err = call(follower, f"/v1/watch?key=quiet/x&start_revision={revisions[0]}")
    assert status == 410 and err["error"]["code"] == "compacted"
    assert err["error"]["details"]["compact_revision"] >= revisions[1]


def _raw_watch(node: NodeProcess, path: str) -> socket.socket:
    """A watch on a socket with a tiny receive buffer, over HTTP/1.0 (no chunking)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(60)
    assert node.http_port is not None
    sock.connect(("127.0.0.1", node.http_port))
    sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def test_a_watch_whose_reader_stops_reading_ends_with_its_code(cluster: Cluster) -> None:
    _, follower = roles(cluster)
    sock = _raw_watch(follower, "/v1/watch?key=slow/&prefix=true")
    try:
        # Not reading: the events pile up in the socket buffers, then in the node's
        # buffer for this watcher, until the node cancels it.
        blob = b"x" * 8192
        with cluster.client(timeout=30.0) as native:
            for round_ in range(30):
                native.txn([], [Put(key=f"slow/{i}".encode(), value=b"%d" % round_ + blob)
                                for i in range(16)])
        with sock.makefile("rb") as stream:
            raw = stream.read()  # to the end: the node closes the stream
    finally:
        sock.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    events = [block for block in body.decode().split("\n\n") if block]
    assert events[0].startswith("event: created")
    assert events[-1].startswith("event: canceled")
    data = json.loads(events[-1].split("data: ", 1)[1])
    assert data["code"] == "watch_canceled" and "too slow" in data["reason"]
    delivered = [json.loads(e.split("data: ", 1)[1]) for e in events[1:-1]
                 if e.startswith("event: events")]
    assert delivered, "some events came before the end"
    assert ok(follower, "/health")["status"] == "ok"


def _metrics(node: NodeProcess) -> str:
    with _OPENER.open(node.http_url + "/metrics", timeout=60) as resp:
        return str(resp.read().decode())


def _sample(text: str, name: str) -> float:
    """A sample's value (0 if the node has not exported it yet)."""
    return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith(name + " ")), 0.0)


def _watchers(node: NodeProcess) -> float:
    """The node's open watches, from its Prometheus metrics."""
    return _sample(_metrics(node), "quorumkv_watchers")


def test_closing_the_connection_cancels_the_watch(cluster: Cluster) -> None:
    _, follower = roles(cluster)
    wait_until(lambda: _watchers(follower) == 0, what="no watch left from other tests")
    sock = _raw_watch(follower, "/v1/watch?key=hang-up")
    try:
        wait_until(lambda: _watchers(follower) == 1, what="the watch to be registered")
    finally:
        sock.close()
    wait_until(lambda: _watchers(follower) == 0, what="the watch to be cancelled")


def test_a_watch_stream_is_not_timed_as_a_request(cluster: Cluster) -> None:
    """A stream lasts as long as its client listens: it stays out of the latency histogram
    (and the per-second series), while a watch refused before it began is still an error."""
    _, follower = roles(cluster)
    refused = '{api="http",code="invalid_argument"}'
    errors_before = _sample(_metrics(follower), "quorumkv_errors_total" + refused)
    status, _ = call(follower, "/v1/watch?key=timed&start_revision=x")
    assert status == 400

    async def main() -> None:
        url = follower.http_url + "/v1/watch?key=timed"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            reader = SseReader(resp)
            assert (await reader.next())[0] == "created"
            await asyncio.to_thread(ok, follower, "/v1/kv/put", {"key": "timed", "value": "v"})
            while (await reader.next())[0] != "events":
                pass
    asyncio.run(main())
    wait_until(lambda: _watchers(follower) == 0, what="the watch to be cancelled")
    text = _metrics(follower)
    assert 'route="/v1/watch"' not in text
    assert 'route="/v1/kv/put"' in text  # timed, unlike the watch that saw it
    assert _sample(text, "quorumkv_errors_total" + refused) >= errors_before + 1


# -- cluster -------------------------------------------------------------------------


def test_status_and_members_shapes(cluster: Cluster) -> None:
    leader, follower = roles(cluster)
    for node in (leader, follower):
        status = ok(node, "/v1/cluster/status")
        assert status["leader"] == leader.name and status["node"]["name"] == node.name
        assert {"term", "role", "commit", "applied", "progress"} <= set(status["node"])
        assert status["leader_view"]["name"] == leader.name
        assert status["leader_view_error"] is None
        names = sorted(m["name"] for m in status["members"])
        assert names == sorted(n.name for n in cluster.nodes)
        local = ok(node, "/v1/cluster/status?local=true")
        assert local["leader_view"] is None and local["node"]["name"] == node.name
        members = ok(node, "/v1/cluster/members")
        assert members["leader"] == leader.name
        assert members["cluster_id"] == status["node"]["cluster_id"] != "0"
        roles_seen = {m["name"]: m["role"] for m in members["members"]}
        assert roles_seen[leader.name] == "leader"
        assert sorted(roles_seen.values()) == ["follower", "follower", "leader"]
        for m in members["members"]:
            assert {"id", "name", "peer_address", "client_address", "voter", "status",
                    "lag", "phi", "last_seen"} <= set(m)
        assert {"term", "commit", "applied"} <= set(members["node"])
    lags = {m["name"]: m["lag"] for m in ok(leader, "/v1/cluster/members")["members"]}
    assert all(isinstance(lag, int) for lag in lags.values())


def test_status_answers_without_a_majority(cluster: Cluster) -> None:
    leader, follower = roles(cluster)
    others = [n for n in cluster.nodes if n is not follower]
    for n in others:
        n.pause()
    try:
        # The leader's view is asked for with a bound of its own; the answer comes
        # regardless, saying what could not be learnt.
        status = ok(follower, "/v1/cluster/status")
        assert status["node"]["name"] == follower.name
        assert status["leader_view"] is None and status["leader_view_error"]
        assert ok(follower, "/v1/cluster/members")["members"]
        assert call(follower, "/ready")[0] in (200, 503)
    finally:
        for n in others:
            n.resume()
    for n in cluster.nodes:
        wait_until(lambda n=n: call(n, "/ready")[0] == 200, what=f"{n.name} ready")
    assert leader.running()


def test_membership_changes_need_the_token_and_work_from_a_follower(cluster: Cluster) -> None:
    leader, follower = roles(cluster)
    spare = {"name": "spare", "peer_address": "127.0.0.1:9", "learner": True}
    status, err = call(follower, "/v1/cluster/members/add", {**spare, "token": "guess-7f3a"})
    assert status == 401 and err["error"]["code"] == "authentication_failed"
    assert "guess-7f3a" not in json.dumps(err)  # a token is never echoed
    added = ok(follower, "/v1/cluster/members/add", spare,
               headers={"Authorization": f"Bearer {TOKEN}"})
    assert added["member"]["name"] == "spare" and added["member"]["voter"] is False
    assert added["member"]["id"].isdigit() and added["cluster_id"].isdigit()
    names = [m["name"] for m in ok(leader, "/v1/cluster/members")["members"]]
    assert "spare" in names
    status, err = call(follower, "/v1/cluster/members/promote", {"name": "spare"})
    assert status == 401
    removed = ok(follower, "/v1/cluster/members/remove", {"name": "spare", "token": TOKEN})
    assert removed["removed"]["name"] == "spare"
    assert "spare" not in [m["name"] for m in removed["members"]]
    # Hand leadership to the follower, asking the follower.
    moved = ok(follower, "/v1/cluster/move-leader", {"name": follower.name},
               headers={"Authorization": f"Bearer {TOKEN}"})
    assert moved["leader"] == follower.name
    wait_until(lambda: all(ok(n, "/v1/cluster/status?local=true")["leader"] == follower.name
                           for n in cluster.nodes), what="every node to follow the new leader")


# -- hostile input -------------------------------------------------------------------

_HUGE = 1 << 70
HOSTILE: list[tuple[str, str, bytes | None, int, str]] = [
    ("POST", "/v1/kv/put", b"", 400, "invalid_argument"),
    ("POST", "/v1/kv/put", b"{not json", 400, "invalid_argument"),
    ("POST", "/v1/kv/put", b"[1, 2]", 400, "invalid_argument"),
    ("POST", "/v1/kv/put", b'"text"', 400, "invalid_argument"),
    ("POST", "/v1/kv/put", b"\xff\xfe\x00garbage", 400, "invalid_argument"),
    ("POST", "/v1/kv/put", b"[" * 50_000 + b"]" * 50_000, 400, "invalid_argument"),
    ("POST", "/v1/kv/put", b'{"key": "k", "value": "v", "colour": "red"}', 400,
     "invalid_argument"),
    ("POST", "/v1/kv/put", b'{"key": "k", "value": "v", "key": "k2"}', 400, "invalid_argument"),
    ("POST", "/v1/kv/put", b'{"key": 5, "value": "v"}', 400, "invalid_argument"),
    ("POST", "/v1/kv/put", b'{"key": "k", "value": null}', 400, "invalid_argument"),
    ("POST", "/v1/kv/put", b'{"key": "k"}', 400, "invalid_argument"),
    ("POST", "/v1/kv/put", b'{"key": "", "value": "v"}', 400, "invalid_argument"),
    ("POST", "/v1/kv/put", b'{"key": "\\ud800", "value": "v"}', 400, "invalid_argument"),
    ("POST", "/v1/kv/put", b'{"key": "k", "value": "v", "lease": -1}', 400, "invalid_argument"),
    ("POST", "/v1/kv/put", f'{{"key": "k", "value": "v", "lease": {_HUGE}}}'.encode(), 400,
     "invalid_argument"),
    ("POST", "/v1/kv/put", b'{"key": "k", "value": "v", "lease": 1.5}', 400,
     "invalid_argument"),
    ("POST", "/v1/kv/put", b'{"key": "k", "value": "v", "lease": NaN}', 400,
     "invalid_argument"),
    ("POST", "/v1/kv/put", b'{"key": "k", "value": "v", "lease": ' + b"9" * 5000 + b"}", 400,
     "invalid_argument"),
    ("POST", "/v1/kv/put", b'{"key": "k", "value": "v", "prev_kv": "yes"}', 400,
     "invalid_argument"),
    ("POST", "/v1/kv/put", b'{"key": "k", "value": "v", "consistency": "session"}', 400,
     "invalid_argument"),
    ("POST", "/v1/kv/put", b'{"key": "k", "value": "v", "client_id": 7}', 400,
     "invalid_argument"),
    ("POST", "/v1/kv/put", b'{"key": "k", "value": "v", "dedup": {"client_id": 7}}', 400,
     "invalid_argument"),
    ("POST", "/v1/kv/put", b'{"key": "k", "value": "v", "dedup": {"client_id": 7, "seq": 0}}',
     400, "invalid_argument"),
    ("POST", "/v1/kv/put", b'{"key": "k", "value": "v", "lease": 1e300}', 400,
     "invalid_argument"),
    ("POST", "/v1/kv/put", b'{"key": "a*b", "value": "v", "encoding": "base64"}', 400,
     "invalid_argument"),
    ("POST", "/v1/kv/put", b'{"key": "YQ", "value": "v", "encoding": "base64"}', 400,
     "invalid_argument"),
    ("POST", "/v1/kv/put", b'{"key": "k", "value": "v", "encoding": "hex"}', 400,
     "invalid_argument"),
    ("POST", "/v1/kv/put", json.dumps({"key": "k" * 5000, "value": "v"}).encode(), 413,
     "key_too_large"),
    ("POST", "/v1/kv/put", json.dumps({"key": "k", "value": "v" * (1600 << 10)}).encode(), 413,
     "value_too_large"),
    ("POST", "/v1/kv/put", b'{"key": "k", "value": "v", "lease": 987654321}', 404,
     "lease_not_found"),
    ("POST", "/v1/kv/delete", b'{"key": "b", "range_end": "a"}', 400, "invalid_argument"),
    ("POST", "/v1/kv/delete", b'{"key": "b", "prefix": true, "from_key": true}', 400,
     "invalid_argument"),
    ("POST", "/v1/kv/txn", b'{"compare": [{"key": "k", "target": "value", "op": "~", '
                           b'"value": "v"}]}', 400, "invalid_argument"),
    ("POST", "/v1/kv/txn", b'{"compare": [{"key": "k", "target": "version", "op": "=", '
                           b'"value": "1"}]}', 400, "invalid_argument"),
    ("POST", "/v1/kv/txn", b'{"success": [{"put": {"key": "k", "value": "v"}, '
                           b'"delete": {"key": "k"}}]}', 400, "invalid_argument"),
    ("POST", "/v1/kv/txn", b'{"success": [{"put": {"key": "k", "value": "v"}}, '
                           b'{"put": {"key": "k", "value": "w"}}]}', 400, "invalid_argument"),
    ("POST", "/v1/kv/txn", b'{"success": "put"}', 400, "invalid_argument"),
    ("POST", "/v1/kv/txn", b'{"success": [null]}', 400, "invalid_argument"),
    ("POST", "/v1/kv/compact", b'{"revision": 0}', 400, "invalid_argument"),
    ("POST", "/v1/kv/compact", b'{"revision": 9223372036854775807}', 400, "invalid_argument"),
    ("POST", "/v1/lease/grant", b'{"ttl": 0}', 400, "invalid_argument"),
    ("POST", "/v1/lease/grant", b'{"ttl": 99999999999}', 400, "invalid_argument"),
    ("POST", "/v1/lease/keepalive", b'{"id": 0}', 400, "invalid_argument"),
    ("POST", "/v1/lease/keepalive", b'{"id": "0"}', 400, "invalid_argument"),
    ("POST", "/v1/lease/keepalive", b'{"id": "-5"}', 400, "invalid_argument"),
    ("POST", "/v1/lease/keepalive", b'{"id": "07"}', 400, "invalid_argument"),
    ("POST", "/v1/lease/keepalive", b'{"id": "7.0"}', 400, "invalid_argument"),
    ("POST", "/v1/lease/keepalive", b'{"id": " 7"}', 400, "invalid_argument"),
    ("POST", "/v1/lease/keepalive", b'{"id": "0x7"}', 400, "invalid_argument"),
    ("POST", "/v1/lease/keepalive", b'{"id": "\\u0667"}', 400, "invalid_argument"),
    ("POST", "/v1/lease/keepalive", b'{"id": "9223372036854775808"}', 400, "invalid_argument"),
    ("POST", "/v1/lease/keepalive", b'{"id": true}', 400, "invalid_argument"),
    ("POST", "/v1/lease/revoke", b'{"id": "123456789"}', 404, "lease_not_found"),
    ("POST", "/v1/kv/put", b'{"key": "k", "value": "v", "lease": "nope"}', 400,
     "invalid_argument"),
    ("POST", "/v1/kv/put", b'{"key": "k", "value": "v", "dedup": {"client_id": "x", '
                           b'"seq": 1}}', 400, "invalid_argument"),
    ("POST", "/v1/lease/revoke", b'{"id": 123456789}', 404, "lease_not_found"),
    ("POST", "/v1/cluster/members/add", b'{"name": "x", "peer_address": "h:1", '
                                        b'"token": "' + b"t" * 2000 + b'"}', 400,
     "invalid_argument"),
    ("POST", "/v1/cluster/members/remove", b'{"name": "n1"}', 401, "authentication_failed"),
    ("GET", "/v1/kv/range?key=k&limit=-1", None, 400, "invalid_argument"),
    ("GET", "/v1/kv/range?key=k&limit=99999999999999999999", None, 400, "invalid_argument"),
    ("GET", "/v1/kv/range?key=k&limit=1&limit=2", None, 400, "invalid_argument"),
    ("GET", "/v1/kv/range?key=k&keys_only=maybe", None, 400, "invalid_argument"),
    ("GET", "/v1/kv/range?key=k&consistency=strong", None, 400, "invalid_argument"),
    ("GET", "/v1/kv/range?key=k&colour=red", None, 400, "invalid_argument"),
    ("GET", "/v1/kv/range?key=", None, 400, "invalid_argument"),
    ("GET", "/v1/kv/range?key=%ED%A0%80", None, 400, "invalid_argument"),
    ("GET", "/v1/kv/range?key=%FF", None, 400, "invalid_argument"),
    ("GET", "/v1/kv/range?" + "&".join(f"p{i}=1" for i in range(100)), None, 400,
     "invalid_argument"),
    ("GET", "/v1/kv/range?key=k&revision=9223372036854775807", None, 400, "invalid_argument"),
    ("GET", "/v1/kv/range?key=" + "k" * 5000, None, 413, "key_too_large"),
    ("GET", "/v1/kv/history?key=k&limit=0", None, 400, "invalid_argument"),
    ("GET", "/v1/kv/history?key=k&consistency=every", None, 400, "invalid_argument"),
    ("GET", "/v1/watch?key=k&start_revision=x", None, 400, "invalid_argument"),
    ("GET", "/v1/cluster/status?local=1", None, 400, "invalid_argument"),
    ("DELETE", "/v1/kv/put", None, 405, "invalid_argument"),
    ("GET", "/v1/nothing-here", None, 404, "invalid_argument"),
]


@pytest.mark.parametrize(("method", "path", "raw", "status", "code"), HOSTILE,
                         ids=[f"{i}-{m} {p[:40]}" for i, (m, p, *_) in enumerate(HOSTILE)])
def test_hostile_requests_get_their_4xx_and_the_node_serves_on(
        cluster: Cluster, method: str, path: str, raw: bytes | None, status: int,
        code: str) -> None:
    _, follower = roles(cluster)
    got, body = call(follower, path, raw=raw, method=method)
    assert (got, body["error"]["code"]) == (status, code), body
    assert set(body["error"]) == {"code", "message", "details"}
    assert ok(follower, "/v1/kv/put", {"key": "after-hostile", "value": "fine"})["revision"]


def test_a_body_over_the_limit_is_refused_with_413(cluster: Cluster) -> None:
    _, follower = roles(cluster)
    raw = b'{"key": "k", "value": "' + b"v" * (BODY_LIMIT + 1024) + b'"}'
    status, body = call(follower, "/v1/kv/put", raw=raw)
    assert status == 413 and body["error"]["code"] == "message_too_large"
    assert ok(follower, "/health")["status"] == "ok"
    assert ok(follower, "/v1/kv/put", {"key": "after-413", "value": "fine"})["revision"]


def test_the_openapi_document_lists_every_route(cluster: Cluster) -> None:
    doc = ok(cluster.nodes[0], "/openapi.json")
    assert doc["openapi"].startswith("3.")
    for path in ("/health", "/ready", "/v1/kv/range", "/v1/kv/put", "/v1/kv/delete",
                 "/v1/kv/txn", "/v1/kv/compact", "/v1/kv/history", "/v1/lease/grant",
                 "/v1/lease/revoke", "/v1/lease/keepalive", "/v1/lease/timetolive",
                 "/v1/lease/list", "/v1/watch", "/v1/cluster/status", "/v1/cluster/members",
                 "/v1/cluster/members/add", "/v1/cluster/members/remove",
                 "/v1/cluster/members/promote", "/v1/cluster/move-leader"):
        assert path in doc["paths"], path
    assert "503" in doc["paths"]["/ready"]["get"]["responses"]

