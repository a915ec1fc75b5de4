"""One simulated quorumkv node: the real Raft core driven exactly as the server will drive it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from quorumkv.errors import QuorumKVError
from quorumkv.kv import Put, Txn
from quorumkv.raft.config import RaftConfig
from quorumkv.raft.messages import InstallSnapshot, Message
from quorumkv.raft.node import RaftNode
from quorumkv.raft.ready import ReadState, Ready, Role
from quorumkv.sim.disk import SimDisk
from quorumkv.sim.options import TICK_MS, sub_rng
from quorumkv.sim.state_machine import SimStateMachine, encode

if TYPE_CHECKING:
    from quorumkv.sim.cluster import SimCluster

Reply = Callable[[str, object, int], None]
"""reply(status, output, leader_hint): status is "ok", "fail", "not_leader" or "retry"."""


@dataclass(slots=True)
class PendingWrite:
    term: int
    reply: Reply


class SimNode:
    def __init__(self, cluster: SimCluster, node_id: int) -> None:
        self.cluster = cluster
        self.id = node_id
        seed = cluster.options.seed
        self.disk = SimDisk(sub_rng(seed, f"disk-{node_id}"))
        self._tick_rng = sub_rng(seed, f"clock-{node_id}")
        self.up = False
        self.removed = False
        self.incarnation = 0
        self.raft: RaftNode | None = None
        self.sm: SimStateMachine | None = None
        self._writes: dict[int, PendingWrite] = {}
        self._reads: dict[bytes, tuple[str, Reply]] = {}
        self._ready_reads: list[ReadState] = []
        self._received: dict[tuple[int, int], bytes] = {}

    # -- lifecycle -----------------------------------------------------------------

    def _config(self) -> RaftConfig:
        opt = self.cluster.options
        return RaftConfig(id=self.id, election_tick=opt.election_tick, heartbeat_tick=1,
                          max_inflight=8, max_msg_bytes=opt.max_msg_bytes,
                          lease_ticks=opt.lease_ticks, injected_bugs=opt.bugs)

    def start(self, *, bootstrap: list[int] | None = None) -> None:
        """Start from the disk (restart), as a new cluster member, or empty (to join)."""
        assert not self.up and not self.removed
        self.incarnation += 1
        rng = sub_rng(self.cluster.options.seed, f"raft-{self.id}-{self.incarnation}")
        d = self.disk.durable
        if bootstrap is not None:
            # Creating the data directory: durable before the node first runs.
            hs, entries = RaftNode.bootstrap_log(bootstrap)
            self.disk.write("entries", entries)
            self.disk.write("hard_state", hs)
            self.disk.sync()
        applied = d.snapshot.index if d.snapshot else 0
        self.raft = RaftNode(self._config(), rng, hard_state=d.hard_state,
                             snapshot=d.snapshot, entries=d.live_entries(), applied=applied)
        # The state machine is rebuilt from the snapshot, then the log replays.
        self.sm = SimStateMachine()
        if d.snapshot is not None:
            self.sm.restore(d.snapshot_data)
            assert self.sm.applied_index == applied
        self.up = True
        self._schedule_tick()
        self.process_ready()

    def crash(self) -> None:
        if not self.up:
            return
        lost = self.disk.crash()
        self.up = False
        self.raft = None
        if self.sm is not None:
            self.sm.close()
            self.sm = None
        self._writes.clear()
        self._reads.clear()
        self._ready_reads.clear()
        self._received.clear()
        self.cluster.log(f"node {self.id} crashed ({lost} unsynced writes lost)")

    def decommission(self) -> None:
        self.crash()
        self.removed = True

    def _schedule_tick(self) -> None:
        inc = self.incarnation
        drift = self._tick_rng.randint(-1, 1)
        self.cluster.loop.after(TICK_MS + drift, lambda: self._on_tick(inc))

    def _alive(self, incarnation: int) -> bool:
        return self.up and self.incarnation == incarnation

    def _on_tick(self, incarnation: int) -> None:
        if not self._alive(incarnation):
            return
        assert self.raft is not None
        self.raft.tick()
        self.process_ready()
        if self._alive(incarnation):
            self._schedule_tick()

    # -- network ---------------------------------------------------------------------

    def on_message(self, m: Message, snapshot_data: bytes | None) -> None:
        if not self.up or self.raft is None:
            # A real transport sees the connection refused and tells the sender.
            sender = self.cluster.nodes.get(m.src)
            if sender is not None and sender.up and sender.raft is not None:
                sender.raft.report_unreachable(self.id)
            return
        if isinstance(m, InstallSnapshot) and snapshot_data is not None:
            self._received[(m.snapshot.index, m.snapshot.term)] = snapshot_data
        self.raft.step(m)
        self.process_ready()

    def _send(self, m: Message) -> None:
        cluster = self.cluster
        data: bytes | None = None
        on_lost: Callable[[], None] | None = None
        if isinstance(m, InstallSnapshot):
            d = self.disk.durable
            assert d.snapshot is not None, "asked to send a snapshot that was never saved"
            if d.snapshot != m.snapshot:
                m = dataclasses.replace(m, snapshot=d.snapshot)
            data = d.snapshot_data
            inc, dst = self.incarnation, m.dst

            def report(ok: bool) -> None:
                if self._alive(inc) and self.raft is not None:
                    self.raft.report_snapshot(dst, success=ok)
                    self.process_ready()

            on_lost = lambda: report(False)  # noqa: E731
            cluster.loop.after(cluster.options.max_delay_ms * 2 + 5, lambda: report(True))
            cluster.stats["snapshots_sent"] += 1
        target = cluster.nodes.get(m.dst)
        if target is None:
            return
        cluster.network.deliver(m.src, m.dst, lambda: target.on_message(m, data), on_lost)

    # -- the Ready loop ----------------------------------------------------------------

    def process_ready(self) -> None:
        while self.up and self.raft is not None and self.raft.has_ready():
            raft = self.raft
            rd = raft.ready()
            if not self._handle(rd):
                return  # crashed mid-persist
            raft.advance(rd)
            self._serve_reads()
            self._maybe_snapshot()

    def _handle(self, rd: Ready) -> bool:
        assert self.raft is not None and self.sm is not None
        sm = self.sm
        cluster = self.cluster
        if rd.soft_state is not None and rd.soft_state.role is Role.LEADER:
            cluster.monitor.on_leader(self.id, rd.soft_state.term, self.raft.log)
            cluster.on_leader(self.id, rd.soft_state.term)
        # 1. The leader's appends may leave before its own write (§10.2.1).
        for m in rd.messages:
            self._send(m)
        # 2. Persist.
        snapshot_data = b""
        if rd.snapshot is not None:
            snapshot_data = self._received.pop((rd.snapshot.index, rd.snapshot.term))
            self.disk.write("snapshot", (rd.snapshot, snapshot_data))
        if rd.entries:
            cluster.monitor.on_persist(self.id, rd.entries)
            self.disk.write("entries", list(rd.entries))
        if rd.hard_state is not None:
            self.disk.write("hard_state", rd.hard_state)
        if rd.must_sync or rd.hard_state is not None:
            power_cut = cluster.fault_rng.random() < cluster.options.crash_in_fsync_rate
            if cluster.faults_on and power_cut:
                cluster.log(f"node {self.id} loses power during fsync")
                cluster.nemesis.crash_and_restart_later(self.id)
                return False
            self.disk.sync()
        # 3. Durable now: votes and acks may go.
        for m in rd.persisted_messages:
            self._send(m)
        # 4. Apply.
        if rd.snapshot is not None:
            sm.restore(snapshot_data)
            assert sm.applied_index == rd.snapshot.index
            cluster.stats["snapshots_installed"] += 1
            for index in [i for i in self._writes if i <= rd.snapshot.index]:
                del self._writes[index]  # outcome unknown to us; the client times out
        if rd.committed_entries:
            assert rd.committed_entries[0].index == sm.applied_index + 1, (
                f"node {self.id} applies {rd.committed_entries[0].index} "
                f"after {sm.applied_index}")
        results = sm.apply(rd.committed_entries)
        for e, result in zip(rd.committed_entries, results, strict=True):
            cluster.monitor.on_apply(self.id, e)
            pending = self._writes.pop(e.index, None)
            if pending is not None:
                if pending.term == e.term:
                    pending.reply("ok", result, self.id)
                else:
                    pending.reply("fail", None, self.raft.leader)
        # 5. Reads.
        self._ready_reads.extend(rd.read_states)
        for ctx in rd.dropped_reads:
            entry = self._reads.pop(ctx, None)
            if entry is not None:
                entry[1]("retry", None, self.raft.leader)
        return True

    def _serve_reads(self) -> None:
        assert self.sm is not None
        still: list[ReadState] = []
        for rs in self._ready_reads:
            if self.sm.applied_index >= rs.index:
                entry = self._reads.pop(rs.context, None)
                if entry is not None:
                    entry[1]("ok", self.sm.get(entry[0]), self.id)
            else:
                still.append(rs)
        self._ready_reads = still

    def _maybe_snapshot(self) -> None:
        raft = self.raft
        assert raft is not None and self.sm is not None
        threshold = self.cluster.options.snapshot_threshold
        if raft.log.applied - raft.log.snapshot.index >= threshold:
            meta = raft.compact(raft.log.applied)
            self.disk.save_snapshot(meta, self.sm.snapshot())
            self.cluster.stats["snapshots_taken"] += 1

    # -- client requests -------------------------------------------------------------------

    def client_write(self, cmd: Put | Txn, reply: Reply) -> None:
        if not self.up or self.raft is None:
            reply("retry", None, 0)
            return
        # The leader stamps the command with its clock (virtual ns) at proposal.
        payload = encode(cmd, self.cluster.loop.now * 1_000_000)
        try:
            term, index = self.raft.propose(payload)
        except QuorumKVError:
            reply("not_leader", None, self.raft.leader)
            return
        self._writes[index] = PendingWrite(term=term, reply=reply)
        self.process_ready()

    def client_read(self, key: str, reply: Reply) -> None:
        if not self.up or self.raft is None:
            reply("retry", None, 0)
            return
        ctx = self.cluster.new_read_context()
        self._reads[ctx] = (key, reply)
        self.raft.read_index(ctx)
        self.process_ready()

