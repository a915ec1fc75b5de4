"""The kv result types as wire maps, and the response header (shapes in ``protocol.py``).

The node builds a response with :func:`write_result`, :func:`durable_result`
or :func:`range_result`; the client reads it back with
:func:`write_result_from_wire` or :func:`range_result_from_wire`.
Reading checks every field (ProtocolError: the server sent nonsense) but
ignores fields it does not know, so a newer server can add some.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quorumkv.client.fields import MAX_INT64, MAX_UINT64, FieldReader, brief
from quorumkv.errors import ProtocolError
from quorumkv.kv.commands import MAX_LEASE_TTL
from quorumkv.kv.results import (
    Applied,
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Header:
    """Which node answered and at what point of its history (as etcd's ResponseHeader)."""

    revision: int
    """The store's revision when the answer was made."""
    raft_term: int
    member: str
    """The answering node's name."""
    applied_index: int

    def to_wire(self) -> dict[str, Any]:
        return {"revision": self.revision, "raft_term": self.raft_term, "member": self.member,
                "applied_index": self.applied_index}

    @classmethod
    def from_wire(cls, obj: object) -> Header:
        f = FieldReader(obj, "header", ProtocolError)
        return cls(revision=f.integer("revision"),
                   raft_term=f.integer("raft_term", high=MAX_UINT64), member=f.string("member"),
                   applied_index=f.integer("applied_index", high=MAX_UINT64))


def kv_to_wire(kv: KeyValue) -> dict[str, Any]:
    return {"key": kv.key, "value": kv.value, "create_revision": kv.create_revision,
            "mod_revision": kv.mod_revision, "version": kv.version, "lease": kv.lease,
            "timestamp": kv.timestamp}


def kv_from_wire(obj: object) -> KeyValue:
    kv = _plain_kv(obj)
    return _checked_kv(obj) if kv is None else kv


def _plain_kv(obj: object) -> KeyValue | None:
    """A well-formed key-value map read without a FieldReader (a read answer holds one per
    key); None for anything else, which :func:`_checked_kv` accepts or names the fault of."""
    if type(obj) is not dict:
        return None
    key, value = obj.get("key"), obj.get("value")
    create, mod, version = obj.get("create_revision"), obj.get("mod_revision"), obj.get("version")
    lease, timestamp = obj.get("lease", 0), obj.get("timestamp", 0)
    # The OR of integers is negative if any is, and else below 2**63 iff each is.
    if type(key) is bytes and type(value) is bytes and type(create) is int \
            and type(mod) is int and type(version) is int and type(lease) is int \
            and type(timestamp) is int \
            and 0 <= (create | mod | version | lease | timestamp) <= MAX_INT64:
        return KeyValue(key=key, value=value, create_revision=create, mod_revision=mod,
                        version=version, lease=lease, timestamp=timestamp)
    return None


def _checked_kv(obj: object) -> KeyValue:
    f = FieldReader(obj, "key-value", ProtocolError)
    return KeyValue(key=f.binary("key"), value=f.binary("value"),
                    create_revision=f.integer("create_revision"),
                    mod_revision=f.integer("mod_revision"), version=f.integer("version"),
                    lease=f.integer("lease", 0), timestamp=f.integer("timestamp", 0))


def result_to_wire(result: Result | RangeResult) -> dict[str, Any]:
    """The wire map of one kv result (a Txn's responses nest the same maps)."""
    if isinstance(result, PutResult):
        return {"type": "put", "revision": result.revision,
                "prev_kv": None if result.prev_kv is None else kv_to_wire(result.prev_kv)}
    if isinstance(result, DeleteResult):
        return {"type": "delete", "revision": result.revision, "deleted": result.deleted,
                "prev_kvs": [kv_to_wire(kv) for kv in result.prev_kvs]}
    if isinstance(result, RangeResult):
        return {"type": "range", "revision": result.revision, "count": result.count,
                "more": result.more, "kvs": [kv_to_wire(kv) for kv in result.kvs]}
    if isinstance(result, TxnResult):
        return {"type": "txn", "revision": result.revision, "succeeded": result.succeeded,
                "responses": [result_to_wire(r) for r in result.responses]}
    if isinstance(result, CompactResult):
        return {"type": "compact", "revision": result.revision,
                "compact_revision": result.compact_revision}
    if isinstance(result, LeaseGrantResult):
        return {"type": "lease_grant", "id": result.id, "ttl": result.ttl}
    if isinstance(result, LeaseRevokeResult):
        return {"type": "lease_revoke", "revision": result.revision, "deleted": result.deleted}
    if isinstance(result, AuthResult):
        return {"type": "auth", "auth_revision": result.auth_revision}
    raise TypeError(f"not a kv result: {type(result).__name__}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Durable:
    """A "one" write's answer: durable in the leader's log at ``index``, not yet applied.

    Its revision and outcome are not known yet (and it may still be lost if
    the leader fails before replicating it).
    """

    index: int


HeaderLike = Header | Mapping[str, Any]


def _header_map(header: HeaderLike) -> dict[str, Any]:
    return header.to_wire() if isinstance(header, Header) else dict(header)


def write_result(result: Result | Applied, header: HeaderLike) -> dict[str, Any]:
    """What a node's ``write`` returns once the write is applied: its result plus the header."""
    if isinstance(result, Applied):
        if result.result is None:
            raise TypeError(f"log entry {result.index} carried no command")
        result = result.result
    return {**result_to_wire(result), "header": _header_map(header)}


def durable_result(index: int, header: HeaderLike) -> dict[str, Any]:
    """What a node's ``write`` returns for consistency "one": the entry is in its log."""
    return {"type": "durable", "index": index, "header": _header_map(header)}


def range_result(result: RangeResult, header: HeaderLike) -> dict[str, Any]:
    """What a node's ``range`` returns."""
    return {**result_to_wire(result), "header": _header_map(header)}


def _kvs(f: FieldReader, name: str) -> tuple[KeyValue, ...]:
    return tuple(kv_from_wire(kv) for kv in f.array(name))


def _txn_response(obj: object) -> TxnResponse:
    result = result_from_wire(obj)
    if not isinstance(result, (PutResult, DeleteResult, RangeResult)):
        raise ProtocolError(f"a txn response cannot be a {type(result).__name__}")
    return result


def result_from_wire(obj: object) -> Result | RangeResult:
    f = FieldReader(obj, "result", ProtocolError)
    kind = f.string("type")
    if kind == "lease_grant":
        # The one result without a revision: a grant writes no key.
        lease_id, ttl = f.integer("id"), f.integer("ttl", high=MAX_LEASE_TTL)
        if lease_id == 0 or ttl == 0:
            raise f.fail("a lease's id and ttl are at least 1")
        return LeaseGrantResult(id=lease_id, ttl=ttl)
    if kind == "auth":
        return AuthResult(auth_revision=f.integer("auth_revision"))
    revision = f.integer("revision")
    if kind == "put":
        prev = f.raw("prev_kv")
        return PutResult(revision=revision, prev_kv=None if prev is None else kv_from_wire(prev))
    if kind == "delete":
        return DeleteResult(revision=revision, deleted=f.integer("deleted"),
                            prev_kvs=_kvs(f, "prev_kvs"))
    if kind == "range":
        return RangeResult(kvs=_kvs(f, "kvs"), count=f.integer("count"),
                           more=f.boolean("more"), revision=revision)
    if kind == "txn":
        return TxnResult(succeeded=f.boolean("succeeded"), revision=revision,
                         responses=tuple(_txn_response(r) for r in f.array("responses")))
    if kind == "compact":
        return CompactResult(revision=revision, compact_revision=f.integer("compact_revision"))
    if kind == "lease_revoke":
        return LeaseRevokeResult(revision=revision, deleted=f.integer("deleted"))
    raise ProtocolError(f"unknown result type {brief(kind)}")


def _with_header(obj: object) -> tuple[Result | RangeResult | Durable, Header]:
    result: Result | RangeResult | Durable
    if isinstance(obj, dict) and obj.get("type") == "durable":
        result = Durable(index=FieldReader(obj, "result", ProtocolError).integer(
            "index", high=MAX_UINT64))
    else:
        result = result_from_wire(obj)
    assert isinstance(obj, dict)  # result_from_wire checked it
    if "header" not in obj:
        raise ProtocolError("result: missing field 'header'")
    return result, Header.from_wire(obj["header"])


def _plain_header_revision(obj: dict[Any, Any]) -> int | None:
    """The revision of ``obj``'s well-formed header (as Header.from_wire checks it), without
    making a Header; None if there is anything to say about it."""
    header = obj.get("header")
    if type(header) is not dict:
        return None
    revision, term = header.get("revision"), header.get("raft_term")
    member, applied = header.get("member"), header.get("applied_index")
    if type(revision) is int and type(term) is int and type(applied) is int \
            and type(member) is str and 0 <= revision <= MAX_INT64 \
            and 0 <= (term | applied) <= MAX_UINT64:
        return revision
    return None


RangeParts = tuple[tuple[KeyValue, ...], int, bool, int, int]
"""A range answer taken apart: ``(kvs, count, more, revision, header revision)``."""


def range_parts_from_wire(obj: object) -> RangeParts:
    """What :func:`range_result_from_wire` reads, checked alike, without the RangeResult and
    Header objects that a client reading one key would make only to take apart."""
    if type(obj) is dict and obj.get("type") == "range":
        revision, count, more, kvs = (obj.get("revision"), obj.get("count"),
                                      obj.get("more"), obj.get("kvs"))
        header_revision = _plain_header_revision(obj)
        if header_revision is not None and type(revision) is int and type(count) is int \
                and type(more) is bool and type(kvs) is list \
                and 0 <= (revision | count) <= MAX_INT64:
            out = []
            for item in kvs:
                kv = _plain_kv(item)
                if kv is None:
                    break
                out.append(kv)
            else:
                return tuple(out), count, more, revision, header_revision
    # Anything unusual: the checked reading accepts it, or raises naming what is wrong.
    result, header = range_result_from_wire(obj)
    return result.kvs, result.count, result.more, result.revision, header.revision


def write_parts_from_wire(obj: object) -> tuple[Result | Durable, int]:
    """:func:`write_result_from_wire` with only the header's revision (its fields checked
    alike): what a client writing keeps of it."""
    if type(obj) is dict:
        kind = obj.get("type")
        header_revision = _plain_header_revision(obj)
        if header_revision is not None:
            if kind == "durable":
                index = obj.get("index")
                if type(index) is int and 0 <= index <= MAX_UINT64:
                    return Durable(index=index), header_revision
            elif kind == "put":
                revision, prev = obj.get("revision"), obj.get("prev_kv")
                prev_kv = None if prev is None else _plain_kv(prev)
                if type(revision) is int and 0 <= revision <= MAX_INT64 \
                        and (prev is None or prev_kv is not None):
                    return PutResult(revision=revision, prev_kv=prev_kv), header_revision
    result, header = write_result_from_wire(obj)
    return result, header.revision


def write_result_from_wire(obj: object) -> tuple[Result | Durable, Header]:
    result, header = _with_header(obj)
    if isinstance(result, RangeResult):
        raise ProtocolError("a write cannot answer with a range result")
    return result, header


def range_result_from_wire(obj: object) -> tuple[RangeResult, Header]:
    result, header = _with_header(obj)
    if not isinstance(result, RangeResult):
        raise ProtocolError(f"a range read cannot answer with a {type(result).__name__}")
    return result, header
