"""The etcd port with auth enabled: the user comes from the call's ``token`` metadata (as
etcd's clients send it), permissions are quorumkv's, refusals are etcd's errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from etcd_support import KV, READER_PW, ROOT_PW, EtcdCluster, enable_auth_with_reader, etcd_cluster

from quorumkv.client import Client

PW = READER_PW


@pytest.fixture(scope="module")
def ec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with etcd_cluster(Path(tmp_path_factory.mktemp("etcd-auth"))) as c:
        enable_auth_with_reader(c.cluster, seed={"app/x": "1"})
        yield c


def _token(ec: EtcdCluster, user: str, password: str) -> str:
    with Client(ec.cluster.endpoints, timeout=30.0, user=user, password=password) as c:
        return c.authenticate()


def _status(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_token_metadata_names_the_user(ec: EtcdCluster) -> None:
    kv = KV(ec.address("n1"))
    try:
        pb = kv.pb
        reader = (("token", _token(ec, "reader", PW)),)
        got = kv.stub.Range(pb.RangeRequest(key=b"app/x"), metadata=reader, timeout=10)
        assert got.kvs[0].value == b"1"
        assert _status(lambda: kv.stub.Put(pb.PutRequest(key=b"app/x", value=b"2"),
                                           metadata=reader, timeout=10)) == (
            grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
        assert _status(lambda: kv.stub.Range(pb.RangeRequest(key=b"other"),
                                             metadata=reader, timeout=10)) == (
            grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
        assert _status(lambda: kv.range(b"app/x")) == (
            grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty")
        assert _status(lambda: kv.stub.Range(pb.RangeRequest(key=b"app/x"),
                                             metadata=(("token", "qkv1.forged"),),
                                             timeout=10)) == (
            grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")
    finally:
        kv.close()


def test_a_follower_sends_the_users_write_on_with_the_token(ec: EtcdCluster) -> None:
    leader = ec.cluster.leader_name()
    follower = next(name for name in sorted(ec.ports) if name != leader)
    root = (("token", _token(ec, "root", ROOT_PW)),)
    kv = KV(ec.address(follower))
    try:
        pb = kv.pb
        kv.stub.Put(pb.PutRequest(key=b"app/y", value=b"by-root"), metadata=root, timeout=10)
        got = kv.stub.Range(pb.RangeRequest(key=b"app/y"), metadata=root, timeout=10)
        assert got.kvs[0].value == b"by-root"
    finally:
        kv.close()
