"""An in-memory Raft cluster for scripted scenario tests of the consensus core.

Every node is a real :class:`RaftNode`, driven the way the server drives it
(see the contract in ``quorumkv.raft.ready``): send ``messages``, persist,
send ``persisted_messages``, apply, ``advance()``. Around the nodes:

* a **network** that is only a queue: nothing moves until the test says so.
  It can deliver everything, only what a predicate selects, drop, reorder
  (take and re-send) or duplicate (send a message twice); cut links drop
  whatever crosses them;
* a **disk** per node (:class:`Storage`): hard state, log with truncation,
  snapshot. ``crash()`` loses everything else and ``restart()`` rebuilds the
  node from it, as a real restart would;
* a **state machine** per node: the list of applied entries, checked to be
  applied in order, with images saved at compaction and shipped with
  InstallSnapshot;
* a :class:`~quorumkv.sim.safety.SafetyMonitor` fed every election, persist
  and apply, so that every scenario also checks Raft's safety properties.

Randomness comes only from ``random.Random`` objects seeded from the
cluster's seed, node id and incarnation: every scenario replays exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from quorumkv.raft.config import RaftConfig
from quorumkv.raft.entries import (
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    HardState,
    SnapshotMeta,
)
from quorumkv.raft.messages import AppendRequest, InstallSnapshot, Message, VoteRequest
from quorumkv.raft.node import RaftNode
from quorumkv.raft.ready import ReadState, Ready, Role
from quorumkv.sim.safety import SafetyMonitor, SafetyViolation

ELECTION = 10
"""``election_tick`` of every harness node (``heartbeat_tick`` is 1)."""

Predicate = Callable[[Message], bool]


def match(
    kind: type[Message] | tuple[type[Message], ...] = Message,
    *,
    src: int | None = None,
    dst: int | None = None,
) -> Predicate:
    """Select messages by type, sender and receiver."""

    def pred(m: Message) -> bool:
        return (isinstance(m, kind) and (src is None or m.src == src)
                and (dst is None or m.dst == dst))

    return pred


def carries(index: int, *, dst: int | None = None) -> Predicate:
    """Select appends that carry the entry at ``index``."""

    def pred(m: Message) -> bool:
        return (isinstance(m, AppendRequest) and (dst is None or m.dst == dst)
                and any(e.index == index for e in m.entries))

    return pred


@dataclass
class Storage:
    """One node's disk: exactly what survives a crash."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta | None = None
    image: tuple[Entry, ...] = ()
    """The state machine image saved with ``snapshot``: every entry applied up to it."""
    entries: list[Entry] = field(default_factory=list)

    def append(self, entries: Sequence[Entry]) -> None:
        """Write entries; the first one may overwrite the stored log from its index on."""
        first = entries[0].index
        self.entries = [e for e in self.entries if e.index < first]
        base = self.entries[-1].index if self.entries else self.snapshot_index
        assert base == first - 1, f"gap in the stored log: {base} then {first}"
        self.entries.extend(entries)

    def install(self, meta: SnapshotMeta, image: tuple[Entry, ...]) -> None:
        """A snapshot received from the leader replaces the whole log."""
        self.snapshot, self.image, self.entries = meta, image, []

    def compact(self, meta: SnapshotMeta, image: tuple[Entry, ...]) -> None:
        """A local snapshot drops the log up to its index."""
        self.snapshot, self.image = meta, image
        self.entries = [e for e in self.entries if e.index > meta.index]

    @property
    def snapshot_index(self) -> int:
        return self.snapshot.index if self.snapshot is not None else 0


class Peer:
    """A node's durable and volatile parts, plus what its driver observed."""

    def __init__(self, node_id: int, config: RaftConfig) -> None:
        self.id = node_id
        self.config = config
        self.storage = Storage()
        self.node: RaftNode | None = None
        self.incarnation = 0
        self.state: list[Entry] = []
        """The state machine: every applied entry, in index order from 1."""
        self.readies: list[Ready] = []
        self.read_states: list[ReadState] = []
        self.dropped_reads: list[bytes] = []

    @property
    def raft(self) -> RaftNode:
        assert self.node is not None, f"node {self.id} is down"
        return self.node


class Cluster:
    """N nodes, a manual network and a safety monitor.

    ``options`` are :class:`RaftConfig` fields shared by every node.
    ``strict=False`` collects safety violations in ``violations`` instead of
    raising them, so a scenario can show what a broken core would do next.
    """

    def __init__(
        self,
        voters: int | Sequence[int] = 3,
        *,
        seed: int = 0,
        strict: bool = True,
        **options: Any,
    ) -> None:
        ids = list(range(1, voters + 1)) if isinstance(voters, int) else list(voters)
        self.seed = seed
        self.strict = strict
        self.options: dict[str, Any] = {"election_tick": ELECTION, "heartbeat_tick": 1,
                                        **options}
        self.peers: dict[int, Peer] = {}
        self.in_flight: list[Message] = []
        self.sent: list[Message] = []
        """Every message ever put on the wire, in order."""
        self.cut: set[frozenset[int]] = set()
        self.images: dict[tuple[int, int], tuple[Entry, ...]] = {}
        self.monitor = SafetyMonitor()
        self.violations: list[SafetyViolation] = []
        hs, entries = RaftNode.bootstrap_log(ids)
        for i in ids:
            peer = self._new_peer(i)
            # Bootstrap state is durable before the node first runs.
            peer.storage.hard_state = hs
            peer.storage.entries = list(entries)
        for i in ids:
            self.start(i)

    # -- nodes ----------------------------------------------------------------------

    def _new_peer(self, node_id: int) -> Peer:
        assert node_id not in self.peers
        peer = Peer(node_id, RaftConfig(id=node_id, **self.options))
        self.peers[node_id] = peer
        return peer

    def add_node(self, node_id: int) -> Peer:
        """A brand-new, empty node that will join through a membership change."""
        peer = self._new_peer(node_id)
        self.start(node_id)
        return peer

    def node(self, node_id: int) -> RaftNode:
        return self.peers[node_id].raft

    def up(self) -> list[int]:
        return [i for i, p in sorted(self.peers.items()) if p.node is not None]

    def start(self, node_id: int, *, keep_state_machine: bool = False) -> None:
        """Start a node from its disk.

        The state machine is rebuilt from the snapshot image (and the log
        replayed after it) unless ``keep_state_machine``, which models a
        durable state machine that remembers how far it applied.
        """
        peer = self.peers[node_id]
        assert peer.node is None, f"node {node_id} is already running"
        st = peer.storage
        if not keep_state_machine:
            peer.state = list(st.image)
        peer.incarnation += 1
        rng = random.Random(f"{self.seed}/{node_id}/{peer.incarnation}")
        peer.node = RaftNode(peer.config, rng, hard_state=st.hard_state, snapshot=st.snapshot,
                             entries=list(st.entries), applied=len(peer.state))
        self.process(node_id)

    def crash(self, node_id: int) -> None:
        """Power cut: only ``storage`` survives (a Ready in progress is lost)."""
        self.peers[node_id].node = None

    def restart(self, node_id: int, *, keep_state_machine: bool = False) -> None:
        self.crash(node_id)
        self.start(node_id, keep_state_machine=keep_state_machine)

    # -- the Ready loop ----------------------------------------------------------------

    def process(self, node_id: int) -> None:
        peer = self.peers[node_id]
        while peer.node is not None and peer.node.has_ready():
            self.finish_ready(node_id, self.begin_ready(node_id))

    def begin_ready(self, node_id: int) -> Ready:
        """Take a Ready and send what may leave before the persist (step 1)."""
        peer = self.peers[node_id]
        rd = peer.raft.ready()
        peer.readies.append(rd)
        soft = rd.soft_state
        if soft is not None and soft.role is Role.LEADER:
            self._watch(self.monitor.on_leader, node_id, soft.term, peer.raft.log)
        for m in rd.messages:
            self._send(peer, m)
        return rd

    def finish_ready(self, node_id: int, rd: Ready) -> None:
        """Persist, send what needed the persist, apply, advance (steps 2-6)."""
        peer = self.peers[node_id]
        st = peer.storage
        if rd.snapshot is not None:
            image = self.images[(rd.snapshot.index, rd.snapshot.term)]
            st.install(rd.snapshot, image)
        if rd.entries:
            self._watch(self.monitor.on_persist, node_id, rd.entries)
            st.append(rd.entries)
        if rd.hard_state is not None:
            st.hard_state = rd.hard_state
        for m in rd.persisted_messages:
            self._send(peer, m)
        if rd.snapshot is not None:
            peer.state = list(st.image)
        for e in rd.committed_entries:
            assert e.index == len(peer.state) + 1, (
                f"node {node_id} applies {e.index} after {len(peer.state)}")
            self._watch(self.monitor.on_apply, node_id, e)
            peer.state.append(e)
        peer.read_states.extend(rd.read_states)
        peer.dropped_reads.extend(rd.dropped_reads)
        peer.raft.advance(rd)

    def _watch(self, check: Callable[..., None], *args: Any) -> None:
        try:
            check(*args)
        except SafetyViolation as violation:
            if self.strict:
                raise
            self.violations.append(violation)

    # -- network ----------------------------------------------------------------------

    def _send(self, peer: Peer, m: Message) -> None:
        if isinstance(m, InstallSnapshot):
            # The driver streams the sender's saved image beside the message.
            assert peer.storage.snapshot == m.snapshot, "snapshot sent was never saved"
            self.images[(m.snapshot.index, m.snapshot.term)] = peer.storage.image
        self.in_flight.append(m)
        self.sent.append(m)

    def send(self, *messages: Message) -> None:
        """Put messages (back) on the wire: reorder or duplicate what ``take`` returned."""
        self.in_flight.extend(messages)

    def take(self, where: Predicate | None = None) -> list[Message]:
        """Remove matching messages from the wire and hand them to the test."""
        taken = [m for m in self.in_flight if where is None or where(m)]
        self.in_flight = [m for m in self.in_flight if not (where is None or where(m))]
        return taken

    def drop(self, where: Predicate | None = None) -> int:
        return len(self.take(where))

    def deliver(self, where: Predicate | None = None, *,
                drop: Predicate | None = None) -> list[Message]:
        """One round: deliver the matching messages now in flight, in order.

        Messages sent in reply wait for the next round. Messages on a cut link,
        to a down node or selected by ``drop`` are lost.
        """
        delivered: list[Message] = []
        for m in self.take(where):
            if drop is not None and drop(m):
                continue
            peer = self.peers.get(m.dst)
            if peer is None or peer.node is None or frozenset((m.src, m.dst)) in self.cut:
                continue
            peer.node.step(m)
            self.process(m.dst)
            delivered.append(m)
        return delivered

    def stabilise(self, where: Predicate | None = None, *,
                  drop: Predicate | None = None, max_rounds: int = 100) -> list[Message]:
        """Deliver (the matching) messages round after round until none is left."""
        delivered: list[Message] = []
        for _ in range(max_rounds):
            if not any(where is None or where(m) for m in self.in_flight):
                return delivered
            delivered += self.deliver(where, drop=drop)
        raise AssertionError(f"network still busy after {max_rounds} rounds")

    def isolate(self, node_id: int) -> None:
        self.partition([node_id], [i for i in self.peers if i != node_id])

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut every link between nodes of different groups."""
        sets = [set(g) for g in groups]
        for k, a in enumerate(sets):
            for b in sets[k + 1:]:
                self.cut |= {frozenset((x, y)) for x in a for y in b}

    def heal(self) -> None:
        self.cut.clear()

    # -- time -----------------------------------------------------------------------

    def tick(self, node_id: int, ticks: int = 1) -> None:
        for _ in range(ticks):
            self.node(node_id).tick()
            self.process(node_id)

    def run(self, ticks: int) -> None:
        """Time passes for every running node, with the network delivering as it goes."""
        for _ in range(ticks):
            for i in self.up():
                self.tick(i)
            self.stabilise()

    def run_until(self, done: Callable[[], bool], max_ticks: int = 10 * ELECTION) -> int:
        for elapsed in range(max_ticks + 1):
            if done():
                return elapsed
            self.run(1)
        raise AssertionError(f"condition not reached within {max_ticks} ticks")

    def expire_leases(self, *ids: int) -> None:
        """An election timeout passes in which these nodes hear from no leader.

        They then listen to candidates again (leader stickiness, §4.2.3). If a
        node's own timer fires meanwhile, its vote requests are lost.
        """
        for i in ids:
            self.tick(i, ELECTION)
            self.drop(match(VoteRequest, src=i))

    # -- elections ---------------------------------------------------------------------

    def campaign(self, node_id: int) -> None:
        self.node(node_id).campaign()
        self.process(node_id)

    def elect(self, node_id: int, *, drop: Predicate | None = None) -> None:
        """Make ``node_id`` campaign until it leads (a campaign may first teach it a newer term)."""
        for _ in range(3):
            self.campaign(node_id)
            self.stabilise(drop=drop)
            if self.node(node_id).role is Role.LEADER:
                return
        raise AssertionError(f"node {node_id} did not win: {self.node(node_id).status()}")

    def leader(self) -> int:
        """The running leader of the highest term (there must be exactly one)."""
        leaders = [(p.raft.term, i) for i, p in self.peers.items()
                   if p.node is not None and p.node.role is Role.LEADER]
        assert leaders, "no leader"
        top = max(t for t, _ in leaders)
        ids = [i for t, i in leaders if t == top]
        assert len(ids) == 1, f"several leaders in term {top}: {ids}"
        return ids[0]

    # -- clients ----------------------------------------------------------------------

    def propose(self, node_id: int, data: bytes) -> tuple[int, int]:
        term, index = self.node(node_id).propose(data)
        self.process(node_id)
        return term, index

    def change(self, node_id: int, kind: ConfChangeType, target: int) -> tuple[int, int]:
        term, index = self.node(node_id).propose_conf_change(
            ConfChange(type=kind, node_id=target))
        self.process(node_id)
        return term, index

    def read(self, node_id: int, context: bytes) -> None:
        self.node(node_id).read_index(context)
        self.process(node_id)

    def compact(self, node_id: int) -> SnapshotMeta:
        """The state machine saves an image at its applied index; the log is cut there."""
        peer = self.peers[node_id]
        meta = peer.raft.compact(peer.raft.log.applied)
        peer.storage.compact(meta, tuple(peer.state[: meta.index]))
        return meta

    def applied(self, node_id: int) -> list[bytes]:
        """The client payloads a node's state machine applied, in order."""
        return [e.data for e in self.peers[node_id].state
                if e.type is EntryType.NORMAL and e.data]

    def log_terms(self, node_id: int) -> list[int]:
        """Terms of a node's log entries after its snapshot, for comparing logs at a glance."""
        return [e.term for e in self.node(node_id).log.entries]
