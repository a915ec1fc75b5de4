"""A slow apply on the leader holds up neither its heartbeats nor its writes' answers.

Applying ends with LMDB's fdatasync, which on a large store or a busy disk
can take seconds. Three real nodes run in this process, on real sockets and
disks; the leader's store is made to take 3 s over one apply (a wait in the
apply thread, as a slow fsync would). The leader must keep its followers
quiet meanwhile (no election: the term stays), and a write that committed
must be answered with its result, not "timed out", though its apply
outlasts the request timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from in_process import in_process_cluster, leader_of

from quorumkv.client.results_wire import write_result_from_wire
from quorumkv.kv.commands import Put
from quorumkv.kv.results import PutResult
from quorumkv.server.node import Node

pytestmark = pytest.mark.timeout(120)

SLOW_KEY = b"slow"
SLOW_APPLY_S = 3.0
"""Longer than any follower waits for a heartbeat before it campaigns (10 to 20 ticks
of 100 ms), and three times the request timeout."""
REQUEST_TIMEOUT_S = 1.0


def cluster(tmp_path: Path) -> AbstractAsyncContextManager[list[Node]]:
    return in_process_cluster(tmp_path, request_timeout_s=REQUEST_TIMEOUT_S)


def slow_down_one_apply(node: Node, entered: threading.Event) -> None:
    """The next apply of a put of SLOW_KEY, on ``node`` only, takes SLOW_APPLY_S longer."""
    kv = node.kv
    assert kv is not None
    real = kv.apply_batch

    def apply_batch(batch: Sequence[tuple[int, int, Any]]) -> Any:
        if any(repr(SLOW_KEY) in repr(p) for _, _, p in batch) and not entered.is_set():
            entered.set()
            time.sleep(SLOW_APPLY_S)  # in the apply thread, as a slow fdatasync
        return real(batch)

    kv.apply_batch = apply_batch  # type: ignore[method-assign]


def test_a_slow_apply_neither_starts_an_election_nor_times_the_write_out(
        tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path) as nodes:
            leader = await leader_of(nodes)
            await leader.write(Put(key=b"warm", value=b"up"), consistency="quorum",
                               client_id=0, seq=0)
            assert leader.group is not None
            term = leader.group.raft.term
            entered = threading.Event()
            slow_down_one_apply(leader, entered)
            started = time.monotonic()
            result = await leader.write(Put(key=SLOW_KEY, value=b"v"), consistency="quorum",
                                        client_id=0, seq=0)
            took = time.monotonic() - started
            assert entered.is_set()
            assert took >= SLOW_APPLY_S  # answered after the apply, with its result
            put, header = write_result_from_wire(result)
            assert isinstance(put, PutResult) and header.revision >= 2
            for n in nodes:
                assert n.group is not None
                assert n.group.raft.term == term, f"{n.config.name} saw an election"
                assert n.group.raft.leader == leader.group.node_id
            # The cluster goes on writing, and every member applied both writes.
            await leader.write(Put(key=b"after", value=b"x"), consistency="quorum",
                               client_id=0, seq=0)
            for n in nodes:
                assert n.group is not None
                await asyncio.wait_for(n.group.wait_applied(leader.group.raft.log.committed),
                                       30)

    asyncio.run(main())


def test_a_slow_log_fsync_is_reported_as_late_heartbeats(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The log's fsync must finish before the next round (a follower's acknowledgement
    promises durability), so a slow one does delay the leader's heartbeats: the node
    counts that and says which step took the time."""
    async def main() -> None:
        async with cluster(tmp_path) as nodes:
            leader = await leader_of(nodes)
            wal = leader.wal
            assert wal is not None and leader.group is not None
            real = wal.sync
            slowed = threading.Event()

            def sync() -> None:
                if not slowed.is_set():
                    slowed.set()
                    time.sleep(0.5)  # five heartbeat intervals, half an election timeout
                real()

            wal.sync = sync  # type: ignore[method-assign]
            def late() -> float:
                value = leader.metrics.registry.get_sample_value(
                    "quorumkv_raft_heartbeats_late_total")
                return value or 0.0

            before = late()
            await leader.write(Put(key=b"k", value=b"v"), consistency="quorum",
                               client_id=0, seq=0)
            assert slowed.is_set()
            # The late tick is noticed when the loop next wakes: a heartbeat later.
            deadline = time.monotonic() + 10
            while late() == before:
                assert time.monotonic() < deadline, "the late heartbeats were not counted"
                await asyncio.sleep(0.05)

    with caplog.at_level("WARNING", logger="quorumkv.server.raft_group"):
        asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records if "heartbeats went out" in r.getMessage()]
    assert warnings, caplog.text
    assert "the log's write and fsync" in warnings[0]
