"""The messages Raft nodes exchange.

Every message names its Raft group (``group``; 0 until the store is sharded),
its sender, its receiver and the sender's term. Term handling is uniform and
happens once, in :meth:`RaftNode.step`, before a role sees the message.
"""

from __future__ import annotations

from dataclasses import dataclass

from quorumkv.raft.entries import Entry, SnapshotMeta


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    src: int
    dst: int
    term: int
    group: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteRequest(Message):
    """RequestVote (§3.4), or a pre-vote (§9.6) when ``pre_vote`` is set.

    A pre-vote carries the term the candidate *would* use; the sender's real
    term is unchanged. ``transfer`` marks an election started by TimeoutNow,
    which may disrupt a live leader on purpose (§3.10).
    """

    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteResponse(Message):
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendRequest(Message):
    """AppendEntries (§3.5). An empty ``entries`` is a probe."""

    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendResponse(Message):
    """Success acknowledges ``index`` as the follower's last matching entry.

    On rejection, ``index`` echoes the rejected ``prev_index`` and
    (``hint_index``, ``hint_term``) is the follower's guess of where the logs
    may agree: the leader skips a whole term of entries at once (§5.3 of the
    paper's optimisation) instead of backing up one entry per round trip.
    """

    index: int
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat(Message):
    """Leader liveness and commit propagation; ``context`` confirms ReadIndex rounds."""

    commit: int
    context: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatResponse(Message):
    context: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallSnapshot(Message):
    """InstallSnapshot (§5.3 of the thesis). The core speaks only of metadata:

    the driver streams the state machine image that ends at ``snapshot.index``
    beside this message and steps it in on the receiver once it has all of it.
    """

    snapshot: SnapshotMeta


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutNow(Message):
    """Leadership transfer (§3.10): start an election at once."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadIndexRequest(Message):
    """A follower asks the leader for a read index on behalf of a local read."""

    context: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadIndexResponse(Message):
    """``index`` is 0 when the leader could not serve the read (then retry)."""

    context: bytes
    index: int


AnyMessage = (
    VoteRequest | VoteResponse | AppendRequest | AppendResponse | Heartbeat
    | HeartbeatResponse | InstallSnapshot | TimeoutNow | ReadIndexRequest | ReadIndexResponse
)
