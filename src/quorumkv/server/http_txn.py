"""A transaction as JSON: compares, then the success or failure ops (etcd's Txn).

::

    {"compare": [{"key": K, "target": "value"|"version"|"create_revision"|"mod_revision"|"lease",
                  "op": "="|"!="|"<"|">", "value": V,
                  "range_end"|"prefix"|"from_key": ... (optional: a range of keys)}],
     "success": [op], "failure": [op]}

    op  {"put":    {"key", "value", "lease": 0, "prev_kv": false}}
        {"delete": {"key", "range_end"|"prefix"|"from_key", "prev_kv": false}}
        {"range":  {"key", "range_end"|"prefix"|"from_key", "limit": 0, "revision": 0,
                    "keys_only": false, "count_only": false}}

``value`` is a string (in the request's encoding) for the ``value`` target and
an integer otherwise; a lease id (the ``lease`` target, a put's ``lease``) may
also be a string of its digits, as answers write it. Each object is read
strictly: an unknown field is an error, as everywhere in the API.
"""

from __future__ import annotations

from typing import Final

from quorumkv.kv.commands import (
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    Put,
    RangeRequest,
    Txn,
    TxnOp,
)
from quorumkv.server.http_json import BodyFields, read_bytes, read_key_range

TARGETS: Final = {"value": CompareTarget.VALUE, "version": CompareTarget.VERSION,
                  "create_revision": CompareTarget.CREATE_REVISION,
                  "mod_revision": CompareTarget.MOD_REVISION, "lease": CompareTarget.LEASE}
OPS: Final = {"=": CompareOp.EQUAL, "!=": CompareOp.NOT_EQUAL, "<": CompareOp.LESS,
              ">": CompareOp.GREATER}
OP_KINDS: Final = ("put", "delete", "range")


def _compare(obj: object, where: str, encoding: str) -> Compare:
    f = BodyFields(obj, where)
    key, end = read_key_range(f, encoding)
    target = TARGETS[f.choice("target", tuple(TARGETS))]
    op = OPS[f.choice("op", tuple(OPS))]
    value: bytes | int
    if target is CompareTarget.VALUE:
        value = read_bytes(f, "value", encoding)
    elif target is CompareTarget.LEASE:
        value = f.identifier("value")
    else:
        value = f.integer("value")
    f.finish()
    return Compare(key=key, range_end=end, target=target, op=op, value=value)


def _op(obj: object, where: str, encoding: str) -> TxnOp:
    outer = BodyFields(obj, where)
    kinds = [k for k in OP_KINDS if k in outer.obj]
    if len(kinds) != 1:
        raise outer.fail(f"an op is an object with exactly one of {', '.join(OP_KINDS)}")
    kind = kinds[0]
    f = BodyFields(outer.raw(kind), f"{where}.{kind}")
    outer.finish()
    op: TxnOp
    if kind == "put":
        op = Put(key=read_bytes(f, "key", encoding), value=read_bytes(f, "value", encoding),
                 lease=f.identifier("lease", 0), prev_kv=f.boolean("prev_kv"))
    elif kind == "delete":
        key, end = read_key_range(f, encoding)
        op = DeleteRange(key=key, range_end=end, prev_kv=f.boolean("prev_kv"))
    else:
        key, end = read_key_range(f, encoding)
        op = RangeRequest(key=key, range_end=end, limit=f.integer("limit", 0),
                          revision=f.integer("revision", 0), keys_only=f.boolean("keys_only"),
                          count_only=f.boolean("count_only"))
    f.finish()
    return op


def parse_txn(f: BodyFields, encoding: str) -> Txn:
    """The Txn of a request body's ``compare``, ``success`` and ``failure`` (the caller
    reads and checks the body's other fields)."""
    compares = tuple(_compare(c, f"compare[{i}]", encoding)
                     for i, c in enumerate(f.array("compare")))
    success = tuple(_op(o, f"success[{i}]", encoding) for i, o in enumerate(f.array("success")))
    failure = tuple(_op(o, f"failure[{i}]", encoding) for i, o in enumerate(f.array("failure")))
    return Txn(compares=compares, success=success, failure=failure)
