"""Membership changes one server at a time (thesis §4.1, §4.2.1 learners, §4.2.2 removal).

A change takes effect when its entry is applied, and the leader admits a new
change only once the previous one is applied (``pending_conf_index``). Any
two consecutive configurations then differ by one server, so their majorities
overlap and two leaders cannot be elected in one term. A new leader waits for
its own no-op before accepting a change, which closes the hole described by
Ongaro on raft-dev in 2015 (a change racing with an uncommitted one of an
earlier term).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quorumkv.errors import InvalidArgument
from quorumkv.raft import replication
from quorumkv.raft.entries import NONE, ConfChange, ConfChangeType
from quorumkv.raft.messages import Heartbeat
from quorumkv.raft.progress import Progress
from quorumkv.raft.ready import Role

if TYPE_CHECKING:
    from quorumkv.raft.node import RaftNode


def validate(node: RaftNode, cc: ConfChange) -> None:
    conf = node.conf
    if cc.node_id <= NONE:
        raise InvalidArgument(f"invalid node id {cc.node_id}")
    if cc.type is ConfChangeType.ADD_VOTER and cc.node_id in conf.voters:
        raise InvalidArgument(f"node {cc.node_id} is already a voter")
    if cc.type is ConfChangeType.ADD_LEARNER and cc.node_id in conf.learners:
        raise InvalidArgument(f"node {cc.node_id} is already a learner")
    if cc.type is ConfChangeType.REMOVE_NODE and cc.node_id not in conf.members():
        raise InvalidArgument(f"node {cc.node_id} is not a member")
    after = cc.apply_to(conf)
    if not after.voters:
        raise InvalidArgument("the last voter cannot be removed")


def apply_conf_change(node: RaftNode, cc: ConfChange) -> None:
    node.conf = cc.apply_to(node.conf)
    if node.role is not Role.LEADER:
        return
    if node.id not in node.conf.voters:
        # §4.2.2: a leader removed from the configuration steps down once the
        # change is committed; the rest elect a new leader among themselves.
        node.become_follower(node.term, NONE)
        return
    members = node.conf.members()
    for gone in [m for m in node.progress if m not in members]:
        # A last heartbeat, so a removed member that holds the change learns it
        # is committed, applies it and knows it is out (nothing is sent to it
        # after this). One that missed it stays unaware, like in §4.2.2.
        last = node.progress.pop(gone)
        node.send(Heartbeat(src=node.id, dst=gone, term=node.term,
                            commit=min(last.match, node.log.committed)))
        if node.lead_transferee == gone:
            node.lead_transferee = NONE
    for member in sorted(members):
        pr = node.progress.get(member)
        if pr is None:
            pr = Progress(next_index=node.log.last_index + 1,
                          max_inflight=node.config.max_inflight)
            # Count a new member as active so the first check-quorum after the
            # change does not depose us before it had a chance to answer.
            pr.recent_active = True
            node.progress[member] = pr
            replication.send_append(node, member)
        pr.is_learner = member in node.conf.learners
    # A smaller quorum may make more entries committed.
    if replication.maybe_commit(node):
        replication.broadcast_append(node)
