"""Every client-port operation against every kind of grant, on a real 3-node cluster with
auth enabled: allowed or denied exactly as docs/security.md specifies, and a denied write
changes nothing. Then the auth state across restarts and on a member that gets it by
snapshot, token expiry and revocation, and the sign-in rate limit."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_harness import Cluster, running_cluster, wait_until

from quorumkv.client.auth_wire import AuthenticateRequest, AuthRequest, AuthTokenRequest
from quorumkv.client.connection import Connection
from quorumkv.client.coordination_wire import LeaseTimeToLiveRequest, WatchRequest
from quorumkv.client.endpoints import parse_endpoint
from quorumkv.client.protocol import (
    DigestRequest,
    MemberListRequest,
    ReadRequest,
    Request,
    SnapshotRequest,
    StatusRequest,
    WriteRequest,
)
from quorumkv.errors import (
    Compacted,
    InvalidCredentials,
    InvalidToken,
    NotLeader,
    PermissionDenied,
    QuorumKVError,
    TooManyLoginAttempts,
    Unauthenticated,
)
from quorumkv.kv import (
    ALL_KEYS,
    Compact,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    LeaseGrant,
    LeaseRevoke,
    Put,
    RangeRequest,
    Txn,
    prefix_end,
)

PASSWORD = "s3cret-pw"
APP = b"app/"

# The table: what each operation needs, and which users have it.
USERS = {
    "none": [],
    "reader": [("read", APP, prefix_end(APP))],
    "writer": [("write", APP, prefix_end(APP))],
    "rw": [("readwrite", APP, prefix_end(APP))],
    "keyonly": [("readwrite", b"app/k", None)],
    "split": [("readwrite", APP, b"app/m"), ("readwrite", b"app/m", prefix_end(APP))],
}

_txn_inside = Txn(compares=(Compare(key=b"app/k", target=CompareTarget.VERSION,
                                    op=CompareOp.GREATER, value=0),),
                  success=(Put(key=b"app/k", value=b"t"),), failure=())
_txn_other_branch = Txn(compares=(Compare(key=b"app/k", target=CompareTarget.VERSION,
                                          op=CompareOp.GREATER, value=0),),
                        success=(Put(key=b"app/k", value=b"t"),),
                        failure=(Put(key=b"other/x", value=b"t"),))

OPS: dict[str, tuple[Request, set[str]]] = {
    # name: (request, users allowed besides root)
    "get key": (ReadRequest(range=RangeRequest(key=b"app/k")),
                {"reader", "rw", "keyonly", "split"}),
    "get key (one)": (ReadRequest(range=RangeRequest(key=b"app/k"), consistency="one"),
                      {"reader", "rw", "keyonly", "split"}),
    "scan prefix": (ReadRequest(range=RangeRequest.prefix(APP)), {"reader", "rw", "split"}),
    "scan outside": (ReadRequest(range=RangeRequest.prefix(b"other/")), set()),
    "scan from key on": (ReadRequest(range=RangeRequest(key=APP, range_end=ALL_KEYS)), set()),
    "put key": (WriteRequest(cmd=Put(key=b"app/k", value=b"v")),
                {"writer", "rw", "keyonly", "split"}),
    "put outside": (WriteRequest(cmd=Put(key=b"other/k", value=b"v")), set()),
    "delete prefix": (WriteRequest(cmd=DeleteRange.prefix(b"app/zz/")),
                      {"writer", "rw", "split"}),
    "txn inside": (WriteRequest(cmd=_txn_inside), {"rw", "keyonly", "split"}),
    "txn untaken branch outside": (WriteRequest(cmd=_txn_other_branch), set()),
    "compact": (WriteRequest(cmd=Compact(revision=1)), set()),
    "lease grant": (WriteRequest(cmd=LeaseGrant(id=0, ttl=60)), set(USERS)),
    "watch prefix": (WatchRequest(key=APP, range_end=prefix_end(APP)),
                     {"reader", "rw", "split"}),
    "watch partly outside": (WatchRequest(key=APP, range_end=b"b"), set()),
    "snapshot": (SnapshotRequest(), set()),
    "digest": (DigestRequest(), set()),
    "status": (StatusRequest(), {*USERS, "anonymous"}),
    "member list": (MemberListRequest(), {*USERS, "anonymous"}),
}

_lease_ids = iter(range(1000, 10**6))


def _fresh(req: Request) -> Request:
    """Lease grants need an id of their own each time."""
    if isinstance(req, WriteRequest) and isinstance(req.cmd, LeaseGrant):
        return WriteRequest(cmd=LeaseGrant(id=next(_lease_ids), ttl=60))
    return req


async def _open(address: str, user: str | None = None,
                password: str = PASSWORD) -> Connection:
    conn = await Connection.open(parse_endpoint(address), max_frame=4 << 20)
    if user is not None:
        await conn.request(AuthenticateRequest(name=user, password=password))
    return conn


def _run(coro: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coro(), 120))


async def _on_leader(cluster: Cluster, user: str | None, req: Request) -> dict[str, Any]:
    """Send ``req`` to whichever node leads (changes need the leader)."""
    leader = cluster.node(cluster.leader_name())
    conn = await _open(leader.client_address, user)
    try:
        return await conn.request(req)
    finally:
        await conn.close()


def _setup_auth(cluster: Cluster) -> None:
    async def go() -> None:
        actions: list[AuthRequest] = [
            AuthRequest(action="user_add", name="root", password=PASSWORD),
            AuthRequest(action="role_add", role="root"),
            AuthRequest(action="user_grant_role", name="root", role="root")]
        for user, grants in USERS.items():
            actions.append(AuthRequest(action="user_add", name=user, password=PASSWORD))
            if grants:
                actions.append(AuthRequest(action="role_add", role=f"r-{user}"))
                actions.append(AuthRequest(action="user_grant_role", name=user,
                                           role=f"r-{user}"))
            for perm, key, end in grants:
                actions.append(AuthRequest(action="role_grant", role=f"r-{user}", perm=perm,
                                           key=key, range_end=end))
        actions.append(AuthRequest(action="enable"))
        for action in actions:
            await _until_led(cluster, None, action)
    _run(go)


async def _until_led(cluster: Cluster, user: str | None, req: Request) -> dict[str, Any]:
    """``_on_leader``, again while leadership moves (the request was refused, not run)."""
    for _ in range(600):
        try:
            return await _on_leader(cluster, user, req)
        except NotLeader:
            await asyncio.sleep(0.1)
    raise AssertionError(f"no leader took {req!r}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("auth")
    config = tmp / "node.toml"
    config.write_text("auth_token_ttl_s = 3.0\nlogin_failures_allowed = 3\n"
                      "login_lockout_s = 30.0\n")
    with running_cluster(tmp, extra=["--config", str(config)]) as c:
        c.leader_name()
        _setup_auth(c)
        yield c


@pytest.mark.parametrize("op", list(OPS))
def test_each_operation_is_allowed_exactly_for_the_users_whose_grants_cover_it(
        cluster: Cluster, op: str) -> None:
    req, allowed = OPS[op]

    async def check() -> dict[str, str]:
        leader = cluster.node(cluster.leader_name())
        outcome: dict[str, str] = {}
        for user in ["anonymous", "root", *USERS]:
            conn = await _open(leader.client_address, None if user == "anonymous" else user)
            try:
                await conn.request(_fresh(req))
                outcome[user] = "allowed"
            except (PermissionDenied, Unauthenticated) as err:
                outcome[user] = err.code
            except Compacted:  # compacting again what root compacted: it was allowed
                outcome[user] = "allowed (compacted)"
            finally:
                await conn.close()
        return outcome

    outcome = _run(check)
    for user, got in outcome.items():
        if user == "root" or user in allowed:
            assert got.startswith("allowed"), (op, user, got)
        elif user == "anonymous":
            assert got == "unauthenticated", (op, user, got)
        else:
            assert got == "permission_denied", (op, user, got)


def test_a_denied_write_changes_nothing(cluster: Cluster) -> None:
    async def go() -> None:
        everything = ReadRequest(range=RangeRequest(key=b"\0", range_end=ALL_KEYS))
        before = await _on_leader(cluster, "root", everything)
        for user in ("reader", "keyonly"):
            with pytest.raises(PermissionDenied):
                await _on_leader(cluster, user, WriteRequest(cmd=_txn_other_branch))
            with pytest.raises(PermissionDenied):
                await _on_leader(cluster, user, WriteRequest(cmd=Put(key=b"other/z",
                                                                       value=b"v")))
        after = await _on_leader(cluster, "root", everything)
        assert after["kvs"] == before["kvs"]
        assert after["header"]["revision"] == before["header"]["revision"]
    _run(go)


def test_tokens_expire_and_die_with_a_password_change(cluster: Cluster) -> None:
    async def go() -> None:
        leader = cluster.node(cluster.leader_name())
        conn = await _open(leader.client_address)
        signed = await conn.request(AuthenticateRequest(name="rw", password=PASSWORD))
        token = signed["token"]
        assert signed["expires_in"] == 3.0
        await conn.request(ReadRequest(range=RangeRequest(key=b"app/k")))
        # Another connection, on a follower, with the same token.
        follower = next(n for n in cluster.nodes if n is not leader)
        other = await _open(follower.client_address)
        await other.request(AuthTokenRequest(token=token))
        await other.request(ReadRequest(range=RangeRequest(key=b"app/k"), consistency="one"))
        # Expiry: the node's clock decides; wait for it rather than sleeping a guess.
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            try:
                await conn.request(ReadRequest(range=RangeRequest(key=b"app/k")))
            except InvalidToken as err:
                assert "expired" in err.message
                break
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.2)
        # Revocation: a new token dies when the password changes.
        fresh = (await conn.request(AuthenticateRequest(name="split",
                                                        password=PASSWORD)))["token"]
        await other.request(AuthTokenRequest(token=fresh))
        await _until_led(cluster, "root", AuthRequest(action="user_passwd", name="split",
                                                      password=PASSWORD))
        with pytest.raises(InvalidToken, match="revoked"):
            # The follower learns of the change when it applies it.
            for _ in range(300):
                await other.request(ReadRequest(range=RangeRequest(key=b"app/k"),
                                                consistency="one"))
                await asyncio.sleep(0.1)
        await conn.close()
        await other.close()
    _run(go)


def test_failed_sign_ins_are_rate_limited_and_never_say_which_part_was_wrong(
        cluster: Cluster) -> None:
    async def go() -> None:
        leader = cluster.node(cluster.leader_name())
        conn = await _open(leader.client_address)
        await _until_led(cluster, "root", AuthRequest(action="user_add", name="victim",
                                                      password=PASSWORD))
        errors = []
        for name in ("victim", "victim", "victim", "no-such-user"):
            with pytest.raises(InvalidCredentials) as info:
                await conn.request(AuthenticateRequest(name=name, password="wrong"))
            errors.append(info.value.message)
        assert errors[0] == errors[3]  # unknown user and wrong password look alike
        # Locked out now, even with the right password.
        with pytest.raises(TooManyLoginAttempts) as limited:
            await conn.request(AuthenticateRequest(name="victim", password=PASSWORD))
        assert limited.value.details["retry_after_s"] > 0
        # Everyone else (from the same address) still signs in.
        ok = await _open(leader.client_address, "root")
        await ok.request(ReadRequest(range=RangeRequest(key=b"app/k")))
        await ok.close()
        await conn.close()
    _run(go)


def test_auth_survives_a_full_restart_and_reaches_a_member_by_snapshot(
        tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("snapshot_threshold = 20\n")
    with running_cluster(tmp_path, extra=["--config", str(config)]) as c:
        c.leader_name()
        _setup_auth(c)

        async def writes() -> None:
            for i in range(60):  # enough entries for snapshots that cut the log
                await _until_led(c, "rw", WriteRequest(cmd=Put(key=b"app/%d" % i,
                                                                value=b"v")))
        _run(writes)
        joiner = c.add_joiner(tmp_path, "n4", extra=["--config", str(config)])
        joiner.start()

        async def on_joiner() -> None:
            # The joiner got users and roles with the snapshot: it checks them itself.
            conn = await _open(joiner.client_address, "reader")
            got = await conn.request(ReadRequest(range=RangeRequest(key=b"app/1"),
                                                 consistency="one"))
            assert got["kvs"] and got["kvs"][0]["value"] == b"v"
            with pytest.raises(PermissionDenied):
                await conn.request(ReadRequest(range=RangeRequest(key=b"other/1"),
                                               consistency="one"))
            await conn.close()
        wait_until(lambda: _quiet(lambda: _run(on_joiner)), timeout=120)
        assert "installed a snapshot" in joiner.log_path.read_text(errors="replace")
        # Identical everywhere: users, their roles, roles and their permissions.
        wait_until(lambda: _quiet(lambda: _same_auth_everywhere(c)), timeout=120)
        for node in c.nodes:
            node.terminate()
        for node in c.nodes:
            node.start()
        c.leader_name()

        async def after_restart() -> None:
            status = await _until_led(c, "root", AuthRequest(action="status"))
            assert status["enabled"] is True
            with pytest.raises(Unauthenticated):
                await _on_leader(c, None, ReadRequest(range=RangeRequest(key=b"app/1")))
            with pytest.raises(PermissionDenied):
                await _on_leader(c, "reader", WriteRequest(cmd=Put(key=b"app/1", value=b"x")))
        wait_until(lambda: _quiet(lambda: _run(after_restart)), timeout=120)
        wait_until(lambda: _quiet(lambda: _same_auth_everywhere(c)), timeout=120)


def _auth_state(address: str) -> dict[str, Any]:
    """Everything a node says about users and roles (each answer after a read barrier)."""
    async def go() -> dict[str, Any]:
        conn = await _open(address, "root")
        try:
            status = await conn.request(AuthRequest(action="status"))
            users = (await conn.request(AuthRequest(action="user_list")))["users"]
            roles = (await conn.request(AuthRequest(action="role_list")))["roles"]
            return {
                "enabled": status["enabled"], "revision": status["auth_revision"],
                "users": {u: (await conn.request(AuthRequest(action="user_get", name=u)))
                          ["user"] for u in users},
                "roles": {r: (await conn.request(AuthRequest(action="role_get", role=r)))
                          ["role"] for r in roles}}
        finally:
            await conn.close()
    state: dict[str, Any] = _run(go)
    return state


def _same_auth_everywhere(cluster: Cluster) -> bool:
    states = [_auth_state(n.client_address) for n in cluster.nodes]
    assert states[0]["enabled"] and len(states[0]["users"]) == len(USERS) + 1
    # Each answer follows a read barrier, so every node has applied every auth change.
    for node, state in zip(cluster.nodes, states, strict=True):
        assert state == states[0], node.name
    return True


def _quiet(fn: Callable[[], object]) -> bool:
    """True once ``fn`` runs without an error a starting cluster may give."""
    try:
        fn()
        return True
    except (TimeoutError, NotLeader, OSError) as err:
        del err
        return False
    except QuorumKVError as err:
        if err.code in ("not_leader", "network_error", "unavailable", "timeout",
                        "quorum_not_reached", "invalid_credentials"):
            return False
        raise


def test_a_leases_keys_are_listed_only_to_who_may_read_them(cluster: Cluster) -> None:
    async def go() -> None:
        lease = next(_lease_ids)
        await _until_led(cluster, "root", WriteRequest(cmd=LeaseGrant(id=lease, ttl=600)))
        await _until_led(cluster, "root", WriteRequest(cmd=Put(key=b"other/leased", value=b"v",
                                                                lease=lease)))
        leader = cluster.node(cluster.leader_name())
        conn = await _open(leader.client_address, "reader")
        ttl = await conn.request(LeaseTimeToLiveRequest(id=lease, keys=False))
        assert ttl["ttl"] > 0
        with pytest.raises(PermissionDenied):
            await conn.request(LeaseTimeToLiveRequest(id=lease, keys=True))
        await conn.close()
        # Revoking it would delete other/leased: only who may write that key may revoke.
        with pytest.raises(PermissionDenied):
            await _until_led(cluster, "rw", WriteRequest(cmd=LeaseRevoke(id=lease)))
        await _until_led(cluster, "root", WriteRequest(cmd=LeaseRevoke(id=lease)))
    _run(go)


def test_no_password_or_token_reaches_a_log(cluster: Cluster) -> None:
    leader = cluster.node(cluster.leader_name())

    async def go() -> str:
        conn = await _open(leader.client_address)
        token = (await conn.request(AuthenticateRequest(name="rw", password=PASSWORD)))["token"]
        with pytest.raises(InvalidCredentials):
            await conn.request(AuthenticateRequest(name="rw", password=PASSWORD + "-wrong"))
        await conn.close()
        return str(token)
    token = _run(go)
    for node in cluster.nodes:
        text = node.log_path.read_text(errors="replace")
        if node is leader:
            assert "failed sign-in for user 'rw'" in text  # logged, but not what was tried
        assert PASSWORD not in text
        assert token not in text and token.split(".")[1] not in text
        assert "qkv1." not in text
