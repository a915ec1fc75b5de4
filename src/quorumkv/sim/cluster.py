"""A whole simulated cluster and the run that judges it.

A run has three phases:

1. **Faults**: clients work while the nemesis crashes nodes, cuts links and
   changes membership, and the network loses, duplicates and reorders.
   Safety is checked after every event.
2. **Liveness**: everything heals (nodes restart, links mend, the network
   stops misbehaving). Within a budget of virtual time a leader must be
   elected and every client must complete an operation.
3. **Verdict**: clients stop; all members must converge to the same state,
   logs must match, and the clients' history must be linearizable.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

from quorumkv.raft.ready import Role
from quorumkv.sim.client import SimClient
from quorumkv.sim.events import EventLoop
from quorumkv.sim.nemesis import Nemesis
from quorumkv.sim.network import SimNetwork
from quorumkv.sim.node_driver import SimNode
from quorumkv.sim.options import TICK_MS, SimOptions, sub_rng
from quorumkv.sim.safety import SafetyMonitor, SafetyViolation
from quorumkv.verify.history import History
from quorumkv.verify.linearizability import check_kv

MAX_EVENTS = 3_000_000
LOG_MATCHING_EVERY = 400


@dataclass(slots=True)
class SimResult:
    seed: int
    nodes: int
    ok: bool
    violation: str | None
    stats: dict[str, int] = field(default_factory=dict)
    timeline: list[str] = field(default_factory=list)

    def replay_command(self) -> str:
        return f"python -m quorumkv.sim run --seed {self.seed} --nodes {self.nodes} --verbose"


class LivenessFailure(Exception):
    """After every fault healed, the cluster did not make progress within its budget."""


class SimCluster:
    def __init__(self, options: SimOptions, *, verbose: bool = False) -> None:
        self.options = options
        self.verbose = verbose
        self.loop = EventLoop()
        self.network = SimNetwork(self.loop, options, sub_rng(options.seed, "network"))
        self.fault_rng = sub_rng(options.seed, "faults")
        self.monitor = SafetyMonitor()
        self.history = History()
        self.nodes: dict[int, SimNode] = {}
        self.nemesis = Nemesis(self, sub_rng(options.seed, "nemesis"))
        self.clients = [SimClient(self, i + 1, sub_rng(options.seed, f"client-{i + 1}"))
                        for i in range(options.clients)]
        self.faults_on = True
        self.healed = False
        self.stats: Counter[str] = Counter()
        self.timeline: list[str] = []
        self._ids = itertools.count(1)
        self._next_ctx = itertools.count(1)
        self._finished = False

    # -- membership of the simulation itself --------------------------------------------

    def add_node(self) -> SimNode:
        node = SimNode(self, next(self._ids))
        self.nodes[node.id] = node
        node.start()
        return node

    def can_add_node(self) -> bool:
        return len(self.nodes) < self.options.nodes + 6

    def member_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if not n.removed]

    def live_member_ids(self) -> list[int]:
        return [n.id for n in self.member_nodes() if n.up]

    def current_leader(self) -> SimNode | None:
        best: SimNode | None = None
        for n in self.member_nodes():
            if n.up and n.raft is not None and n.raft.role is Role.LEADER and (
                    best is None or best.raft is None or n.raft.term > best.raft.term):
                best = n
        return best

    # -- hooks ------------------------------------------------------------------------------

    def on_leader(self, node_id: int, term: int) -> None:
        self.stats["elections_won"] += 1
        self.log(f"node {node_id} leads term {term}")

    def log(self, text: str) -> None:
        line = f"t={self.loop.now:>6}ms  {text}"
        self.timeline.append(line)
        if self.verbose:
            print(line, flush=True)

    def new_read_context(self) -> bytes:
        return next(self._next_ctx).to_bytes(8, "big")

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> SimResult:
        opt = self.options
        try:
            self._bootstrap()
            self._run_until(opt.fault_ms)
            self._heal()
            self._liveness()
            self._verdict()
        except (SafetyViolation, LivenessFailure, AssertionError) as e:
            self._finished = True
            kind = type(e).__name__
            self.log(f"VIOLATION ({kind}): {e}")
            return self._result(f"{kind}: {e}")
        finally:
            for node in self.nodes.values():
                node.crash()
        return self._result(None)

    def _result(self, violation: str | None) -> SimResult:
        stats = dict(self.stats)
        stats["virtual_ms"] = self.loop.now
        stats["ticks"] = self.loop.now // TICK_MS
        stats["messages"] = self.network.sent
        stats["messages_dropped"] = self.network.dropped
        stats["max_term"] = max(self.monitor.leaders, default=0)
        stats["committed"] = self.monitor.max_applied
        for status in ("ok", "fail", "unknown"):
            stats[f"ops_{status}"] = sum(1 for op in self.history.ops() if op.status == status)
        return SimResult(seed=opt_seed(self.options), nodes=self.options.nodes,
                         ok=violation is None, violation=violation, stats=stats,
                         timeline=self.timeline)

    def _bootstrap(self) -> None:
        voters = [next(self._ids) for _ in range(self.options.nodes)]
        for v in voters:
            self.nodes[v] = SimNode(self, v)
        for v in voters:
            self.nodes[v].start(bootstrap=voters)
        self.log(f"bootstrapped {len(voters)} nodes: {voters}")
        for client in self.clients:
            client.start()
        self.nemesis.start()
        if self.verbose:
            self.loop.after(500, self._report_progress)

    def _report_progress(self) -> None:
        """Timeline lines for people; reads state only, so replay is unaffected."""
        leader = self.current_leader()
        done = sum(1 for op in self.history.ops() if op.status == "ok")
        if leader is not None and leader.raft is not None:
            self.log(f"leader {leader.id} term {leader.raft.term}: commit index "
                     f"{leader.raft.log.committed}, {done} client operations ok so far")
        else:
            self.log(f"no leader; {done} client operations ok so far")
        if not self._finished:
            self.loop.after(500, self._report_progress)

    def _run_until(self, deadline: int) -> None:
        events = 0
        while True:
            t = self.loop.next_time()
            if t is None or t > deadline:
                self.loop.now = max(self.loop.now, deadline)
                return
            self.loop.run_one()
            events += 1
            self.stats["events"] += 1
            if events % LOG_MATCHING_EVERY == 0:
                self._check_logs()
            if self.stats["events"] > MAX_EVENTS:
                raise LivenessFailure("event budget exhausted (runaway message storm?)")

    def _check_logs(self) -> None:
        self.monitor.check_log_matching(
            {n.id: n.raft.log for n in self.nodes.values() if n.up and n.raft is not None})

    def _heal(self) -> None:
        self.faults_on = False
        self.healed = True
        self.nemesis.stop()
        self.network.faults_on = False
        self.network.heal()
        for node in self.member_nodes():
            if not node.up:
                node.start()
        self.log("all faults healed")

    def _liveness(self) -> None:
        budget_end = self.loop.now + self.options.liveness_budget_ms
        while self.loop.now < budget_end:
            self._run_until(min(budget_end, self.loop.now + 50))
            self.nemesis.check_removal()
            if self.current_leader() is not None and all(
                    c.ok_since_heal > 0 for c in self.clients):
                break
        else:
            leader = self.current_leader()
            raise LivenessFailure(
                f"no progress {self.options.liveness_budget_ms}ms after healing "
                f"(leader: {leader.id if leader else None}; clients done: "
                f"{[c.ok_since_heal for c in self.clients]}): " + self._describe())
        for client in self.clients:
            client.stopped = True
        drain_end = self.loop.now + self.options.op_timeout_ms + 100
        self._run_until_quiet(drain_end)

    def _run_until_quiet(self, deadline: int) -> None:
        while self.loop.now < deadline and any(c.busy for c in self.clients):
            self._run_until(min(deadline, self.loop.now + 20))
        # Give followers time to learn the final commit index.
        converge_end = self.loop.now + self.options.liveness_budget_ms
        while self.loop.now < converge_end:
            self._run_until(self.loop.now + 20)
            if self._converged():
                return
        raise LivenessFailure(
            "members did not converge to the leader's commit index: " + self._describe())

    def _describe(self) -> str:
        parts = []
        for n in self.nodes.values():
            if n.removed:
                continue
            if not n.up or n.raft is None:
                parts.append(f"node {n.id} down")
                continue
            applied = n.sm.applied_index if n.sm is not None else None
            parts.append(f"node {n.id}: {n.raft.status()} sm_applied={applied}")
        return "; ".join(parts)

    def _converged(self) -> bool:
        leader = self.current_leader()
        if leader is None or leader.raft is None:
            return False
        commit = leader.raft.log.committed
        members = leader.raft.conf.members()
        for node_id in members:
            node = self.nodes.get(node_id)
            if node is None or not node.up or node.raft is None:
                return False
            if node.sm is None or node.sm.applied_index != commit:
                return False
        return True

    def _verdict(self) -> None:
        self._check_logs()
        leader = self.current_leader()
        assert leader is not None and leader.raft is not None
        digests = {}
        for n_id in leader.raft.conf.members():
            sm = self.nodes[n_id].sm
            assert sm is not None
            digests[n_id] = sm.digest()
        if len(set(digests.values())) != 1:
            raise SafetyViolation(f"state machines differ after convergence: {sorted(digests)}")
        result = check_kv(self.history.ops())
        if not result.ok:
            raise SafetyViolation(f"history not linearizable on key {result.key}: {result.reason}")
        self._finished = True
        self.log(f"verdict: safe; {len(self.history.ops())} operations linearizable")


def opt_seed(options: SimOptions) -> int:
    return options.seed


def run_simulation(options: SimOptions, *, verbose: bool = False) -> SimResult:
    return SimCluster(options, verbose=verbose).run()
