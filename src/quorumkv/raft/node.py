"""RaftNode: one member of one Raft group, as a pure state machine.

Input arrives through :meth:`step` (a message from a peer), :meth:`tick`
(time passing), :meth:`propose`, :meth:`propose_conf_change`,
:meth:`read_index` and :meth:`transfer_leadership`. Output leaves through
:meth:`ready` as a :class:`~quorumkv.raft.ready.Ready`, whose handling order is
written in that module. The node never touches a socket, a file or a clock,
and all its randomness comes from the ``random.Random`` it is given, so a
whole cluster can run inside one test, seeded and replayable.

Term handling happens once, in :meth:`step`, before any role sees a message
(thesis §3.3: a newer term always wins, a stale one is ignored). Each role
then has its own step function: ``follower.step_follower``,
``election.step_candidate`` and ``replication.step_leader``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from quorumkv.errors import (
    ConfChangeInProgress,
    InvalidArgument,
    LeadershipTransferInProgress,
    NotLeader,
)
from quorumkv.raft import election, follower, membership, replication
from quorumkv.raft.config import InjectedBug, RaftConfig
from quorumkv.raft.entries import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    SnapshotMeta,
)
from quorumkv.raft.lease import ReadLease
from quorumkv.raft.log import RaftLog
from quorumkv.raft.messages import (
    AppendRequest,
    AppendResponse,
    Heartbeat,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    VoteRequest,
    VoteResponse,
)
from quorumkv.raft.progress import Progress, ProgressState
from quorumkv.raft.read_only import ReadOnlyQueue
from quorumkv.raft.ready import ReadState, Ready, Role, SoftState

_FROM_LEADER = (AppendRequest, Heartbeat, InstallSnapshot)


class RaftNode:
    def __init__(
        self,
        config: RaftConfig,
        rng: random.Random,
        *,
        hard_state: HardState | None = None,
        snapshot: SnapshotMeta | None = None,
        entries: Sequence[Entry] = (),
        applied: int = 0,
    ) -> None:
        """Restart from what the driver persisted (or start empty, to join a cluster).

        ``applied`` is how far the state machine got before the restart; the
        Ready stream resumes after it.
        """
        hs = hard_state or HardState()
        self.id = config.id
        self.config = config
        self._rng = rng
        self._bugs = config.injected_bugs
        self.log = RaftLog(snapshot=snapshot, entries=entries, committed=hs.commit,
                           applied=applied)
        self.term = hs.term
        self.vote = NONE if InjectedBug.FORGET_VOTE_ON_RESTART in self._bugs else hs.vote
        self.role = Role.FOLLOWER
        self.leader = NONE
        self.conf = self.log.snapshot.conf
        for e in self.log.entries:
            if e.index > self.log.applied:
                break
            if e.type is EntryType.CONF_CHANGE:
                self.conf = ConfChange.decode(e.data).apply_to(self.conf)

        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_tick
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        self.read_only = ReadOnlyQueue()
        self.lease = ReadLease()
        self.ticks = 0
        """Ticks since this node started: the lease's clock."""
        self.reads_awaiting_commit: list[tuple[bytes, int]] = []
        self.broadcast_pending = False

        self._msgs: list[Message] = []
        self._persisted_msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._dropped_reads: list[bytes] = []
        self._prev_hard = hs
        self._prev_soft = SoftState(leader=NONE, role=Role.FOLLOWER, term=self.term)
        self._ready_outstanding = False
        self.become_follower(self.term, NONE)

    @staticmethod
    def bootstrap_log(
        voters: Sequence[int], contexts: Mapping[int, bytes] | None = None
    ) -> tuple[HardState, list[Entry]]:
        """The initial durable state of every member of a brand-new cluster.

        The initial membership becomes log entries (term 1, indexes 1..n),
        committed by construction and identical on every initial member, so
        that a node joining later learns it by replaying the log like any other
        change. The driver must make this state durable *before* it starts the
        node: a member that lost its bootstrap entries would see a partial
        membership and could elect itself alone.
        """
        ordered = sorted(set(voters))
        assert ordered and ordered[0] > NONE, "voters are node ids >= 1"
        ctx = contexts or {}
        entries = [
            Entry(term=1, index=i + 1, type=EntryType.CONF_CHANGE,
                  data=ConfChange(type=ConfChangeType.ADD_VOTER, node_id=v,
                                  context=ctx.get(v, b"")).encode())
            for i, v in enumerate(ordered)
        ]
        return HardState(term=1, vote=NONE, commit=len(entries)), entries

    # -- inputs -------------------------------------------------------------------

    def tick(self) -> None:
        self.ticks += 1
        if self.role is Role.LEADER:
            replication.tick_leader(self)
        else:
            election.tick_election(self)

    def step(self, m: Message) -> None:
        if m.term > self.term:
            if isinstance(m, VoteRequest):
                in_lease = (self.config.check_quorum and self.leader != NONE
                            and self.election_elapsed < self.config.election_tick)
                if in_lease and not m.transfer:
                    # Leader stickiness (§4.2.3): we heard a leader recently, so a
                    # disruptive candidate (e.g. a removed server) gets no hearing.
                    return
            if isinstance(m, VoteRequest) and m.pre_vote:
                pass  # a pre-vote never changes our term
            elif isinstance(m, VoteResponse) and m.pre_vote and m.granted:
                pass  # granted pre-votes carry the term we *would* campaign in
            elif isinstance(m, _FROM_LEADER):
                self.become_follower(m.term, m.src)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if isinstance(m, (AppendRequest, Heartbeat)) and (
                    self.config.check_quorum or self.config.pre_vote):
                # A stale leader that nobody answers would never learn the new term
                # when pre-vote keeps candidates from bumping it; tell it.
                self.send(AppendResponse(src=self.id, dst=m.src, term=self.term, index=0))
            elif isinstance(m, VoteRequest) and m.pre_vote:
                self.send(VoteResponse(src=self.id, dst=m.src, term=self.term,
                                       granted=False, pre_vote=True))
            return

        if isinstance(m, VoteRequest):
            election.handle_vote_request(self, m)
        elif self.role is Role.LEADER:
            replication.step_leader(self, m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            if isinstance(m, _FROM_LEADER):
                # Someone won this term (or, for a pre-candidate, still leads it).
                self.become_follower(m.term, m.src)
                follower.step_follower(self, m)
            else:
                election.step_candidate(self, m)
        else:
            follower.step_follower(self, m)

    def propose(self, data: bytes) -> tuple[int, int]:
        """Append ``data`` to the log; returns (term, index) to match against what commits.

        The proposal succeeded iff the entry committed at ``index`` has ``term``.
        """
        self._check_can_propose()
        return replication.append_proposal(self, EntryType.NORMAL, data)

    def propose_conf_change(self, cc: ConfChange) -> tuple[int, int]:
        self._check_can_propose()
        if self.pending_conf_index > self.log.applied:
            raise ConfChangeInProgress(
                "a membership change is still in flight (one server at a time, §4.1)",
                pending_index=self.pending_conf_index)
        membership.validate(self, cc)
        term, index = replication.append_proposal(self, EntryType.CONF_CHANGE, cc.encode())
        self.pending_conf_index = index
        return term, index

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point; the answer comes back in a later Ready.

        It arrives as a ReadState with the same ``context``, or the context is
        listed in ``dropped_reads`` when no leader can confirm it (retry then).
        """
        if self.role is Role.LEADER:
            replication.leader_read_index(self, context, self.id)
        elif self.role is Role.FOLLOWER and self.leader != NONE:
            self.send(ReadIndexRequest(src=self.id, dst=self.leader, term=self.term,
                                       context=context))
        else:
            self._dropped_reads.append(context)

    def transfer_leadership(self, to: int) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(leader=self.leader or None)
        if to == self.id:
            return
        if to not in self.conf.voters:
            raise InvalidArgument(f"node {to} is not a voter and cannot lead")
        replication.start_transfer(self, to)

    def report_snapshot(self, to: int, *, success: bool) -> None:
        """The driver finished (or gave up) streaming a snapshot to ``to``."""
        pr = self.progress.get(to)
        if self.role is not Role.LEADER or pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        if not success:
            pr.pending_snapshot = 0
        pr.become_probe()
        # Wait for the follower's next heartbeat answer before probing again.
        pr.probe_sent = True

    def report_unreachable(self, to: int) -> None:
        pr = self.progress.get(to)
        if self.role is Role.LEADER and pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def compact(self, index: int, conf: ConfState | None = None) -> SnapshotMeta:
        """The state machine saved an image that ends at ``index``: drop the log before it.

        ``conf`` is the membership at ``index``; it may be omitted when ``index``
        is the applied index, whose membership the node knows.
        """
        if conf is None:
            assert index == self.log.applied, "conf is required for a snapshot below applied"
            conf = self.conf
        term = self.log.term(index)
        assert term is not None, f"cannot snapshot at {index}: not in the log"
        meta = SnapshotMeta(index=index, term=term, conf=conf)
        self.log.compact(meta)
        return meta

    # -- outputs ------------------------------------------------------------------

    def send(self, m: Message) -> None:
        # A leader's appends, heartbeats and snapshots promise nothing about its
        # own disk, so they may leave before its persist; everything else a node
        # says (votes, acks) may only leave once its state is durable (§3.8).
        if self.role is Role.LEADER:
            self._msgs.append(m)
        else:
            self._persisted_msgs.append(m)

    def release_read(self, context: bytes, index: int, origin: int) -> None:
        if origin == self.id:
            self._read_states.append(ReadState(context=context, index=index))
        else:
            self.send(ReadIndexResponse(src=self.id, dst=origin, term=self.term,
                                        context=context, index=index))

    def drop_read(self, context: bytes, origin: int) -> None:
        if origin == self.id:
            self._dropped_reads.append(context)
        else:
            self.send(ReadIndexResponse(src=self.id, dst=origin, term=self.term,
                                        context=context, index=0))

    def hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(leader=self.leader, role=self.role, term=self.term)

    def has_ready(self) -> bool:
        if self._ready_outstanding:
            return False
        return bool(
            self.broadcast_pending or self._msgs or self._persisted_msgs
            or self._read_states or self._dropped_reads
            or self.soft_state() != self._prev_soft
            or self.hard_state() != self._prev_hard
            or self.log.pending_snapshot is not None
            or self.log.stable < self.log.last_index
            or (self.log.applied < self.log.committed and self.log.pending_snapshot is None)
        )

    def ready(self) -> Ready:
        assert not self._ready_outstanding, "advance() the previous Ready first"
        if self.broadcast_pending and self.role is Role.LEADER:
            replication.broadcast_append(self)
        self.broadcast_pending = False
        hs = self.hard_state()
        soft = self.soft_state()
        entries = self.log.unstable_entries()
        snapshot = self.log.pending_snapshot
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hs if hs != self._prev_hard else None,
            entries=entries,
            snapshot=snapshot,
            messages=self._msgs,
            persisted_messages=self._persisted_msgs,
            committed_entries=self.log.committed_to_apply(self.config.max_apply_bytes),
            read_states=self._read_states,
            dropped_reads=self._dropped_reads,
            must_sync=bool(entries) or snapshot is not None
            or hs.term != self._prev_hard.term or hs.vote != self._prev_hard.vote,
        )
        self._msgs, self._persisted_msgs = [], []
        self._read_states, self._dropped_reads = [], []
        self._prev_soft = soft
        self._prev_hard = hs
        self._ready_outstanding = True
        return rd

    def advance(self, rd: Ready) -> None:
        assert self._ready_outstanding, "advance() without ready()"
        self._ready_outstanding = False
        if rd.snapshot is not None:
            self.log.snapshot_installed(rd.snapshot)
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        for e in rd.committed_entries:
            self.log.applied_to(e.index)
            if e.type is EntryType.CONF_CHANGE:
                membership.apply_conf_change(self, ConfChange.decode(e.data))
        if self.role is Role.LEADER:
            replication.self_persisted(self)

    # -- role transitions ------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        if self.role is Role.LEADER:
            for pending in self.read_only.drain():
                self.drop_read(pending.context, pending.origin)
            for context, origin in self.reads_awaiting_commit:
                self.drop_read(context, origin)
            self.reads_awaiting_commit = []
        self.leader = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.config.election_tick + self._rng.randrange(
            self.config.election_tick)
        self.lead_transferee = NONE
        self.votes = {}
        self.progress = {}
        self.broadcast_pending = False

    def become_follower(self, term: int, leader: int) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def become_pre_candidate(self) -> None:
        assert self.role is not Role.LEADER, "a leader never pre-campaigns"
        # Term and vote stay as they are: that is the point of a pre-vote (§9.6).
        self.votes = {}
        self.leader = NONE
        self.role = Role.PRE_CANDIDATE

    def become_candidate(self) -> None:
        assert self.role is not Role.LEADER, "a leader never campaigns"
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def become_leader(self) -> None:
        assert self.role is Role.CANDIDATE, f"only a candidate becomes leader, not {self.role}"
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        self.lease = ReadLease()
        replication.init_leader(self)

    def campaign(self, *, transfer: bool = False) -> None:
        election.campaign(self, transfer=transfer)

    def promotable(self) -> bool:
        return self.id in self.conf.voters and self.log.pending_snapshot is None

    def _check_can_propose(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(leader=self.leader or None)
        if self.lead_transferee != NONE:
            raise LeadershipTransferInProgress(
                f"leadership is being transferred to {self.lead_transferee}")

    # -- introspection ----------------------------------------------------------------

    def status(self) -> dict[str, object]:
        return {
            "id": self.id, "term": self.term, "vote": self.vote, "role": self.role.value,
            "leader": self.leader, "commit": self.log.committed, "applied": self.log.applied,
            "last_index": self.log.last_index, "snapshot_index": self.log.snapshot.index,
            "voters": sorted(self.conf.voters), "learners": sorted(self.conf.learners),
            "progress": {k: repr(v) for k, v in self.progress.items()},
        }
