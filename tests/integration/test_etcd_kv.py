"""etcd's KV service on a real 3-member cluster, through etcd's own gRPC stubs.

Every answer carries a filled ResponseHeader; errors carry etcd's status codes
and texts; a write sent to a follower lands (sent on to the leader).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from etcd_support import KV, EtcdCluster, etcd_cluster

from quorumkv.etcd.generated import etcd_proto


@pytest.fixture(scope="module")
def ec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with etcd_cluster(Path(tmp_path_factory.mktemp("etcd-kv"))) as c:
        yield c


@pytest.fixture
def kvs(ec: EtcdCluster) -> Iterator[dict[str, KV]]:
    clients = {name: KV(ec.address(name)) for name in sorted(ec.ports)}
    yield clients
    for c in clients.values():
        c.close()


def _leader_and_follower(ec: EtcdCluster) -> tuple[str, str]:
    leader = ec.cluster.leader_name()
    follower = next(name for name in sorted(ec.ports) if name != leader)
    return leader, follower


def _error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_headers_are_filled_and_name_each_member(ec: EtcdCluster,
                                                 kvs: dict[str, KV]) -> None:
    put = kvs["n1"].put(b"hdr/a", b"1")
    assert put.header.revision >= 1 and put.header.raft_term >= 1
    assert put.header.cluster_id != 0 and put.header.member_id != 0
    headers = {name: kv.range(b"hdr/a").header for name, kv in kvs.items()}
    assert len({h.member_id for h in headers.values()}) == 3
    assert {h.cluster_id for h in headers.values()} == {put.header.cluster_id}
    assert all(h.revision >= put.header.revision and h.raft_term >= 1
               for h in headers.values())


def test_put_on_a_follower_lands(ec: EtcdCluster, kvs: dict[str, KV]) -> None:
    leader, follower = _leader_and_follower(ec)
    put = kvs[follower].put(b"fwd/k", b"via-follower")
    assert put.header.member_id != kvs[leader].range(b"fwd/k").header.member_id
    got = kvs[leader].range(b"fwd/k")
    assert [(kv.key, kv.value) for kv in got.kvs] == [(b"fwd/k", b"via-follower")]
    assert got.kvs[0].mod_revision == put.header.revision
    deleted = kvs[follower].delete(b"fwd/k", prev_kv=True)
    assert deleted.deleted == 1 and deleted.prev_kvs[0].value == b"via-follower"


def test_get_prefix_revision_serializable(kvs: dict[str, KV]) -> None:
    kv = kvs["n2"]
    first = kv.put(b"pre/a", b"1")
    kv.put(b"pre/b", b"2")
    kv.put(b"pre/a", b"3", prev_kv=True)
    kv.put(b"prf", b"outside")
    got = kv.range(b"pre/", range_end=b"pre0")
    assert [(k.key, k.value, k.version) for k in got.kvs] == [(b"pre/a", b"3", 2),
                                                              (b"pre/b", b"2", 1)]
    assert got.count == 2 and not got.more
    old = kv.range(b"pre/a", revision=first.header.revision)
    assert old.kvs[0].value == b"1" and old.kvs[0].create_revision == first.header.revision
    limited = kv.range(b"pre/", range_end=b"pre0", limit=1)
    assert limited.more and limited.count == 2 and len(limited.kvs) == 1
    # Serializable: this member's own state. Read until it has applied the put.
    local = kvs["n3"].range(b"pre/", range_end=b"pre0", serializable=True)
    assert local.header.member_id != got.header.member_id
    keys_only = kv.range(b"pre/", range_end=b"pre0", keys_only=True)
    assert [k.value for k in keys_only.kvs] == [b"", b""]
    assert kv.range(b"pre/", range_end=b"pre0", count_only=True).count == 2
    everything = kv.range(b"\0", range_end=b"\0", count_only=True)
    assert everything.count >= 3
    # A range_end before the key is an empty range to etcd, not an error.
    assert kv.range(b"pre/b", range_end=b"pre/a").count == 0


def test_sorting_and_revision_filters(kvs: dict[str, KV]) -> None:
    kv = kvs["n1"]
    pb = etcd_proto().rpc_pb2
    revs = [kv.put(key, value).header.revision
            for key, value in ((b"srt/a", b"z"), (b"srt/b", b"x"), (b"srt/c", b"y"))]
    by_value = kv.range(b"srt/", range_end=b"srt0", sort_target=pb.RangeRequest.VALUE,
                        sort_order=pb.RangeRequest.DESCEND, limit=2)
    assert [k.value for k in by_value.kvs] == [b"z", b"y"]
    assert by_value.more and by_value.count == 3
    by_mod = kv.range(b"srt/", range_end=b"srt0", sort_target=pb.RangeRequest.MOD,
                      keys_only=True)  # a target alone sorts ascending
    assert [k.key for k in by_mod.kvs] == [b"srt/a", b"srt/b", b"srt/c"]
    by_key_desc = kv.range(b"srt/", range_end=b"srt0", sort_order=pb.RangeRequest.DESCEND)
    assert [k.key for k in by_key_desc.kvs] == [b"srt/c", b"srt/b", b"srt/a"]
    recent = kv.range(b"srt/", range_end=b"srt0", min_mod_revision=revs[1])
    assert [k.key for k in recent.kvs] == [b"srt/b", b"srt/c"]
    early = kv.range(b"srt/", range_end=b"srt0", max_create_revision=revs[0])
    assert [k.key for k in early.kvs] == [b"srt/a"]


def test_delete_single_and_prefix(kvs: dict[str, KV]) -> None:
    kv = kvs["n3"]
    for key in (b"del/a", b"del/b", b"del/c"):
        kv.put(key, b"v")
    assert kv.delete(b"del/a").deleted == 1
    assert kv.delete(b"del/a").deleted == 0
    gone = kv.delete(b"del/", range_end=b"del0", prev_kv=True)
    assert gone.deleted == 2 and sorted(k.key for k in gone.prev_kvs) == [b"del/b", b"del/c"]
    assert kv.range(b"del/", range_end=b"del0").count == 0


def test_txn_compares_and_branches(kvs: dict[str, KV]) -> None:
    kv = kvs["n2"]
    pb = etcd_proto().rpc_pb2
    created = kv.put(b"txn/k", b"v1")
    cmp = pb.Compare(key=b"txn/k", target=pb.Compare.VALUE, result=pb.Compare.EQUAL,
                     value=b"v1")
    done = kv.txn(compare=[cmp],
                  success=[pb.RequestOp(request_put=pb.PutRequest(key=b"txn/k", value=b"v2",
                                                                   prev_kv=True)),
                           pb.RequestOp(request_range=pb.RangeRequest(key=b"txn/k"))],
                  failure=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(
                      key=b"txn/k"))])
    assert done.succeeded
    put, read = done.responses
    assert put.response_put.prev_kv.value == b"v1"
    assert read.response_range.kvs[0].value == b"v2"
    assert done.header.revision == created.header.revision + 1
    # The same compare fails now; the failure branch runs.
    mod = pb.Compare(key=b"txn/k", target=pb.Compare.MOD, result=pb.Compare.LESS,
                     mod_revision=created.header.revision)
    version = pb.Compare(key=b"txn/k", target=pb.Compare.VERSION, result=pb.Compare.GREATER,
                         version=1)
    failed = kv.txn(compare=[cmp, version], success=[],
                    failure=[pb.RequestOp(request_range=pb.RangeRequest(key=b"txn/k"))])
    assert not failed.succeeded
    assert failed.responses[0].response_range.kvs[0].version == 2
    assert not kv.txn(compare=[mod]).succeeded
    # A compare over a range: every key in it must match.
    kv.put(b"txn/l", b"v2")
    over = pb.Compare(key=b"txn/", range_end=b"txn0", target=pb.Compare.VALUE,
                      result=pb.Compare.EQUAL, value=b"v2")
    assert kv.txn(compare=[over]).succeeded
    lease = pb.Compare(key=b"txn/k", target=pb.Compare.LEASE, result=pb.Compare.NOT_EQUAL,
                       lease=0)
    assert not kv.txn(compare=[lease]).succeeded


def test_put_ignore_value_keeps_the_value(kvs: dict[str, KV]) -> None:
    kv = kvs["n1"]
    kv.put(b"ign/k", b"kept")
    kept = kv.put(b"ign/k", b"", ignore_value=True, prev_kv=True)
    assert kept.prev_kv.value == b"kept"
    got = kv.range(b"ign/k").kvs[0]
    assert got.value == b"kept" and got.version == 2
    missing = _error(lambda: kv.put(b"ign/missing", b"", ignore_value=True))
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert missing.details() == "etcdserver: key not found"
    provided = _error(lambda: kv.put(b"ign/k", b"x", ignore_value=True))
    assert provided.details() == "etcdserver: value is provided"


def test_compaction_and_etcds_errors(kvs: dict[str, KV]) -> None:
    kv = kvs["n3"]
    first = kv.put(b"cmp/k", b"1").header.revision
    second = kv.put(b"cmp/k", b"2").header.revision
    compacted = kv.compact(second)
    assert compacted.header.revision >= second
    err = _error(lambda: kv.range(b"cmp/k", revision=first))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
    err = _error(lambda: kv.compact(first))
    assert err.details() == "etcdserver: mvcc: required revision has been compacted"
    future = compacted.header.revision + 1000
    err = _error(lambda: kv.range(b"cmp/k", revision=future))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
    err = _error(lambda: kv.compact(future))
    assert err.details() == "etcdserver: mvcc: required revision is a future revision"
    for call in (lambda: kv.put(b"", b"v"), lambda: kv.range(b""), lambda: kv.delete(b"")):
        err = _error(call)
        assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               "etcdserver: key is not provided")


def test_txn_errors_are_etcds(kvs: dict[str, KV]) -> None:
    kv = kvs["n2"]
    pb = etcd_proto().rpc_pb2
    put = pb.RequestOp(request_put=pb.PutRequest(key=b"dup/k", value=b"v"))
    err = _error(lambda: kv.txn(success=[put, put]))
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                           "etcdserver: duplicate key given in txn request")
    many = [pb.RequestOp(request_put=pb.PutRequest(key=b"many/%d" % i, value=b"v"))
            for i in range(129)]
    err = _error(lambda: kv.txn(success=many))
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                           "etcdserver: too many operations in txn request")
    nested = pb.RequestOp(request_txn=pb.TxnRequest())
    assert _error(lambda: kv.txn(success=[nested])).code() == grpc.StatusCode.UNIMPLEMENTED
    err = _error(lambda: kv.put(b"lease/k", b"v", lease=12345))
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND,
                                           "etcdserver: requested lease not found")
