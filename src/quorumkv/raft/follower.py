"""The follower's side of replication: appends, heartbeats, snapshots (thesis §3.5, §5.3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quorumkv.raft.messages import (
    AppendRequest,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexResponse,
    TimeoutNow,
)

if TYPE_CHECKING:
    from quorumkv.raft.node import RaftNode


def step_follower(node: RaftNode, m: Message) -> None:
    if isinstance(m, AppendRequest):
        _heard_leader(node, m)
        handle_append(node, m)
    elif isinstance(m, Heartbeat):
        _heard_leader(node, m)
        handle_heartbeat(node, m)
    elif isinstance(m, InstallSnapshot):
        _heard_leader(node, m)
        handle_snapshot(node, m)
    elif isinstance(m, TimeoutNow):
        # The leader hands over (§3.10): campaign at once, skipping pre-vote,
        # since the current leader is alive and would otherwise win the lease check.
        node.campaign(transfer=True)
    elif isinstance(m, ReadIndexResponse):
        if m.index > 0:
            node.release_read(m.context, m.index, node.id)
        else:
            node.drop_read(m.context, node.id)
    # Anything else (a forwarded read reaching a non-leader, stale responses) is dropped;
    # the asking side times out and retries.


def _heard_leader(node: RaftNode, m: Message) -> None:
    node.election_elapsed = 0
    node.leader = m.src


def handle_append(node: RaftNode, m: AppendRequest) -> None:
    log = node.log
    if m.prev_index < log.committed:
        # Everything up to our commit index is settled; say how far we are.
        node.send(AppendResponse(src=node.id, dst=m.src, term=node.term, index=log.committed))
        return
    new_last = log.maybe_append(m.prev_index, m.prev_term, m.commit, m.entries)
    if new_last is not None:
        node.send(AppendResponse(src=node.id, dst=m.src, term=node.term, index=new_last))
        return
    # Mismatch at prev_index. Hint where our logs may agree: the last entry at or
    # before prev_index whose term is <= the leader's prev_term, so the leader can
    # skip a whole divergent term in one round trip.
    hint_index = log.find_conflict_by_term(min(m.prev_index, log.last_index), m.prev_term)
    hint_term = log.term(hint_index) or 0
    node.send(AppendResponse(src=node.id, dst=m.src, term=node.term, index=m.prev_index,
                             reject=True, hint_index=hint_index, hint_term=hint_term))


def handle_heartbeat(node: RaftNode, m: Heartbeat) -> None:
    # The leader sends min(commit, our match), so this never exceeds our log.
    node.log.commit_to(min(m.commit, node.log.last_index))
    node.send(HeartbeatResponse(src=node.id, dst=m.src, term=node.term, context=m.context))


def handle_snapshot(node: RaftNode, m: InstallSnapshot) -> None:
    log = node.log
    meta = m.snapshot
    if meta.index <= log.committed:
        node.send(AppendResponse(src=node.id, dst=m.src, term=node.term, index=log.committed))
        return
    if log.match_term(meta.index, meta.term):
        # We already hold the snapshot's last entry, hence (Log Matching) all
        # before it: no need to discard our log, just move the commit point.
        log.commit_to(meta.index)
        node.send(AppendResponse(src=node.id, dst=m.src, term=node.term, index=meta.index))
        return
    log.restore(meta)
    node.conf = meta.conf
    node.send(AppendResponse(src=node.id, dst=m.src, term=node.term, index=meta.index))
