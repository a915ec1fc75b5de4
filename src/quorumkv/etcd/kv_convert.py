"""etcd's KV messages as quorumkv's commands, and quorumkv's results as etcd's answers.

Keys and ranges: an empty ``range_end`` means the key alone, ``"\\0"`` every
key from ``key`` on, anything else ``[key, range_end)``; quorumkv reads them
the same way (kv/commands.py). A ``range_end`` that sorts before ``key`` is
an empty range to etcd, which answers with nothing; quorumkv refuses it, so
it becomes the empty interval ``[key, key)``.

What quorumkv's store does not do for a read, the answer's conversion does
(:class:`RangePlan`): etcd's sorting (by key, version, create or mod revision
or value, either way) and its min/max mod and create revision filters. As in
etcd, a sorted or filtered read fetches the whole range, then sorts,
filters and cuts it to ``limit``; ``count`` stays the range's whole count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quorumkv.errors import InvalidArgument
from quorumkv.etcd import errors as ee
from quorumkv.etcd.generated import etcd_proto
from quorumkv.kv.commands import (
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    Put,
    RangeRequest,
    TxnOp,
)
from quorumkv.kv.keys import ALL_KEYS

# etcd's RangeRequest.SortOrder and SortTarget, Compare.CompareTarget (rpc.proto).
SORT_NONE, SORT_ASCEND, SORT_DESCEND = 0, 1, 2
TARGET_KEY, TARGET_VERSION, TARGET_CREATE, TARGET_MOD, TARGET_VALUE = 0, 1, 2, 3, 4

_SORT_KEYS: dict[int, Callable[[Mapping[str, Any]], Any]] = {
    TARGET_KEY: lambda kv: kv["key"],
    TARGET_VERSION: lambda kv: kv["version"],
    TARGET_CREATE: lambda kv: kv["create_revision"],
    TARGET_MOD: lambda kv: kv["mod_revision"],
    TARGET_VALUE: lambda kv: kv["value"],
}


def key_range(key: bytes, range_end: bytes) -> tuple[bytes, bytes | None]:
    """etcd's (key, range_end) as quorumkv's; EtcdError for an empty key."""
    if not key:
        raise ee.EtcdError(ee.EMPTY_KEY)
    if not range_end:
        return key, None
    if range_end != ALL_KEYS and range_end < key:
        return key, key  # empty, as etcd reads it
    return key, range_end


def kv_message(kv: Mapping[str, Any], *, keys_only: bool = False) -> Any:
    """A key-value of a result map as etcd's mvccpb.KeyValue."""
    return etcd_proto().kv_pb2.KeyValue(
        key=kv["key"], value=b"" if keys_only else kv["value"],
        create_revision=kv["create_revision"], mod_revision=kv["mod_revision"],
        version=kv["version"], lease=kv.get("lease", 0))


@dataclass(frozen=True, slots=True)
class RangePlan:
    """How an etcd RangeRequest is read from quorumkv, and its answer made from the result."""

    request: RangeRequest
    limit: int
    keys_only: bool
    sort_order: int
    sort_target: int
    filters: tuple[tuple[str, int, int], ...]
    """(field, low, high): keep a key-value whose field is within [low, high] (0: open)."""

    @property
    def fetch_all(self) -> bool:
        return self.sort_order != SORT_NONE or bool(self.filters)

    @classmethod
    def of(cls, r: Any) -> RangePlan:
        key, end = key_range(r.key, r.range_end)
        order, target = r.sort_order, r.sort_target
        # etcd: a target other than the key sorts ascending unless told otherwise, and
        # ascending by key is the order the store answers in anyway.
        if target != TARGET_KEY and order == SORT_NONE:
            order = SORT_ASCEND
        if target == TARGET_KEY and order == SORT_ASCEND:
            order = SORT_NONE
        filters = tuple((name, low, high) for name, low, high in (
            ("mod_revision", r.min_mod_revision, r.max_mod_revision),
            ("create_revision", r.min_create_revision, r.max_create_revision))
            if low > 0 or high > 0)
        limit = max(0, r.limit)
        fetch_all = order != SORT_NONE or bool(filters)
        request = RangeRequest(
            key=key, range_end=end, limit=0 if fetch_all else limit,
            revision=max(0, r.revision), count_only=r.count_only,
            # Sorting by value needs the values, even if only the keys are answered.
            keys_only=r.keys_only and not (fetch_all and target == TARGET_VALUE))
        return cls(request=request, limit=limit, keys_only=r.keys_only, sort_order=order,
                   sort_target=target, filters=filters)

    def kvs(self, result: Mapping[str, Any]) -> tuple[list[Any], bool]:
        """The answer's key-values (etcd's order, filters and limit) and its ``more``."""
        kvs: Sequence[Mapping[str, Any]] = result["kvs"]
        more = bool(result["more"])
        if self.fetch_all:
            kept = [kv for kv in kvs if all(
                (low <= 0 or kv[name] >= low) and (high <= 0 or kv[name] <= high)
                for name, low, high in self.filters)]
            if self.sort_order != SORT_NONE:
                kept.sort(key=_SORT_KEYS.get(self.sort_target, _SORT_KEYS[TARGET_KEY]),
                          reverse=self.sort_order == SORT_DESCEND)
            more = bool(self.limit) and len(kept) > self.limit
            kvs = kept[:self.limit] if more else kept
        return [kv_message(kv, keys_only=self.keys_only) for kv in kvs], more

    def response(self, result: Mapping[str, Any], header: Any) -> Any:
        kvs, more = self.kvs(result)
        return etcd_proto().rpc_pb2.RangeResponse(header=header, kvs=kvs, more=more,
                                                   count=result["count"])


def put_command(r: Any) -> Put:
    """A plain PutRequest (without ignore_value or ignore_lease)."""
    if not r.key:
        raise ee.EtcdError(ee.EMPTY_KEY)
    if r.lease < 0:
        raise ee.EtcdError(ee.LEASE_NOT_FOUND)
    return Put(key=r.key, value=r.value, lease=r.lease, prev_kv=r.prev_kv)


def delete_command(r: Any) -> DeleteRange:
    key, end = key_range(r.key, r.range_end)
    return DeleteRange(key=key, range_end=end, prev_kv=r.prev_kv)


def compare(c: Any) -> Compare:
    """etcd's Compare: its target picks which of the oneof's values is compared."""
    key, end = key_range(c.key, c.range_end)
    try:
        target, op = CompareTarget(c.target), CompareOp(c.result)
    except ValueError:
        raise InvalidArgument(f"unknown compare target {c.target} or result {c.result}"
                              ) from None
    value: bytes | int = {
        CompareTarget.VERSION: c.version, CompareTarget.CREATE_REVISION: c.create_revision,
        CompareTarget.MOD_REVISION: c.mod_revision, CompareTarget.VALUE: c.value,
        CompareTarget.LEASE: c.lease}[target]
    return Compare(key=key, target=target, op=op, value=value, range_end=end)


def txn_op(op: Any) -> tuple[TxnOp, RangePlan | None]:
    """A RequestOp as a quorumkv txn op (and, for a read, how to answer it)."""
    kind = op.WhichOneof("request")
    if kind == "request_range":
        plan = RangePlan.of(op.request_range)
        return plan.request, plan
    if kind == "request_put":
        r = op.request_put
        if r.ignore_value or r.ignore_lease:
            # etcd resolves them inside its apply; quorumkv's Txn has no such op.
            raise ee.EtcdError(ee.RpcError(
                ee.Code.UNIMPLEMENTED,
                "quorumkv: ignore_value and ignore_lease are not supported inside a txn"))
        return put_command(r), None
    if kind == "request_delete_range":
        return delete_command(op.request_delete_range), None
    if kind == "request_txn":
        raise ee.EtcdError(ee.NESTED_TXN)
    raise ee.EtcdError(ee.RpcError(ee.Code.INVALID_ARGUMENT, "etcdserver: empty request op"))


def response_op(result: Mapping[str, Any], plan: RangePlan | None, header: Any) -> Any:
    """One op's result map (inside a txn's result) as etcd's ResponseOp."""
    pb = etcd_proto().rpc_pb2
    kind = result["type"]
    if kind == "range":
        assert plan is not None
        return pb.ResponseOp(response_range=plan.response(result, header))
    if kind == "put":
        return pb.ResponseOp(response_put=put_response(result, header))
    if kind == "delete":
        return pb.ResponseOp(response_delete_range=delete_response(result, header))
    raise TypeError(f"not a txn op's result: {kind!r}")


def put_response(result: Mapping[str, Any], header: Any) -> Any:
    prev = result.get("prev_kv")
    pb = etcd_proto().rpc_pb2
    if prev is None:
        return pb.PutResponse(header=header)
    return pb.PutResponse(header=header, prev_kv=kv_message(prev))


def delete_response(result: Mapping[str, Any], header: Any) -> Any:
    return etcd_proto().rpc_pb2.DeleteRangeResponse(
        header=header, deleted=result["deleted"],
        prev_kvs=[kv_message(kv) for kv in result.get("prev_kvs") or ()])
