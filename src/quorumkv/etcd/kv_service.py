"""etcd's KV service (``/etcdserverpb.KV/*``): Range, Put, DeleteRange, Txn, Compact.

Each call becomes the quorumkv command or read it stands for (kv_convert.py)
and runs through the node as on the other ports. Reads: ``serializable``
is quorumkv's ``one`` level (this member's state, at once), anything else
``quorum`` (a linearizable ReadIndex read, served by any member). Writes go
to the leader (calls.py ``submit_write``), always at ``quorum``: etcd
answers a write once it is committed and applied.

Put's ``ignore_value`` and ``ignore_lease`` keep the key's current value or
lease. quorumkv's Put has no such flags, so the handler reads the key and
writes a Txn that puts the kept parts back only if the key's mod revision is
still the one read, reading again if another write came in between; a
missing key is etcd's "key not found".
"""

from __future__ import annotations

from typing import Any, Final

from quorumkv.etcd import errors as ee
from quorumkv.etcd.calls import READ, WRITE, EtcdService, submit_write, unary
from quorumkv.etcd.generated import etcd_proto
from quorumkv.etcd.header import response_header
from quorumkv.etcd.identity import Caller, caller_of, check_read, check_write
from quorumkv.etcd.kv_convert import (
    RangePlan,
    compare,
    delete_command,
    delete_response,
    put_command,
    put_response,
    response_op,
    txn_op,
)

# As a module: the handlers carry etcd's names (Put, Txn, Compact), which are also commands'.
from quorumkv.kv import commands as kvc
from quorumkv.kv.validation import check_key_size, check_range_request

KEEP_ATTEMPTS: Final = 10
"""Reads and conditional writes an ignore_value / ignore_lease put tries before it gives up
(each lost to another write of the same key in between)."""


class KVService(EtcdService):
    """The handlers of etcd's KV service for one node."""

    def register(self, server: Any) -> None:
        etcd_proto().rpc_pb2_grpc.add_KVServicer_to_server(self, server)

    @unary(READ)
    async def Range(self, request: Any, context: Any) -> Any:  # noqa: N802 (etcd's name)
        node = self.node
        caller = caller_of(node, context)
        plan = RangePlan.of(request)
        check_key_size(plan.request.key, plan.request.range_end, node.limits)
        check_range_request(plan.request)
        check_read(node, caller, plan.request.key, plan.request.range_end)
        consistency = "one" if request.serializable else "quorum"
        result = await node.range(plan.request, consistency=consistency, min_revision=0)
        return plan.response(result, response_header(node, result))

    @unary(WRITE)
    async def Put(self, request: Any, context: Any) -> Any:  # noqa: N802
        node = self.node
        caller = caller_of(node, context)
        if request.ignore_value and request.value:
            raise ee.EtcdError(ee.VALUE_PROVIDED)
        if request.ignore_lease and request.lease:
            raise ee.EtcdError(ee.LEASE_PROVIDED)
        cmd = put_command(request)
        if request.ignore_value or request.ignore_lease:
            result = await self._put_keeping(caller, cmd, keep_value=request.ignore_value,
                                             keep_lease=request.ignore_lease)
        else:
            result = await submit_write(node, caller, cmd)
        return put_response(result, response_header(node, result))

    async def _put_keeping(self, caller: Caller, cmd: kvc.Put, *, keep_value: bool,
                           keep_lease: bool) -> dict[str, Any]:
        node = self.node
        # The caller must be allowed the put itself; the Txn below is our means to it.
        check_write(node, caller, cmd)
        for _ in range(KEEP_ATTEMPTS):
            current = await node.range(kvc.RangeRequest(key=cmd.key), consistency="quorum",
                                       min_revision=0)
            if not current["kvs"]:
                raise ee.EtcdError(ee.KEY_NOT_FOUND)
            kv = current["kvs"][0]
            put = kvc.Put(key=cmd.key, value=kv["value"] if keep_value else cmd.value,
                      lease=kv["lease"] if keep_lease else cmd.lease, prev_kv=cmd.prev_kv)
            unchanged = kvc.Compare(key=cmd.key, target=kvc.CompareTarget.MOD_REVISION,
                                    op=kvc.CompareOp.EQUAL, value=kv["mod_revision"])
            txn = kvc.Txn(compares=(unchanged,), success=(put,))
            result = await submit_write(node, caller, txn)
            if result["succeeded"]:
                return {**result["responses"][0], "header": result["header"]}
        raise ee.EtcdError(ee.TIMEOUT)

    @unary(WRITE)
    async def DeleteRange(self, request: Any, context: Any) -> Any:  # noqa: N802
        node = self.node
        caller = caller_of(node, context)
        result = await submit_write(node, caller, delete_command(request))
        return delete_response(result, response_header(node, result))

    @unary(WRITE)
    async def Txn(self, request: Any, context: Any) -> Any:  # noqa: N802
        node = self.node
        caller = caller_of(node, context)
        limit = node.limits.max_txn_ops
        if max(len(request.compare), len(request.success), len(request.failure)) > limit:
            raise ee.EtcdError(ee.TOO_MANY_OPS)
        success = [txn_op(op) for op in request.success]
        failure = [txn_op(op) for op in request.failure]
        txn = kvc.Txn(compares=tuple(compare(c) for c in request.compare),
                  success=tuple(op for op, _ in success),
                  failure=tuple(op for op, _ in failure))
        result = await submit_write(node, caller, txn)
        header = response_header(node, result)
        plans = [plan for _, plan in (success if result["succeeded"] else failure)]
        return etcd_proto().rpc_pb2.TxnResponse(
            header=header, succeeded=result["succeeded"],
            responses=[response_op(r, plan, header)
                       for r, plan in zip(result["responses"], plans, strict=True)])

    @unary(WRITE)
    async def Compact(self, request: Any, context: Any) -> Any:  # noqa: N802
        # ``physical`` asks etcd to wait until the compaction is on disk; quorumkv's
        # is part of applying the entry, so every answer is already "physical".
        node = self.node
        caller = caller_of(node, context)
        cmd = kvc.Compact(revision=max(0, request.revision))
        result = await submit_write(node, caller, cmd)
        return etcd_proto().rpc_pb2.CompactionResponse(header=response_header(node, result))
