"""Log entries and the small records Raft persists: hard state, membership, snapshot metadata.

All are frozen, slotted, keyword-only dataclasses: values, never mutated in place.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

NONE = 0
"""The node id that means "nobody" (no vote, no known leader). Real ids are >= 1."""


class EntryType(enum.IntEnum):
    NORMAL = 0
    """Application data. An entry with empty data is the leader's no-op (thesis §6.4)."""
    CONF_CHANGE = 1
    """A membership change; ``data`` is an encoded :class:`ConfChange`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    def size(self) -> int:
        return len(self.data) + 24


@dataclass(frozen=True, slots=True, kw_only=True)
class HardState:
    """What a node must have on disk before it answers a vote or an append (thesis §3.8)."""

    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfState:
    """A membership configuration: who votes and who only listens."""

    voters: frozenset[int] = field(default_factory=frozenset)
    learners: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        assert not (self.voters & self.learners), "a node is either a voter or a learner"

    def members(self) -> frozenset[int]:
        return self.voters | self.learners


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotMeta:
    """Where a state machine image ends in the log, and the membership at that point."""

    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)


class ConfChangeType(enum.IntEnum):
    ADD_VOTER = 0
    """Add a voter, or promote an existing learner to voter."""
    ADD_LEARNER = 1
    """Add a non-voting member (or demote a voter)."""
    REMOVE_NODE = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfChange:
    """One-server-at-a-time membership change (thesis §4.1).

    ``context`` is opaque to the core; the cluster layer stores the member's
    name and address there.
    """

    type: ConfChangeType
    node_id: int
    context: bytes = b""

    _HEADER = struct.Struct(">BQ")

    def encode(self) -> bytes:
        return self._HEADER.pack(int(self.type), self.node_id) + self.context

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        if len(data) < cls._HEADER.size:
            raise ValueError("conf change entry too short")
        kind, node_id = cls._HEADER.unpack_from(data)
        return cls(type=ConfChangeType(kind), node_id=node_id,
                   context=bytes(data[cls._HEADER.size:]))

    def apply_to(self, conf: ConfState) -> ConfState:
        voters, learners = set(conf.voters), set(conf.learners)
        voters.discard(self.node_id)
        learners.discard(self.node_id)
        if self.type is ConfChangeType.ADD_VOTER:
            voters.add(self.node_id)
        elif self.type is ConfChangeType.ADD_LEARNER:
            learners.add(self.node_id)
        return ConfState(voters=frozenset(voters), learners=frozenset(learners))
