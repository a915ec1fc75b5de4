"""Checks on commands: their shape (always) and their size (before they enter the log).

:func:`check_command` checks what every replica can check alike: types,
empty keys, inverted ranges, duplicate writes in a Txn. Decoding runs it, and
so does the store before applying, so no malformed command reaches a write.

:func:`validate` adds the size limits. The leader runs it once, at proposal.
Replicas never apply limits to committed entries: limits are configuration,
configuration can differ between nodes, and a committed entry must have the
same outcome everywhere.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from quorumkv.errors import InvalidArgument, KeyTooLarge, ValueTooLarge
from quorumkv.kv.commands import (
    AUTH_ACTIONS,
    MAX_LEASE_TTL,
    AuthChange,
    Authorized,
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
)
from quorumkv.kv.keys import ALL_KEYS, MAX_REVISION, in_range


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    max_key_size: int = 4096
    max_value_size: int = 1536 * 1024
    max_txn_ops: int = 128
    """Per list: compares, success ops and failure ops are each limited (as in etcd)."""


def _check_int(what: str, value: object) -> None:
    # bool is an int subclass; True as a revision is a bug, not a 1.
    if type(value) is not int:
        raise InvalidArgument(f"{what} must be an integer, not {type(value).__name__}")
    if not 0 <= value <= MAX_REVISION:
        raise InvalidArgument(f"{what} must be between 0 and 2**63-1, not {value}")


def _check_bool(what: str, value: object) -> None:
    if type(value) is not bool:
        raise InvalidArgument(f"{what} must be a boolean, not {type(value).__name__}")


def _check_key(what: str, key: object) -> None:
    if type(key) is not bytes:
        raise InvalidArgument(f"{what} must be bytes, not {type(key).__name__}")
    if not key:
        raise InvalidArgument(f"{what} must not be empty")


def _check_range(key: object, range_end: object) -> None:
    _check_key("key", key)
    if range_end is None:
        return
    if type(range_end) is not bytes:
        raise InvalidArgument(f"range_end must be bytes or None, not {type(range_end).__name__}")
    assert isinstance(key, bytes)
    if range_end != ALL_KEYS and range_end < key:
        raise InvalidArgument("range_end sorts before key")


def _check_put(op: Put) -> None:
    _check_key("key", op.key)
    if type(op.value) is not bytes:
        raise InvalidArgument(f"value must be bytes, not {type(op.value).__name__}")
    _check_int("lease", op.lease)
    _check_bool("prev_kv", op.prev_kv)
    _check_int("timestamp", op.timestamp)


def _check_delete(op: DeleteRange) -> None:
    _check_range(op.key, op.range_end)
    _check_bool("prev_kv", op.prev_kv)
    _check_int("timestamp", op.timestamp)


def check_range_request(req: RangeRequest) -> None:
    if not isinstance(req, RangeRequest):
        raise InvalidArgument(f"not a range request: {type(req).__name__}")
    _check_range(req.key, req.range_end)
    _check_int("limit", req.limit)
    _check_int("revision", req.revision)
    _check_bool("keys_only", req.keys_only)
    _check_bool("count_only", req.count_only)


def _check_compare(cmp: Compare) -> None:
    if not isinstance(cmp, Compare):
        raise InvalidArgument(f"not a compare: {type(cmp).__name__}")
    _check_range(cmp.key, cmp.range_end)
    if type(cmp.target) is not CompareTarget:
        raise InvalidArgument("compare target must be a CompareTarget")
    if type(cmp.op) is not CompareOp:
        raise InvalidArgument("compare op must be a CompareOp")
    if cmp.target is CompareTarget.VALUE:
        if type(cmp.value) is not bytes:
            raise InvalidArgument("a VALUE compare takes bytes")
    else:
        _check_int(f"{cmp.target.name} compare value", cmp.value)


def _check_ops(ops: object) -> None:
    if type(ops) is not tuple:
        raise InvalidArgument("txn ops must be a tuple")
    for op in ops:
        if isinstance(op, Put):
            _check_put(op)
        elif isinstance(op, DeleteRange):
            _check_delete(op)
        elif isinstance(op, RangeRequest):
            check_range_request(op)
        else:
            raise InvalidArgument(f"not a txn op: {type(op).__name__}")
        if not isinstance(op, RangeRequest) and op.timestamp != 0:
            raise InvalidArgument("ops inside a txn take the txn's timestamp; leave theirs 0")
    _check_no_duplicate_writes(ops)


def _check_no_duplicate_writes(ops: tuple[TxnOp, ...]) -> None:
    # As in etcd: one branch may not put a key twice, nor put a key it also
    # deletes, since the outcome would depend on op order in a way clients
    # rarely mean. Overlapping deletes are fine.
    # Decoding runs this before any size limit, on whatever a frame holds: it must
    # stay O(n log n), or one request of puts and deletes holds the event loop for
    # minutes (a pairwise search took 20 s for 20,000 of each).
    put_keys: set[bytes] = set()
    for op in ops:
        if isinstance(op, Put):
            if op.key in put_keys:
                raise InvalidArgument("duplicate key given in txn request")
            put_keys.add(op.key)
    if not put_keys:
        return
    ordered = sorted(put_keys)
    for op in ops:
        if isinstance(op, DeleteRange):
            # The first put key at or after the range's start is in it iff any is.
            i = bisect_left(ordered, op.key)
            if i < len(ordered) and in_range(ordered[i], op.key, op.range_end):
                raise InvalidArgument("duplicate key given in txn request")


def _check_txn(txn: Txn) -> None:
    if type(txn.compares) is not tuple:
        raise InvalidArgument("txn compares must be a tuple")
    for cmp in txn.compares:
        _check_compare(cmp)
    _check_ops(txn.success)
    _check_ops(txn.failure)
    _check_int("timestamp", txn.timestamp)


def check_lease_id(value: object) -> None:
    """Raise InvalidArgument unless ``value`` is a lease id: an int from 1 to 2**63-1."""
    _check_int("lease id", value)
    if value == 0:
        raise InvalidArgument("a lease id is at least 1")


def _check_lease_grant(cmd: LeaseGrant) -> None:
    check_lease_id(cmd.id)
    if type(cmd.ttl) is not int:
        raise InvalidArgument(f"lease ttl must be an integer, not {type(cmd.ttl).__name__}")
    if not 1 <= cmd.ttl <= MAX_LEASE_TTL:
        raise InvalidArgument(f"lease ttl must be between 1 and {MAX_LEASE_TTL} seconds, "
                              f"not {cmd.ttl}")
    _check_int("timestamp", cmd.timestamp)


def _check_lease_revoke(cmd: LeaseRevoke) -> None:
    check_lease_id(cmd.id)
    _check_int("timestamp", cmd.timestamp)


def _check_session(session: Session) -> None:
    for what, value in (("client_id", session.client_id), ("seq", session.seq)):
        _check_int(what, value)
        if value == 0:
            raise InvalidArgument(f"a session's {what} is at least 1")
    _check_int("timestamp", session.timestamp)
    if isinstance(session.command, (Session, AuthChange, Authorized)):
        raise InvalidArgument("a session holds a key-value write only")
    check_command(session.command)
    if session.command.timestamp != 0:
        raise InvalidArgument("a session's command takes the session's timestamp; "
                              "leave its own 0")


MAX_AUTH_NAME_BYTES = 255
"""A user or role name, UTF-8: it becomes part of an LMDB key, which holds 511 bytes."""


def _check_name(what: str, value: object, limit: int = MAX_AUTH_NAME_BYTES) -> None:
    if type(value) is not str:
        raise InvalidArgument(f"{what} must be a string")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:  # a lone surrogate
        raise InvalidArgument(f"{what} is not valid Unicode") from None
    if size > limit:
        raise InvalidArgument(f"{what} must be at most {limit} bytes (UTF-8), not {size}")


def _check_auth_change(cmd: AuthChange) -> None:
    if cmd.action not in AUTH_ACTIONS:
        raise InvalidArgument(f"unknown auth change {cmd.action!r:.60}")
    _check_name("name", cmd.name)
    _check_name("role", cmd.role)
    _check_name("password_hash", cmd.password_hash, limit=1024)
    if type(cmd.secret) is not bytes:
        raise InvalidArgument("secret must be bytes")
    _check_int("perm", cmd.perm)
    _check_int("timestamp", cmd.timestamp)
    if cmd.action in ("role_grant", "role_revoke"):
        _check_range(cmd.key, cmd.range_end)


def _check_authorized(cmd: Authorized) -> None:
    if cmd.user is not None:
        _check_name("user", cmd.user)
    if isinstance(cmd.command, Authorized):
        raise InvalidArgument("an authorized command cannot hold another")
    check_command(cmd.command)


def check_command(cmd: Command) -> None:
    """Raise InvalidArgument unless ``cmd`` is well formed (sizes aside)."""
    if isinstance(cmd, Session):
        _check_session(cmd)
    elif isinstance(cmd, Authorized):
        _check_authorized(cmd)
    elif isinstance(cmd, AuthChange):
        _check_auth_change(cmd)
    elif isinstance(cmd, Put):
        _check_put(cmd)
    elif isinstance(cmd, DeleteRange):
        _check_delete(cmd)
    elif isinstance(cmd, Txn):
        _check_txn(cmd)
    elif isinstance(cmd, Compact):
        _check_int("revision", cmd.revision)
        _check_int("timestamp", cmd.timestamp)
    elif isinstance(cmd, LeaseGrant):
        _check_lease_grant(cmd)
    elif isinstance(cmd, LeaseRevoke):
        _check_lease_revoke(cmd)
    else:
        raise InvalidArgument(f"not a command: {type(cmd).__name__}")


def check_key_size(key: bytes, range_end: bytes | None, limits: Limits) -> None:
    if len(key) > limits.max_key_size:
        raise KeyTooLarge(f"key of {len(key)} bytes exceeds the limit of {limits.max_key_size} "
                          f"(max_key_bytes)", limit=limits.max_key_size)
    if range_end is not None and len(range_end) > limits.max_key_size:
        raise KeyTooLarge(f"range_end of {len(range_end)} bytes exceeds the limit of "
                          f"{limits.max_key_size} (max_key_bytes)", limit=limits.max_key_size)


def _check_value_size(value: bytes, limits: Limits) -> None:
    if len(value) > limits.max_value_size:
        raise ValueTooLarge(f"value of {len(value)} bytes exceeds the limit of "
                            f"{limits.max_value_size} (max_value_bytes)",
                            limit=limits.max_value_size)


def _check_sizes(op: Command | TxnOp | Compare, limits: Limits) -> None:
    if isinstance(op, Put):
        check_key_size(op.key, None, limits)
        _check_value_size(op.value, limits)
    elif isinstance(op, (DeleteRange, RangeRequest)):
        check_key_size(op.key, op.range_end, limits)
    elif isinstance(op, Compare):
        check_key_size(op.key, op.range_end, limits)
        if isinstance(op.value, bytes):
            _check_value_size(op.value, limits)
    elif isinstance(op, Txn):
        for name, items in (("compares", op.compares), ("success ops", op.success),
                            ("failure ops", op.failure)):
            if len(items) > limits.max_txn_ops:
                raise InvalidArgument(f"too many {name} in txn: {len(items)} > "
                                      f"{limits.max_txn_ops} (max_txn_ops)",
                                      limit=limits.max_txn_ops)
        for item in (*op.compares, *op.success, *op.failure):
            _check_sizes(item, limits)


def validate(cmd: Command, limits: Limits | None = None) -> None:
    """Everything a client's command must pass before it is proposed.

    Raises InvalidArgument, KeyTooLarge or ValueTooLarge. A Session is
    refused: a client numbers its write with the request's client_id and seq,
    and the node builds the Session itself.
    """
    if isinstance(cmd, Session):
        raise InvalidArgument("a write's session comes from the request's client_id and seq, "
                              "not from its command")
    if isinstance(cmd, (AuthChange, Authorized)):
        # The node builds these (hashing passwords, drawing the token secret itself).
        raise InvalidArgument("auth changes are requested with the auth operations, not "
                              "written as commands")
    check_command(cmd)
    _check_sizes(cmd, limits or Limits())
