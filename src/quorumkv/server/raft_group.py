"""RaftGroup: one Raft group hosted by this process, driven by one asyncio task.

The task owns the RaftNode: nothing else calls it. Everything that wants
the node's attention (peer messages, client proposals, read requests,
finished snapshots) is queued and the task is woken; each wake-up steps all
queued input, then handles Ready batches until none is left. Input that
arrives while a Ready is being persisted waits for the next round, so
proposals that arrive together share one fsync (group commit) and one
append per follower.

Disk work (the WAL's fsync, LMDB's commits, snapshot copies) runs in worker
threads so the event loop keeps serving while the disk is busy: the log's
writes and the applies in one thread of the group's own, snapshots in
another, never in the loop's shared pool, where they would queue behind
every client read (``Node.range`` reads there) and hold up heartbeats. The leader
sends its appends before its own write (thesis §10.2.1); its own entries
count toward commit only after the write (``advance``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from quorumkv.errors import (
    NotLeader,
    ProposalDropped,
    QuorumKVError,
    RequestError,
    Timeout,
)
from quorumkv.kv import AlreadyApplied, Applied, Event, KVStore
from quorumkv.raft.config import RaftConfig
from quorumkv.raft.entries import NONE, ConfChange, Entry, EntryType, SnapshotMeta
from quorumkv.raft.messages import Heartbeat, HeartbeatResponse, InstallSnapshot, Message
from quorumkv.raft.node import RaftNode
from quorumkv.raft.ready import ReadState, Ready, Role
from quorumkv.server import events as ev
from quorumkv.server.events import EventFeed
from quorumkv.server.metrics import NodeMetrics
from quorumkv.server.state_machine_io import payloads, restore_snapshot
from quorumkv.server.wakeup import Wakeup
from quorumkv.server.worker_thread import WorkerThread
from quorumkv.storage import SnapshotStore, WriteAheadLog

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

APPLY_QUEUE_BATCHES = 8
"""Committed batches that may wait for the apply thread before the Ready loop waits too."""
LARGE_SNAPSHOT_BYTES = 64 << 20
SNAPSHOT_LOG_RATIO = 0.25
"""A snapshot copies the whole store, so with a large store (the last snapshot at least
LARGE_SNAPSHOT_BYTES) the next waits, beyond ``snapshot_threshold`` entries, until the
log has taken in this share of its size: copying then costs at most four bytes written
per byte logged, however large the store grows, instead of a copy of a 1 GB store every
few thousand writes. The log, and a restart's replay, stay within that share."""
LATE_REPORT_INTERVAL_S = 10.0
"""At most one warning about late heartbeats per this many seconds (the rest are counted)."""


def snapshot_due(*, entries: int, threshold: int, log_bytes: int, snapshot_bytes: int
                 ) -> bool:
    """Whether to take a snapshot, ``entries`` (of ``log_bytes``) after the last one,
    which took ``snapshot_bytes``: see SNAPSHOT_LOG_RATIO."""
    if entries < threshold:
        return False
    return snapshot_bytes < LARGE_SNAPSHOT_BYTES or log_bytes >= snapshot_bytes * SNAPSHOT_LOG_RATIO


@dataclass(slots=True)
class _Proposal:
    data: bytes
    future: asyncio.Future[Applied | QuorumKVError]
    durable_future: asyncio.Future[int] | None = None
    on_commit: Callable[[], None] | None = None


@dataclass(slots=True)
class _ConfProposal:
    change: ConfChange
    future: asyncio.Future[Applied | QuorumKVError]


@dataclass(slots=True)
class _Read:
    context: bytes
    future: asyncio.Future[int]


@dataclass(slots=True)
class _Waiter:
    term: int
    future: asyncio.Future[Applied | QuorumKVError]
    durable_future: asyncio.Future[int] | None = None
    on_commit: Callable[[], None] | None = None


@dataclass(slots=True)
class GroupStatus:
    id: int
    term: int
    role: str
    leader: int
    commit: int
    applied: int
    last_index: int
    snapshot_index: int
    voters: list[int] = field(default_factory=list)
    learners: list[int] = field(default_factory=list)
    progress: dict[int, dict[str, Any]] = field(default_factory=dict)


class RaftGroup:
    def __init__(self, *, node_id: int, group_id: int, raft_config: RaftConfig,
                 wal: WriteAheadLog, kv: KVStore, snapshots: SnapshotStore,
                 transport: Any, tick_seconds: float, snapshot_threshold: int,
                 scratch_dir: Path, events: EventFeed, metrics: NodeMetrics,
                 name_of: Callable[[int], str]) -> None:
        self.node_id = node_id
        self.group_id = group_id
        self.wal = wal
        self.kv = kv
        self.snapshots = snapshots
        self.transport = transport
        self.tick_seconds = tick_seconds
        self.snapshot_threshold = snapshot_threshold
        self.scratch_dir = scratch_dir
        rec = wal.recovered
        applied = kv.applied_index
        snap = rec.snapshot
        if snap is not None and applied < snap.index:
            raise QuorumKVError(
                f"state machine at {applied} is behind the log's snapshot at {snap.index}; "
                f"restore it from the snapshot first")
        # The state machine only applies committed entries, so whatever it has
        # applied is committed even if the hard state's commit lagged on disk.
        hs = replace(rec.hard_state, commit=max(rec.hard_state.commit, applied))
        self.raft = RaftNode(raft_config, random.Random(), hard_state=hs, snapshot=snap,
                             entries=rec.entries, applied=applied)
        self._inbox: list[Message] = []
        self._proposals: list[_Proposal] = []
        self._conf_proposals: list[_ConfProposal] = []
        self._reads: list[_Read] = []
        self._waiters: dict[int, _Waiter] = {}
        self._read_waiters: dict[bytes, list[asyncio.Future[int]]] = {}
        """The reads each ReadIndex context stands for (one context per batch)."""
        self._calls: list[Callable[[], None]] = []
        self._applied_event = asyncio.Event()
        self._wakeup = Wakeup()
        self._read_seq = 0
        self._snapshot_task: asyncio.Task[None] | None = None
        self._image_writing: asyncio.Future[None] | None = None
        """Set while a snapshot is being copied out of the store (it holds a read of it)."""
        self._io = WorkerThread("raft-log")
        """The log's writes and fsyncs."""
        self._apply_thread = WorkerThread("apply")
        """The applies and snapshot installs, in log order."""
        self._applying: asyncio.Queue[list[Entry]] = asyncio.Queue(maxsize=APPLY_QUEUE_BATCHES)
        self._apply_failed: Exception | None = None
        self._snapshot_io = WorkerThread("snapshot")
        self._slowest: dict[str, float] = {}
        """Each step's longest time since late heartbeats were last reported."""
        self._late_reported = -LATE_REPORT_INTERVAL_S
        self._late_unreported = 0
        # Known without touching the disk on the event loop when a follower needs it.
        self._latest_snapshot: SnapshotMeta | None = snapshots.latest()
        self._snapshot_bytes = (self._snapshot_size(self._latest_snapshot)
                                if self._latest_snapshot is not None else 0)
        """The size of the last snapshot taken or installed."""
        self._log_bytes = 0
        """Bytes of entries written to the log since the last snapshot began."""
        self._stopping = False
        self.on_leader_change: Callable[[int], None] | None = None
        self.on_membership_change: Callable[[], None] | None = None
        """Called after a membership change or a snapshot was applied."""
        self.on_events: Callable[[list[Event], int], None] | None = None
        """Called with the events of each applied batch and the store's revision after it."""
        self.on_snapshot_installed: Callable[[], None] | None = None
        """The store jumped to a snapshot's state: no events exist for what it skipped."""
        self.events = events
        """Where elections, snapshots and transfers are recorded (the node's feed)."""
        self.metrics = metrics
        """Where disk, apply, proposal and round-trip timings go (the node's metrics)."""
        self.name_of = name_of
        """A member's name for events, by id."""
        self._seen = (self.raft.role, self.raft.term, self.raft.leader)
        """Role, term and leader when last looked at: events are their changes."""
        self._heartbeat_sent: dict[int, float] = {}
        """When the oldest heartbeat still unanswered went to each peer (monotonic)."""
        self._heartbeat_stale = max(1.0, raft_config.election_tick * tick_seconds)

    # -- input from other tasks ------------------------------------------------------

    def deliver(self, m: Message) -> None:
        if isinstance(m, HeartbeatResponse):
            sent = self._heartbeat_sent.pop(m.src, None)
            if sent is not None:
                # Timed on arrival, not when the group task gets to it: a busy round
                # would otherwise count as network time.
                self.metrics.observe_round_trip(m.src, time.monotonic() - sent)
        self._inbox.append(m)
        self._wakeup.set()

    def deliver_snapshot(self, m: InstallSnapshot) -> None:
        """The transport assembled the image of ``m.snapshot`` in our snapshot store."""
        self.deliver(m)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` inside the owning task (it may touch the RaftNode)."""
        self._calls.append(fn)
        self._wakeup.set()

    async def propose(self, data: bytes, *, durable_only: bool = False,
                      on_commit: Callable[[], None] | None = None) -> Applied | int:
        """Propose an entry. Returns once applied (or, ``durable_only``, once in the
        leader's durable log: the ``one`` write level). ``on_commit`` is called when the
        entry is known committed, before it is applied."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Applied | QuorumKVError] = loop.create_future()
        durable: asyncio.Future[int] | None = loop.create_future() if durable_only else None
        self._proposals.append(_Proposal(data=data, future=fut, durable_future=durable,
                                         on_commit=on_commit))
        self._wakeup.set()
        if durable is not None:
            return await durable
        outcome = await fut
        if isinstance(outcome, QuorumKVError):
            raise outcome
        return outcome

    async def propose_conf_change(self, change: ConfChange) -> Applied:
        """Propose a membership change; returns once it is applied here.

        Raises at once what the core refuses (NotLeader, ConfChangeInProgress,
        InvalidArgument), and ProposalDropped if a new leader overwrote it.
        """
        fut: asyncio.Future[Applied | QuorumKVError] = asyncio.get_running_loop().create_future()
        self._conf_proposals.append(_ConfProposal(change=change, future=fut))
        self._wakeup.set()
        outcome = await fut
        if isinstance(outcome, QuorumKVError):
            raise outcome
        return outcome

    async def read_index(self) -> int:
        """A linearizable read point: wait for it to be confirmed and applied locally."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._read_seq += 1
        ctx = self.node_id.to_bytes(8, "big") + self._read_seq.to_bytes(8, "big")
        self._reads.append(_Read(context=ctx, future=fut))
        self._wakeup.set()
        return await fut

    async def wait_applied(self, index: int) -> None:
        while self.kv.applied_index < index:
            self._applied_event.clear()
            await self._applied_event.wait()

    # -- the owning task -------------------------------------------------------------

    async def run(self) -> None:
        """Drive the node until stopped. If the disk fails, every waiting request is
        answered (outcome unknown: peers may have the entry) before the error is raised:
        after a failed write or fsync nothing more may be acknowledged."""
        try:
            await self._run()
        except Exception as e:
            self._fail_all(e)
            raise

    def _fail_all(self, cause: Exception) -> None:
        err = Timeout(f"this node stopped ({cause}); the outcome of the request is unknown: "
                      f"retry on another node", outcome="unknown")
        for w in self._waiters.values():
            self._fail(w.future, w.durable_future, err)
        self._waiters.clear()
        for p in self._proposals:
            self._fail(p.future, p.durable_future, err)
        self._proposals.clear()
        for c in self._conf_proposals:
            self._fail(c.future, None, err)
        self._conf_proposals.clear()
        reads = [r.future for r in self._reads]
        reads += [f for batch in self._read_waiters.values() for f in batch]
        for fut in reads:
            if not fut.done():
                fut.set_exception(err)
        self._reads.clear()
        self._read_waiters.clear()
        self._applied_event.set()

    async def _run(self) -> None:
        applier = asyncio.create_task(self._apply_loop(), name="raft-apply")
        try:
            await self._drive()
            # Stopping: what committed is applied and answered before the store closes.
            await self._applying.join()
            if self._apply_failed is not None:
                raise self._apply_failed
        finally:
            applier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await applier

    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + self.tick_seconds
        while not self._stopping:
            await self._wakeup.sleep_until(next_tick)
            if self._apply_failed is not None:
                raise self._apply_failed
            now = loop.time()
            if now - next_tick >= self.tick_seconds and self.raft.role is Role.LEADER:
                self._late_tick(now - next_tick)
            while now >= next_tick:
                self.raft.tick()
                next_tick += self.tick_seconds
            self._step_inputs()
            self._observe_state()
            while self.raft.has_ready():
                rd = self.raft.ready()
                await self._handle(rd)
                self.raft.advance(rd)
                self._after_advance()
                self._observe_state()

    def transfer_leadership(self, to: int) -> None:
        """Ask the core to hand leadership to ``to`` (errors are logged, not raised)."""
        def transfer() -> None:
            try:
                self.raft.transfer_leadership(to)
            except QuorumKVError as e:
                log.info("leadership transfer to %d not started: %s", to, e.message)
                return
            self.events.record(ev.LEADERSHIP_TRANSFER,
                               f"handing leadership to {self.name_of(to)} (term "
                               f"{self.raft.term})", to=self.name_of(to), term=self.raft.term)
        self.call_soon(transfer)

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()

    def _step_inputs(self) -> None:
        calls, self._calls = self._calls, []
        for fn in calls:
            fn()
        inbox, self._inbox = self._inbox, []
        for m in inbox:
            self.raft.step(m)
        for unreachable in self.transport.unreachable():
            self.raft.report_unreachable(unreachable)
        proposals, self._proposals = self._proposals, []
        for p in proposals:
            try:
                term, index = self.raft.propose(p.data)
            except QuorumKVError as e:
                self._fail(p.future, p.durable_future, e)
                continue
            self._waiters[index] = _Waiter(term=term, future=p.future,
                                           durable_future=p.durable_future,
                                           on_commit=p.on_commit)
        changes, self._conf_proposals = self._conf_proposals, []
        for c in changes:
            try:
                term, index = self.raft.propose_conf_change(c.change)
            except QuorumKVError as e:
                self._fail(c.future, None, e)
                continue
            self._waiters[index] = _Waiter(term=term, future=c.future)
        reads, self._reads = self._reads, []
        if reads:
            # One ReadIndex round for every read that arrived since the last: each of
            # them arrived before this read point is registered, which is all
            # linearizability asks, and a busy leader sends one heartbeat round, not
            # one per read.
            context = reads[-1].context
            self._read_waiters[context] = [r.future for r in reads]
            self.raft.read_index(context)

    def _fail(self, fut: asyncio.Future[Applied | QuorumKVError],
              durable: asyncio.Future[int] | None, err: QuorumKVError) -> None:
        if not fut.done():
            self.metrics.proposals_failed.inc()
            fut.set_result(err)
        if durable is not None and not durable.done():
            durable.set_exception(err)

    async def _timed(self, step: str, awaitable: Awaitable[T]) -> T:
        started = time.perf_counter()
        result = await awaitable
        self._note_step(step, time.perf_counter() - started)
        return result

    def _note_step(self, step: str, seconds: float) -> None:
        if seconds > self._slowest.get(step, 0.0):
            self._slowest[step] = seconds

    async def _in(self, thread: WorkerThread, step: str | None,
                  fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` in ``thread``; ``step`` names it in the late-heartbeat report."""
        started = time.perf_counter()
        result = await thread.call(fn, *args, **kwargs)
        if step is not None:
            self._note_step(step, time.perf_counter() - started)
        return result

    def _late_tick(self, late: float) -> None:
        """The ticks ran ``late`` seconds after they were due, so a leader's heartbeats
        went out that late too: followers that hear nothing for an election timeout
        start an election. Counted, and reported with what took the time, as etcd
        warns of a leader that "failed to send out heartbeat on time"."""
        self.metrics.heartbeats_late.inc()
        now = time.monotonic()
        if now - self._late_reported < LATE_REPORT_INTERVAL_S:
            self._late_unreported += 1
            return
        steps = sorted(self._slowest.items(), key=lambda kv: -kv[1])
        if steps and steps[0][1] >= late / 2:
            cause = ", ".join(f"{step} {seconds:.3f}s" for step, seconds in steps[:3])
            why = f"waiting on the disk: the slowest steps were {cause}"
        else:
            why = ("the event loop was busy elsewhere (more client requests than this "
                   "node's CPU can serve?)")
        more = (f" ({self._late_unreported} more since the last report)"
                if self._late_unreported else "")
        log.warning("heartbeats went out %.3fs late%s; %s. Followers start an election "
                    "after %.1fs without one", late, more, why,
                    self.tick_seconds * self.raft.config.election_tick)
        self._late_reported, self._late_unreported = now, 0
        self._slowest.clear()

    async def _handle(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.role, rd.soft_state.leader)
        for m in rd.messages:
            self._send(m)
        if rd.entries:
            self._log_bytes += sum(len(e.data) for e in rd.entries)
        if (not rd.must_sync and rd.snapshot is None and not rd.entries
                and rd.hard_state is not None and self._snapshot_task is None):
            # Only the commit index moved: the log buffers that in memory until its next
            # sync, which costs far less than the hand-off to its thread. The loop waits
            # on the disk only if this record starts a new segment (once per segment).
            # A snapshot task may hold the log's lock through fsyncs while it releases
            # segments: then the thread takes the record instead.
            self.wal.save_hard_state(rd.hard_state)
        elif rd.snapshot is not None or rd.entries or rd.hard_state is not None:
            appending, syncing = await self._in(self._io, "the log's write and fsync",
                                                self._persist, rd)
            self.metrics.wal_append.observe(appending)
            if syncing is not None:
                self.metrics.wal_fsync.observe(syncing)
        for w_index in [e.index for e in rd.entries]:
            w = self._waiters.get(w_index)
            if w is not None and w.durable_future is not None and not w.durable_future.done():
                w.durable_future.set_result(w_index)
        for m in rd.persisted_messages:
            self._send(m)
        if rd.snapshot is not None:
            # The snapshot replaces the store: every batch before it goes in first, and
            # a snapshot being copied out of the store must finish (the restore closes
            # the store under any read still open on it).
            await self._timed("waiting for the applies", self._applying.join())
            if self._image_writing is not None:
                await self._timed("finishing a snapshot", asyncio.shield(self._image_writing))
            await self._install_snapshot(rd.snapshot)
        if rd.committed_entries:
            self._committed(rd.committed_entries)
            # Waits only when the applies are a queue's length behind (back-pressure).
            await self._timed("waiting for the applies",
                              self._applying.put(list(rd.committed_entries)))
        for rs in rd.read_states:
            self._release_read(rs)
        for ctx in rd.dropped_reads:
            for fut in self._read_waiters.pop(ctx, ()):
                if not fut.done():
                    fut.set_exception(NotLeader("no leader could confirm the read",
                                                leader=self.raft.leader or None))

    def _persist(self, rd: Ready) -> tuple[float, float | None]:
        """Returns the seconds spent appending and syncing (None: no sync was needed)."""
        started = time.perf_counter()
        if rd.snapshot is not None:
            self.wal.save_snapshot_marker(rd.snapshot)
        if rd.entries:
            self.wal.append(rd.entries)
        if rd.hard_state is not None:
            self.wal.save_hard_state(rd.hard_state)
        appended = time.perf_counter()
        if rd.must_sync or rd.snapshot is not None:
            self.wal.sync()
            return appended - started, time.perf_counter() - appended
        return appended - started, None

    async def _install_snapshot(self, meta: SnapshotMeta) -> None:
        started = time.monotonic()
        size = await self._in(self._apply_thread, "installing a snapshot", self._restore, meta)
        self._latest_snapshot = meta
        self._snapshot_bytes, self._log_bytes = size, 0
        self.metrics.snapshot_installed(size)
        leader = self.raft.leader
        source = self.name_of(leader) if leader != NONE else None
        self.events.record(ev.SNAPSHOT_INSTALLED,
                           f"installed a snapshot at index {meta.index} (term {meta.term}, "
                           f"{size} bytes) from {source or 'the leader'}",
                           index=meta.index, term=meta.term, size_bytes=size, leader=source,
                           duration_s=round(time.monotonic() - started, 6))
        for index in [i for i in self._waiters if i <= meta.index]:
            w = self._waiters.pop(index)
            self._fail(w.future, w.durable_future,
                       Timeout("the outcome of this write is unknown: the node installed a "
                               "snapshot over it"))
        self._applied_event.set()
        if self.on_snapshot_installed is not None:
            try:
                self.on_snapshot_installed()
            except Exception:
                log.exception("handling an installed snapshot failed")
        self._membership_changed()

    def _membership_changed(self) -> None:
        if self.on_membership_change is not None:
            try:
                self.on_membership_change()
            except Exception:
                log.exception("handling a membership change failed")

    def _committed(self, entries: list[Entry]) -> None:
        for e in entries:
            w = self._waiters.get(e.index)
            if w is not None and w.on_commit is not None and w.term == e.term:
                try:
                    w.on_commit()
                except Exception:
                    log.exception("a commit callback failed")

    async def _apply_loop(self) -> None:
        """Apply committed batches in log order beside the Ready loop (those that queued
        up while the last apply ran, together).

        An apply ends with LMDB's fdatasync, which on a large store can take far
        longer than a heartbeat interval; run inline, it held up the next Ready and
        so the heartbeats, and followers started needless elections. The core
        counts a batch as applied when its Ready is advanced (it needs nothing from
        the store), so the store may lag a few batches behind: everything that
        reads the store waits on its own applied index (``wait_applied``). After a
        failure the rest is drained unapplied and ``_run`` raises the error."""
        while True:
            entries = await self._applying.get()
            taken = 1
            # Whatever queued up meanwhile goes into the same transaction: one
            # fdatasync for all, where LMDB's commit is most of an apply's cost.
            while not self._applying.empty():
                entries += self._applying.get_nowait()
                taken += 1
            try:
                if self._apply_failed is None:
                    await self._apply(entries)
            except Exception as e:
                self._apply_failed = e
                self._wakeup.set()
            finally:
                for _ in range(taken):
                    self._applying.task_done()

    def _apply_entries(self, entries: list[Entry]
                       ) -> list[Applied | AlreadyApplied | RequestError]:
        # In the apply thread: the store's membership is then that of every earlier batch.
        return self.kv.apply_batch(payloads(entries, self.kv.conf_state))

    async def _apply(self, entries: list[Entry]) -> None:
        started = time.perf_counter()
        outcomes = await self._in(self._apply_thread, None, self._apply_entries, entries)
        self.metrics.apply_duration.observe(time.perf_counter() - started)
        if self.on_events is not None:
            events = [e for o in outcomes if isinstance(o, Applied) for e in o.events]
            try:
                self.on_events(events, self.kv.revision)
            except Exception:
                log.exception("delivering applied events failed")
        for e, outcome in zip(entries, outcomes, strict=True):
            w = self._waiters.pop(e.index, None)
            if w is None:
                continue
            if w.term != e.term:
                self._fail(w.future, w.durable_future, ProposalDropped(
                    "the proposal was overwritten by a new leader; it was not applied"))
            elif isinstance(outcome, QuorumKVError):
                if not w.future.done():
                    self.metrics.proposals_committed.inc()
                    w.future.set_result(outcome)
            elif isinstance(outcome, Applied) and not w.future.done():
                self.metrics.proposals_committed.inc()
                w.future.set_result(outcome)
        self._applied_event.set()
        if any(e.type is EntryType.CONF_CHANGE for e in entries):
            self._membership_changed()
        self._maybe_snapshot()

    def _release_read(self, rs: ReadState) -> None:
        for fut in self._read_waiters.pop(rs.context, ()):
            if not fut.done():
                fut.set_result(rs.index)

    def _after_advance(self) -> None:
        self._maybe_snapshot()

    def _maybe_snapshot(self) -> None:
        # Counted from the store's applied index, which the snapshot will hold (the
        # core's runs ahead of it by the batches still queued for the apply thread).
        raft = self.raft
        if self._snapshot_task is None and snapshot_due(
                entries=self.kv.applied_index - raft.log.snapshot.index,
                threshold=self.snapshot_threshold, log_bytes=self._log_bytes,
                snapshot_bytes=self._snapshot_bytes):
            self._log_bytes = 0
            self._snapshot_task = asyncio.get_running_loop().create_task(self._take_snapshot())

    def _observe_state(self) -> None:
        """Record what changed in the core's role, term and leader since the last look.

        Derived here, from the outside, because the core keeps no clock and logs
        nothing; several changes within one round (a lone voter's pre-vote, election
        and win) show as one, which is all an operator needs.
        """
        raft = self.raft
        now = (raft.role, raft.term, raft.leader)
        if now == self._seen:
            return
        (old_role, old_term, old_leader), self._seen = self._seen, now
        role, term, leader = now
        name = self.name_of
        if leader not in (NONE, old_leader):
            self.metrics.leader_changes.inc()
        record = self.events.record
        if old_leader not in (NONE, self.node_id) and leader == NONE:
            record(ev.LEADER_LOST, f"lost leader {name(old_leader)} (of term {old_term})",
                   level=logging.WARNING, previous_leader=name(old_leader), term=term,
                   previous_term=old_term)
        leader_name = name(leader) if leader != NONE else None
        if role is not old_role:
            if role is Role.LEADER:
                record(ev.BECAME_LEADER, f"became the leader (term {term})", term=term,
                       previous_term=old_term)
            elif role is Role.CANDIDATE:
                record(ev.ELECTION_STARTED, f"started an election (term {term})", term=term,
                       previous_term=old_term)
            elif role is Role.PRE_CANDIDATE:
                record(ev.PRE_VOTE_STARTED, f"started a pre-vote for term {term + 1}",
                       term=term, previous_term=old_term)
            else:
                record(ev.BECAME_FOLLOWER, f"became a follower (term {term}) of "
                       f"{leader_name or 'no leader yet'}", term=term, previous_term=old_term,
                       leader=leader_name, previous_role=old_role.value)
        elif leader not in (NONE, old_leader):
            record(ev.LEADER_CHANGED, f"following leader {leader_name} (term {term})",
                   term=term, previous_term=old_term, leader=leader_name,
                   previous_leader=name(old_leader) if old_leader != NONE else None)
        elif term != old_term:
            record(ev.TERM_CHANGED, f"term changed from {old_term} to {term}", term=term,
                   previous_term=old_term)

    def pending_proposals(self) -> int:
        """Proposals made here and not resolved yet (queued or in the log)."""
        return len(self._proposals) + len(self._conf_proposals) + len(self._waiters)

    def _on_soft_state(self, role: Role, leader: int) -> None:
        # A deposed leader's pending proposals may still commit under the new
        # leader, or not: they are resolved by what gets applied at their
        # index (or time out with an unknown outcome), never failed early.
        if self.on_leader_change is not None:
            self.on_leader_change(leader)

    def _send(self, m: Message) -> None:
        if isinstance(m, InstallSnapshot):
            latest = self._latest_snapshot
            if latest is None:
                self.call_soon(lambda: self.raft.report_snapshot(m.dst, success=False))
                return
            if latest != m.snapshot:
                m = replace(m, snapshot=latest)
            dst = m.dst
            index = m.snapshot.index

            def done(ok: bool) -> None:
                # Reported first: the leader sends this follower nothing else until then.
                self.call_soon(lambda: self.raft.report_snapshot(dst, success=ok))
                self.metrics.snapshots_sent.labels("ok" if ok else "failed").inc()
                peer = self.name_of(dst)
                if ok:
                    self.events.record(ev.SNAPSHOT_SENT, f"sent the snapshot at index {index} "
                                       f"to {peer}", peer=peer, index=index)
                else:
                    self.events.record(ev.SNAPSHOT_SEND_FAILED, f"sending the snapshot at "
                                       f"index {index} to {peer} failed (will retry)",
                                       level=logging.WARNING, peer=peer, index=index)

            self.transport.send_snapshot(m, done)
            return
        if isinstance(m, Heartbeat):
            now = time.monotonic()
            sent = self._heartbeat_sent.get(m.dst)
            # Keep the oldest unanswered one, unless an answer was lost (a dead peer, a
            # dropped queue): then its time would turn into a false giant round trip.
            if sent is None or now - sent > self._heartbeat_stale:
                self._heartbeat_sent[m.dst] = now
        self.transport.send(m)

    # -- snapshots ----------------------------------------------------------------------

    async def _take_snapshot(self) -> None:
        try:
            started = time.monotonic()
            writing = self._image_writing = asyncio.get_running_loop().create_future()
            try:
                meta = await self._in(self._snapshot_io, None, self._write_snapshot)
            finally:
                self._image_writing = None
                writing.set_result(None)
            seconds = time.monotonic() - started
            size = await self._in(self._snapshot_io, None, self._snapshot_size, meta)
            self._latest_snapshot = meta
            self._snapshot_bytes = size
            self.metrics.snapshot_saved(size, seconds)
            done = asyncio.get_running_loop().create_future()

            def compact() -> None:
                try:
                    if meta.index > self.raft.log.snapshot.index:
                        self.raft.compact(meta.index, meta.conf)
                finally:
                    done.set_result(None)

            self.call_soon(compact)
            await done
            await self._in(self._snapshot_io, None, self._release_log, meta)
            self.events.record(ev.SNAPSHOT_CREATED,
                               f"snapshot at index {meta.index} (term {meta.term}) saved, "
                               f"{size} bytes in {seconds:.3f}s; log compacted",
                               index=meta.index, term=meta.term, size_bytes=size,
                               duration_s=round(seconds, 6))
        except Exception:
            log.exception("taking a snapshot failed; will retry later")
        finally:
            self._snapshot_task = None

    def _restore(self, meta: SnapshotMeta) -> int:
        """Returns the snapshot file's size."""
        restored = restore_snapshot(self.kv, self.snapshots, meta, self.scratch_dir)
        assert restored.index == meta.index, (restored, meta)
        return self._snapshot_size(meta)

    def _snapshot_size(self, meta: SnapshotMeta) -> int:
        try:
            return self.snapshots.path_for(meta).stat().st_size
        except OSError:
            return 0  # pruned meanwhile: the size is only reported

    def _write_snapshot(self) -> SnapshotMeta:
        started = time.monotonic()
        with self.kv.pinned_image() as (meta, image):
            self.snapshots.save_streamed(meta, image.write_to)
        self.snapshots.prune(keep=2)
        log.debug("snapshot written in %.3fs", time.monotonic() - started)
        return meta

    def _release_log(self, meta: SnapshotMeta) -> None:
        self.wal.save_snapshot_marker(meta)
        self.wal.sync()
        self.wal.release_before(meta.index + 1)

    async def close(self) -> None:
        task = self._snapshot_task
        if task is not None and not task.done():
            if self._image_writing is not None:
                await asyncio.shield(self._image_writing)
            # What is left of it waits for the stopped Raft task (the log's compaction):
            # drop that. The snapshot file is saved; the log is cut at the next one.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # Idle by now, unless the group stopped on an error while a write or an apply
        # was running: that one must end before the caller closes the log and store.
        for thread in (self._io, self._apply_thread, self._snapshot_io):
            await thread.shutdown()

    # -- introspection ---------------------------------------------------------------------

    def status(self) -> GroupStatus:
        r = self.raft
        progress = {}
        for k, pr in r.progress.items():
            progress[k] = {"match": pr.match, "next": pr.next, "state": pr.state.value}
        return GroupStatus(id=r.id, term=r.term, role=r.role.value, leader=r.leader,
                           commit=r.log.committed, applied=self.kv.applied_index,
                           last_index=r.log.last_index, snapshot_index=r.log.snapshot.index,
                           voters=sorted(r.conf.voters), learners=sorted(r.conf.learners),
                           progress=progress)
