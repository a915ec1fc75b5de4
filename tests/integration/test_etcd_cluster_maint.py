"""etcd's Cluster, Maintenance and Auth services through etcd's own generated stubs, against
a 3-member quorumkv cluster."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cluster_harness import free_ports, wait_until
from etcd_support import KV, EtcdCluster, etcd_cluster

from quorumkv.etcd.generated import etcd_proto
from quorumkv.storage.backup_file import check_file

TOKEN = "quorumkv"
"""The harness's cluster token (serve's default)."""


class Stubs:
    """Cluster, Maintenance, Auth and KV stubs on one member's etcd port."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        grpc_mod = etcd_proto().rpc_pb2_grpc
        self.pb = etcd_proto().rpc_pb2
        self.auth_pb = etcd_proto().auth_pb2
        self.cluster = grpc_mod.ClusterStub(self.channel)
        self.maint = grpc_mod.MaintenanceStub(self.channel)
        self.auth = grpc_mod.AuthStub(self.channel)
        self.kv = grpc_mod.KVStub(self.channel)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture(scope="module")
def ec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with etcd_cluster(Path(tmp_path_factory.mktemp("etcd-cluster-maint"))) as c:
        yield c


@pytest.fixture
def stubs(ec: EtcdCluster) -> Iterator[dict[str, Stubs]]:
    made = {name: Stubs(ec.address(name)) for name in sorted(ec.ports)}
    try:
        yield made
    finally:
        for s in made.values():
            s.close()


def _status(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_member_list_gives_every_member_with_its_etcd_url(ec: EtcdCluster,
                                                          stubs: dict[str, Stubs]) -> None:
    ids = set()
    for name, s in stubs.items():
        answer = s.cluster.MemberList(s.pb.MemberListRequest(linearizable=True), timeout=10)
        by_name = {m.name: m for m in answer.members}
        assert sorted(by_name) == sorted(ec.ports)
        for other, m in by_name.items():
            port = ec.cluster.node(other).peer_port
            assert list(m.peerURLs) == [f"http://127.0.0.1:{port}"]
            assert list(m.clientURLs) == [f"http://{ec.address(other)}"]
            assert not m.isLearner
        assert answer.header.member_id == by_name[name].ID
        ids.add(answer.header.member_id)
    assert len(ids) == 3


def test_status_agrees_across_members(stubs: dict[str, Stubs]) -> None:
    answers = {name: s.maint.Status(s.pb.StatusRequest(), timeout=10)
               for name, s in stubs.items()}
    leaders = {a.leader for a in answers.values()}
    assert len(leaders) == 1 and leaders != {0}
    assert leaders <= {a.header.member_id for a in answers.values()}
    assert len({a.raftTerm for a in answers.values()}) == 1
    for a in answers.values():
        assert a.version == "3.5.0"
        assert a.dbSize > 0 and a.dbSizeInUse == a.dbSize
        assert a.raftAppliedIndex <= a.raftIndex and a.raftIndex > 0
        assert list(a.errors) == [] and not a.isLearner


def test_hashes_agree_at_one_revision(ec: EtcdCluster, stubs: dict[str, Stubs]) -> None:
    kv = KV(ec.address("n1"))
    try:
        kv.put(b"hash/me", b"1")
        revision = kv.put(b"hash/me", b"2").header.revision
    finally:
        kv.close()

    def hashes() -> set[tuple[int, int, int]]:
        out = set()
        for s in stubs.values():
            one = s.maint.HashKV(s.pb.HashKVRequest(revision=0), timeout=10)
            whole = s.maint.Hash(s.pb.HashRequest(), timeout=10)
            out.add((one.header.revision, one.hash, whole.hash))
        return out

    # Followers apply the put a moment after the leader: equal once they all have.
    wait_until(lambda: len(found := hashes()) == 1 and next(iter(found))[0] >= revision,
               what="equal hashes on every member")
    s = stubs["n1"]
    assert _status(lambda: s.maint.HashKV(s.pb.HashKVRequest(revision=10**9), timeout=10)) == (
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
    # Only the current revision's state can be hashed.
    past = s.pb.HashKVRequest(revision=revision - 1)
    assert _status(lambda: s.maint.HashKV(past, timeout=10))[0] == grpc.StatusCode.UNIMPLEMENTED


def test_snapshot_stream_is_a_backup_with_etcds_shape(tmp_path: Path,
                                                      stubs: dict[str, Stubs]) -> None:
    s = stubs["n2"]
    s.kv.Put(s.pb.PutRequest(key=b"snap/key", value=b"v"), timeout=10)
    chunks = list(s.maint.Snapshot(s.pb.SnapshotRequest(), timeout=30))
    data = b"".join(c.blob for c in chunks)
    assert chunks[-1].remaining_bytes == 0
    # etcdctl's check, and etcd's trailer: a SHA-256 of everything before it.
    assert (len(data) - 32) % 512 == 0
    assert hashlib.sha256(data[:-32]).digest() == data[-32:]
    path = tmp_path / "etcd.snapshot"
    path.write_bytes(data)
    info = check_file(path)
    assert info.file_size == len(data) and info.header.member == "n2"
    assert info.header.key_count >= 1
    # The trailer is exact: one byte more or less is damage, as in any backup.
    from quorumkv.errors import CorruptSnapshot  # noqa: PLC0415

    for damaged in (data + b"\0", data[:-1], data[:-33] + b"\1" + data[-32:]):
        path.write_bytes(damaged)
        with pytest.raises(CorruptSnapshot):
            check_file(path)


def test_alarms_defragment_and_unsupported_calls(stubs: dict[str, Stubs]) -> None:
    s = stubs["n3"]
    pb = s.pb
    assert list(s.maint.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET), timeout=10).alarms) == []
    s.maint.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE), timeout=10)
    assert _status(lambda: s.maint.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE,
                                                         alarm=pb.NOSPACE), timeout=10))[0] == (
        grpc.StatusCode.UNIMPLEMENTED)
    s.maint.Defragment(pb.DefragmentRequest(), timeout=10)
    assert _status(lambda: s.maint.Downgrade(pb.DowngradeRequest(), timeout=10))[0] == (
        grpc.StatusCode.UNIMPLEMENTED)


def test_membership_changes_need_a_credential(ec: EtcdCluster,
                                              stubs: dict[str, Stubs]) -> None:
    s = stubs["n2"]
    pb = s.pb
    token = (("cluster-token", TOKEN),)
    [port] = free_ports(1)
    add = pb.MemberAddRequest(peerURLs=[f"http://127.0.0.1:{port}"], isLearner=True)
    code, message = _status(lambda: s.cluster.MemberAdd(add, timeout=10))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "cluster token" in message
    assert _status(lambda: s.cluster.MemberAdd(add, metadata=(("cluster-token", "wrong"),),
                                               timeout=10))[0] == (
        grpc.StatusCode.PERMISSION_DENIED)
    added = s.cluster.MemberAdd(add, metadata=token, timeout=30).member
    assert added.name == f"m-127.0.0.1-{port}" and added.isLearner
    assert list(added.peerURLs) == [f"http://127.0.0.1:{port}"] and not added.clientURLs
    try:
        listed = s.cluster.MemberList(pb.MemberListRequest(), timeout=10).members
        assert {m.ID: m.isLearner for m in listed}[added.ID] is True
        # Nothing runs there: it never catches up, so it cannot be promoted.
        assert _status(lambda: s.cluster.MemberPromote(pb.MemberPromoteRequest(ID=added.ID),
                                                       metadata=token, timeout=30)) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "etcdserver: can only promote a learner member which is in sync with leader")
        assert _status(lambda: s.cluster.MemberUpdate(
            pb.MemberUpdateRequest(ID=added.ID, peerURLs=["http://127.0.0.1:1"]),
            metadata=token, timeout=10))[0] == grpc.StatusCode.UNIMPLEMENTED
    finally:
        left = s.cluster.MemberRemove(pb.MemberRemoveRequest(ID=added.ID), metadata=token,
                                      timeout=30).members
    assert added.ID not in {m.ID for m in left} and len(left) == 3
    assert _status(lambda: s.cluster.MemberRemove(pb.MemberRemoveRequest(ID=added.ID),
                                                  metadata=token, timeout=10)) == (
        grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")
    assert _status(lambda: s.cluster.MemberAdd(pb.MemberAddRequest(peerURLs=["nonsense"]),
                                               metadata=token, timeout=10))[0] == (
        grpc.StatusCode.INVALID_ARGUMENT)


def test_move_leader(stubs: dict[str, Stubs]) -> None:
    s = stubs["n1"]
    pb = s.pb
    leader = s.maint.Status(pb.StatusRequest(), timeout=10).leader
    members = s.cluster.MemberList(pb.MemberListRequest(), timeout=10).members
    target = next(m.ID for m in members if leader != m.ID)
    request = pb.MoveLeaderRequest(targetID=target)
    assert _status(lambda: s.maint.MoveLeader(request, timeout=10))[0] == (
        grpc.StatusCode.PERMISSION_DENIED)
    s.maint.MoveLeader(request, metadata=(("cluster-token", TOKEN),), timeout=30)
    wait_until(lambda: all(x.maint.Status(pb.StatusRequest(), timeout=10).leader == target
                           for x in stubs.values()), what="every member to see the new leader")


def _token_of(s: Stubs, user: str, password: str) -> tuple[tuple[str, str]]:
    answer = s.auth.Authenticate(s.pb.AuthenticateRequest(name=user, password=password),
                                 timeout=30)
    return (("token", answer.token),)


def test_auth_lifecycle(tmp_path: Path) -> None:
    """Users, roles, enabling, tokens and etcd's errors, in a cluster of its own."""
    with etcd_cluster(tmp_path) as c:
        s, f = Stubs(c.address("n1")), Stubs(c.address("n3"))
        try:
            _auth_lifecycle(s, f)
        finally:
            s.close()
            f.close()


def _auth_lifecycle(s: Stubs, f: Stubs) -> None:
    pb, auth_pb = s.pb, s.auth_pb
    a = s.auth
    fail = grpc.StatusCode.FAILED_PRECONDITION
    assert not a.AuthStatus(pb.AuthStatusRequest(), timeout=10).enabled
    assert _status(lambda: a.Authenticate(pb.AuthenticateRequest(name="root", password="x"),
                                          timeout=10)) == (
        fail, "etcdserver: authentication is not enabled")
    assert _status(lambda: a.AuthEnable(pb.AuthEnableRequest(), timeout=10)) == (
        fail, "etcdserver: root user does not exist")
    a.UserAdd(pb.AuthUserAddRequest(name="root", password="root-pw"), timeout=30)
    assert _status(lambda: a.AuthEnable(pb.AuthEnableRequest(), timeout=10)) == (
        fail, "etcdserver: root user does not have root role")
    a.RoleAdd(pb.AuthRoleAddRequest(name="root"), timeout=10)
    assert _status(lambda: a.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root",
                                                                       role="nope"),
                                           timeout=10)) == (
        fail, "etcdserver: role name not found")
    a.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"), timeout=10)
    assert _status(lambda: a.UserAdd(pb.AuthUserAddRequest(name="root", password="p"),
                                     timeout=30)) == (fail, "etcdserver: user name already exists")
    assert _status(lambda: a.RoleAdd(pb.AuthRoleAddRequest(name="root"), timeout=10)) == (
        fail, "etcdserver: role name already exists")
    assert _status(lambda: a.UserGet(pb.AuthUserGetRequest(name="nobody"), timeout=10)) == (
        fail, "etcdserver: user name not found")

    a.RoleAdd(pb.AuthRoleAddRequest(name="app"), timeout=10)
    perm = auth_pb.Permission(permType=auth_pb.Permission.READ, key=b"app/", range_end=b"app0")
    a.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(name="app", perm=perm), timeout=10)
    [got] = a.RoleGet(pb.AuthRoleGetRequest(role="app"), timeout=10).perm
    assert (got.permType, got.key, got.range_end) == (auth_pb.Permission.READ, b"app/", b"app0")
    a.UserAdd(pb.AuthUserAddRequest(name="bob", password="bob-pw"), timeout=30)
    a.UserGrantRole(pb.AuthUserGrantRoleRequest(user="bob", role="app"), timeout=10)
    assert list(a.UserGet(pb.AuthUserGetRequest(name="bob"), timeout=10).roles) == ["app"]
    assert list(a.UserList(pb.AuthUserListRequest(), timeout=10).users) == ["bob", "root"]
    assert list(a.RoleList(pb.AuthRoleListRequest(), timeout=10).roles) == ["app", "root"]
    assert _status(lambda: a.UserRevokeRole(pb.AuthUserRevokeRoleRequest(name="bob",
                                                                         role="root"),
                                            timeout=10)) == (
        fail, "etcdserver: role is not granted to the user")
    s.kv.Put(pb.PutRequest(key=b"app/x", value=b"1"), timeout=10)

    # Enabled through a follower: sent on to the leader.
    f.auth.AuthEnable(pb.AuthEnableRequest(), timeout=30)
    assert a.AuthStatus(pb.AuthStatusRequest(), timeout=10).enabled
    assert _status(lambda: a.Authenticate(pb.AuthenticateRequest(name="root", password="no"),
                                          timeout=30)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "etcdserver: authentication failed, invalid user ID or password")
    bob = _token_of(f, "bob", "bob-pw")
    root = _token_of(s, "root", "root-pw")
    assert f.kv.Range(pb.RangeRequest(key=b"app/x"), metadata=bob, timeout=10).kvs[0].value == (
        b"1")
    denied = (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
    assert _status(lambda: f.kv.Put(pb.PutRequest(key=b"app/x", value=b"2"), metadata=bob,
                                    timeout=10)) == denied
    assert _status(lambda: s.kv.Range(pb.RangeRequest(key=b"app/x"), timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty")
    assert _status(lambda: a.UserAdd(pb.AuthUserAddRequest(name="eve", password="e"),
                                     metadata=bob, timeout=30)) == denied
    assert _status(lambda: s.maint.Hash(pb.HashRequest(), metadata=bob, timeout=10)) == denied
    s.maint.Hash(pb.HashRequest(), metadata=root, timeout=10)
    assert _status(lambda: a.UserDelete(pb.AuthUserDeleteRequest(name="root"), metadata=root,
                                        timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: invalid auth management")
    # With auth on, root may change the membership without the cluster token (MemberUpdate
    # gets past that check to its own refusal), another user may not.
    members = s.cluster.MemberList(pb.MemberListRequest(), metadata=bob, timeout=10).members
    update = pb.MemberUpdateRequest(ID=members[0].ID, peerURLs=["http://127.0.0.1:1"])
    assert _status(lambda: s.cluster.MemberUpdate(update, metadata=root, timeout=10))[0] == (
        grpc.StatusCode.UNIMPLEMENTED)
    assert _status(lambda: s.cluster.MemberUpdate(update, metadata=bob, timeout=10)) == denied

    # A new password revokes the old tokens.
    f.auth.UserChangePassword(pb.AuthUserChangePasswordRequest(name="bob", password="new-pw"),
                              metadata=root, timeout=30)
    wait_until(lambda: _rejects_token(f, bob), what="the old token to be refused")
    assert _status(lambda: f.kv.Range(pb.RangeRequest(key=b"app/x"), metadata=bob,
                                      timeout=10)) == (
        grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")
    bob = _token_of(f, "bob", "new-pw")
    f.kv.Range(pb.RangeRequest(key=b"app/x"), metadata=bob, timeout=10)

    a.RoleRevokePermission(pb.AuthRoleRevokePermissionRequest(role="app", key=b"app/",
                                                              range_end=b"app0"),
                           metadata=root, timeout=10)
    assert list(a.RoleGet(pb.AuthRoleGetRequest(role="app"), metadata=root, timeout=10).perm) == []
    assert _status(lambda: a.RoleRevokePermission(
        pb.AuthRoleRevokePermissionRequest(role="app", key=b"app/", range_end=b"app0"),
        metadata=root, timeout=10)) == (fail, "etcdserver: permission is not granted to the role")
    a.RoleDelete(pb.AuthRoleDeleteRequest(role="app"), metadata=root, timeout=10)
    a.UserDelete(pb.AuthUserDeleteRequest(name="bob"), metadata=root, timeout=10)
    a.AuthDisable(pb.AuthDisableRequest(), metadata=root, timeout=30)
    assert not a.AuthStatus(pb.AuthStatusRequest(), timeout=10).enabled
    s.kv.Range(pb.RangeRequest(key=b"app/x"), timeout=10)


def _rejects_token(s: Stubs, token: Any) -> bool:
    try:
        s.kv.Range(s.pb.RangeRequest(key=b"app/x"), metadata=token, timeout=10)
    except grpc.RpcError as e:
        return bool(e.code() == grpc.StatusCode.UNAUTHENTICATED)
    return False
