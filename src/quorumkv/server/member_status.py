"""Every member's status as one node sees it: health, role, phi, silence and lag.

``status`` is, in order of precedence:

- ``leaving``: being removed by this leader, or (this node) leaving;
- ``failed`` / ``inactive``: what this node's failure detector says (phi
  above the failure / suspect threshold, or silent for ``failed_after_s``);
- ``joining``: a learner waiting to be promoted once it has caught up;
- ``active``.

Replication lag (entries behind the leader's log) and the reason a joining
learner is not promoted yet are known only on the leader; elsewhere they are
None, and the status of the answering node includes the leader's view.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from quorumkv.raft.ready import Role

if TYPE_CHECKING:
    from quorumkv.server.node import Node


def _role(node: Node, member: int) -> str:
    group = node.group
    assert group is not None
    if member == node.node_id:
        role = group.raft.role.value
        return "learner" if member in node.conf.learners else role
    if member == group.raft.leader:
        return "leader"
    return "learner" if member in node.conf.learners else "follower"


def member_statuses(node: Node) -> list[dict[str, Any]]:
    group = node.group
    assert group is not None
    raft = group.raft
    now = asyncio.get_running_loop().time()
    leading = raft.role is Role.LEADER
    out = []
    for member in sorted(node.conf.voters) + sorted(node.conf.learners):
        entry = node.membership.member_wire(member)
        health = node.peer_health(member)
        if member in node.membership.leaving:
            status = "leaving"
        elif health != "active":
            status = health
        elif entry["auto_promote"]:
            status = "joining"
        else:
            status = "active"
        lag = None
        if leading:
            pr = raft.progress.get(member)
            if member == node.node_id:
                lag = 0
            elif pr is not None:
                lag = raft.log.last_index - pr.match
        phi = None if member == node.node_id else node.detector.phi(member, now)
        seen = 0.0 if member == node.node_id else node.detector.last_seen(member, now)
        entry.update({
            "status": status, "role": _role(node, member),
            "phi": None if phi is None else round(phi, 3) + 0.0,  # never "-0.0"
            "last_seen": None if seen is None else round(seen, 3), "lag": lag,
            "promotion": (node.membership.promotion_reasons.get(member)
                          if entry["auto_promote"] and leading else None),
        })
        if member in raft.progress and leading:
            pr = raft.progress[member]
            entry.update({"match": pr.match, "next": pr.next, "state": pr.state.value})
        out.append(entry)
    return out
