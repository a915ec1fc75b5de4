"""The etcd API's pure parts: quorumkv's errors as etcd's statuses, and Range's conversion
(key ranges, sorting, filters, limits) on result maps as the node returns them."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest

from quorumkv import errors as qe
from quorumkv.etcd import errors as ee
from quorumkv.etcd.generated import etcd_proto
from quorumkv.etcd.kv_convert import RangePlan, compare, key_range, txn_op
from quorumkv.kv.commands import CompareOp, CompareTarget

Code = grpc.StatusCode


@pytest.mark.parametrize(("err", "expected"), [
    (qe.Compacted(compact_revision=5), ee.COMPACTED),
    (qe.InvalidArgument("future revision 9 (current revision 3)"), ee.FUTURE_REV),
    (qe.InvalidArgument("duplicate key given in txn request"), ee.DUPLICATE_KEY),
    (qe.LeaseNotFound("lease 7 not found"), ee.LEASE_NOT_FOUND),
    (qe.KeyTooLarge("big"), ee.REQUEST_TOO_LARGE),
    (qe.Unauthenticated("sign in"), ee.USER_EMPTY),
    (qe.InvalidToken("expired"), ee.INVALID_AUTH_TOKEN),
    (qe.PermissionDenied("no"), ee.PERMISSION_DENIED),
    (qe.InvalidCredentials("no"), ee.AUTH_FAILED),
    (qe.AlreadyExists("role r exists", role="r"), ee.ROLE_ALREADY_EXIST),
    (qe.AlreadyExists("user u exists", user="u"), ee.USER_ALREADY_EXIST),
    (qe.NotLeader(leader=None), ee.NO_LEADER),
    (qe.QuorumNotReached("slow"), ee.TIMEOUT),
    (qe.Timeout("lost", outcome="unknown"), ee.TIMEOUT),
    (qe.ProposalDropped("dropped"), ee.LEADER_CHANGED),
    (qe.RateLimited(retry_after_s=1.0), ee.TOO_MANY_REQUESTS),
    (qe.InconsistentData("differ"), ee.CORRUPT),
    (ee.EtcdError(ee.EMPTY_KEY), ee.EMPTY_KEY),
])
def test_errors_become_etcds_statuses(err: Exception, expected: ee.RpcError) -> None:
    assert ee.status_of(err) == expected


def test_errors_without_an_etcd_twin_keep_their_message() -> None:
    assert ee.status_of(qe.InvalidArgument("limit must be an integer")) == ee.RpcError(
        Code.INVALID_ARGUMENT, "limit must be an integer")
    assert ee.status_of(qe.NotBuiltYet("later")).code == Code.UNIMPLEMENTED


def test_every_quorumkv_error_has_a_status() -> None:
    for cls in qe.ERRORS_BY_CODE.values():
        err = cls.__new__(cls)
        qe.QuorumKVError.__init__(err, "m")
        status = ee.status_of(err)
        assert status.message and status.code != Code.OK


def test_a_bug_is_unknown_with_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        status = ee.status_of(KeyError("secret detail"))
    assert status == ee.INTERNAL and "secret" not in status.message
    assert "KeyError" in caplog.text  # logged for the operator, with its traceback


def _req(**kw: Any) -> Any:
    return etcd_proto().rpc_pb2.RangeRequest(**kw)


def _kv(key: bytes, value: bytes, create: int, mod: int, version: int) -> dict[str, Any]:
    return {"key": key, "value": value, "create_revision": create, "mod_revision": mod,
            "version": version, "lease": 0}


KVS = [_kv(b"a", b"3", 2, 9, 4), _kv(b"b", b"1", 5, 5, 1), _kv(b"c", b"2", 3, 7, 2)]


def test_key_ranges_as_etcd_reads_them() -> None:
    assert key_range(b"k", b"") == (b"k", None)
    assert key_range(b"k", b"\0") == (b"k", b"\0")
    assert key_range(b"a", b"b") == (b"a", b"b")
    assert key_range(b"b", b"a") == (b"b", b"b")  # empty, not an error
    with pytest.raises(ee.EtcdError) as info:
        key_range(b"", b"")
    assert info.value.error == ee.EMPTY_KEY


def test_plain_range_passes_limit_and_flags_to_the_store() -> None:
    plan = RangePlan.of(_req(key=b"a", range_end=b"z", limit=2, revision=-3, keys_only=True))
    assert not plan.fetch_all
    assert (plan.request.limit, plan.request.revision, plan.request.keys_only) == (2, 0, True)
    kvs, more = plan.kvs({"kvs": KVS[:2], "more": True, "count": 3})
    assert [k.key for k in kvs] == [b"a", b"b"] and more
    assert [k.value for k in kvs] == [b"", b""]


@pytest.mark.parametrize(("target", "order", "keys"), [
    ("VALUE", "ASCEND", [b"b", b"c", b"a"]),
    ("VALUE", "DESCEND", [b"a", b"c", b"b"]),
    ("VERSION", "NONE", [b"b", b"c", b"a"]),  # a target alone sorts ascending
    ("CREATE", "DESCEND", [b"b", b"c", b"a"]),
    ("MOD", "ASCEND", [b"b", b"c", b"a"]),
    ("KEY", "DESCEND", [b"c", b"b", b"a"]),
    ("KEY", "ASCEND", [b"a", b"b", b"c"]),
])
def test_sorting(target: str, order: str, keys: list[bytes]) -> None:
    pb = etcd_proto().rpc_pb2.RangeRequest
    plan = RangePlan.of(_req(key=b"a", range_end=b"z", sort_target=getattr(pb, target),
                             sort_order=getattr(pb, order), keys_only=True))
    if plan.fetch_all and target == "VALUE":
        assert not plan.request.keys_only  # the values are needed to sort by them
    kvs, _ = plan.kvs({"kvs": KVS, "more": False, "count": 3})
    assert [k.key for k in kvs] == keys
    assert all(k.value == b"" for k in kvs)


def test_sorted_range_fetches_all_then_cuts_to_the_limit() -> None:
    pb = etcd_proto().rpc_pb2.RangeRequest
    plan = RangePlan.of(_req(key=b"a", range_end=b"z", limit=2, sort_target=pb.VALUE))
    assert plan.request.limit == 0
    response = plan.response({"kvs": KVS, "more": False, "count": 3}, None)
    assert [k.value for k in response.kvs] == [b"1", b"2"]
    assert response.more and response.count == 3


def test_revision_filters() -> None:
    plan = RangePlan.of(_req(key=b"a", range_end=b"z", min_mod_revision=6,
                             max_create_revision=3))
    kvs, more = plan.kvs({"kvs": KVS, "more": False, "count": 3})
    assert [k.key for k in kvs] == [b"a", b"c"] and not more


def test_compare_takes_the_value_its_target_names() -> None:
    pb = etcd_proto().rpc_pb2
    c = compare(pb.Compare(key=b"k", target=pb.Compare.MOD, result=pb.Compare.LESS,
                           mod_revision=4))
    assert (c.target, c.op, c.value, c.range_end) == (CompareTarget.MOD_REVISION,
                                                      CompareOp.LESS, 4, None)
    c = compare(pb.Compare(key=b"k", range_end=b"\0", target=pb.Compare.VALUE, value=b"v"))
    assert (c.target, c.value, c.range_end) == (CompareTarget.VALUE, b"v", b"\0")
    with pytest.raises(qe.InvalidArgument):
        compare(pb.Compare(key=b"k", target=42))


def test_nested_txn_is_refused() -> None:
    pb = etcd_proto().rpc_pb2
    with pytest.raises(ee.EtcdError) as info:
        txn_op(pb.RequestOp(request_txn=pb.TxnRequest()))
    assert info.value.error.code == Code.UNIMPLEMENTED
