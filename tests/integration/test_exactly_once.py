"""Exactly-once writes on a real cluster (thesis §6.3).

A write resent with the same (client_id, seq) — to the same leader, to a new
leader after the old one was SIGKILLed, or after every node restarted — is
applied once: the resend gets the first answer (same revision) and the next
write sees the key's version and the store's revision moved by one only.

Writes go through the client's own retry loop (``RetryingCaller``), which
resends one request object, so its (client_id, seq) is the same on every
attempt. Waits are that loop's, with generous deadlines; every process is
stopped by ``running_cluster``.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from cluster_harness import Cluster, running_cluster

from quorumkv.client.endpoints import Backoff, Endpoints
from quorumkv.client.protocol import WriteRequest, write_result_from_wire
from quorumkv.client.retrying_caller import RetryingCaller
from quorumkv.kv import Put, PutResult, Write
from quorumkv.transport.framing import DEFAULT_MAX_FRAME

pytestmark = pytest.mark.timeout(300)

CLIENT_ID = 0x2A2A_0001
WAIT = 60.0  # generous: the machine may be busy and an election may be under way


def write(cluster: Cluster, seq: int, cmd: Write) -> tuple[PutResult, str]:
    """Write number ``seq`` of CLIENT_ID, retried until a leader answers: (result, its name).

    Only running nodes are asked, so the answer comes from the current leader.
    """
    endpoints = [n.client_address for n in cluster.nodes if n.running()]

    async def call() -> tuple[PutResult, str]:
        caller = RetryingCaller(Endpoints(endpoints), timeout=WAIT, cluster_id=None,
                                max_frame=DEFAULT_MAX_FRAME,
                                backoff=Backoff(0.05, 1.0, random.Random(seq)))
        try:
            body = await caller.call(WriteRequest(cmd=cmd, consistency="quorum",
                                                  client_id=CLIENT_ID, seq=seq))
            assert caller.server_info is not None
            name = str(caller.server_info["name"])
        finally:
            await caller.close()
        result, _ = write_result_from_wire(body)
        assert isinstance(result, PutResult)
        return result, name

    return asyncio.run(asyncio.wait_for(call(), 2 * WAIT))


def test_a_resent_write_applies_once_across_failover_and_restart(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.leader_name()

        # The same leader, twice.
        first, _ = write(cluster, 1, Put(key=b"k", value=b"once"))
        again, _ = write(cluster, 1, Put(key=b"k", value=b"once"))
        assert again == first
        probe, _ = write(cluster, 2, Put(key=b"k", value=b"next", prev_kv=True))
        assert probe.prev_kv is not None and probe.prev_kv.version == 1
        assert probe.revision == first.revision + 1

        # Once to the old leader, once to the new one after a SIGKILL.
        before, old_leader = write(cluster, 3, Put(key=b"f", value=b"failover"))
        cluster.node(old_leader).kill()
        after, new_leader = write(cluster, 3, Put(key=b"f", value=b"failover"))
        assert new_leader != old_leader
        assert after == before
        probe, _ = write(cluster, 4, Put(key=b"f", value=b"next", prev_kv=True))
        assert probe.prev_kv is not None and probe.prev_kv.version == 1
        assert probe.revision == before.revision + 1

        # Every node restarted (the killed one recovering from its SIGKILL):
        # the session table comes back from disk and the log.
        cluster.stop()
        for node in cluster.nodes:
            node.start()
        cluster.leader_name()
        assert write(cluster, 3, Put(key=b"f", value=b"failover"))[0] == before
        assert write(cluster, 1, Put(key=b"k", value=b"once"))[0] == first
        last, _ = write(cluster, 5, Put(key=b"k", value=b"last", prev_kv=True))
        assert last.prev_kv is not None and last.prev_kv.version == 2
        assert last.revision == probe.revision + 1
