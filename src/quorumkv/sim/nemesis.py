"""The fault schedule: crashes, partitions, membership changes and leadership transfers.

Every decision comes from the run's ``nemesis`` random stream, so a seed
replays the same faults at the same virtual times.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from quorumkv.errors import QuorumKVError
from quorumkv.raft.entries import ConfChange, ConfChangeType
from quorumkv.raft.ready import Role

if TYPE_CHECKING:
    from quorumkv.sim.cluster import SimCluster


class Nemesis:
    def __init__(self, cluster: SimCluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.r = rng
        self.active = True
        self.pending_removal: tuple[int, int, int, bytes] | None = None
        """(victim, term, index, entry data) of a proposed removal not yet known committed."""

    def start(self) -> None:
        opt = self.cluster.options
        if opt.crash_interval_ms:
            self._every(opt.crash_interval_ms, self._crash_one)
        if opt.partition_interval_ms:
            self._every(opt.partition_interval_ms, self._partition)
        if opt.membership_interval_ms:
            self._every(opt.membership_interval_ms, self._membership)
        if opt.transfer_interval_ms:
            self._every(opt.transfer_interval_ms, self._transfer)

    def stop(self) -> None:
        self.active = False

    def _every(self, mean_ms: int, action: object) -> None:
        assert callable(action)

        def fire() -> None:
            if not self.active:
                return
            action()
            self.cluster.loop.after(int(self.r.expovariate(1 / mean_ms)) + 1, fire)

        self.cluster.loop.after(int(self.r.expovariate(1 / mean_ms)) + 1, fire)

    # -- crashes ----------------------------------------------------------------------

    def _crash_one(self) -> None:
        up = [n for n in self.cluster.member_nodes() if n.up]
        if up:
            self.crash_and_restart_later(self.r.choice(up).id)

    def crash_and_restart_later(self, node_id: int) -> None:
        node = self.cluster.nodes[node_id]
        node.crash()
        self.cluster.stats["crashes"] += 1

        def restart() -> None:
            if not node.up and not node.removed:
                node.start()
                self.cluster.log(f"node {node_id} restarted")

        opt = self.cluster.options
        self.cluster.loop.after(self.r.randint(opt.restart_min_ms, opt.restart_max_ms), restart)

    # -- partitions -------------------------------------------------------------------

    def _partition(self) -> None:
        c = self.cluster
        ids = [n.id for n in c.member_nodes()]
        if len(ids) < 2:
            return
        net = c.network
        net.heal()
        shape = self.r.choice(["halves", "isolate", "isolate_leader", "one_way", "bridge"])
        r = self.r
        if shape in ("isolate", "isolate_leader"):
            leader = c.current_leader()
            victim = leader.id if shape == "isolate_leader" and leader else r.choice(ids)
            for other in ids:
                if other != victim:
                    net.blocked |= {(victim, other), (other, victim)}
            desc = f"isolated node {victim}"
        elif shape == "one_way":
            pairs = [(a, b) for a in ids for b in ids if a != b]
            chosen = r.sample(pairs, r.randint(1, max(1, len(pairs) // 3)))
            net.blocked |= set(chosen)
            desc = "one-way cuts " + ", ".join(f"{a}->{b}" for a, b in sorted(chosen))
        elif shape == "bridge" and len(ids) >= 3:
            shuffled = ids[:]
            r.shuffle(shuffled)
            bridge, rest = shuffled[0], shuffled[1:]
            left, right = rest[: len(rest) // 2], rest[len(rest) // 2:]
            for a in left:
                for b in right:
                    net.blocked |= {(a, b), (b, a)}
            desc = f"bridge via {bridge}: {sorted(left)} | {sorted(right)}"
        else:
            shuffled = ids[:]
            r.shuffle(shuffled)
            cut = r.randint(1, len(ids) - 1)
            left, right = shuffled[:cut], shuffled[cut:]
            for a in left:
                for b in right:
                    net.blocked |= {(a, b), (b, a)}
            desc = f"partition {sorted(left)} | {sorted(right)}"
        c.stats["partitions"] += 1
        c.log(desc)

        def heal() -> None:
            if self.active:
                net.heal()
                c.log("partition healed")

        c.loop.after(r.randint(50, 1_000), heal)

    # -- membership ---------------------------------------------------------------------

    def _membership(self) -> None:
        c = self.cluster
        self.check_removal()
        leader = c.current_leader()
        if leader is None or leader.raft is None or self.pending_removal is not None:
            return
        raft = leader.raft
        if raft.pending_conf_index > raft.log.applied:
            return
        conf = raft.conf
        try:
            if conf.learners:
                learner = min(conf.learners)
                pr = raft.progress.get(learner)
                if pr is not None and pr.match + 4 >= raft.log.last_index:
                    raft.propose_conf_change(ConfChange(type=ConfChangeType.ADD_VOTER,
                                                        node_id=learner))
                    c.log(f"promote learner {learner}")
                    c.stats["conf_changes"] += 1
            elif len(conf.voters) >= c.options.nodes and len(conf.voters) > 1:
                victim = self.r.choice(sorted(conf.voters))
                cc = ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=victim)
                term, index = raft.propose_conf_change(cc)
                self.pending_removal = (victim, term, index, cc.encode())
                c.log(f"remove node {victim} (leader {leader.id})")
                c.stats["conf_changes"] += 1
            elif len(conf.voters) < c.options.nodes and c.can_add_node():
                new = c.add_node()
                raft.propose_conf_change(ConfChange(type=ConfChangeType.ADD_LEARNER,
                                                    node_id=new.id))
                c.log(f"add node {new.id} as learner")
                c.stats["conf_changes"] += 1
        except QuorumKVError as e:
            c.log(f"membership change refused: {e}")
        leader.process_ready()

    def check_removal(self) -> None:
        """Stop a removed node for good once its removal is known committed."""
        if self.pending_removal is None:
            return
        victim, term, index, data = self.pending_removal
        applied = self.cluster.monitor.applied.get(index)
        if applied is None:
            return  # not decided yet: some entry will be applied at that index eventually
        self.pending_removal = None
        if applied == (term, data):
            self.cluster.nodes[victim].decommission()
            self.cluster.log(f"node {victim} removed and stopped")

    # -- leadership transfer --------------------------------------------------------------

    def _transfer(self) -> None:
        c = self.cluster
        leader = c.current_leader()
        if leader is None or leader.raft is None or leader.raft.role is not Role.LEADER:
            return
        others = sorted(v for v in leader.raft.conf.voters if v != leader.id)
        if not others:
            return
        to = self.r.choice(others)
        try:
            leader.raft.transfer_leadership(to)
            c.log(f"transfer leadership {leader.id} -> {to}")
            c.stats["transfers"] += 1
        except QuorumKVError as e:
            c.log(f"transfer refused: {e}")
        leader.process_ready()
