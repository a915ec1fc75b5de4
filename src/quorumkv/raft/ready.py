"""The Ready batch: everything the core wants done in the world, and the order to do it.

The contract between the core and its driver
--------------------------------------------

Call :meth:`RaftNode.has_ready`; when it is true, take ``rd = node.ready()``
and handle it in this order, then call ``node.advance(rd)``:

1. **Send ``messages``.** These may leave before anything is persisted: they
   are the leader's appends, heartbeats and snapshots, and sending them while
   the leader's own disk write is in flight is what lets the leader write its
   log in parallel with replicating it (thesis §10.2.1).
2. **Persist** ``snapshot`` (if any: it replaces the whole log, so no entry
   the node held before it may survive a restart), then ``entries`` (the
   first may overwrite the log from its index: truncate there first), then
   ``hard_state`` (if any). If ``must_sync``, fsync before going on.
3. **Send ``persisted_messages``** only after step 2 is durable: votes and
   append acknowledgements promise durability (thesis §3.8), and a node that
   crashed before its fsync must not have promised anything.
4. **Install** ``snapshot`` into the state machine (if any), then **apply**
   ``committed_entries`` in order. Entries with empty data are leader no-ops.
5. **Serve** each of ``read_states`` once the state machine has applied its
   ``index``; fail the requests in ``dropped_reads`` (retryable).
6. **Call** ``advance(rd)``. The core then treats the entries as durable, the
   committed entries as applied (membership changes take effect here) and the
   snapshot as installed.

Whenever the driver finishes streaming a snapshot to a follower, or gives
up, it must call ``report_snapshot(to, success=...)``: until then the leader
sends that follower nothing but heartbeats.

``read_index`` contexts must be unique across the cluster (the driver makes
them from its node id and a counter), since the leader matches answers by
context.

Nothing may be stepped into the node between ``ready()`` and ``advance()``
that the driver expects to see reflected in ``rd``; stepping is allowed but
its effects arrive in the next Ready.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from quorumkv.raft.entries import Entry, HardState, SnapshotMeta
from quorumkv.raft.messages import Message


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True, kw_only=True)
class SoftState:
    """Volatile state the driver may want to observe; never persisted."""

    leader: int
    role: Role
    term: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadState:
    """A read may be served once the state machine has applied ``index`` (ReadIndex, §6.4)."""

    context: bytes
    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready:
    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: SnapshotMeta | None = None
    messages: list[Message] = field(default_factory=list)
    persisted_messages: list[Message] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    dropped_reads: list[bytes] = field(default_factory=list)
    must_sync: bool = False
