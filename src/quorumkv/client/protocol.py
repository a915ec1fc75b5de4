"""The client wire protocol, shared by the client port server and the clients.

Every message is one length-prefixed frame (:mod:`quorumkv.transport.framing`)
holding one msgpack value. Keys and values are always msgpack binaries.

Requests and responses::

    request   [request_id, op, args]           op a string, args a map with string keys
              [request_id, op, args, token]    the same, as the token's user (auth_wire.py)
    response  [request_id, true,  result]      result a map, always with a "header"
              [request_id, false, error]       error = QuorumKVError.to_dict():
                                               {"code": str, "message": str, "details": map}

``request_id`` is an integer in [0, 2**63) the client chooses; many requests
may be in flight on one connection and answers come back in completion
order, matched by id.

Ops and their args (optional fields show their default)::

    "write"   {"cmd": bin (kv.encode_command), "consistency": "one"|"quorum"|"all" = "quorum",
               "client_id": int = 0, "seq": int = 0}
    "range"   {"key": bin, "range_end": bin|nil = nil, "limit": int = 0, "revision": int = 0,
               "keys_only": bool = false, "count_only": bool = false,
               "consistency": "one"|"session"|"quorum"|"all" = "quorum", "min_revision": int = 0,
               "min_index": int = 0}     min_index: serve only once that log index is applied
    "wait_applied" {"index": int}  -> {"header"} once the node has applied that log index
              (members use it among themselves for the "all" levels)
    "status"  {"local": bool = false}   -> a map the node fills (node, members, leader, header)
    "hello"   {}   -> the node's identity (name, id, cluster_id) and "protocol": int

Membership ops (the node checks the name and address formats; here only their
lengths: name 64 characters, addresses 300, token 1024)::

    "member_list"    {}
    "member_add"     {"name": str, "peer_address": str, "client_address": str|nil = nil,
                      "learner": bool = false, "token": str = ""}
    "member_remove"  {"name": str, "token": str = ""}
    "member_promote" {"name": str, "token": str = ""}
    "move_leader"    {"name": str, "token": str = ""}   the leader hands leadership to NAME
    "leave"          {"token": str = ""}     the answering node leaves the cluster, then stops
    "digest"         {}      a digest of the answering node's store, to compare replicas
    "snapshot"       {}      a backup of the answering node's store, streamed (see
                             client/snapshot.py for its messages)

``(client_id, seq)`` identifies a write for deduplication (thesis §6.3): a
retry reuses both, so the node can answer it from the first attempt's
result. client_id 0 means "do not deduplicate".

Results of "write" and "range" are the kv result maps below plus ``"header"``::

    header   {"revision": int, "raft_term": int, "member": str, "applied_index": int}
    kv       {"key": bin, "value": bin, "create_revision": int, "mod_revision": int,
              "version": int, "lease": int, "timestamp": int}
    put      {"type": "put", "revision": int, "prev_kv": kv|nil}
    delete   {"type": "delete", "revision": int, "deleted": int, "prev_kvs": [kv]}
    txn      {"type": "txn", "revision": int, "succeeded": bool, "responses": [put|delete|range]}
    compact  {"type": "compact", "revision": int, "compact_revision": int}
    range    {"type": "range", "revision": int, "kvs": [kv], "count": int, "more": bool}
    durable  {"type": "durable", "index": int}     a "one" write: in the leader's log, not
                                                    yet applied, so no revision or outcome yet

A node builds these with :func:`write_result`, :func:`durable_result` and
:func:`range_result`.

Results of the membership ops (:mod:`quorumkv.client.members` reads them)::

    member   {"id": int, "name": str, "peer_address": str, "client_address": str|nil,
              "voter": bool, "auto_promote": bool}
             auto_promote: a learner that the leader promotes to voter once its log has
             caught up (a joining node); false for a learner added with learner=true,
             which stays a learner until promoted.
    member_list    -> {"members": [member], "leader": str|nil, "cluster_id": int, "header"}
    member_add     -> {"member": member, "members": [member], "cluster_id": int, "header"}
    member_remove  -> {"removed": member, "members": [member], "header"}
    member_promote -> {"member": member, "members": [member], "header"}
    move_leader    -> {"leader": str, "header"}   once NAME leads
    leave          -> {"left": member, "header"}
    digest         -> {"digest": str, "applied_index": int, "revision": int, "header"}

The entries of a status's "members" additionally carry::

    "status": "active"|"inactive"|"failed"|"joining"|"leaving",
    "role": "leader"|"follower"|"candidate"|"pre_candidate"|"learner",
    "phi": float|nil, "last_seen": float|nil   (seconds since this node last heard from it),
    "lag": int|nil        (entries behind the leader's log; known on the leader),
    "promotion": str|nil  (why a joining learner is not promoted yet)

and the status map has ``"leader_view": {"name": str, "members": [...], "node": {...}}|nil``
(``node``: the leader's own term, commit and applied index, as in its ``node``) and
``"leader_view_error": str|nil``.

Requests are checked strictly (the server raises InvalidArgument naming the
field, and refuses unknown fields so a misspelt option is never ignored);
responses are checked as strictly on the client (ProtocolError: the server's
fault), except that unknown result fields are ignored so servers may add some.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from quorumkv import errors
from quorumkv.client.auth_wire import (
    AUTH_OPS,
    MAX_AUTH_TOKEN_LENGTH,
    AuthenticateRequest,
    AuthRequest,
    AuthTokenRequest,
    AuthWireRequest,
    auth_args,
    parse_auth,
)
from quorumkv.client.coordination_wire import (
    COORDINATION_OPS,
    CoordinationRequest,
    coordination_args,
    parse_coordination,
)
from quorumkv.client.fields import MAX_INT64, FieldReader, brief, type_name
from quorumkv.client.results_wire import (
    Durable,
    Header,
    durable_result,
    kv_from_wire,
    kv_to_wire,
    range_result,
    range_result_from_wire,
    result_from_wire,
    result_to_wire,
    write_result,
    write_result_from_wire,
)
from quorumkv.errors import InvalidArgument, ProtocolError, QuorumKVError
from quorumkv.kv.codec import decode_command, encode_command
from quorumkv.kv.commands import Command, RangeRequest
from quorumkv.kv.packing import pack, unpack
from quorumkv.kv.validation import check_range_request

__all__ = [
    "MAX_ADDRESS_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_TOKEN_LENGTH",
    "OPS",
    "PROTOCOL_VERSION",
    "READ_CONSISTENCY",
    "WRITE_CONSISTENCY",
    "AuthRequest",
    "AuthTokenRequest",
    "AuthenticateRequest",
    "DigestRequest",
    "Durable",
    "Header",
    "HelloRequest",
    "LeaveRequest",
    "MemberAddRequest",
    "MemberListRequest",
    "MemberPromoteRequest",
    "MemberRemoveRequest",
    "MoveLeaderRequest",
    "ReadRequest",
    "Request",
    "Response",
    "SnapshotRequest",
    "StatusRequest",
    "WaitAppliedRequest",
    "WriteRequest",
    "decode_request",
    "decode_response",
    "durable_result",
    "encode_error_response",
    "encode_request",
    "encode_response",
    "error_from_wire",
    "kv_from_wire",
    "kv_to_wire",
    "parse_request",
    "range_result",
    "range_result_from_wire",
    "request_id_of",
    "request_token",
    "response_parts",
    "result_from_wire",
    "result_to_wire",
    "unpack_payload",
    "write_result",
    "write_result_from_wire",
]

PROTOCOL_VERSION: Final = 1
WRITE_CONSISTENCY: Final = ("one", "quorum", "all")
READ_CONSISTENCY: Final = ("one", "session", "quorum", "all")
OPS: Final = ("write", "range", "status", "hello", "wait_applied", "member_list", "member_add",
              "member_remove", "member_promote", "move_leader", "leave", "digest",
              "snapshot", *COORDINATION_OPS, *AUTH_OPS)
MAX_NAME_LENGTH: Final = 64
MAX_ADDRESS_LENGTH: Final = 300
MAX_TOKEN_LENGTH: Final = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteRequest:
    cmd: Command
    consistency: str = "quorum"
    client_id: int = 0
    seq: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadRequest:
    range: RangeRequest
    consistency: str = "quorum"
    min_revision: int = 0
    """For "session" reads: serve only once this revision is applied (read-your-writes)."""
    min_index: int = 0
    """Serve only once this log index is applied (how an "all" read reaches every voter)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusRequest:
    local: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class HelloRequest:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitAppliedRequest:
    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberListRequest:
    pass


# Tokens are kept out of reprs: a request in a log line or a traceback must not leak one.


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberAddRequest:
    name: str
    peer_address: str
    client_address: str | None = None
    learner: bool = False
    """Stay a learner until promoted; otherwise the leader promotes it once caught up."""
    token: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberRemoveRequest:
    name: str
    token: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberPromoteRequest:
    name: str
    token: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class MoveLeaderRequest:
    """Hand leadership to the voter ``name`` (etcd's move-leader)."""

    name: str
    token: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaveRequest:
    token: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class DigestRequest:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotRequest:
    """A backup of the answering node's state machine, as a stream of the file's bytes."""


Request = (WriteRequest | ReadRequest | StatusRequest | HelloRequest | WaitAppliedRequest
           | MemberListRequest | MemberAddRequest | MemberRemoveRequest | MemberPromoteRequest
           | MoveLeaderRequest
           | LeaveRequest | DigestRequest | SnapshotRequest | CoordinationRequest
           | AuthWireRequest)


@dataclass(frozen=True, slots=True)
class Response:
    request_id: int
    ok: bool
    body: dict[str, Any]
    """The result map if ``ok``, else the error map."""


# -- requests ------------------------------------------------------------------------


def _request_args(req: Request) -> tuple[str, dict[str, Any]]:
    if isinstance(req, WriteRequest):
        return "write", {"cmd": encode_command(req.cmd), "consistency": req.consistency,
                         "client_id": req.client_id, "seq": req.seq}
    if isinstance(req, ReadRequest):
        r = req.range
        return "range", {"key": r.key, "range_end": r.range_end, "limit": r.limit,
                         "revision": r.revision, "keys_only": r.keys_only,
                         "count_only": r.count_only, "consistency": req.consistency,
                         "min_revision": req.min_revision, "min_index": req.min_index}
    if isinstance(req, StatusRequest):
        # The default is left out so that a node predating "local" still answers.
        return "status", {"local": True} if req.local else {}
    if isinstance(req, WaitAppliedRequest):
        return "wait_applied", {"index": req.index}
    if isinstance(req, HelloRequest):
        return "hello", {}
    if isinstance(req, SnapshotRequest):
        return "snapshot", {}
    if isinstance(req, CoordinationRequest):
        return coordination_args(req)
    if isinstance(req, (AuthenticateRequest, AuthTokenRequest, AuthRequest)):
        return auth_args(req)
    return _membership_args(req)


def _membership_args(req: MemberListRequest | MemberAddRequest | MemberRemoveRequest
                     | MemberPromoteRequest | MoveLeaderRequest | LeaveRequest
                     | DigestRequest,
                     ) -> tuple[str, dict[str, Any]]:
    if isinstance(req, MemberAddRequest):
        return "member_add", {"name": req.name, "peer_address": req.peer_address,
                              "client_address": req.client_address, "learner": req.learner,
                              "token": req.token}
    if isinstance(req, MemberRemoveRequest):
        return "member_remove", {"name": req.name, "token": req.token}
    if isinstance(req, MemberPromoteRequest):
        return "member_promote", {"name": req.name, "token": req.token}
    if isinstance(req, MoveLeaderRequest):
        return "move_leader", {"name": req.name, "token": req.token}
    if isinstance(req, LeaveRequest):
        return "leave", {"token": req.token}
    if isinstance(req, DigestRequest):
        return "digest", {}
    return "member_list", {}


def encode_request(request_id: int, req: Request, token: str | None = None) -> bytes:
    """The msgpack payload of one request (frame it with ``encode_frame``); ``token``
    makes this one request act as the token's user (see ``auth_wire.py``)."""
    op, args = _request_args(req)
    return pack([request_id, op, args] if token is None else [request_id, op, args, token])


def unpack_payload(data: bytes) -> object:
    """The msgpack value in a request frame; InvalidArgument if it is not one."""
    try:
        return unpack(data)
    except ValueError as err:
        raise InvalidArgument(f"request is not valid msgpack: {err}") from None


def _valid_id(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_INT64


def request_id_of(obj: object) -> int | None:
    """The request id of a decoded frame, if it has a usable one, so an error can be answered."""
    if type(obj) is list and obj and _valid_id(obj[0]):
        rid: int = obj[0]
        return rid
    return None


def _parse_write(f: FieldReader) -> WriteRequest:
    cmd = decode_command(f.binary("cmd"))
    return WriteRequest(cmd=cmd, consistency=f.choice("consistency", WRITE_CONSISTENCY, "quorum"),
                        client_id=f.integer("client_id", 0), seq=f.integer("seq", 0))


def _parse_range(f: FieldReader) -> ReadRequest:
    req = RangeRequest(key=f.binary("key"), range_end=f.optional_binary("range_end"),
                       limit=f.integer("limit", 0), revision=f.integer("revision", 0),
                       keys_only=f.boolean("keys_only", False),
                       count_only=f.boolean("count_only", False))
    check_range_request(req)  # empty key, range_end before key
    return ReadRequest(range=req, consistency=f.choice("consistency", READ_CONSISTENCY, "quorum"),
                       min_revision=f.integer("min_revision", 0),
                       min_index=f.integer("min_index", 0))


def _check_length(f: FieldReader, name: str, value: str, limit: int) -> str:
    if len(value) > limit:
        # The length only: the value may be a token, which must not be echoed.
        raise f.fail(f"{name!r} must be at most {limit} characters, not {len(value)}")
    return value


def _bounded(f: FieldReader, name: str, limit: int) -> str:
    return _check_length(f, name, f.string(name), limit)


def _optional_bounded(f: FieldReader, name: str, limit: int) -> str | None:
    value = f.raw(name)
    if value is None:
        return None
    if type(value) is not str:
        raise f.fail(f"{name!r} must be a string or nil, not {type_name(value)}")
    return _check_length(f, name, value, limit)


def _token(f: FieldReader) -> str:
    return _check_length(f, "token", f.string("token", ""), MAX_TOKEN_LENGTH)


def _parse_member_add(f: FieldReader) -> MemberAddRequest:
    return MemberAddRequest(name=_bounded(f, "name", MAX_NAME_LENGTH),
                            peer_address=_bounded(f, "peer_address", MAX_ADDRESS_LENGTH),
                            client_address=_optional_bounded(f, "client_address",
                                                             MAX_ADDRESS_LENGTH),
                            learner=f.boolean("learner", False), token=_token(f))


def _parse_membership(op: str, f: FieldReader) -> Request:
    if op == "member_add":
        return _parse_member_add(f)
    if op == "member_remove":
        return MemberRemoveRequest(name=_bounded(f, "name", MAX_NAME_LENGTH), token=_token(f))
    if op == "member_promote":
        return MemberPromoteRequest(name=_bounded(f, "name", MAX_NAME_LENGTH), token=_token(f))
    if op == "move_leader":
        return MoveLeaderRequest(name=_bounded(f, "name", MAX_NAME_LENGTH), token=_token(f))
    if op == "leave":
        return LeaveRequest(token=_token(f))
    if op == "digest":
        return DigestRequest()
    assert op == "member_list"
    return MemberListRequest()


def request_token(obj: object) -> str | None:
    """The token a request frame carries for itself, if any (after :func:`parse_request`
    accepted the frame)."""
    if type(obj) is list and len(obj) == 4:
        token: str = obj[3]
        return token
    return None


def parse_request(obj: object) -> tuple[int, Request]:
    """``(request_id, request)`` from a decoded frame; InvalidArgument naming what is wrong."""
    if type(obj) is not list or len(obj) not in (3, 4):
        raise InvalidArgument("a request is an array [request_id, op, args] or "
                              "[request_id, op, args, token]")
    request_id, op, args = obj[:3]
    if len(obj) == 4 and (type(obj[3]) is not str or not 0 < len(obj[3])
                          <= MAX_AUTH_TOKEN_LENGTH):
        raise InvalidArgument(f"a request's token is a string of 1 to "
                              f"{MAX_AUTH_TOKEN_LENGTH} characters")
    if not _valid_id(request_id):
        raise InvalidArgument(f"request_id must be an integer between 0 and {MAX_INT64}, "
                              f"not {type_name(request_id)}")
    if type(op) is not str:
        raise InvalidArgument(f"op must be a string, not {type_name(op)}")
    if op not in OPS:
        raise InvalidArgument(f"unknown command {brief(op, 60)}")
    f = FieldReader(args, f"{op} args", InvalidArgument)
    req: Request
    if op == "write":
        req = _parse_write(f)
    elif op == "range":
        req = _parse_range(f)
    elif op == "status":
        req = StatusRequest(local=f.boolean("local", False))
    elif op == "wait_applied":
        req = WaitAppliedRequest(index=f.integer("index"))
    elif op == "hello":
        req = HelloRequest()
    elif op == "snapshot":
        req = SnapshotRequest()
    elif op in COORDINATION_OPS:
        req = parse_coordination(op, f)
    elif op in AUTH_OPS:
        req = parse_auth(op, f)
    else:
        req = _parse_membership(op, f)
    f.finish()
    return request_id, req


def decode_request(data: bytes) -> tuple[int, Request]:
    return parse_request(unpack_payload(data))


# -- responses -----------------------------------------------------------------------


def encode_response(request_id: int, result: dict[str, Any]) -> bytes:
    return pack([request_id, True, result])


def encode_error_response(request_id: int, err: QuorumKVError) -> bytes:
    try:
        return pack([request_id, False, err.to_dict()])
    except (TypeError, ValueError, OverflowError):
        # The details held something msgpack cannot carry: the code and
        # message still tell the client what happened.
        return pack([request_id, False, {"code": err.code, "message": err.message,
                                         "details": {}}])


def decode_response(data: bytes) -> Response:
    """One response frame; ProtocolError if the server sent something malformed."""
    return Response(*response_parts(data))


def response_parts(data: bytes) -> tuple[int, bool, dict[str, Any]]:
    """:func:`decode_response` as a plain ``(request_id, ok, body)``: a client reads one
    per request, and the Response object would be made only to be taken apart."""
    try:
        obj = unpack(data)
    except ValueError as err:
        raise ProtocolError(f"response is not valid msgpack: {err}") from None
    if type(obj) is not list or len(obj) != 3:
        raise ProtocolError("a response is an array [request_id, ok, body]")
    request_id, ok, body = obj
    if type(request_id) is not int or not 0 <= request_id <= MAX_INT64 \
            or type(ok) is not bool:
        raise ProtocolError("a response starts with an integer request_id and a boolean ok")
    if type(body) is not dict or not all(type(k) is str for k in body):
        raise ProtocolError(f"a response body must be a map with string keys, "
                            f"not {type_name(body)}")
    return request_id, ok, body


def error_from_wire(body: dict[str, Any]) -> QuorumKVError:
    """The server's error, rebuilt as the same class with ``remote=True``."""
    f = FieldReader(body, "error", ProtocolError)
    code, message = f.string("code"), f.string("message")
    details = f.mapping("details") if "details" in body else {}
    try:
        return errors.from_dict({"code": code, "message": message, "details": details})
    except Exception as err:  # hostile details ("remote", "args", ...) break the rebuild
        return ProtocolError(f"server sent an unusable {brief(code)} error ({message[:200]}): "
                             f"{type(err).__name__}", remote=True)
