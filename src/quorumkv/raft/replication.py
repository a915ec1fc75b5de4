"""The leader: log replication, commitment, heartbeats, ReadIndex, leadership transfer.

Thesis §3.5-§3.6 for replication and the commit rule, §6.4 for ReadIndex,
§3.10 for leadership transfer, §6.2 for check-quorum, §10.2.2 for pipelining.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quorumkv.raft.config import InjectedBug
from quorumkv.raft.entries import NONE, Entry, EntryType
from quorumkv.raft.messages import (
    AppendRequest,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    TimeoutNow,
)
from quorumkv.raft.progress import Progress, ProgressState
from quorumkv.raft.quorum import committed_index, has_quorum

if TYPE_CHECKING:
    from quorumkv.raft.node import RaftNode


def init_leader(node: RaftNode) -> None:
    last = node.log.last_index
    for member in sorted(node.conf.members()):
        node.progress[member] = Progress(next_index=last + 1,
                                         max_inflight=node.config.max_inflight,
                                         is_learner=member in node.conf.learners)
    me = node.progress.get(node.id)
    if me is not None:
        me.match = node.log.stable
        me.become_replicate()
        me.recent_active = True
    # The no-op (§6.4 of the thesis, §8 of the paper) commits the entries of
    # earlier terms, and until a leader has committed an entry of its own term
    # it neither serves ReadIndex nor accepts a membership change.
    _, index = append_proposal(node, EntryType.NORMAL, b"")
    node.pending_conf_index = index


def append_proposal(node: RaftNode, kind: EntryType, data: bytes) -> tuple[int, int]:
    index = node.log.last_index + 1
    node.log.append([Entry(term=node.term, index=index, type=kind, data=data)])
    # Broadcast once per Ready, not once per proposal: proposals arriving
    # together then travel in one append per follower.
    node.broadcast_pending = True
    return node.term, index


def self_persisted(node: RaftNode) -> None:
    """The leader's own log is durable up to ``log.stable``: it counts toward commit now."""
    me = node.progress.get(node.id)
    if me is not None and me.maybe_update(node.log.stable) and maybe_commit(node):
        broadcast_append(node)


def maybe_commit(node: RaftNode) -> bool:
    match = {k: pr.match for k, pr in node.progress.items()}
    candidate = committed_index(node.conf.voters, match)
    if InjectedBug.COMMIT_OLD_TERM_BY_COUNTING in node.config.injected_bugs:
        if candidate > node.log.committed:
            node.log.commit_to(candidate)
            _on_commit(node)
            return True
        return False
    # Only an entry of the current term is committed by counting replicas
    # (§3.6.2, Figure 3.7): an old-term entry on a majority can still be
    # overwritten by a leader that never saw it.
    if node.log.maybe_commit(candidate, node.term):
        _on_commit(node)
        return True
    return False


def _on_commit(node: RaftNode) -> None:
    if node.reads_awaiting_commit and node.log.term(node.log.committed) == node.term:
        waiting, node.reads_awaiting_commit = node.reads_awaiting_commit, []
        for context, origin in waiting:
            leader_read_index(node, context, origin)


# -- sending ------------------------------------------------------------------------


def send_append(node: RaftNode, to: int, *, send_if_empty: bool = True) -> bool:
    pr = node.progress[to]
    if pr.is_paused():
        return False
    log = node.log
    prev_index = pr.next - 1
    prev_term = log.term(prev_index)
    entries = log.slice(pr.next, log.last_index + 1, node.config.max_msg_bytes)
    if prev_term is None or entries is None:
        return _send_snapshot(node, to, pr)
    if not entries and not send_if_empty:
        return False
    node.send(AppendRequest(src=node.id, dst=to, term=node.term, prev_index=prev_index,
                            prev_term=prev_term, entries=tuple(entries),
                            commit=log.committed))
    if entries:
        pr.sent_entries(entries[-1].index)
    elif pr.state is ProgressState.PROBE:
        pr.probe_sent = True
    return True


def _send_snapshot(node: RaftNode, to: int, pr: Progress) -> bool:
    if not pr.recent_active:
        # Snapshots are expensive; don't stream one to a follower that may be down.
        return False
    meta = node.log.snapshot
    pr.become_snapshot(meta.index)
    node.send(InstallSnapshot(src=node.id, dst=to, term=node.term, snapshot=meta))
    return True


def broadcast_append(node: RaftNode) -> None:
    for member in sorted(node.progress):
        if member != node.id:
            send_append(node, member)


def broadcast_heartbeat(node: RaftNode, context: bytes = b"") -> None:
    for member, pr in sorted(node.progress.items()):
        if member == node.id:
            continue
        # Never tell a follower to commit past what it is known to hold.
        node.send(Heartbeat(src=node.id, dst=member, term=node.term,
                            commit=min(pr.match, node.log.committed), context=context))


# -- time -----------------------------------------------------------------------------


def tick_leader(node: RaftNode) -> None:
    node.heartbeat_elapsed += 1
    node.election_elapsed += 1
    if node.election_elapsed >= node.config.election_tick:
        node.election_elapsed = 0
        if node.config.check_quorum and not _quorum_recently_active(node):
            # §6.2: a leader that cannot hear a majority is probably partitioned;
            # stepping down lets clients find the real leader.
            node.become_follower(node.term, NONE)
            return
        if node.lead_transferee != NONE:
            # The transfer did not finish within an election timeout: give up (§3.10).
            node.lead_transferee = NONE
    if node.heartbeat_elapsed >= node.config.heartbeat_tick:
        node.heartbeat_elapsed = 0
        pending = node.read_only.last_context()
        if node.config.lease_ticks:
            # Every round renews the lease, so each carries a context to match answers by.
            broadcast_heartbeat(node, node.lease.round_context(node, pending))
        else:
            broadcast_heartbeat(node, pending or b"")


def _quorum_recently_active(node: RaftNode) -> bool:
    active = {node.id}
    for member, pr in node.progress.items():
        if member != node.id and pr.recent_active:
            active.add(member)
        pr.recent_active = member == node.id
    return has_quorum(node.conf.voters, active)


# -- receiving ----------------------------------------------------------------------


def step_leader(node: RaftNode, m: Message) -> None:
    if isinstance(m, ReadIndexRequest):
        if m.src in node.progress:
            leader_read_index(node, m.context, m.src)
        return
    pr = node.progress.get(m.src)
    if pr is None:
        return  # not a member (removed, or not yet added)
    if isinstance(m, AppendResponse):
        pr.recent_active = True
        _handle_append_response(node, m, pr)
    elif isinstance(m, HeartbeatResponse):
        pr.recent_active = True
        pr.probe_sent = False
        if pr.state is ProgressState.REPLICATE and pr.inflights.full():
            # The follower is alive but acknowledged nothing we have in flight:
            # those appends were probably lost. Free one slot so that the next
            # append goes out and its rejection (or ack) resynchronises us.
            pr.inflights.free_first()
        if pr.match < node.log.last_index:
            send_append(node, m.src)
        if m.context:
            if node.config.lease_ticks:
                node.lease.answered(node, m.src, m.context)
            _handle_read_ack(node, m.context, m.src)
    # Vote responses and others from an earlier candidacy are stale here.


def _handle_append_response(node: RaftNode, m: AppendResponse, pr: Progress) -> None:
    if m.reject:
        hint = m.hint_index
        if m.hint_term > 0:
            hint = node.log.find_conflict_by_term(m.hint_index, m.hint_term)
        if pr.maybe_decrease_to(m.index, hint):
            if pr.state is ProgressState.REPLICATE:
                pr.become_probe()
            send_append(node, m.src)
        return
    was_paused = pr.is_paused()
    if not pr.maybe_update(m.index):
        return
    if pr.state is ProgressState.PROBE:
        pr.become_replicate()
    elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
        pr.become_probe()
        pr.become_replicate()
    elif pr.state is ProgressState.REPLICATE:
        pr.inflights.free_le(m.index)
    if maybe_commit(node):
        broadcast_append(node)
    elif was_paused:
        send_append(node, m.src)
    # Keep the pipeline full: send what the window now allows.
    while send_append(node, m.src, send_if_empty=False):
        pass
    if m.src == node.lead_transferee and pr.match == node.log.last_index:
        node.send(TimeoutNow(src=node.id, dst=m.src, term=node.term))


# -- ReadIndex ------------------------------------------------------------------------


def leader_read_index(node: RaftNode, context: bytes, origin: int) -> None:
    log = node.log
    if InjectedBug.READ_WITHOUT_QUORUM_CHECK in node.config.injected_bugs:
        node.release_read(context, log.committed, origin)
        return
    if log.term(log.committed) != node.term:
        # Until its no-op commits, a new leader does not know the commit index (§6.4).
        node.reads_awaiting_commit.append((context, origin))
        return
    if node.conf.voters == {node.id} or node.lease.valid(node):
        node.release_read(context, log.committed, origin)
        return
    node.read_only.add(context=context, index=log.committed, origin=origin, self_id=node.id)
    if node.config.lease_ticks:
        context = node.lease.round_context(node, context)
    broadcast_heartbeat(node, context)


def _handle_read_ack(node: RaftNode, context: bytes, src: int) -> None:
    acks = node.read_only.ack(context, src)
    if acks is None or not has_quorum(node.conf.voters, acks):
        return
    for pending in node.read_only.release_through(context):
        node.release_read(pending.context, pending.index, pending.origin)


# -- leadership transfer --------------------------------------------------------------


def start_transfer(node: RaftNode, to: int) -> None:
    if node.lead_transferee == to:
        return
    node.lead_transferee = to
    node.lease.transfer_started()
    node.election_elapsed = 0
    pr = node.progress[to]
    if pr.match == node.log.last_index:
        node.send(TimeoutNow(src=node.id, dst=to, term=node.term))
    else:
        send_append(node, to)
