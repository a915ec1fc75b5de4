"""The HTTP API's OpenAPI 3.1 document, served at ``GET /openapi.json``.

Built from small helpers so each route's entry stays a few lines; the
request schemas are as strict as the handlers (``additionalProperties:
false``, integer bounds), so that a generator working from this document
(tests/fuzz/test_http_openapi.py) produces what the server accepts, and the
response schemas say what every answer looks like. Every operation also
documents the error object under ``default``: any status it may answer with
(400, 401, 404, 409, 410, 413, 429, 502, 503, 504) has that shape.

Ids (members', the cluster's, leases') are 64-bit: answers give them as
strings of digits (:func:`_id`), requests take an integer or such a string
(:func:`_id_in`); see http_json.py.

A module that adds routes adds their path items in :func:`document` too.
"""

from __future__ import annotations

import functools
from typing import Any, Final

from aiohttp import web

from quorumkv.client.auth_wire import MAX_PASSWORD_LENGTH, MAX_USER_LENGTH, PERM_TYPES
from quorumkv.client.fields import MAX_INT64
from quorumkv.client.protocol import MAX_ADDRESS_LENGTH, MAX_NAME_LENGTH, MAX_TOKEN_LENGTH
from quorumkv.etcd import gateway as etcd_gateway
from quorumkv.kv.commands import MAX_LEASE_TTL
from quorumkv.server import http_dashboard
from quorumkv.server.events import DEFAULT_LIMIT as EVENTS_LIMIT
from quorumkv.server.events import MAX_LIMIT as MAX_EVENTS_LIMIT
from quorumkv.server.http_json import (
    ENCODINGS,
    ID_PATTERN,
    READ_LEVELS,
    WRITE_LEVELS,
    json_response,
)
from quorumkv.server.http_kv import HISTORY_LIMIT, MAX_HISTORY_LIMIT
from quorumkv.server.http_observe import MAX_SINCE

Schema = dict[str, Any]

_REF: Final = "#/components/schemas/"
TAGS: Final = ("kv", "lease", "watch", "cluster", "auth", "node", "observe", "dashboard",
               "etcd")
_POSITIVE_ID_PATTERN: Final = "^[1-9][0-9]{0,18}$"


def _ref(name: str) -> Schema:
    return {"$ref": _REF + name}


def _int(description: str = "", *, minimum: int = 0, maximum: int = MAX_INT64) -> Schema:
    out: Schema = {"type": "integer", "minimum": minimum, "maximum": maximum}
    if description:
        out["description"] = description
    return out


def _str(description: str = "", **extra: Any) -> Schema:
    out: Schema = {"type": "string", **extra}
    if description:
        out["description"] = description
    return out


def _id(description: str = "") -> Schema:
    """A 64-bit id in an answer: a string of its digits."""
    return _str(description or f"An id: its decimal digits (at most {MAX_INT64})",
                pattern=ID_PATTERN)


def _id_in(description: str = "", *, minimum: int = 0) -> Schema:
    """A 64-bit id in a request: an integer, or a string of its digits (from ``minimum``,
    0 or 1, to 2**63 - 1)."""
    assert minimum in (0, 1)
    text = _str(pattern=ID_PATTERN if minimum == 0 else _POSITIVE_ID_PATTERN)
    out: Schema = {"anyOf": [_int(minimum=minimum), text]}
    either = "an integer, or its decimal digits as a string (exact in JavaScript)"
    out["description"] = f"{description}: {either}" if description else either.capitalize()
    return out


def _bool(description: str = "") -> Schema:
    out: Schema = {"type": "boolean"}
    if description:
        out["description"] = description
    return out


def _enum(values: tuple[str, ...], description: str = "") -> Schema:
    return _str(description, enum=list(values))


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def _object(properties: dict[str, Schema], required: tuple[str, ...] = (), *,
            closed: bool = False, description: str = "") -> Schema:
    """A JSON object; ``closed`` (requests) refuses other properties, as the server does."""
    out: Schema = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    if closed:
        out["additionalProperties"] = False
    if description:
        out["description"] = description
    return out


def _const(value: str) -> Schema:
    return {"type": "string", "const": value}


def _set(name: str) -> Schema:
    """The object has option ``name`` turned on (``true``, or a non-empty string)."""
    value: Schema = ({"type": "string", "minLength": 1} if name in ("key", "range_end")
                     else {"const": True})
    return {"properties": {name: value}, "required": [name]}


def _selecting(schema: Schema) -> Schema:
    """``schema`` (with key, range_end, prefix, from_key) constrained as the server reads
    them: a non-empty key unless prefix or from_key, and at most one of the three ways
    of giving a range."""
    both = [("prefix", "from_key"), ("prefix", "range_end"), ("from_key", "range_end")]
    return {**schema,
            "anyOf": [_set("key"), _set("prefix"), _set("from_key")],
            "not": {"anyOf": [{"allOf": [_set(a), _set(b)]} for a, b in both]}}


# -- schemas -------------------------------------------------------------------------

_ENCODING = _enum(ENCODINGS, "How keys and values are written as JSON strings (default utf8)")
_ITEM_ENCODING = _enum(ENCODINGS, "How this item's key and value are written: the requested "
                                  "encoding, or base64 when a utf8 request met bytes that are "
                                  "not UTF-8")
_KEY = _str("A key, in the request's encoding; empty with prefix or from_key: every key")
_RANGE_OPTIONS: dict[str, Schema] = {
    "key": _KEY,
    "range_end": _str("End of the range [key, range_end); \"\\u0000\": every key from key on"),
    "prefix": _bool("Every key starting with key"),
    "from_key": _bool("Every key from key on"),
}
_WRITE_OPTIONS: dict[str, Schema] = {
    "consistency": _enum(WRITE_LEVELS, "Write level (default quorum)"),
    "dedup": _object({"client_id": _id_in("Chosen at random by the client", minimum=1),
                      "seq": _int("The client's number for this write", minimum=1)},
                     ("client_id", "seq"), closed=True,
                     description="A retry with the same pair is applied at most once"),
}
_OUTCOME_WRITE_OPTIONS = {**_WRITE_OPTIONS,
                          "consistency": _enum(("quorum", "all"), "Write level (default "
                                                                  "quorum)")}

_HEADER = _object({"revision": _int(), "raft_term": _int(), "member": _str(),
                   "applied_index": _int()},
                  ("revision", "raft_term", "member", "applied_index"),
                  description="Which node answered, and at what point of its history")
_KV = _object({"key": _str(), "value": _str(), "create_revision": _int(),
               "mod_revision": _int(), "version": _int(),
               "lease": _id("The lease the key is attached to (\"0\": none)"),
               "timestamp": _int("Leader's clock at proposal, nanoseconds"),
               "encoding": _ITEM_ENCODING},
              ("key", "value", "create_revision", "mod_revision", "version", "lease",
               "timestamp", "encoding"))
_PUT_RESULT = _object({"type": _const("put"), "revision": _int(),
                       "prev_kv": _nullable(_ref("KeyValue"))}, ("type", "revision", "prev_kv"))
_DELETE_RESULT = _object({"type": _const("delete"), "revision": _int(), "deleted": _int(),
                          "prev_kvs": _array(_ref("KeyValue"))},
                         ("type", "revision", "deleted", "prev_kvs"))
_RANGE_RESULT = _object({"type": _const("range"), "revision": _int(),
                         "kvs": _array(_ref("KeyValue")), "count": _int(), "more": _bool()},
                        ("type", "revision", "kvs", "count", "more"))
_DURABLE = _object({"type": _const("durable"), "index": _int(), "header": _ref("Header")},
                   ("type", "index", "header"),
                   description="A consistency=one write: durable in the leader's log, not "
                               "applied yet, so no revision")


def _with_header(name: str) -> Schema:
    return {"allOf": [_ref(name), _object({"header": _ref("Header")}, ("header",))]}


_MEMBER_PROPS: dict[str, Schema] = {
    "id": _id(), "name": _str(), "peer_address": _str(),
    "client_address": _nullable(_str()), "voter": _bool(), "auto_promote": _bool()}
_MEMBER = _object(_MEMBER_PROPS, tuple(_MEMBER_PROPS))
_MEMBER_STATUS = _object({
    **_MEMBER_PROPS,
    "status": _enum(("active", "inactive", "failed", "joining", "leaving")),
    "role": _enum(("leader", "follower", "candidate", "pre_candidate", "learner")),
    "phi": _nullable({"type": "number"}), "last_seen": _nullable({"type": "number"}),
    "lag": _nullable(_int()), "promotion": _nullable(_str()),
    "match": _int(), "next": _int(), "state": _str()},
    (*_MEMBER_PROPS, "status", "role", "phi", "last_seen", "lag", "promotion"))
_RAFT_STATUS = _object({
    "id": _id("This node's id"), "name": _str(), "cluster_id": _id(),
    "term": _int(), "role": _str(), "leader": _id("The leader's id (\"0\": none known)"),
    "commit": _int(), "applied": _int(), "last_index": _int(), "snapshot_index": _int(),
    "voters": _array(_id()), "learners": _array(_id()),
    "progress": {"type": "object", "propertyNames": {"pattern": ID_PATTERN},
                 "additionalProperties": _object({"match": _int(), "next": _int(),
                                                  "state": _str()},
                                                 ("match", "next", "state")),
                 "description": "On the leader: each member's replication, by member id"},
    "leaving": _bool()},
    ("id", "name", "cluster_id", "term", "role", "leader", "commit", "applied", "last_index",
     "snapshot_index", "voters", "learners", "progress", "leaving"),
    description="A node's Raft state")
_EVENT = _object({
    "seq": _int("Numbered from 1 in each run of the node", minimum=1),
    "time": {"type": "number", "description": "Wall-clock Unix seconds"},
    "kind": _str("What happened: node_started, became_leader, member_added... "
                 "(docs/operations.md)"),
    "level": _enum(("debug", "info", "warning", "error", "critical")),
    "message": _str(),
    "fields": {"type": "object", "description": "The event's details as plain JSON values; "
                                                "ids (id, cluster_id, lease) as strings"}},
    ("seq", "time", "kind", "level", "message", "fields"))
_LATENCY = _nullable({"type": "number", "minimum": 0})
_STATS_ENTRY = _object({
    "t": _int("The Unix second"), "reads": _int(), "writes": _int(), "errors": _int(),
    "read_p50_ms": _LATENCY, "read_p99_ms": _LATENCY, "write_p50_ms": _LATENCY,
    "write_p99_ms": _LATENCY},
    ("t", "reads", "writes", "errors", "read_p50_ms", "read_p99_ms", "write_p50_ms",
     "write_p99_ms"),
    description="One second's key-value requests answered by this node (client port and "
                "/v1/kv/); a percentile is null for a second without such requests")
_ERROR = _object({"error": _object({"code": _str("Stable error code (src/quorumkv/errors.py)"),
                                    "message": _str(), "details": {"type": "object"}},
                                   ("code", "message", "details"))}, ("error",))


def _request_schemas() -> dict[str, Schema]:
    range_fields = {"limit": _int("At most this many keys (0: no limit)"),
                    "revision": _int("Read as of this revision (0: the current one)"),
                    "keys_only": _bool(), "count_only": _bool()}
    put_op = _object({"key": _str(minLength=1), "value": _str(), "lease": _id_in(),
                      "prev_kv": _bool()}, ("key", "value"), closed=True)
    delete_op = _selecting(_object({**_RANGE_OPTIONS, "prev_kv": _bool()}, closed=True))
    range_op = _selecting(_object({**_RANGE_OPTIONS, **range_fields}, closed=True))
    return {
        "RangeRequest": _selecting(_object({
            **_RANGE_OPTIONS, **range_fields,
            "consistency": _enum(READ_LEVELS, "Read level (default quorum)"),
            "min_revision": _int("For session reads: the last revision the client saw"),
            "encoding": _ENCODING}, closed=True)),
        "PutRequest": _object({"key": _str(minLength=1), "value": _str(),
                               "lease": _id_in("Attach to this lease (0: none)"),
                               "prev_kv": _bool(), "encoding": _ENCODING, **_WRITE_OPTIONS},
                              ("key", "value"), closed=True),
        "DeleteRequest": _selecting(_object({**_RANGE_OPTIONS, "prev_kv": _bool(),
                                             "encoding": _ENCODING, **_WRITE_OPTIONS},
                                            closed=True)),
        "Compare": _selecting(_object({**_RANGE_OPTIONS,
                            "target": _enum(("value", "version", "create_revision",
                                             "mod_revision", "lease")),
                            "op": _enum(("=", "!=", "<", ">")),
                            "value": {"anyOf": [_str(), _int()],
                                      "description": "A string for target value, else an "
                                                     "integer (for target lease, a lease "
                                                     "id: an integer or a string of its "
                                                     "digits)"}},
                           ("target", "op", "value"), closed=True)),
        "TxnOp": {"oneOf": [_object({"put": put_op}, ("put",), closed=True),
                            _object({"delete": delete_op}, ("delete",), closed=True),
                            _object({"range": range_op}, ("range",), closed=True)]},
        "TxnRequest": _object({"compare": _array(_ref("Compare")),
                               "success": _array(_ref("TxnOp")),
                               "failure": _array(_ref("TxnOp")), "encoding": _ENCODING,
                               **_OUTCOME_WRITE_OPTIONS}, closed=True),
        "CompactRequest": _object({"revision": _int(minimum=1), **_WRITE_OPTIONS},
                                  ("revision",), closed=True),
        "LeaseGrantRequest": _object({"ttl": _int("Seconds", minimum=1, maximum=MAX_LEASE_TTL),
                                      "id": _id_in("The lease id to create (0 or absent: "
                                                   "the server picks one)"),
                                      **_OUTCOME_WRITE_OPTIONS}, ("ttl",), closed=True),
        "LeaseRevokeRequest": _object({"id": _id_in(minimum=1), **_OUTCOME_WRITE_OPTIONS},
                                      ("id",), closed=True),
        "LeaseKeepAliveRequest": _object({"id": _id_in(minimum=1)}, ("id",), closed=True),
        "LeaseTimeToLiveRequest": _object({"id": _id_in(minimum=1),
                                           "keys": _bool("List the attached keys"),
                                           "encoding": _ENCODING}, ("id",), closed=True),
        "MemberAddRequest": _object({"name": _str(maxLength=MAX_NAME_LENGTH),
                                     "peer_address": _str("HOST:PORT",
                                                          maxLength=MAX_ADDRESS_LENGTH),
                                     "client_address": _nullable(
                                         _str(maxLength=MAX_ADDRESS_LENGTH)),
                                     "learner": _bool("Stay a learner until promoted"),
                                     "token": _str("The cluster token (or the Authorization "
                                                   "header)", maxLength=MAX_TOKEN_LENGTH)},
                                    ("name", "peer_address"), closed=True),
        "MemberNameRequest": _object({"name": _str(maxLength=MAX_NAME_LENGTH),
                                      "token": _str(maxLength=MAX_TOKEN_LENGTH)},
                                     ("name",), closed=True),
    }


def _response_schemas() -> dict[str, Schema]:
    members = _array(_ref("Member"))
    lease_fields = {"id": _id(), "ttl": _int(), "header": _ref("Header")}
    return {
        "Header": _HEADER, "KeyValue": _KV, "Error": _ERROR, "Durable": _DURABLE,
        "PutResult": _PUT_RESULT, "DeleteResult": _DELETE_RESULT, "RangeResult": _RANGE_RESULT,
        "RangeResponse": _with_header("RangeResult"),
        "PutResponse": {"anyOf": [_with_header("PutResult"), _ref("Durable")]},
        "DeleteResponse": {"anyOf": [_with_header("DeleteResult"), _ref("Durable")]},
        "TxnResponse": _object({"type": _const("txn"), "revision": _int(),
                                "succeeded": _bool(),
                                "responses": _array({"anyOf": [_ref("PutResult"),
                                                               _ref("DeleteResult"),
                                                               _ref("RangeResult")]}),
                                "header": _ref("Header")},
                               ("type", "revision", "succeeded", "responses", "header")),
        "CompactResponse": {"anyOf": [
            _object({"type": _const("compact"), "revision": _int(),
                     "compact_revision": _int(), "header": _ref("Header")},
                    ("type", "revision", "compact_revision", "header")),
            _ref("Durable")]},
        "HistoryResponse": _object({
            "header": _ref("Header"),
            "compact_revision": _int("History at or below it is gone"),
            "more": _bool("Older retained events were left out by limit"),
            "events": _array(_object({"type": _enum(("put", "delete")), "revision": _int(),
                                      "kv": _ref("KeyValue")}, ("type", "revision", "kv")))},
            ("header", "compact_revision", "more", "events")),
        "LeaseGrantResponse": _object({"type": _const("lease_grant"), **lease_fields},
                                      ("type", "id", "ttl", "header")),
        "LeaseRevokeResponse": _object({"type": _const("lease_revoke"), "revision": _int(),
                                        "deleted": _int(), "header": _ref("Header")},
                                       ("type", "revision", "deleted", "header")),
        "LeaseKeepAliveResponse": _object(lease_fields, ("id", "ttl", "header")),
        "LeaseTimeToLiveResponse": _object(
            {**lease_fields, "remaining": {"type": "number", "minimum": 0},
             "keys": _nullable(_array(_object({"key": _str(), "encoding": _ITEM_ENCODING},
                                              ("key", "encoding"))))},
            ("id", "ttl", "remaining", "keys", "header")),
        "LeaseListResponse": _object({"leases": _array(_object({"id": _id(), "ttl": _int()},
                                                               ("id", "ttl"))),
                                      "header": _ref("Header")}, ("leases", "header")),
        "Member": _MEMBER, "MemberStatus": _MEMBER_STATUS, "RaftStatus": _RAFT_STATUS,
        "MembersResponse": _object({"members": _array(_ref("MemberStatus")),
                                    "leader": _nullable(_str()), "cluster_id": _id(),
                                    "node": _object({"name": _str(), "role": _str(),
                                                     "term": _int(), "commit": _int(),
                                                     "applied": _int(), "last_index": _int()},
                                                    ("name", "role", "term", "commit",
                                                     "applied", "last_index")),
                                    "header": _ref("Header")},
                                   ("members", "leader", "cluster_id", "node", "header")),
        "StatusResponse": _object({
            "node": _ref("RaftStatus"),
            "leader": _nullable(_str("The leader's name")),
            "members": _array(_ref("MemberStatus")),
            "leader_view": _nullable(_object(
                {"name": _str(), "members": _nullable(_array(_ref("MemberStatus"))),
                 "node": _nullable(_ref("RaftStatus"))}, ("name", "members"),
                description="The leader's view of the members, and its Raft state")),
            "leader_view_error": _nullable(_str()), "header": _ref("Header")},
            ("node", "leader", "members", "leader_view", "leader_view_error", "header")),
        "MemberAddResponse": _object({"member": _ref("Member"), "members": members,
                                      "cluster_id": _id(), "header": _ref("Header")},
                                     ("member", "members", "cluster_id", "header")),
        "MemberRemoveResponse": _object({"removed": _ref("Member"), "members": members,
                                         "header": _ref("Header")},
                                        ("removed", "members", "header")),
        "MemberPromoteResponse": _object({"member": _ref("Member"), "members": members,
                                          "header": _ref("Header")},
                                         ("member", "members", "header")),
        "MoveLeaderResponse": _object({"leader": _str(), "header": _ref("Header")},
                                      ("leader", "header")),
        "Health": _object({"status": _const("ok"), "name": _str()}, ("status", "name")),
        "Ready": _object({"ready": _bool(), "name": _str(), "leader": _nullable(_str()),
                          "reasons": _array(_str())}, ("ready", "name", "leader")),
        "Event": _EVENT,
        "EventsResponse": _object({"events": _array(_ref("Event")),
                                   "last_seq": _int("The latest event's seq (0: none yet)")},
                                  ("events", "last_seq")),
        "StatsResponse": _object({"interval_s": _int("Seconds per entry", minimum=1),
                                  "series": _array(_STATS_ENTRY)}, ("interval_s", "series")),
    }


# -- operations ----------------------------------------------------------------------


def _query(name: str, schema: Schema, description: str = "") -> Schema:
    out: Schema = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        out["description"] = description
    return out


def _json(schema_name: str) -> Schema:
    return {"content": {"application/json": {"schema": _ref(schema_name)}}}


def _op(summary: str, tag: str, ok: str, *, description: str = "",
        params: list[Schema] | None = None, body: str | None = None,
        errors: dict[str, str] | None = None, secured: bool = False) -> Schema:
    responses: Schema = {"200": {"description": "OK", **_json(ok)}}
    for status, why in (errors or {}).items():
        responses[status] = {"description": why, **_json("Error")}
    responses["default"] = {"$ref": "#/components/responses/Error"}
    out: Schema = {"summary": summary, "tags": [tag], "responses": responses,
                   "operationId": summary.lower().replace(" ", "_").replace("-", "_")}
    if description:
        out["description"] = description
    if params:
        out["parameters"] = params
    if body is not None:
        out["requestBody"] = {"required": True, **_json(body)}
    if secured:
        # The cluster token, as the bearer, or in its own header beside a user's token.
        out["security"] = [{}, {"clusterToken": []},
                           {"userToken": [], "clusterTokenHeader": []}]
    return out


_READ_ERRORS = {"400": "Invalid argument", "410": "Revision compacted",
                "413": "Key too large", "503": "Unavailable (no leader)",
                "504": "Timed out (no quorum)"}
_WRITE_ERRORS = {**_READ_ERRORS, "404": "Lease not found",
                 "504": "Timed out: the outcome is unknown (details.outcome)"}
_MEMBER_ERRORS = {"400": "Invalid argument", "401": "Wrong cluster token",
                  "409": "Membership error", "503": "Unavailable", "504": "Timed out"}


def _range_params(levels: tuple[str, ...]) -> list[Schema]:
    return [_query("key", _KEY), _query("range_end", _RANGE_OPTIONS["range_end"]),
            _query("prefix", _bool()), _query("from_key", _bool()),
            _query("consistency", _enum(levels), "Read level (default quorum)"),
            _query("min_revision", _int(), "For session reads: the last revision seen"),
            _query("encoding", _ENCODING)]


def _kv_paths() -> dict[str, Schema]:
    range_params = [*_range_params(READ_LEVELS), _query("limit", _int()),
                    _query("revision", _int()), _query("keys_only", _bool()),
                    _query("count_only", _bool())]
    history_params = [*_range_params(READ_LEVELS),
                      _query("limit", _int(f"Newest events kept (default {HISTORY_LIMIT})",
                                           minimum=1, maximum=MAX_HISTORY_LIMIT))]
    return {
        "/v1/kv/range": {
            "get": _op("Range", "kv", "RangeResponse", params=range_params,
                       errors=_READ_ERRORS, description="One key, a range or a prefix."),
            "post": _op("Range by body", "kv", "RangeResponse", body="RangeRequest",
                        errors=_READ_ERRORS)},
        "/v1/kv/history": {
            "get": _op("History", "kv", "HistoryResponse", params=history_params,
                       errors=_READ_ERRORS,
                       description="The retained revisions of a key, oldest first.")},
        "/v1/kv/put": {"post": _op("Put", "kv", "PutResponse", body="PutRequest",
                                   errors=_WRITE_ERRORS)},
        "/v1/kv/delete": {"post": _op("Delete", "kv", "DeleteResponse", body="DeleteRequest",
                                      errors=_WRITE_ERRORS)},
        "/v1/kv/txn": {"post": _op("Txn", "kv", "TxnResponse", body="TxnRequest",
                                   errors=_WRITE_ERRORS)},
        "/v1/kv/compact": {"post": _op("Compact", "kv", "CompactResponse",
                                       body="CompactRequest", errors=_WRITE_ERRORS)},
    }


def _lease_paths() -> dict[str, Schema]:
    lease_errors = {**_WRITE_ERRORS}
    return {
        "/v1/lease/grant": {"post": _op("Lease grant", "lease", "LeaseGrantResponse",
                                        body="LeaseGrantRequest", errors=lease_errors)},
        "/v1/lease/revoke": {"post": _op("Lease revoke", "lease", "LeaseRevokeResponse",
                                         body="LeaseRevokeRequest", errors=lease_errors)},
        "/v1/lease/keepalive": {"post": _op("Lease keepalive", "lease",
                                            "LeaseKeepAliveResponse",
                                            body="LeaseKeepAliveRequest", errors=lease_errors)},
        "/v1/lease/timetolive": {"post": _op("Lease time to live", "lease",
                                             "LeaseTimeToLiveResponse",
                                             body="LeaseTimeToLiveRequest",
                                             errors=lease_errors)},
        "/v1/lease/list": {"get": _op("Lease list", "lease", "LeaseListResponse")},
    }


def _watch_paths() -> dict[str, Schema]:
    params = [_query("key", _KEY), _query("range_end", _RANGE_OPTIONS["range_end"]),
              _query("prefix", _bool()), _query("from_key", _bool()),
              _query("start_revision", _int(), "First revision to deliver (0: from now)"),
              _query("prev_kv", _bool()), _query("encoding", _ENCODING),
              {"name": "Last-Event-ID", "in": "header", "required": False,
               "schema": _str(pattern="^[0-9]{1,19}$"),
               "description": "Resume after this event id (takes precedence over "
                              "start_revision)"}]
    op = _op("Watch", "watch", "Error", params=params,
             errors={"400": "Invalid argument", "410": "Start revision compacted",
                     "429": "Too many watches"},
             description="Server-Sent Events: created, events, progress, canceled "
                         "(docs/http-api.md).")
    op["responses"]["200"] = {"description": "An event stream",
                              "content": {"text/event-stream": {"schema": _str()}}}
    return {"/v1/watch": {"get": op}}


def _cluster_paths() -> dict[str, Schema]:
    return {
        "/v1/cluster/status": {"get": _op(
            "Cluster status", "cluster", "StatusResponse",
            params=[_query("local", _bool(), "This node's own view only")])},
        "/v1/cluster/members": {"get": _op("Member list", "cluster", "MembersResponse")},
        "/v1/cluster/members/add": {"post": _op(
            "Member add", "cluster", "MemberAddResponse", body="MemberAddRequest",
            errors=_MEMBER_ERRORS, secured=True)},
        "/v1/cluster/members/remove": {"post": _op(
            "Member remove", "cluster", "MemberRemoveResponse", body="MemberNameRequest",
            errors=_MEMBER_ERRORS, secured=True)},
        "/v1/cluster/members/promote": {"post": _op(
            "Member promote", "cluster", "MemberPromoteResponse", body="MemberNameRequest",
            errors=_MEMBER_ERRORS, secured=True)},
        "/v1/cluster/move-leader": {"post": _op(
            "Move leader", "cluster", "MoveLeaderResponse", body="MemberNameRequest",
            errors=_MEMBER_ERRORS, secured=True)},
    }


def _node_paths() -> dict[str, Schema]:
    ready = _op("Ready", "node", "Ready", errors={"503": "Not ready: see reasons"})
    ready["responses"]["503"] = {"description": "Not ready: see reasons", **_json("Ready")}
    return {
        "/health": {"get": _op("Health", "node", "Health")},
        "/ready": {"get": ready},
        "/openapi.json": {"get": {"summary": "This document", "tags": ["node"],
                                  "operationId": "openapi",
                                  "responses": {"200": {"description": "OpenAPI 3.1",
                                                        "content": {"application/json": {
                                                            "schema": {"type": "object"}}}}}}},
    }


def _observe_paths() -> dict[str, Schema]:
    text = _str("The Prometheus text exposition format (0.0.4), or OpenMetrics when the "
                "Accept header asks for it")
    metrics: Schema = {
        "summary": "Metrics", "tags": ["observe"], "operationId": "metrics",
        "description": "This node's metrics for Prometheus (docs/operations.md).",
        "responses": {"200": {"description": "The metrics",
                              "content": {"text/plain": {"schema": text},
                                          "application/openmetrics-text": {"schema": text}}},
                      "default": {"$ref": "#/components/responses/Error"}}}
    events = _op("Events", "observe", "EventsResponse", errors={"400": "Invalid argument"},
                 description="The node's latest events, oldest first: poll with since = the "
                             "previous answer's last_seq to see each once.",
                 params=[_query("since", _int(maximum=MAX_SINCE),
                                "Only events numbered above it (default 0)"),
                         _query("limit", _int(minimum=1, maximum=MAX_EVENTS_LIMIT),
                                f"At most this many, the newest (default {EVENTS_LIMIT})")])
    stats = _op("Stats", "observe", "StatsResponse",
                description="Key-value requests per second over the last ten minutes, with "
                            "their latency; watch streams are not counted.")
    return {"/metrics": {"get": metrics}, "/v1/events": {"get": events},
            "/v1/stats": {"get": stats}}


def _dashboard_paths() -> dict[str, Schema]:
    names = http_dashboard.asset_names()
    types = sorted({http_dashboard.CONTENT_TYPES["." + n.rsplit(".", 1)[-1]] for n in names})
    not_modified = {"description": "Not modified (If-None-Match names the current ETag)"}
    page: Schema = {
        "summary": "Dashboard", "tags": ["dashboard"], "operationId": "dashboard",
        "description": "The dashboard page, drawn in the browser from this node's API.",
        "responses": {"200": {"description": "The page",
                              "content": {"text/html": {"schema": _str()}}},
                      "304": not_modified,
                      "default": {"$ref": "#/components/responses/Error"}}}
    asset: Schema = {
        "summary": "Dashboard file", "tags": ["dashboard"], "operationId": "dashboard_file",
        "description": "A script, stylesheet or image of the dashboard page.",
        "parameters": [
            {"name": "name", "in": "path", "required": True, "schema": _enum(tuple(names))},
            _query("v", _str(), "The page's asset version: the current one is cached for "
                                "good")],
        "responses": {"200": {"description": "The file",
                              "content": {t: {"schema": _str()} for t in types}},
                      "304": not_modified,
                      "404": {"description": "No such file", **_json("Error")},
                      "default": {"$ref": "#/components/responses/Error"}}}
    return {"/": {"get": page}, "/dashboard/{name}": {"get": asset}}


_NAME = _str("A user or role name", minLength=1, maxLength=MAX_USER_LENGTH)
_PASSWORD = _str(minLength=1, maxLength=MAX_PASSWORD_LENGTH)
_AUTH_ERRORS = {"400": "Invalid argument", "401": "Not signed in, or the token is invalid",
                "403": "Not permitted (root only, once auth is enabled)",
                "503": "Unavailable", "504": "Timed out"}


def _auth_schemas() -> dict[str, Schema]:
    change = _object({"auth_revision": _nullable(_int("Counts applied auth changes")),
                      "header": _ref("Header")}, ("auth_revision", "header"))
    permission = _object({"type": _enum(PERM_TYPES), "key": _str(),
                          "range_end": _nullable(_str("\"\\u0000\": every key from key on; "
                                                      "null: the key alone")),
                          "encoding": _ITEM_ENCODING}, ("type", "key", "range_end", "encoding"))
    return {
        "AuthenticateRequest": _object({"name": _NAME, "password": _PASSWORD},
                                       ("name", "password"), closed=True),
        "EmptyRequest": _object({}, closed=True),
        "UserAddRequest": _object({"name": _NAME, "password": _PASSWORD},
                                  ("name", "password"), closed=True),
        "PasswordRequest": _object({"password": _PASSWORD}, ("password",), closed=True),
        "UserRoleRequest": _object({"role": _NAME}, ("role",), closed=True),
        "RoleAddRequest": _object({"name": _NAME}, ("name",), closed=True),
        "PermissionRequest": _selecting(_object({
            "type": _enum(PERM_TYPES), **_RANGE_OPTIONS, "encoding": _ENCODING},
            ("type",), closed=True)),
        "AuthenticateResponse": _object({
            "token": _str("Send as Authorization: Bearer TOKEN"), "user": _str(),
            "expires_in": {"type": "number", "description": "Seconds the token lasts"},
            "header": _ref("Header")}, ("token", "user", "expires_in", "header")),
        "AuthStatusResponse": _object({
            "enabled": _bool(), "auth_revision": _int(),
            "user": _nullable(_str("Who the request was from (null: nobody)")),
            "header": _ref("Header")}, ("enabled", "auth_revision", "user", "header")),
        "AuthChangeResponse": change,
        "UserListResponse": _object({"users": _array(_str()), "header": _ref("Header")},
                                    ("users", "header")),
        "RoleListResponse": _object({"roles": _array(_str()), "header": _ref("Header")},
                                    ("roles", "header")),
        "UserResponse": _object({"user": _object({"name": _str(), "roles": _array(_str())},
                                                 ("name", "roles")),
                                 "header": _ref("Header")}, ("user", "header")),
        "RoleResponse": _object({"role": _object({
            "name": _str(), "permissions": _array(permission),
            "all_keys": _bool("The role root: every key, whatever it lists")},
            ("name", "permissions", "all_keys")), "header": _ref("Header")},
            ("role", "header")),
    }


def _path_param(name: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": _NAME}


def _auth_paths() -> dict[str, Schema]:
    errors = _AUTH_ERRORS
    found = {**errors, "404": "No such user or role"}
    change = {**found, "409": "Already exists, or root is missing (enable)"}
    user, role = [_path_param("name")], [_path_param("name")]
    revoke_params = [*role, _query("key", _KEY),
                     _query("range_end", _RANGE_OPTIONS["range_end"]),
                     _query("prefix", _bool()), _query("from_key", _bool()),
                     _query("encoding", _ENCODING)]
    return {
        "/v1/auth/authenticate": {"post": _op(
            "Authenticate", "auth", "AuthenticateResponse", body="AuthenticateRequest",
            errors={"400": "Invalid argument, or auth is not enabled",
                    "401": "Wrong user name or password",
                    "429": "Too many failed sign-ins: see Retry-After"},
            description="Sign in: a token to send as Authorization: Bearer TOKEN.")},
        "/v1/auth/status": {"get": _op("Auth status", "auth", "AuthStatusResponse",
                                       errors={"401": "The token is invalid"})},
        "/v1/auth/enable": {"post": _op("Auth enable", "auth", "AuthChangeResponse",
                                        body="EmptyRequest", errors=change,
                                        description="Needs the user root with the role "
                                                    "root.")},
        "/v1/auth/disable": {"post": _op("Auth disable", "auth", "AuthChangeResponse",
                                         body="EmptyRequest", errors=errors)},
        "/v1/auth/users": {
            "get": _op("User list", "auth", "UserListResponse", errors=errors),
            "post": _op("User add", "auth", "AuthChangeResponse", body="UserAddRequest",
                        errors=change)},
        "/v1/auth/users/{name}": {
            "get": _op("User get", "auth", "UserResponse", params=user, errors=found),
            "delete": _op("User delete", "auth", "AuthChangeResponse", params=user,
                          errors=found)},
        "/v1/auth/users/{name}/password": {"put": _op(
            "User password", "auth", "AuthChangeResponse", params=user,
            body="PasswordRequest", errors=found,
            description="Every token of the user dies with the old password.")},
        "/v1/auth/users/{name}/roles": {"post": _op(
            "User grant role", "auth", "AuthChangeResponse", params=user,
            body="UserRoleRequest", errors=found)},
        "/v1/auth/users/{name}/roles/{role}": {"delete": _op(
            "User revoke role", "auth", "AuthChangeResponse",
            params=[*user, _path_param("role")], errors=found)},
        "/v1/auth/roles": {
            "get": _op("Role list", "auth", "RoleListResponse", errors=errors),
            "post": _op("Role add", "auth", "AuthChangeResponse", body="RoleAddRequest",
                        errors=change)},
        "/v1/auth/roles/{name}": {
            "get": _op("Role get", "auth", "RoleResponse",
                       params=[*role, _query("encoding", _ENCODING)], errors=found),
            "delete": _op("Role delete", "auth", "AuthChangeResponse", params=role,
                          errors=found)},
        "/v1/auth/roles/{name}/permissions": {
            "post": _op("Role grant permission", "auth", "AuthChangeResponse", params=role,
                        body="PermissionRequest", errors=found,
                        description="Read, write or both on a key, a range or a prefix."),
            "delete": _op("Role revoke permission", "auth", "AuthChangeResponse",
                          params=revoke_params, errors=found,
                          description="The permission on exactly this range (in the "
                                      "query, or in a body like the grant's without "
                                      "type).")},
    }


def _etcd_gateway_paths() -> dict[str, Schema]:
    """etcd's JSON gateway (etcd/gateway.py): each path takes its etcd request message as
    protobuf JSON and answers its response message, or etcd's error object."""
    if not etcd_gateway.available():
        return {}
    unary_error = _object({"error": _str(), "code": _int("The gRPC status code"),
                           "message": _str("etcd's error text")}, ("error", "code", "message"))
    stream_error = _object({"error": _object(
        {"grpc_code": _int(), "http_code": _int(), "message": _str(), "http_status": _str()},
        ("grpc_code", "http_code", "message"))}, ("error",))
    error = {"description": "etcd's error (grpc-gateway's shape, etcd's gRPC code and text)",
             "content": {"application/json": {"schema": {"anyOf": [unary_error,
                                                                   stream_error]}}}}
    out: dict[str, Schema] = {}
    for route in etcd_gateway.ROUTES:
        name = f"etcd {route.service} {route.method}"
        ok = ("A chunked stream: one {\"result\": message} object per line"
              if route.streaming else f"etcd's {route.method} response message")
        out[route.path] = {"post": {
            "summary": name, "tags": ["etcd"],
            "operationId": f"etcd_{route.path.removeprefix('/v3/').replace('/', '_')}"
                           .replace("-", "_"),
            "description": f"etcd's {route.service}.{route.method} (501 until the service "
                           f"is served); see docs/etcd-compatibility.md.",
            "requestBody": {"required": False, "content": {"application/json": {
                "schema": {"type": "object",
                           "description": f"etcd's {route.method} request message as "
                                          f"protobuf JSON (empty: every field at its "
                                          f"default)"}}}},
            "responses": {"200": {"description": ok, "content": {"application/json": {
                "schema": {"type": "object"}}}}, "default": error}}}
    version = _object({"etcdserver": _str(), "etcdcluster": _str()},
                      ("etcdserver", "etcdcluster"))
    out[etcd_gateway.VERSION_PATH] = {"get": {
        "summary": "etcd version", "tags": ["etcd"], "operationId": "etcd_version",
        "description": "The etcd version the gateway emulates (etcd's clients ask for it).",
        "responses": {"200": {"description": "OK", "content": {"application/json": {
            "schema": version}}}, "default": error}}}
    return out


@functools.cache
def document() -> dict[str, Any]:
    paths = {**_node_paths(), **_kv_paths(), **_lease_paths(), **_watch_paths(),
             **_cluster_paths(), **_auth_paths(), **_observe_paths(), **_dashboard_paths(),
             **_etcd_gateway_paths()}
    return {
        "openapi": "3.1.0",
        "info": {"title": "quorumkv HTTP API", "version": "1",
                 "description": "Key-value, leases, watches and cluster membership over "
                                "HTTP/JSON, the node's metrics, events and statistics, and "
                                "its dashboard; see docs/http-api.md."},
        "tags": [{"name": t} for t in TAGS],
        "paths": paths,
        "components": {
            "schemas": {**_request_schemas(), **_response_schemas(), **_auth_schemas()},
            "responses": {"Error": {"description": "An error, with the client protocol's "
                                                   "code", **_json("Error")}},
            "securitySchemes": {
                "clusterToken": {"type": "http", "scheme": "bearer",
                                 "description": "The cluster token"},
                "userToken": {"type": "http", "scheme": "bearer",
                              "description": "A user's token from /v1/auth/authenticate "
                                             "(needed once auth is enabled)"},
                "clusterTokenHeader": {"type": "apiKey", "in": "header",
                                       "name": "X-Cluster-Token",
                                       "description": "The cluster token, beside a user's "
                                                      "token in Authorization"}},
        },
        # Optional while auth is disabled; once enabled, every route but the open ones
        # (health, status, members, this document, the dashboard's files) needs a user.
        "security": [{}, {"userToken": []}],
    }


async def _serve(_request: web.Request) -> web.Response:
    return json_response(document())


def routes(_node: object) -> list[web.RouteDef]:
    return [web.get("/openapi.json", _serve, allow_head=False)]
