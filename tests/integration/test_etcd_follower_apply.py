"""A member that sends an etcd write on to the leader answers once it applied the write
itself, as etcd's member does: a serializable read there then sees the caller's write.

Three real nodes in this process (in_process.py), the etcd port on each; the
follower's applies are made slow (0.3 s each, in its apply thread), so that
an answer relayed as soon as the leader applied would come before the
follower has the write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from in_process import in_process_cluster, leader_of

from quorumkv.etcd.generated import etcd_proto

pytestmark = pytest.mark.timeout(120)

SLOW_APPLY_S = 0.3


def test_a_serializable_read_on_the_follower_sees_the_write_it_took(tmp_path: Path) -> None:
    async def main() -> None:
        async with in_process_cluster(tmp_path, etcd_port=0) as nodes:
            leader = await leader_of(nodes)
            follower = next(n for n in nodes if n is not leader)
            kv = follower.kv
            assert kv is not None and follower.etcd_server is not None
            real = kv.apply_batch

            def slow_apply(batch: Sequence[tuple[int, int, Any]]) -> Any:
                time.sleep(SLOW_APPLY_S)
                return real(batch)

            kv.apply_batch = slow_apply  # type: ignore[method-assign]
            pb = etcd_proto()
            async with grpc.aio.insecure_channel(follower.etcd_server.address) as channel:
                stub = pb.rpc_pb2_grpc.KVStub(channel)
                for i in range(3):
                    value = b"v%d" % i
                    put = await stub.Put(pb.rpc_pb2.PutRequest(key=b"ryw", value=value),
                                         timeout=30)
                    got = await stub.Range(pb.rpc_pb2.RangeRequest(key=b"ryw",
                                                                   serializable=True),
                                           timeout=30)
                    assert [x.value for x in got.kvs] == [value], i
                    assert got.header.revision >= put.header.revision

    asyncio.run(main())
