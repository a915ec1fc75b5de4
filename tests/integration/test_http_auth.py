"""Authentication and permissions on the HTTP port, on a real 3-node cluster.

Auth is set up and enabled through the HTTP API itself (from a follower, so
the changes are sent on to the leader): the user ``root``; ``reader``, with
read on the prefix ``app/``; ``writer``, with read and write on ``w/``. Each
route is then asked as nobody, as a user it must refuse and as one it must
serve, from the leader and from a follower (whose forwarded writes the
leader must check as the same user). A second cluster shows that with auth
disabled nothing asks for a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cluster_harness import Cluster, NodeProcess, running_cluster, wait_until

pytestmark = pytest.mark.timeout(600)

CLUSTER_TOKEN = "http-auth-cluster-token"
PASSWORDS = {"root": "root-pw-1", "reader": "reader-pw-2", "writer": "writer-pw-3"}
FAILURES_ALLOWED = 3
CONFIG = (f"cluster_token = {CLUSTER_TOKEN!r}\nauth_metrics = true\n"
          f"login_failures_allowed = {FAILURES_ALLOWED}\nlogin_lockout_s = 5.0\n")

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.body)
        return out

    @property
    def code(self) -> str:
        return str(self.json()["error"]["code"])


def call(node: NodeProcess, path: str, body: object = None, *, token: str | None = None,
         method: str | None = None, headers: dict[str, str] | None = None) -> Answer:
    data = None if body is None else json.dumps(body).encode()
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(node.http_url + path, data=data, headers=sent,
                                 method=method or ("GET" if data is None else "POST"))
    try:
        with _OPENER.open(req, timeout=60) as resp:
            return Answer(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as err:
        return Answer(err.code, dict(err.headers), err.read())


def ok(node: NodeProcess, path: str, body: object = None, **kw: Any) -> dict[str, Any]:
    answer = call(node, path, body, **kw)
    assert answer.status == 200, (path, body, answer.status, answer.body[:500])
    return answer.json()


def refused(node: NodeProcess, path: str, body: object = None, *, status: int, code: str,
            **kw: Any) -> Answer:
    answer = call(node, path, body, **kw)
    assert (answer.status, answer.code) == (status, code), (path, body, answer.body[:500])
    return answer


def roles(cluster: Cluster) -> tuple[NodeProcess, NodeProcess]:
    name = cluster.leader_name()
    return cluster.node(name), next(n for n in cluster.nodes if n.name != name)


def sign_in(node: NodeProcess, user: str) -> str:
    answer = ok(node, "/v1/auth/authenticate", {"name": user, "password": PASSWORDS[user]})
    assert answer["user"] == user and answer["expires_in"] > 0
    token: str = answer["token"]
    assert token.startswith("qkv1.")
    return token


@contextlib.contextmanager
def _started(tmp: Path, config: str) -> Iterator[Cluster]:
    path = tmp / "node.toml"
    path.write_text(config)
    with running_cluster(tmp, extra=["--config", str(path)]) as c:
        c.leader_name()
        for n in c.nodes:
            # Its HTTP port opens after its client port: refused for a moment is "not yet".
            wait_until(lambda n=n: call(n, "/ready").status == 200, what=f"{n.name} ready",
                       ignore=(OSError,))
        yield c


@dataclass
class Setup:
    cluster: Cluster
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with _started(tmp_path_factory.mktemp("http-auth"), CONFIG) as c:
        _, follower = roles(c)
        # Anyone may prepare users and roles while auth is off (as in etcd).
        for user, password in PASSWORDS.items():
            ok(follower, "/v1/auth/users", {"name": user, "password": password})
        for role in ("root", "app-reader", "w-writer"):
            ok(follower, "/v1/auth/roles", {"name": role})
        ok(follower, "/v1/auth/roles/app-reader/permissions",
           {"type": "read", "key": "app/", "prefix": True})
        ok(follower, "/v1/auth/roles/w-writer/permissions",
           {"type": "readwrite", "key": "w/", "prefix": True})
        for user, role in (("root", "root"), ("reader", "app-reader"), ("writer", "w-writer")):
            ok(follower, f"/v1/auth/users/{user}/roles", {"role": role})
        enabled = ok(follower, "/v1/auth/enable", {})
        assert enabled["auth_revision"] > 0
        # Every node has applied the enable before anyone signs in anywhere.
        wait_until(lambda: all(ok(n, "/v1/auth/status")["enabled"] for n in c.nodes),
                   what="auth enabled on every node")
        yield Setup(c, {user: sign_in(follower, user) for user in PASSWORDS})


def test_no_token_is_401_and_a_root_token_serves(setup: Setup) -> None:
    leader, follower = roles(setup.cluster)
    root = setup.tokens["root"]
    for node in (leader, follower):
        answer = refused(node, "/v1/kv/range?key=app/x", status=401, code="unauthenticated")
        assert answer.headers.get("WWW-Authenticate", "").startswith("Bearer")
        refused(node, "/v1/kv/put", {"key": "app/x", "value": "v"}, status=401,
                code="unauthenticated")
        refused(node, "/v1/kv/range?key=app/x", token="qkv1.forged.token", status=401,
                code="invalid_token")
        ok(node, "/v1/kv/put", {"key": "app/x", "value": "from-root"}, token=root)
        got = ok(node, "/v1/kv/range?key=app/x", token=root)
        assert got["kvs"][0]["value"] == "from-root"
        # Open to all: finding the cluster, probes, the document, the dashboard's page.
        for path in ("/health", "/v1/cluster/status", "/v1/cluster/members",
                     "/openapi.json", "/"):
            assert call(node, path).status == 200, path
        status = ok(node, "/v1/auth/status", token=root)
        assert status["enabled"] is True and status["user"] == "root"
        assert ok(node, "/v1/auth/status")["user"] is None


def test_a_reader_reads_its_prefix_and_nothing_else(setup: Setup) -> None:
    leader, follower = roles(setup.cluster)
    reader, root = setup.tokens["reader"], setup.tokens["root"]
    ok(leader, "/v1/kv/put", {"key": "app/r", "value": "1"}, token=root)
    ok(leader, "/v1/kv/put", {"key": "other/x", "value": "2"}, token=root)
    for node in (leader, follower):
        assert ok(node, "/v1/kv/range?key=app/r", token=reader)["kvs"][0]["value"] == "1"
        assert ok(node, "/v1/kv/range?key=app/&prefix=true", token=reader)["count"] >= 1
        ok(node, "/v1/kv/range", {"key": "app/r", "consistency": "all"}, token=reader)
        ok(node, "/v1/kv/history?key=app/r", token=reader)
        refused(node, "/v1/kv/range?key=other/x", token=reader, status=403,
                code="permission_denied")
        refused(node, "/v1/kv/range?key=app/&range_end=b", token=reader, status=403,
                code="permission_denied")
        refused(node, "/v1/kv/history?key=other/x", token=reader, status=403,
                code="permission_denied")
        refused(node, "/v1/kv/put", {"key": "app/r", "value": "no"}, token=reader, status=403,
                code="permission_denied")
        refused(node, "/v1/kv/delete", {"key": "app/", "prefix": True}, token=reader,
                status=403, code="permission_denied")
        # Only reads inside the grant: a txn may do that much.
        ok(node, "/v1/kv/txn", {"compare": [{"key": "app/r", "target": "version", "op": ">",
                                             "value": 0}],
                                "success": [{"range": {"key": "app/r"}}]}, token=reader)
        # The failure branch writes outside the grant: refused, even though the compare
        # holds and that branch would not run.
        refused(node, "/v1/kv/txn",
                {"compare": [{"key": "app/r", "target": "version", "op": ">", "value": 0}],
                 "success": [{"range": {"key": "app/r"}}],
                 "failure": [{"put": {"key": "other/y", "value": "sneaky"}}]},
                token=reader, status=403, code="permission_denied")
        refused(node, "/v1/kv/compact", {"revision": 1}, token=reader, status=403,
                code="permission_denied")
    assert ok(leader, "/v1/kv/range?key=other/y", token=root)["count"] == 0


def test_a_watch_needs_read_on_its_whole_range(setup: Setup) -> None:
    _, follower = roles(setup.cluster)
    reader = setup.tokens["reader"]
    # Partly outside the grant: a JSON refusal before any event.
    refused(follower, "/v1/watch?key=app/&range_end=b", token=reader, status=403,
            code="permission_denied")
    refused(follower, "/v1/watch?key=app/&prefix=true", status=401, code="unauthenticated")

    async def main() -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {reader}"}
        url = follower.http_url + "/v1/watch?key=app/&prefix=true"
        async with aiohttp.ClientSession() as session, \
                session.get(url, headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            fields: dict[str, str] = {}
            async with asyncio.timeout(30):
                while "data" not in fields:
                    line = (await resp.content.readline()).decode().rstrip("\n")
                    name, _, value = line.partition(":")
                    if line:
                        fields[name] = value.removeprefix(" ")
            assert fields["event"] == "created"
            created: dict[str, Any] = json.loads(fields["data"])
            return created

    assert asyncio.run(main())["watch_id"] >= 0


def test_writes_through_a_follower_are_checked_as_the_same_user(setup: Setup) -> None:
    leader, follower = roles(setup.cluster)
    writer, reader, root = (setup.tokens[u] for u in ("writer", "reader", "root"))
    # The follower sends these on to the leader with the user's token: without it the
    # leader would answer as if nobody asked (401).
    put = ok(follower, "/v1/kv/put", {"key": "w/1", "value": "via-follower"}, token=writer)
    assert put["header"]["member"] == leader.name
    refused(follower, "/v1/kv/put", {"key": "app/1", "value": "x"}, token=writer, status=403,
            code="permission_denied")
    refused(follower, "/v1/kv/put", {"key": "w/1", "value": "x"}, token=reader, status=403,
            code="permission_denied")
    ok(follower, "/v1/kv/txn", {"success": [{"put": {"key": "w/2", "value": "t"}}],
                                "failure": [{"delete": {"key": "w/", "prefix": True}}]},
       token=writer)
    ok(follower, "/v1/kv/put", {"key": "anywhere", "value": "root"}, token=root)
    # Leases: any signed-in user may hold one; revoking deletes its keys, so needs write.
    lease = ok(follower, "/v1/lease/grant", {"ttl": 30}, token=reader)["id"]
    ok(follower, "/v1/kv/put", {"key": "w/leased", "value": "l", "lease": lease}, token=writer)
    ok(follower, "/v1/lease/keepalive", {"id": lease}, token=reader)
    ok(follower, "/v1/lease/timetolive", {"id": lease}, token=reader)
    assert lease in [x["id"] for x in ok(follower, "/v1/lease/list", token=reader)["leases"]]
    refused(follower, "/v1/lease/list", status=401, code="unauthenticated")
    refused(follower, "/v1/lease/revoke", {"id": lease}, token=reader, status=403,
            code="permission_denied")
    ok(follower, "/v1/lease/revoke", {"id": lease}, token=writer)
    # Compaction is root's.
    revision = put["revision"]
    refused(follower, "/v1/kv/compact", {"revision": revision}, token=writer, status=403,
            code="permission_denied")
    ok(follower, "/v1/kv/compact", {"revision": revision}, token=root)


def test_user_and_role_management_is_roots(setup: Setup) -> None:
    leader, follower = roles(setup.cluster)
    reader, root = setup.tokens["reader"], setup.tokens["root"]
    refused(follower, "/v1/auth/users", token=reader, status=403, code="permission_denied")
    refused(follower, "/v1/auth/users", {"name": "x", "password": "y"}, token=reader,
            status=403, code="permission_denied")
    refused(follower, "/v1/auth/users", status=401, code="unauthenticated")
    assert {"root", "reader", "writer"} <= set(ok(follower, "/v1/auth/users",
                                                  token=root)["users"])
    assert ok(follower, "/v1/auth/users/reader", token=root)["user"] == {
        "name": "reader", "roles": ["app-reader"]}
    role = ok(follower, "/v1/auth/roles/app-reader", token=root)["role"]
    assert role["permissions"] == [{"type": "read", "key": "app/", "range_end": "app0",
                                    "encoding": "utf8"}]
    # A role's lifecycle, from a follower (sent on to the leader as root).
    ok(follower, "/v1/auth/roles", {"name": "temp"}, token=root)
    refused(follower, "/v1/auth/roles", {"name": "temp"}, token=root, status=409,
            code="already_exists")
    ok(follower, "/v1/auth/roles/temp/permissions",
       {"type": "write", "key": "dGVtcC8=", "prefix": True, "encoding": "base64"}, token=root)
    ok(follower, "/v1/auth/roles/temp/permissions?key=temp/&prefix=true", token=root,
       method="DELETE")
    assert ok(leader, "/v1/auth/roles/temp", token=root)["role"]["permissions"] == []
    ok(follower, "/v1/auth/roles/temp", token=root, method="DELETE")
    refused(follower, "/v1/auth/roles/temp", token=root, status=404, code="role_not_found")
    refused(follower, "/v1/auth/users/nobody", token=root, status=404, code="user_not_found")
    # A new user; a changed password ends the old token.
    ok(follower, "/v1/auth/users", {"name": "temp-user", "password": "a"}, token=root)
    ok(follower, "/v1/auth/users/temp-user/roles", {"role": "app-reader"}, token=root)
    first = ok(follower, "/v1/auth/authenticate", {"name": "temp-user", "password": "a"})["token"]
    ok(follower, "/v1/kv/range?key=app/x", token=first)
    ok(follower, "/v1/auth/users/temp-user/password", {"password": "b"}, token=root,
       method="PUT")
    wait_until(lambda: call(follower, "/v1/kv/range?key=app/x", token=first).status == 401,
               what="the old token refused")
    ok(follower, "/v1/auth/users/temp-user/roles/app-reader", token=root, method="DELETE")
    ok(follower, "/v1/auth/users/temp-user", token=root, method="DELETE")


def test_hostile_auth_bodies_are_refused(setup: Setup) -> None:
    _, follower = roles(setup.cluster)
    root = setup.tokens["root"]
    for body in ({"name": 5, "password": "x"}, {"name": "a"}, {"name": "", "password": "x"},
                 {"name": "a", "password": ""}, {"name": "a", "password": "x", "extra": 1},
                 {"name": "a" * 129, "password": "x"},
                 # 128 characters, but more bytes than the store's keys may hold.
                 {"name": "\U0001F600" * 128, "password": "x"}):
        answer = call(follower, "/v1/auth/users", body, token=root)
        assert (answer.status, answer.code) == (400, "invalid_argument"), body
    for body in ({"type": "all", "key": "a"}, {"type": "read"}, {"key": "a"},
                 {"type": "read", "key": "a", "prefix": "yes"}):
        answer = call(follower, "/v1/auth/roles/root/permissions", body, token=root)
        assert (answer.status, answer.code) == (400, "invalid_argument"), body
    answer = call(follower, "/v1/auth/authenticate", {"name": "root", "password": 1})
    assert answer.status == 400
    refused(follower, "/v1/kv/range?key=app/x", headers={"Authorization": "Basic cm9vdA=="},
            status=400, code="invalid_argument")


def test_wrong_passwords_are_401_then_429(setup: Setup) -> None:
    _, follower = roles(setup.cluster)
    ok(follower, "/v1/auth/users", {"name": "guessed", "password": "right"},
       token=setup.tokens["root"])
    for _ in range(FAILURES_ALLOWED):
        answer = refused(follower, "/v1/auth/authenticate",
                         {"name": "guessed", "password": "wrong"}, status=401,
                         code="invalid_credentials")
        assert "right" not in answer.body.decode() and "wrong" not in answer.body.decode()
    # Locked out now, even with the right password.
    answer = refused(follower, "/v1/auth/authenticate", {"name": "guessed", "password": "right"},
                     status=429, code="too_many_login_attempts")
    assert int(answer.headers["Retry-After"]) >= 1


def test_membership_needs_the_cluster_token_whoever_signs_in(setup: Setup) -> None:
    _, follower = roles(setup.cluster)
    reader = setup.tokens["reader"]
    spare = {"name": "spare", "peer_address": "127.0.0.1:9", "learner": True}
    refused(follower, "/v1/cluster/members/add", spare, token="wrong-cluster-token",
            status=401, code="authentication_failed")
    ok(follower, "/v1/cluster/members/add", spare, token=CLUSTER_TOKEN)
    # A user token is no membership credential, not even with a user signed in...
    refused(follower, "/v1/cluster/members/remove", {"name": "spare"}, token=reader,
            status=401, code="authentication_failed")
    refused(follower, "/v1/cluster/members/remove", {"name": "spare"}, token=reader,
            headers={"X-Cluster-Token": "wrong"}, status=401, code="authentication_failed")
    # ...the cluster token is (root's equal: docs/security.md), beside a user token or alone.
    both = {"X-Cluster-Token": CLUSTER_TOKEN}
    removed = ok(follower, "/v1/cluster/members/remove", {"name": "spare"}, token=reader,
                 headers=both)
    assert removed["removed"]["name"] == "spare"
    ok(follower, "/v1/cluster/members/add", spare, token=CLUSTER_TOKEN)
    removed = ok(follower, "/v1/cluster/members/remove", {"name": "spare"},
                 token=CLUSTER_TOKEN)
    assert removed["removed"]["name"] == "spare"


def test_metrics_events_and_stats_need_a_user(setup: Setup) -> None:
    leader, follower = roles(setup.cluster)
    reader = setup.tokens["reader"]
    for node in (leader, follower):
        for path in ("/metrics", "/v1/events", "/v1/stats"):
            refused(node, path, status=401, code="unauthenticated")
            assert call(node, path, token=reader).status == 200, path
        assert b"quorumkv_" in call(node, "/metrics", token=reader).body


def test_with_auth_disabled_nothing_asks_for_a_token(tmp_path: Path) -> None:
    with _started(tmp_path, CONFIG) as c:
        leader, follower = roles(c)
        for node in (leader, follower):
            ok(node, "/v1/kv/put", {"key": "k", "value": "v"})
            assert ok(node, "/v1/kv/range?key=k")["kvs"][0]["value"] == "v"
            # auth_metrics matters only once auth is enabled.
            for path in ("/metrics", "/v1/events", "/v1/stats", "/v1/lease/list"):
                assert call(node, path).status == 200, path
            # A token-looking or malformed Authorization header changes nothing.
            ok(node, "/v1/kv/range?key=k", token="qkv1.not.real")
            ok(node, "/v1/kv/range?key=k", headers={"Authorization": "Basic eA=="})
            status = ok(node, "/v1/auth/status")
            assert status["enabled"] is False and status["user"] is None
            refused(node, "/v1/auth/authenticate", {"name": "root", "password": "x"},
                    status=400, code="auth_not_enabled")
            # Enabling needs root first.
            refused(node, "/v1/auth/enable", {}, status=409, code="root_missing")
