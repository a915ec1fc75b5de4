"""The values stored in LMDB: versions of keys and the store's own bookkeeping.

A version is ``[key, value, create_revision, mod_revision, version, lease,
timestamp]`` in msgpack. The ``meta`` sub-database holds three records::

    b"format"  the on-disk format number, so a foreign or newer directory is refused
    b"state"   [revision, compact_revision, applied_index, applied_term, clock]
    b"conf"    [sorted voter ids, sorted learner ids]

and, under key prefixes none of which starts another, the member registry
(``b"member/"``, see ``members.py``) and the leases (``b"lease/"`` and
``b"lease-key/"``, see ``leases.py``). Records added under new prefixes
need no new format: a store without them is a store with none.

``state`` is rewritten in the same LMDB transaction as the data it
describes, so the applied index and the data can never disagree on disk.

Format 2 added the session table (``sessions.py``) and the clock; a format 1
store (no ``sessions`` sub-database, a ``state`` of four fields) is upgraded
in place when opened: its clock is 0 and its session table empty, which is
what it would be had it been format 2 all along, since format 1 logs carry
no sessions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quorumkv.errors import StorageError
from quorumkv.kv.packing import pack, unpack
from quorumkv.kv.results import KeyValue
from quorumkv.raft.entries import ConfState

FORMAT = 2
FORMAT_WITHOUT_SESSIONS = 1

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
    clock: int = 0
    """The latest leader timestamp (ns) applied, never going back: the state machine's
    clock. Session expiry is measured against it, so every replica expires the same
    sessions at the same entry without reading a clock of its own (thesis §6.3)."""


def _ints(obj: object, arity: int | None, what: str) -> list[int]:
    """``obj`` as a list of ints (of length ``arity`` unless None), or StorageError."""
    if not isinstance(obj, list) or (arity is not None and len(obj) != arity):
        raise StorageError(f"corrupt {what} record in the state machine")
    # A loop, not any() over a generator: this runs for every version read.
    for x in obj:
        if type(x) is not int:
            raise StorageError(f"corrupt {what} record in the state machine")
    return obj


def kv_fields(kv: KeyValue) -> list[object]:
    """A version as a msgpack array (also how recorded results hold versions)."""
    return [kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease,
            kv.timestamp]


def kv_from_fields(obj: object, what: str) -> KeyValue:
    """The inverse of :func:`kv_fields`; StorageError naming the ``what`` record if malformed."""
    if not isinstance(obj, list) or len(obj) != 7:
        raise StorageError(f"corrupt {what} record in the state machine")
    key, value, create, mod, version, lease, timestamp = obj
    # Spelled out rather than through _ints: this runs for every version read.
    if (type(key) is not bytes or type(value) is not bytes or type(create) is not int
            or type(mod) is not int or type(version) is not int or type(lease) is not int
            or type(timestamp) is not int):
        raise StorageError(f"corrupt {what} record in the state machine")
    return KeyValue(key=key, value=value, create_revision=create, mod_revision=mod,
                    version=version, lease=lease, timestamp=timestamp)


def encode_kv(kv: KeyValue) -> bytes:
    return pack(kv_fields(kv))


def decode_kv(data: bytes) -> KeyValue:
    try:
        obj = unpack(data)
    except ValueError as err:
        raise StorageError(f"corrupt version record in the state machine: {err}") from err
    return kv_from_fields(obj, "version")


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
                 state.applied_term, state.clock])


def encode_conf(conf: ConfState) -> bytes:
    return pack([sorted(conf.voters), sorted(conf.learners)])


def decode_state(state_data: bytes, conf_data: bytes, *, fmt: int = FORMAT) -> StoreState:
    """The state in records of format ``fmt`` (:data:`FORMAT`, or format 1 with no clock)."""
    try:
        state_obj, conf_obj = unpack(state_data), unpack(conf_data)
    except ValueError as err:
        raise StorageError(f"corrupt state record in the state machine: {err}") from err
    if fmt == FORMAT_WITHOUT_SESSIONS:
        revision, compact_revision, applied_index, applied_term = _ints(state_obj, 4, "state")
        clock = 0
    else:
        revision, compact_revision, applied_index, applied_term, clock = _ints(
            state_obj, 5, "state")
    if not isinstance(conf_obj, list) or len(conf_obj) != 2:
        raise StorageError("corrupt conf record in the state machine")
    voters, learners = _ints(conf_obj[0], None, "conf"), _ints(conf_obj[1], None, "conf")
    if set(voters) & set(learners):
        raise StorageError("corrupt conf record in the state machine: voter and learner")
    return StoreState(revision=revision, compact_revision=compact_revision,
                      applied_index=applied_index, applied_term=applied_term,
                      conf_state=ConfState(voters=frozenset(voters),
                                           learners=frozenset(learners)),
                      clock=clock)
