"""What the state machine stores and answers: versions of keys, events, results."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from quorumkv.raft.entries import ConfState


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyValue:
    """One version of a key.

    ``version`` counts the puts since the key was (re)created, so it is 1 on
    creation and restarts at 1 after a delete; ``create_revision`` is the
    revision of that creation. A deletion is recorded as a *tombstone*: a
    KeyValue with version 0, create revision 0 and an empty value, whose
    ``mod_revision`` is the revision of the delete. Tombstones live in the
    history and in DELETE events, never in read results.
    """

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0
    timestamp: int = 0
    """The leader's clock (ns) when it proposed the command that wrote this version."""

    @property
    def is_tombstone(self) -> bool:
        return self.version == 0


class EventType(enum.IntEnum):
    PUT = 0
    DELETE = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One change to one key; watches consume these, in order."""

    type: EventType
    kv: KeyValue
    """The new version, or the tombstone of a DELETE."""
    prev_kv: KeyValue | None
    """The version this change replaced, None if the key did not exist."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RangeResult:
    kvs: tuple[KeyValue, ...]
    count: int
    """Keys in the range, regardless of ``limit``."""
    more: bool
    """``limit`` cut the answer short."""
    revision: int
    """The revision the answer reflects."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PutResult:
    revision: int
    prev_kv: KeyValue | None = None
    """Only when the put asked for it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteResult:
    revision: int
    """The delete's revision, or the unchanged current one if nothing was deleted."""
    deleted: int
    prev_kvs: tuple[KeyValue, ...] = ()
    """Only when the delete asked for them."""


TxnResponse = PutResult | DeleteResult | RangeResult


@dataclass(frozen=True, slots=True, kw_only=True)
class TxnResult:
    succeeded: bool
    """Every compare held, so the success ops ran."""
    revision: int
    responses: tuple[TxnResponse, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CompactResult:
    revision: int
    compact_revision: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseGrantResult:
    """A granted lease. A grant writes no key: the store's revision does not move."""

    id: int
    ttl: int
    """Seconds."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseRevokeResult:
    revision: int
    """The revision of the deletions, or the unchanged current one if no key was attached."""
    deleted: int
    """Keys deleted: those attached to the lease."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthResult:
    """An applied auth change (users, roles, the switch); keys are untouched."""

    auth_revision: int
    """Auth changes applied so far, this one included."""


Result = (PutResult | DeleteResult | TxnResult | CompactResult | LeaseGrantResult
          | LeaseRevokeResult | AuthResult)


@dataclass(frozen=True, slots=True, kw_only=True)
class Applied:
    """What applying one log entry did.

    ``result`` is None for entries that carry no command (the leader's no-op,
    a membership change); ``conf_state`` is set for a membership change.
    """

    index: int
    result: Result | None = None
    events: tuple[Event, ...] = ()
    conf_state: ConfState | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AlreadyApplied:
    """The entry was applied before (a replay after restart): nothing was done."""

    index: int
    applied_index: int
