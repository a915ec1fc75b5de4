"""Quorum reads from the leader's lease (``lease_reads``), on three real nodes.

That leased reads are linearizable is shown where time is under the test's
control: the simulator runs half its seeds with the lease on, and
tests/unit/raft/test_read_lease.py scripts a stalled leader whose lease
must have run out. Here: the setting reaches the core, the leader holds a
lease while its followers answer, reads on every member see every
acknowledged write, and a cluster without the setting never leases.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from in_process import in_process_cluster, leader_of

from quorumkv.client.results_wire import range_result_from_wire
from quorumkv.kv.commands import Put, RangeRequest
from quorumkv.server.node import Node

pytestmark = pytest.mark.timeout(120)


async def quorum_get(node: Node, key: bytes) -> bytes | None:
    body = await node.range(RangeRequest(key=key), consistency="quorum", min_revision=0)
    result, _ = range_result_from_wire(body)
    return result.kvs[0].value if result.kvs else None


@pytest.mark.parametrize("lease", [True, False])
def test_quorum_reads_with_and_without_the_lease(tmp_path: Path, lease: bool) -> None:
    async def main() -> None:
        async with in_process_cluster(tmp_path, lease_reads=lease) as nodes:
            leader = await leader_of(nodes)
            assert leader.group is not None
            raft = leader.group.raft
            assert raft.config.lease_ticks == (leader.config.lease_ticks if lease else 0)
            for i in range(20):
                await leader.write(Put(key=b"k", value=b"v%d" % i), consistency="quorum",
                                   client_id=0, seq=0)
                # Every member, read at quorum, sees the write just acknowledged.
                for n in nodes:
                    assert await quorum_get(n, b"k") == b"v%d" % i
            deadline = time.monotonic() + 10
            while raft.lease.valid(raft) != lease:
                assert time.monotonic() < deadline, f"lease held: {not lease}"
                await asyncio.sleep(0.05)

    asyncio.run(main())
