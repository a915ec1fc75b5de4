"""The values stored in LMDB: versions of keys and the store's own bookkeeping.

A version is ``[key, value, create_revision, mod_revision, version, lease,
timestamp]`` in msgpack. The ``meta`` sub-database holds three records::

    b"format"  the on-disk format number, so a foreign or newer directory is refused
    b"state"   [revision, compact_revision, applied_index, applied_term]
    b"conf"    [sorted voter ids, sorted learner ids]

``state`` is rewritten in the same LMDB transaction as the data it
describes, so the applied index and the data can never disagree on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quorumkv.errors import StorageError
from quorumkv.kv.packing import pack, unpack
from quorumkv.kv.results import KeyValue
from quorumkv.raft.entries import ConfState

FORMAT = 1

FORMAT_KEY = b"format"
STATE_KEY = b"state"
CONF_KEY = b"conf"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreState:
    """Everything about the store that is not a key: one record, updated atomically."""

    revision: int = 0
    compact_revision: int = 0
    applied_index: int = 0
    applied_term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


def _ints(obj: object, arity: int | None, what: str) -> list[int]:
    """``obj`` as a list of ints (of length ``arity`` unless None), or StorageError."""
    if (not isinstance(obj, list) or (arity is not None and len(obj) != arity)
            or any(type(x) is not int for x in obj)):
        raise StorageError(f"corrupt {what} record in the state machine")
    return obj


def encode_kv(kv: KeyValue) -> bytes:
    return pack([kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease,
                 kv.timestamp])


def decode_kv(data: bytes) -> KeyValue:
    try:
        obj = unpack(data)
    except ValueError as err:
        raise StorageError(f"corrupt version record in the state machine: {err}") from err
    if not isinstance(obj, list) or len(obj) != 7:
        raise StorageError("corrupt version record in the state machine")
    key, value = obj[0], obj[1]
    create, mod, version, lease, timestamp = _ints(obj[2:], 5, "version")
    if type(key) is not bytes or type(value) is not bytes:
        raise StorageError("corrupt version record in the state machine")
    return KeyValue(key=key, value=value, create_revision=create, mod_revision=mod,
                    version=version, lease=lease, timestamp=timestamp)


def encode_format() -> bytes:
    return pack(FORMAT)


def decode_format(data: bytes) -> int:
    try:
        obj = unpack(data)
    except ValueError as err:
        raise StorageError(f"corrupt format record in the state machine: {err}") from err
    if type(obj) is not int:
        raise StorageError("corrupt format record in the state machine")
    return obj


def encode_state(state: StoreState) -> bytes:
    return pack([state.revision, state.compact_revision, state.applied_index,
                 state.applied_term])


def encode_conf(conf: ConfState) -> bytes:
    return pack([sorted(conf.voters), sorted(conf.learners)])


def decode_state(state_data: bytes, conf_data: bytes) -> StoreState:
    try:
        state_obj, conf_obj = unpack(state_data), unpack(conf_data)
    except ValueError as err:
        raise StorageError(f"corrupt state record in the state machine: {err}") from err
    revision, compact_revision, applied_index, applied_term = _ints(state_obj, 4, "state")
    if not isinstance(conf_obj, list) or len(conf_obj) != 2:
        raise StorageError("corrupt conf record in the state machine")
    voters, learners = _ints(conf_obj[0], None, "conf"), _ints(conf_obj[1], None, "conf")
    if set(voters) & set(learners):
        raise StorageError("corrupt conf record in the state machine: voter and learner")
    return StoreState(revision=revision, compact_revision=compact_revision,
                      applied_index=applied_index, applied_term=applied_term,
                      conf_state=ConfState(voters=frozenset(voters),
                                           learners=frozenset(learners)))
