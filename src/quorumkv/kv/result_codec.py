"""The stored encoding of what a command did: its result, or the error it failed with.

The session table (``sessions.py``) keeps the outcome of each client's recent
writes so that a retry is answered with exactly what the first attempt got
(thesis §6.3): the same revision, the same previous versions, the same txn
branch and responses, or the same error. Outcomes are msgpack arrays, a tag
first::

    PutResult      [1, revision, kv | nil]
    DeleteResult   [2, revision, deleted, [kv...]]
    TxnResult      [3, succeeded, revision, [response...]]   response: tag 1, 2 or 5
    CompactResult  [4, revision, compact_revision]
    RangeResult    [5, revision, count, more, [kv...]]       (a txn response only)
    LeaseGrantResult   [6, id, ttl]
    LeaseRevokeResult  [7, revision, deleted]
    AuthResult         [8, auth_revision]
    error          [0, code, message, {name: value}]         a RequestError, by its code
    kv             [key, value, create_revision, mod_revision, version, lease, timestamp]

These are records on disk, not input from the network: anything malformed is
StorageError. New result types get new tags; a field is never reinterpreted.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from quorumkv.errors import ERRORS_BY_CODE, RequestError, StorageError
from quorumkv.kv.packing import pack, unpack
from quorumkv.kv.records import kv_fields, kv_from_fields
from quorumkv.kv.results import (
    AuthResult,
    CompactResult,
    DeleteResult,
    KeyValue,
    LeaseGrantResult,
    LeaseRevokeResult,
    PutResult,
    RangeResult,
    Result,
    TxnResponse,
    TxnResult,
)

RecordedOutcome: TypeAlias = Result | RequestError

_ERROR, _PUT, _DELETE, _TXN, _COMPACT, _RANGE = 0, 1, 2, 3, 4, 5
_LEASE_GRANT, _LEASE_REVOKE, _AUTH = 6, 7, 8
_RESULTS = (AuthResult, PutResult, DeleteResult, TxnResult, CompactResult, LeaseGrantResult,
            LeaseRevokeResult)

_WHAT = "session result"


def _corrupt(detail: str = "") -> StorageError:
    return StorageError(f"corrupt {_WHAT} record in the state machine"
                        + (f": {detail}" if detail else ""))


def _result_fields(result: Result | TxnResponse) -> list[Any]:
    if isinstance(result, PutResult):
        prev = None if result.prev_kv is None else kv_fields(result.prev_kv)
        return [_PUT, result.revision, prev]
    if isinstance(result, DeleteResult):
        return [_DELETE, result.revision, result.deleted,
                [kv_fields(kv) for kv in result.prev_kvs]]
    if isinstance(result, RangeResult):
        return [_RANGE, result.revision, result.count, result.more,
                [kv_fields(kv) for kv in result.kvs]]
    if isinstance(result, TxnResult):
        return [_TXN, result.succeeded, result.revision,
                [_result_fields(r) for r in result.responses]]
    if isinstance(result, LeaseGrantResult):
        return [_LEASE_GRANT, result.id, result.ttl]
    if isinstance(result, LeaseRevokeResult):
        return [_LEASE_REVOKE, result.revision, result.deleted]
    if isinstance(result, AuthResult):
        return [_AUTH, result.auth_revision]
    return [_COMPACT, result.revision, result.compact_revision]


def _error_fields(err: RequestError) -> list[Any]:
    details = dict(err.details)
    try:
        pack(details)
    except (TypeError, ValueError, OverflowError):
        # Not something msgpack carries: the code and message still say what happened.
        details = {}
    return [_ERROR, err.code, err.message, details]


def encode_result(result: Result) -> bytes:
    return pack(_result_fields(result))


def encode_outcome(outcome: RecordedOutcome) -> bytes:
    """A result, or the RequestError a command failed with, as a record."""
    if isinstance(outcome, RequestError):
        return pack(_error_fields(outcome))
    return encode_result(outcome)


def _items(obj: object, arity: int) -> list[Any]:
    if not isinstance(obj, list) or len(obj) != arity:
        raise _corrupt()
    return obj


def _int(obj: object) -> int:
    if type(obj) is not int or obj < 0:
        raise _corrupt("expected a non-negative integer")
    return obj


def _bool(obj: object) -> bool:
    if type(obj) is not bool:
        raise _corrupt("expected a boolean")
    return obj


def _kvs(obj: object) -> tuple[KeyValue, ...]:
    if not isinstance(obj, list):
        raise _corrupt("expected an array of versions")
    return tuple(kv_from_fields(kv, _WHAT) for kv in obj)


def _decode_result(obj: object, *, in_txn: bool) -> Result | TxnResponse:
    if not isinstance(obj, list) or not obj or type(obj[0]) is not int:
        raise _corrupt("missing tag")
    tag = obj[0]
    if tag == _PUT:
        _, revision, prev = _items(obj, 3)
        return PutResult(revision=_int(revision),
                         prev_kv=None if prev is None else kv_from_fields(prev, _WHAT))
    if tag == _DELETE:
        _, revision, deleted, prev_kvs = _items(obj, 4)
        return DeleteResult(revision=_int(revision), deleted=_int(deleted),
                            prev_kvs=_kvs(prev_kvs))
    if tag == _RANGE and in_txn:
        _, revision, count, more, kvs = _items(obj, 5)
        return RangeResult(kvs=_kvs(kvs), count=_int(count), more=_bool(more),
                           revision=_int(revision))
    if tag == _TXN and not in_txn:
        _, succeeded, revision, responses = _items(obj, 4)
        if not isinstance(responses, list):
            raise _corrupt("expected an array of txn responses")
        return TxnResult(succeeded=_bool(succeeded), revision=_int(revision),
                         responses=tuple(_txn_response(r) for r in responses))
    if tag == _COMPACT and not in_txn:
        _, revision, compact_revision = _items(obj, 3)
        return CompactResult(revision=_int(revision), compact_revision=_int(compact_revision))
    if tag == _LEASE_GRANT and not in_txn:
        _, lease_id, ttl = _items(obj, 3)
        return LeaseGrantResult(id=_int(lease_id), ttl=_int(ttl))
    if tag == _LEASE_REVOKE and not in_txn:
        _, revision, deleted = _items(obj, 3)
        return LeaseRevokeResult(revision=_int(revision), deleted=_int(deleted))
    if tag == _AUTH and not in_txn:
        _, auth_revision = _items(obj, 2)
        return AuthResult(auth_revision=_int(auth_revision))
    raise _corrupt(f"unexpected tag {tag}")


def _txn_response(obj: object) -> TxnResponse:
    response = _decode_result(obj, in_txn=True)
    assert isinstance(response, (PutResult, DeleteResult, RangeResult))
    return response


def _decode_error(obj: list[Any]) -> RequestError:
    _, code, message, details = _items(obj, 4)
    cls = ERRORS_BY_CODE.get(code) if type(code) is str else None
    if (cls is None or not issubclass(cls, RequestError) or type(message) is not str
            or not isinstance(details, dict) or not all(type(k) is str for k in details)):
        raise _corrupt("malformed error")
    try:
        # Every RequestError takes (message, **details), as it was raised with.
        return cls(message, **details)
    except TypeError as err:
        raise _corrupt(f"malformed error: {err}") from err


def _unpack(data: bytes) -> object:
    try:
        return unpack(data)
    except ValueError as err:
        raise _corrupt(str(err)) from err


def decode_result(data: bytes) -> Result:
    result = _decode_result(_unpack(data), in_txn=False)
    assert isinstance(result, _RESULTS)
    return result


def decode_outcome(data: bytes) -> RecordedOutcome:
    """The inverse of :func:`encode_outcome`; StorageError if the record is malformed."""
    obj = _unpack(data)
    if isinstance(obj, list) and obj and type(obj[0]) is int and obj[0] == _ERROR:
        return _decode_error(obj)
    result = _decode_result(obj, in_txn=False)
    assert isinstance(result, _RESULTS)
    return result
