"""Joining a running cluster: what a node started with ``--join`` does before it serves.

With an empty data directory, the node asks any member it was given (the
client's failover and NotLeader redirects reach the leader) to add it as a
learner that is promoted once caught up. The answer names the cluster and
its members; both go into member.json, so the node can reach its peers
after a restart even before it has applied the member registry, and its
data directory is bound to that cluster from then on. Then the node starts
like any other with an empty log: the leader sends it a snapshot or the
log from the start.

A data directory that already holds a member is simply started, after
checking that the cluster reached through ``--join`` is the one it belongs
to (InvalidNode otherwise, so a reused directory never joins a stranger).

Errors are specific: AuthenticationFailed (wrong token), InvalidNode,
ClusterFull (from the leader), and NetworkError when no member answered
before ``join_timeout_s``. A membership change in progress, or an election,
is waited out until then.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from quorumkv.client.async_client import AsyncClient
from quorumkv.errors import (
    ConfChangeInProgress,
    InvalidNode,
    NetworkError,
    ProtocolError,
    QuorumKVError,
    UnavailableError,
)
from quorumkv.security.tls import node_client_tls
from quorumkv.server.config import NodeConfig
from quorumkv.server.data_dir import DataDir

log = logging.getLogger(__name__)

RETRY_PAUSE = 0.5


async def _hello_cluster_id(config: NodeConfig) -> int | None:
    """The cluster id the ``--join`` members answer with; None if none answered."""
    try:
        async with AsyncClient(config.join, timeout=min(5.0, config.join_timeout_s),
                               tls=node_client_tls(config)) as c:
            await c.member_list()
            info = c.server_info or {}
    except UnavailableError:
        return None
    cid = info.get("cluster_id")
    return cid if type(cid) is int else None


async def join_cluster(config: NodeConfig, data: DataDir) -> None:
    """Make ``data`` a member's directory of the cluster reached through ``config.join``."""
    if config.peer_port == 0 or config.client_port == 0:
        raise InvalidNode("a joining node must listen on fixed ports: the cluster records "
                          "its addresses before it starts listening")
    if data.exists():
        mine = data.cluster_id()
        theirs = await _hello_cluster_id(config)
        if theirs is None:
            log.warning("no member of %s answered; starting from the data directory",
                        ",".join(config.join))
        elif theirs != mine:
            raise InvalidNode(f"the data directory {data.root} belongs to cluster {mine}, "
                              f"but {','.join(config.join)} serves cluster {theirs}")
        return
    answer = await _ask_to_join(config)
    cluster_id = answer.get("cluster_id")
    members = answer.get("members")
    if type(cluster_id) is not int or not cluster_id or not isinstance(members, list):
        raise ProtocolError("the cluster answered the join without its id or members")
    peers: dict[int, list[Any]] = {}
    for m in members:
        if isinstance(m, dict) and type(m.get("id")) is int:
            peers[m["id"]] = [m.get("name"), m.get("peer_address"), m.get("client_address")]
    data.claim(name=config.name, node_id=config.node_id, cluster_id=cluster_id,
               join_peers=peers)
    log.info("joined cluster %d as a learner; %d members", cluster_id, len(peers))


async def _ask_to_join(config: NodeConfig) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.join_timeout_s
    last: QuorumKVError | None = None
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            async with AsyncClient(config.join, timeout=min(remaining, 10.0),
                                   tls=node_client_tls(config)) as c:
                await c.member_add(config.name, config.peer_address,
                                   client_address=config.client_address,
                                   token=config.cluster_token)
                # The connection now goes to the leader, which has applied the change.
                members = await c.member_list()
                info = c.server_info or {}
                return {"cluster_id": info.get("cluster_id"),
                        "members": [{"id": m.id, "name": m.name,
                                     "peer_address": m.peer_address,
                                     "client_address": m.client_address} for m in members]}
        except (ConfChangeInProgress, UnavailableError) as e:
            last = e
            log.info("joining: %s; retrying", e.message)
        await asyncio.sleep(min(RETRY_PAUSE, max(0.0, deadline - loop.time())))
    if isinstance(last, NetworkError) or last is None:
        raise NetworkError(f"no member of {','.join(config.join)} could be reached within "
                           f"{config.join_timeout_s:g}s to join the cluster")
    raise last
