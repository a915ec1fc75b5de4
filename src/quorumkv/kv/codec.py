"""The log encoding of commands: msgpack arrays, a tag first, fields in a fixed order.

::

    Put          [1, key, value, lease, prev_kv, timestamp]
    DeleteRange  [2, key, range_end, prev_kv, timestamp]
    Txn          [3, [compare...], [op...], [op...], timestamp]
    Compact      [4, revision, timestamp]
    RangeRequest [5, key, range_end, limit, revision, keys_only, count_only]  (Txn op only)
    Session      [6, client_id, seq, command, timestamp]   command: tag 1-4, 7 or 8, timestamp 0
    LeaseGrant   [7, id, ttl, timestamp]
    LeaseRevoke  [8, id, timestamp]
    AuthChange   [9, action, name, role, password_hash, perm, key, range_end, secret, timestamp]
    Authorized   [10, user|nil, command]     command: a write, a Session or an AuthChange
    compare      [key, range_end, target, op, value]

Keys and values are msgpack binaries, never strings. The bytes come from the
log and, before that, from the network: :func:`decode_command` trusts nothing,
and anything but a well-formed command (see
:func:`~quorumkv.kv.validation.check_command`) is InvalidArgument. New
commands get new tags; a field is never reinterpreted.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from quorumkv.errors import InvalidArgument
from quorumkv.kv.commands import (
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
from quorumkv.kv.packing import pack, unpack
from quorumkv.kv.validation import check_command

_PUT, _DELETE, _TXN, _COMPACT, _RANGE, _SESSION = 1, 2, 3, 4, 5, 6
_LEASE_GRANT, _LEASE_REVOKE = 7, 8
_AUTH_CHANGE, _AUTHORIZED = 9, 10
_WRITES = (Put, DeleteRange, Txn, Compact, LeaseGrant, LeaseRevoke)


def _op_fields(op: Command | TxnOp) -> list[Any]:
    if isinstance(op, Put):
        return [_PUT, op.key, op.value, op.lease, op.prev_kv, op.timestamp]
    if isinstance(op, DeleteRange):
        return [_DELETE, op.key, op.range_end, op.prev_kv, op.timestamp]
    if isinstance(op, RangeRequest):
        return [_RANGE, op.key, op.range_end, op.limit, op.revision, op.keys_only, op.count_only]
    if isinstance(op, Txn):
        return [_TXN,
                [[c.key, c.range_end, int(c.target), int(c.op), c.value] for c in op.compares],
                [_op_fields(o) for o in op.success],
                [_op_fields(o) for o in op.failure],
                op.timestamp]
    if isinstance(op, Compact):
        return [_COMPACT, op.revision, op.timestamp]
    if isinstance(op, LeaseGrant):
        return [_LEASE_GRANT, op.id, op.ttl, op.timestamp]
    if isinstance(op, LeaseRevoke):
        return [_LEASE_REVOKE, op.id, op.timestamp]
    if isinstance(op, Session):
        return [_SESSION, op.client_id, op.seq, _op_fields(op.command), op.timestamp]
    if isinstance(op, AuthChange):
        return [_AUTH_CHANGE, op.action, op.name, op.role, op.password_hash, op.perm, op.key,
                op.range_end, op.secret, op.timestamp]
    if isinstance(op, Authorized):
        return [_AUTHORIZED, op.user, _op_fields(op.command)]
    raise InvalidArgument(f"not a command: {type(op).__name__}")


def encode_command(cmd: Command, *, client_id: int = 0, seq: int = 0,
                   user: str | bool | None = False) -> bytes:
    """The bytes a log entry carries for ``cmd`` (which must be well formed).

    With a ``client_id`` (not 0), the entry is the client's write number
    ``seq``: ``cmd`` goes into a :class:`~quorumkv.kv.commands.Session`
    (which takes over its timestamp), and the store applies it at most once
    however often the client retries it (thesis §6.3). ``cmd`` must not be a
    Session already.

    ``user`` (a name, or None for no user; False leaves it out) wraps the
    entry in an :class:`~quorumkv.kv.commands.Authorized`: how every client
    write is logged.
    """
    if client_id != 0:
        if isinstance(cmd, (Session, AuthChange, Authorized)):
            raise InvalidArgument("only a key-value write can be a client's numbered write")
        cmd = Session(client_id=client_id, seq=seq, command=replace(cmd, timestamp=0),
                      timestamp=cmd.timestamp)
    if user is not False:
        if isinstance(cmd, Authorized):
            raise InvalidArgument("the command is already authorized")
        cmd = Authorized(user=user if isinstance(user, str) else None, command=cmd)
    check_command(cmd)
    return pack(_op_fields(cmd))


def _fields(obj: object, arity: int, what: str) -> list[Any]:
    if not isinstance(obj, list) or len(obj) != arity:
        raise InvalidArgument(f"malformed {what}")
    return obj


def _list(obj: object, what: str) -> list[Any]:
    if not isinstance(obj, list):
        raise InvalidArgument(f"malformed {what}: expected an array")
    return obj


def _compare(obj: object) -> Compare:
    key, range_end, target, op, value = _fields(obj, 5, "compare")
    if type(target) is not int or type(op) is not int:
        raise InvalidArgument("malformed compare: target and op are integers")
    try:
        target_enum, op_enum = CompareTarget(target), CompareOp(op)
    except ValueError as err:
        raise InvalidArgument(f"malformed compare: {err}") from err
    return Compare(key=key, range_end=range_end, target=target_enum, op=op_enum, value=value)


def _decode(obj: object, *, top_level: bool, in_session: bool = False,
            in_authorized: bool = False) -> Command | TxnOp:
    items = _list(obj, "command")
    if not items or type(items[0]) is not int:
        raise InvalidArgument("malformed command: missing tag")
    tag = items[0]
    if tag == _PUT:
        _, key, value, lease, prev_kv, timestamp = _fields(items, 6, "put")
        return Put(key=key, value=value, lease=lease, prev_kv=prev_kv, timestamp=timestamp)
    if tag == _DELETE:
        _, key, range_end, prev_kv, timestamp = _fields(items, 5, "delete")
        return DeleteRange(key=key, range_end=range_end, prev_kv=prev_kv, timestamp=timestamp)
    if tag == _RANGE and not top_level:
        _, key, range_end, limit, revision, keys_only, count_only = _fields(items, 7, "range")
        return RangeRequest(key=key, range_end=range_end, limit=limit, revision=revision,
                            keys_only=keys_only, count_only=count_only)
    if tag == _TXN and top_level:
        _, compares, success, failure, timestamp = _fields(items, 5, "txn")
        return Txn(compares=tuple(_compare(c) for c in _list(compares, "compares")),
                   success=tuple(_txn_op(o) for o in _list(success, "success ops")),
                   failure=tuple(_txn_op(o) for o in _list(failure, "failure ops")),
                   timestamp=timestamp)
    if tag == _COMPACT and top_level:
        _, revision, timestamp = _fields(items, 3, "compact")
        return Compact(revision=revision, timestamp=timestamp)
    if tag == _LEASE_GRANT and top_level:
        _, lease_id, ttl, timestamp = _fields(items, 4, "lease grant")
        return LeaseGrant(id=lease_id, ttl=ttl, timestamp=timestamp)
    if tag == _LEASE_REVOKE and top_level:
        _, lease_id, timestamp = _fields(items, 3, "lease revoke")
        return LeaseRevoke(id=lease_id, timestamp=timestamp)
    if tag == _AUTH_CHANGE and top_level and not in_session:
        (_, action, name, role, password_hash, perm, key, range_end, secret,
         timestamp) = _fields(items, 10, "auth change")
        return AuthChange(action=action, name=name, role=role, password_hash=password_hash,
                          perm=perm, key=key, range_end=range_end, secret=secret,
                          timestamp=timestamp)
    if tag == _AUTHORIZED and top_level and not in_session and not in_authorized:
        _, user, inner = _fields(items, 3, "authorized")
        command = _decode(inner, top_level=True, in_authorized=True)
        assert isinstance(command, (*_WRITES, Session, AuthChange))
        return Authorized(user=user, command=command)
    if tag == _SESSION and top_level and not in_session:
        _, client_id, seq, inner, timestamp = _fields(items, 5, "session")
        command = _decode(inner, top_level=True, in_session=True)
        assert isinstance(command, _WRITES)
        return Session(client_id=client_id, seq=seq, command=command, timestamp=timestamp)
    raise InvalidArgument(f"unknown command tag {tag}")


def _txn_op(obj: object) -> TxnOp:
    op = _decode(obj, top_level=False)
    assert isinstance(op, (Put, DeleteRange, RangeRequest))
    return op


def decode_command(data: bytes) -> Command:
    """The command in a log entry; InvalidArgument if the bytes are not a well-formed one."""
    try:
        obj = unpack(data)
    except ValueError as err:
        raise InvalidArgument(f"malformed command: {err}") from err
    cmd = _decode(obj, top_level=True)
    assert isinstance(cmd, (*_WRITES, Session, AuthChange, Authorized))
    check_command(cmd)
    return cmd
