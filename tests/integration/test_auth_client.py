"""The clients under authentication, on a real 3-node cluster: signing in, permissions as a
user sees them, the admin methods, tokens that expire or are revoked while a client goes
on, and wrong passwords. Tokens live one second here (``auth_token_ttl_s``), so clients
outlive many of them; every wait is an event wait with a generous deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from cluster_harness import Cluster, running_cluster

from quorumkv.client import AsyncClient, Client
from quorumkv.client.auth_wire import AuthTokenRequest
from quorumkv.client.connection import Connection
from quorumkv.client.endpoints import parse_endpoint
from quorumkv.client.protocol import ReadRequest
from quorumkv.errors import (
    AlreadyExists,
    AuthNotEnabled,
    InvalidArgument,
    InvalidCredentials,
    InvalidToken,
    PermissionDenied,
    QuorumKVError,
    RoleNotFound,
    TooManyLoginAttempts,
    Unauthenticated,
    UserNotFound,
)
from quorumkv.kv import ALL_KEYS, RangeRequest, prefix_end

pytestmark = pytest.mark.timeout(300)

ROOT_PW = "root-pw"
PW = "user-pw"
TIMEOUT = 30.0


def _run(coro: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coro(), 240))


def _setup(c: Cluster) -> None:
    """Users and roles, then auth on, through a blocking client that holds root's
    credentials from the start: while auth is off it carries on without a token, and
    once auth is on it signs in by itself."""
    with Client(c.endpoints, timeout=TIMEOUT, user="root", password=ROOT_PW) as root:
        assert root.auth_status()["enabled"] is False
        with pytest.raises(AuthNotEnabled):
            root.authenticate()
        root.user_add("root", ROOT_PW)
        root.role_add("root")
        root.user_grant_role("root", "root")
        for name in ("reader", "rw", "victim", "changer", "stale"):
            root.user_add(name, PW)
        root.role_add("app-read")
        root.role_grant("app-read", "read", "app/", prefix=True)
        root.role_add("app-rw")
        root.role_grant("app-rw", "readwrite", "app/", prefix=True)
        root.role_grant("app-rw", "write", "logs/", ALL_KEYS)
        root.user_grant_role("reader", "app-read")
        for name in ("rw", "changer", "stale"):
            root.user_grant_role(name, "app-rw")
        root.put("app/x", "1")  # auth is off still: anyone writes
        first = root.auth_enable()
        assert first > 0
        # The same client, now that auth is on: it was refused as nobody, signed in,
        # and was answered.
        assert root.put("app/x", "2").revision > 0
        status = root.auth_status()
        assert status["enabled"] is True and status["user"] == "root"
        assert status["auth_revision"] >= first


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("auth-client")
    config = tmp / "node.toml"
    # The default 5 failures before a lockout; a long lockout, so the test of it cannot
    # see one run out before it looks.
    config.write_text("auth_token_ttl_s = 1.0\nlogin_lockout_s = 60.0\n")
    with running_cluster(tmp, extra=["--config", str(config)]) as c:
        c.leader_name()
        _setup(c)
        yield c


def _client(c: Cluster, user: str | None = None, password: str | None = None,
            ) -> AsyncClient:
    return AsyncClient(c.endpoints, timeout=TIMEOUT, user=user, password=password)


def test_without_credentials_every_kv_request_is_unauthenticated(cluster: Cluster) -> None:
    async def go() -> None:
        async with _client(cluster) as anon:
            with pytest.raises(Unauthenticated):
                await anon.get("app/x")
            with pytest.raises(Unauthenticated):
                await anon.put("app/x", "v")
            with pytest.raises(Unauthenticated):
                await anon.user_list()
            # Finding the cluster stays open.
            assert (await anon.status())["leader"]
            assert (await anon.auth_status())["user"] is None
    _run(go)


def test_a_read_only_role_reads_its_prefix_and_nothing_else(cluster: Cluster) -> None:
    async def go() -> None:
        async with _client(cluster, "reader", PW) as reader:
            item = await reader.get("app/x")
            assert item is not None and item.value == b"2"
            assert (await reader.scan_prefix("app/")).count >= 1
            with pytest.raises(PermissionDenied):
                await reader.put("app/x", "no")
            with pytest.raises(PermissionDenied):
                await reader.get("other/x")
            with pytest.raises(PermissionDenied):
                await reader.delete("app/x")
            with pytest.raises(PermissionDenied):  # user and role changes are root's
                await reader.user_add("intruder", "pw")
            with pytest.raises(PermissionDenied):
                await reader.digest()
            assert (await reader.auth_status())["user"] == "reader"
            # A watch is a read: on its prefix only.
            async with reader.watch("app/", prefix=True) as w:
                async with _client(cluster, "rw", PW) as rw:
                    await rw.put("app/watched", "w")
                batch = await asyncio.wait_for(w.__anext__(), TIMEOUT)
                assert [e.kv.key for e in batch.events] == [b"app/watched"]
            with pytest.raises(PermissionDenied):
                async with reader.watch("other/", prefix=True) as denied:
                    await asyncio.wait_for(denied.__anext__(), TIMEOUT)
    _run(go)


def test_root_may_do_everything(cluster: Cluster) -> None:
    async def go() -> None:
        async with _client(cluster, "root", ROOT_PW) as root:
            put = await root.put("other/x", "r")
            item = await root.get("other/x")
            assert item is not None and item.value == b"r"
            assert (await root.delete("other/x")).deleted == 1
            assert (await root.digest())["revision"] >= put.revision
            lease = await root.grant_lease(30, keep_alive=False)
            await root.revoke_lease(lease.id)
            assert "reader" in await root.user_list()
            assert {"root", "app-read"} <= set(await root.role_list())
            token = await root.authenticate()
            assert isinstance(token, str) and token
    _run(go)


def test_admin_reads_and_errors(cluster: Cluster) -> None:
    async def go() -> None:
        async with _client(cluster, "root", ROOT_PW) as root:
            assert await root.user_get("reader") == {"name": "reader", "roles": ["app-read"]}
            rw = await root.role_get("app-rw")
            assert rw["all_keys"] is False
            assert {(p["type"], p["key"], p["range_end"]) for p in rw["permissions"]} == {
                ("readwrite", b"app/", prefix_end(b"app/")), ("write", b"logs/", ALL_KEYS)}
            assert (await root.role_get("root"))["all_keys"] is True
            with pytest.raises(UserNotFound):
                await root.user_get("nobody")
            with pytest.raises(RoleNotFound):
                await root.role_get("no-role")
            with pytest.raises(AlreadyExists):
                await root.user_add("reader", "x")
            with pytest.raises(InvalidArgument):
                await root.role_grant("app-read", "admin", "k")
            # A role granted, used, revoked, deleted.
            await root.role_add("tmp-role")
            await root.role_grant("tmp-role", "read", "tmp/a", "tmp/c")
            await root.user_grant_role("rw", "tmp-role")
            assert "tmp-role" in (await root.user_get("rw"))["roles"]
            await root.role_revoke("tmp-role", "tmp/a", "tmp/c")
            assert (await root.role_get("tmp-role"))["permissions"] == []
            await root.user_revoke_role("rw", "tmp-role")
            await root.role_delete("tmp-role")
            assert "tmp-role" not in await root.role_list()
            await root.user_add("short-lived", "pw")
            await root.user_delete("short-lived")
            assert "short-lived" not in await root.user_list()
    _run(go)


async def _raw(address: str) -> Connection:
    return await Connection.open(parse_endpoint(address), max_frame=4 << 20)


def _trust_token_forever(client: AsyncClient) -> None:
    """Make ``client`` believe its token never expires, as a client whose clock runs slow
    would: it then learns of expiry and revocation only from the node's refusals, which
    is the path under test."""
    sign_in = client._sign_in
    assert sign_in is not None
    sign_in._expires_at = float("inf")


def test_a_client_outlives_its_tokens(cluster: Cluster) -> None:
    async def go() -> None:
        async with _client(cluster, "rw", PW) as rw, _client(cluster, "rw", PW) as slow:
            await rw.put("app/ttl", "0")
            await slow.get("app/ttl")
            _trust_token_forever(slow)
            # A token issued after the client's own: once it is refused as expired, the
            # client's is expired too (the nodes share this machine's clock).
            later = await rw.authenticate()
            conn = await _raw(cluster.endpoints[0])
            try:
                deadline = asyncio.get_running_loop().time() + 60
                while True:
                    try:
                        await conn.request(AuthTokenRequest(token=later))
                    except InvalidToken as err:
                        assert "expired" in err.message
                        break
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.1)
            finally:
                await conn.close()
            for i in range(1, 4):
                await rw.put("app/ttl", str(i))
                item = await rw.get("app/ttl")
                assert item is not None and item.value == str(i).encode()
            # Refused as expired, it signs in again and is answered.
            item = await slow.get("app/ttl")
            assert item is not None and item.value == b"3"
    _run(go)


def test_a_password_change_revokes_tokens_and_clients_sign_in_again(cluster: Cluster) -> None:
    async def go() -> None:
        async with _client(cluster, "root", ROOT_PW) as root, \
                _client(cluster, "changer", PW) as same, _client(cluster, "stale", PW) as old:
            await same.get("app/x")
            await old.get("app/x")
            _trust_token_forever(same)
            _trust_token_forever(old)
            token = await same.authenticate()
            conn = await _raw(cluster.endpoints[0])
            try:
                await conn.request(AuthTokenRequest(token=token))
                # The same password again still revokes every token of the user.
                await root.user_passwd("changer", PW)
                await root.user_passwd("stale", "a-new-one")

                def read() -> ReadRequest:
                    return ReadRequest(range=RangeRequest(key=b"app/x"), consistency="one")

                deadline = asyncio.get_running_loop().time() + 60
                with pytest.raises(InvalidToken, match="revoked"):
                    while asyncio.get_running_loop().time() < deadline:
                        await conn.request(read())
                        await asyncio.sleep(0.1)
            finally:
                await conn.close()
            # Refused for its token, the client signs in with its password and is answered.
            item = await same.get("app/x", consistency="quorum")
            assert item is not None
            # One whose password is no longer right cannot.
            with pytest.raises(InvalidCredentials):
                await old.get("app/x")
    _run(go)


def test_wrong_passwords_then_a_lockout(cluster: Cluster) -> None:
    async def go() -> None:
        codes: list[str] = []
        async with _client(cluster, "victim", "wrong") as bad:
            for _ in range(8):
                try:
                    await bad.get("app/x")
                    codes.append("ok")
                except QuorumKVError as err:
                    codes.append(err.code)
                if codes[-1] != InvalidCredentials.code:
                    break
        # Five failures (the default) are answered as such; then sign-ins are refused.
        assert codes == [InvalidCredentials.code] * 5 + [TooManyLoginAttempts.code], codes
        # Even with the right password, for a while.
        async with _client(cluster, "victim", PW) as right:
            with pytest.raises(TooManyLoginAttempts):
                await right.get("app/x")
        # Unknown users fail like wrong passwords.
        async with _client(cluster, "no-such-user", "pw") as unknown:
            with pytest.raises(InvalidCredentials):
                await unknown.get("app/x")
    _run(go)


def test_the_blocking_client_mirrors_the_async_one(cluster: Cluster) -> None:
    # A follower first: changes reach the leader through the NotLeader redirect.
    leader = cluster.leader_name()
    endpoints = sorted(cluster.endpoints, key=lambda a: cluster.node(leader).client_address == a)
    with Client(endpoints, timeout=TIMEOUT, user="root", password=ROOT_PW) as root:
        root.user_add("blocking", PW)
        root.role_add("blocking-role")
        root.role_grant("blocking-role", "readwrite", "blk/", prefix=True)
        root.user_grant_role("blocking", "blocking-role")
        assert root.user_get("blocking")["roles"] == ["blocking-role"]
        assert root.role_get("blocking-role")["permissions"][0]["type"] == "readwrite"
        assert "blocking" in root.user_list() and "blocking-role" in root.role_list()
    with Client(endpoints, timeout=TIMEOUT, user="blocking", password=PW) as c:
        c.put("blk/1", "v")
        item = c.get("blk/1")
        assert item is not None and item.value == b"v"
        with pytest.raises(PermissionDenied):
            c.put("app/x", "no")
        assert c.auth_status()["user"] == "blocking"
        assert c.authenticate()
    with Client(endpoints, timeout=TIMEOUT, user="blocking", password="nope") as wrong, \
            pytest.raises(InvalidCredentials):
        wrong.get("blk/1")
    with Client(endpoints, timeout=TIMEOUT) as anon, pytest.raises(Unauthenticated):
        anon.get("blk/1")
    with pytest.raises(InvalidArgument):
        Client(endpoints, user="blocking")


def test_credentials_stay_out_of_reprs(cluster: Cluster) -> None:
    async def go() -> None:
        async with _client(cluster, "rw", PW) as rw:
            await rw.get("app/x")
            assert PW not in repr(rw._sign_in) and PW not in repr(vars(rw))
    _run(go)
