"""Leader election: timeouts, pre-vote, votes and the election restriction (thesis §3.4, §9.6)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quorumkv.raft.config import InjectedBug
from quorumkv.raft.entries import NONE, EntryType
from quorumkv.raft.messages import Message, ReadIndexResponse, VoteRequest, VoteResponse
from quorumkv.raft.quorum import vote_result
from quorumkv.raft.ready import Role

if TYPE_CHECKING:
    from quorumkv.raft.node import RaftNode


def tick_election(node: RaftNode) -> None:
    node.election_elapsed += 1
    # A node that cannot campaign (a learner, or a voter that has not yet
    # learned it was promoted) keeps counting, so that its leader lease
    # lapses and it answers the votes of a candidate that does count it as a
    # voter; resetting here would leave it ignoring votes half of the time.
    if node.promotable() and node.election_elapsed >= node.randomized_election_timeout:
        node.election_elapsed = 0
        campaign(node, transfer=False)


def _has_unapplied_conf_change(node: RaftNode) -> bool:
    log = node.log
    for index in range(log.applied + 1, log.committed + 1):
        if log.entry(index).type is EntryType.CONF_CHANGE:
            return True
    return False


def campaign(node: RaftNode, *, transfer: bool) -> None:
    """Start a (pre-)election. A transfer skips the pre-vote: the leader asked for it (§3.10)."""
    if not node.promotable() or _has_unapplied_conf_change(node):
        # Campaigning before applying a committed membership change could count
        # votes against the wrong configuration.
        return
    pre = node.config.pre_vote and not transfer
    if pre:
        node.become_pre_candidate()
        term = node.term + 1
    else:
        node.become_candidate()
        term = node.term
    node.votes[node.id] = True
    if vote_result(node.conf.voters, node.votes) is True:
        _won(node)
        return
    for voter in sorted(node.conf.voters):
        if voter == node.id:
            continue
        node.send(VoteRequest(src=node.id, dst=voter, term=term,
                              last_log_index=node.log.last_index,
                              last_log_term=node.log.last_term,
                              pre_vote=pre, transfer=transfer))


def _won(node: RaftNode) -> None:
    if node.role is Role.PRE_CANDIDATE:
        _real_campaign(node)
    else:
        node.become_leader()


def _real_campaign(node: RaftNode) -> None:
    node.become_candidate()
    node.votes[node.id] = True
    if vote_result(node.conf.voters, node.votes) is True:
        node.become_leader()
        return
    for voter in sorted(node.conf.voters):
        if voter != node.id:
            node.send(VoteRequest(src=node.id, dst=voter, term=node.term,
                                  last_log_index=node.log.last_index,
                                  last_log_term=node.log.last_term))


def handle_vote_request(node: RaftNode, m: VoteRequest) -> None:
    """Grant at most one vote per term, and only to a candidate whose log is up to date."""
    bugs = node.config.injected_bugs
    can_vote = (
        node.vote == m.src
        or (node.vote == NONE and node.leader == NONE)
        or (m.pre_vote and m.term > node.term)
        or InjectedBug.VOTE_TWICE_IN_A_TERM in bugs
    )
    up_to_date = (InjectedBug.SKIP_LOG_UP_TO_DATE_CHECK in bugs
                  or node.log.is_up_to_date(m.last_log_index, m.last_log_term))
    if can_vote and up_to_date:
        node.send(VoteResponse(src=node.id, dst=m.src, term=m.term, granted=True,
                               pre_vote=m.pre_vote))
        if not m.pre_vote:
            node.election_elapsed = 0
            node.vote = m.src
    else:
        node.send(VoteResponse(src=node.id, dst=m.src, term=node.term, granted=False,
                               pre_vote=m.pre_vote))


def step_candidate(node: RaftNode, m: Message) -> None:
    if isinstance(m, ReadIndexResponse):
        # A read forwarded before we started campaigning: the index is still
        # valid (it came from a leader that confirmed it), so serve it.
        if m.index > 0:
            node.release_read(m.context, m.index, node.id)
        else:
            node.drop_read(m.context, node.id)
    elif isinstance(m, VoteResponse):
        if m.pre_vote != (node.role is Role.PRE_CANDIDATE):
            return
        node.votes[m.src] = m.granted
        result = vote_result(node.conf.voters, node.votes)
        if result is True:
            if node.role is Role.PRE_CANDIDATE:
                _real_campaign(node)
            else:
                node.become_leader()
        elif result is False:
            node.become_follower(node.term, NONE)
    # Other messages (stale acks, forwarded reads) mean nothing to a candidate.
