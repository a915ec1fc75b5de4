"""The replicated key-value state machine: MVCC on LMDB, with etcd's semantics.

The public surface, by module:

- ``commands``: :class:`Put`, :class:`DeleteRange`, :class:`Txn` (with
  :class:`Compare`), :class:`Compact`, :class:`LeaseGrant`,
  :class:`LeaseRevoke` and the read :class:`RangeRequest`; a client's
  numbered write is logged as a :class:`Session`;
- ``codec``: :func:`encode_command` / :func:`decode_command`, the log format;
- ``validation``: :func:`validate` with :class:`Limits`, run before proposing;
- ``results``: :class:`KeyValue`, :class:`Event` and the results of each command;
- ``store``: :class:`KVStore`, which applies committed entries and serves reads;
- ``sessions``: the table that applies each Session once, sized by :class:`SessionPolicy`;
- ``keys``: :func:`prefix_end` and :data:`ALL_KEYS` for ranges.
"""

from quorumkv.kv.codec import decode_command, encode_command
from quorumkv.kv.commands import (
    Command,
    Compact,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    LeaseGrant,
    LeaseRevoke,
    Put,
    RangeRequest,
    Session,
    Txn,
    TxnOp,
    Write,
)
from quorumkv.kv.keys import ALL_KEYS, prefix_end
from quorumkv.kv.results import (
    AlreadyApplied,
    Applied,
    CompactResult,
    DeleteResult,
    Event,
    EventType,
    KeyValue,
    LeaseGrantResult,
    LeaseRevokeResult,
    PutResult,
    RangeResult,
    Result,
    TxnResponse,
    TxnResult,
)
from quorumkv.kv.sessions import SessionPolicy
from quorumkv.kv.store import KVStore, Outcome, Payload
from quorumkv.kv.validation import Limits, check_command, validate

__all__ = [
    "ALL_KEYS",
    "AlreadyApplied",
    "Applied",
    "Command",
    "Compact",
    "CompactResult",
    "Compare",
    "CompareOp",
    "CompareTarget",
    "DeleteRange",
    "DeleteResult",
    "Event",
    "EventType",
    "KVStore",
    "KeyValue",
    "LeaseGrant",
    "LeaseGrantResult",
    "LeaseRevoke",
    "LeaseRevokeResult",
    "Limits",
    "Outcome",
    "Payload",
    "Put",
    "PutResult",
    "RangeRequest",
    "RangeResult",
    "Result",
    "Session",
    "SessionPolicy",
    "Txn",
    "TxnOp",
    "TxnResponse",
    "TxnResult",
    "Write",
    "check_command",
    "decode_command",
    "encode_command",
    "prefix_end",
    "validate",
]
