"""Three real nodes in the test's own process and event loop, for tests that reach into
a node (its Raft group, its store) while the cluster serves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from cluster_harness import free_ports

from quorumkv.server.config import NodeConfig
from quorumkv.server.node import Node


def configs(tmp_path: Path, **settings: Any) -> list[NodeConfig]:
    ports = free_ports(6)
    names = ["n1", "n2", "n3"]
    initial = {n: ("127.0.0.1", ports[i]) for i, n in enumerate(names)}
    clients = {n: f"127.0.0.1:{ports[3 + i]}" for i, n in enumerate(names)}
    return [NodeConfig(name=n, data_dir=tmp_path / n, peer_port=ports[i],
                       client_port=ports[3 + i], http_port=None, initial_cluster=initial,
                       client_addresses=clients, **settings)
            for i, n in enumerate(names)]


@asynccontextmanager
async def in_process_cluster(tmp_path: Path, **settings: Any) -> AsyncIterator[list[Node]]:
    """Three nodes serving in this process and event loop, on real sockets and disks;
    ``settings`` are NodeConfig fields for all three. Stopped when the block ends."""
    nodes = [Node(c) for c in configs(tmp_path, **settings)]
    tasks = [asyncio.create_task(n.serve()) for n in nodes]
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


async def leader_of(nodes: Sequence[Node]) -> Node:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for n in nodes:
            if n.group is not None and n.group.raft.leader == n.group.node_id:
                return n
        await asyncio.sleep(0.05)
    raise AssertionError("no leader within 30 s")
