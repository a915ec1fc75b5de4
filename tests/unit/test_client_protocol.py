"""The client wire protocol: round trips, and strict refusal of every malformed message."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorumkv.client.auth_wire import AuthenticateRequest, AuthRequest, AuthTokenRequest
from quorumkv.client.coordination_wire import (
    LeaseKeepAliveRequest,
    LeaseListRequest,
    LeaseTimeToLiveRequest,
    WatchCancelRequest,
    WatchRequest,
)
from quorumkv.client.protocol import (
    MAX_ADDRESS_LENGTH,
    MAX_NAME_LENGTH,
    MAX_TOKEN_LENGTH,
    OPS,
    DigestRequest,
    Durable,
    Header,
    HelloRequest,
    LeaveRequest,
    MemberAddRequest,
    MemberListRequest,
    MemberPromoteRequest,
    MemberRemoveRequest,
    MoveLeaderRequest,
    ReadRequest,
    Request,
    SnapshotRequest,
    StatusRequest,
    WaitAppliedRequest,
    WriteRequest,
    decode_request,
    decode_response,
    durable_result,
    encode_error_response,
    encode_request,
    encode_response,
    error_from_wire,
    kv_from_wire,
    kv_to_wire,
    parse_request,
    range_result,
    range_result_from_wire,
    request_id_of,
    request_token,
    result_from_wire,
    result_to_wire,
    write_result,
    write_result_from_wire,
)
from quorumkv.errors import (
    Compacted,
    InvalidArgument,
    NotLeader,
    ProtocolError,
    QuorumKVError,
    Timeout,
)
from quorumkv.kv import (
    ALL_KEYS,
    Applied,
    Compact,
    CompactResult,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    DeleteResult,
    KeyValue,
    LeaseGrant,
    LeaseRevoke,
    Put,
    PutResult,
    RangeRequest,
    RangeResult,
    Txn,
    TxnResult,
    encode_command,
)


def pack(obj: Any) -> bytes:
    data = msgpack.packb(obj, use_bin_type=True)
    assert isinstance(data, bytes)
    return data


HEADER = Header(revision=42, raft_term=3, member="n1", applied_index=57)
KV = KeyValue(key=b"k", value=b"v", create_revision=2, mod_revision=5, version=3, lease=7,
              timestamp=1_700_000_000_000_000_000)


# -- round trips ----------------------------------------------------------------------

REQUESTS: list[Request] = [
    WriteRequest(cmd=Put(key=b"k", value=b"v", lease=3, prev_kv=True), consistency="one",
                 client_id=(1 << 63) - 1, seq=9),
    WriteRequest(cmd=DeleteRange(key=b"a", range_end=b"b", prev_kv=True), consistency="all"),
    WriteRequest(cmd=Txn(compares=(Compare(key=b"k", target=CompareTarget.VALUE,
                                           op=CompareOp.EQUAL, value=b"v"),),
                         success=(Put(key=b"k", value=b"w"), RangeRequest(key=b"k")),
                         failure=(DeleteRange(key=b"k"),)),
                 client_id=5, seq=1),
    WriteRequest(cmd=Compact(revision=10)),
    ReadRequest(range=RangeRequest(key=b"a", range_end=ALL_KEYS, limit=3, revision=4,
                                   keys_only=True), consistency="session", min_revision=12),
    ReadRequest(range=RangeRequest(key=b"\x00\xff", count_only=True), consistency="one"),
    StatusRequest(),
    StatusRequest(local=True),
    HelloRequest(),
    MemberListRequest(),
    MemberAddRequest(name="n4", peer_address="127.0.0.1:7004"),
    MemberAddRequest(name="n5", peer_address="[::1]:7005", client_address="[::1]:7105",
                     learner=True, token="s3cret"),
    MemberRemoveRequest(name="n4"),
    MemberRemoveRequest(name="n4", token="s3cret"),
    MemberPromoteRequest(name="n5", token="s3cret"),
    MoveLeaderRequest(name="n2", token="s3cret"),
    LeaveRequest(),
    LeaveRequest(token="s3cret"),
    DigestRequest(),
    SnapshotRequest(),
    WatchRequest(key=b"k"),
    WatchRequest(key=b"a", range_end=ALL_KEYS, start_revision=7, prev_kv=True,
                 progress_notify=True),
    WatchCancelRequest(watch_id=3),
    LeaseKeepAliveRequest(id=(1 << 63) - 1),
    LeaseTimeToLiveRequest(id=5, keys=True),
    LeaseListRequest(),
    WriteRequest(cmd=LeaseGrant(id=9, ttl=10), client_id=2, seq=1),
    WriteRequest(cmd=LeaseRevoke(id=9)),
    AuthenticateRequest(name="alice", password="pw"),
    AuthTokenRequest(token="qkv1.a.b"),
    AuthRequest(action="status"),
    AuthRequest(action="user_add", name="alice", password="pw"),
    AuthRequest(action="role_grant", role="r", perm="readwrite", key=b"a", range_end=ALL_KEYS),
    AuthRequest(action="role_revoke", role="r", key=b"a"),
]


@pytest.mark.parametrize("req", REQUESTS, ids=lambda r: type(r).__name__)
def test_request_round_trip(req: Request) -> None:
    assert decode_request(encode_request(77, req)) == (77, req)


def test_request_wire_shape_is_documented_one() -> None:
    req = WriteRequest(cmd=Put(key=b"k", value=b"v"), consistency="quorum", client_id=1, seq=2)
    assert msgpack.unpackb(encode_request(5, req)) == [
        5, "write", {"cmd": encode_command(Put(key=b"k", value=b"v")), "consistency": "quorum",
                     "client_id": 1, "seq": 2}]


def test_optional_request_fields_take_their_defaults() -> None:
    assert decode_request(pack([1, "range", {"key": b"k"}])) == (
        1, ReadRequest(range=RangeRequest(key=b"k"), consistency="quorum", min_revision=0))
    cmd = encode_command(Put(key=b"k", value=b""))
    assert decode_request(pack([2, "write", {"cmd": cmd}])) == (
        2, WriteRequest(cmd=Put(key=b"k", value=b""), consistency="quorum"))


RESULTS = [
    PutResult(revision=5),
    PutResult(revision=6, prev_kv=KV),
    DeleteResult(revision=7, deleted=2, prev_kvs=(KV, KV)),
    RangeResult(kvs=(KV,), count=9, more=True, revision=8),
    TxnResult(succeeded=True, revision=9,
              responses=(PutResult(revision=9, prev_kv=KV), DeleteResult(revision=9, deleted=0),
                         RangeResult(kvs=(), count=0, more=False, revision=9))),
    CompactResult(revision=10, compact_revision=4),
]


@pytest.mark.parametrize("result", RESULTS, ids=lambda r: type(r).__name__)
def test_result_round_trip(result: Any) -> None:
    assert result_from_wire(msgpack.unpackb(pack(result_to_wire(result)))) == result


def test_kv_round_trip() -> None:
    assert kv_from_wire(kv_to_wire(KV)) == KV


def test_write_and_range_results_carry_the_header() -> None:
    wire = write_result(Applied(index=3, result=PutResult(revision=5)), HEADER.to_wire())
    assert wire["header"] == HEADER.to_wire()
    assert write_result_from_wire(msgpack.unpackb(pack(wire))) == (PutResult(revision=5), HEADER)
    assert write_result_from_wire(durable_result(11, HEADER)) == (Durable(index=11), HEADER)
    rr = RangeResult(kvs=(KV,), count=1, more=False, revision=42)
    assert range_result_from_wire(range_result(rr, HEADER)) == (rr, HEADER)


def test_result_of_the_wrong_kind_is_refused() -> None:
    with pytest.raises(ProtocolError):
        range_result_from_wire(write_result(PutResult(revision=1), HEADER))
    with pytest.raises(ProtocolError):
        write_result_from_wire(range_result(RangeResult(kvs=(), count=0, more=False,
                                                        revision=1), HEADER))
    with pytest.raises(ProtocolError, match="header"):
        write_result_from_wire(result_to_wire(PutResult(revision=1)))


def test_unknown_result_fields_are_ignored_for_newer_servers() -> None:
    wire = write_result(PutResult(revision=1), HEADER) | {"shiny_new_field": [1, 2]}
    assert write_result_from_wire(wire) == (PutResult(revision=1), HEADER)


def test_ok_and_error_responses_round_trip() -> None:
    body = write_result(PutResult(revision=1), HEADER)
    response = decode_response(encode_response(9, body))
    assert (response.request_id, response.ok, response.body) == (9, True, body)

    err = NotLeader(leader=2, leader_address="127.0.0.1:2380")
    response = decode_response(encode_error_response(10, err))
    assert (response.request_id, response.ok) == (10, False)
    remote = error_from_wire(response.body)
    assert isinstance(remote, NotLeader) and remote.remote
    assert remote.details["leader_address"] == "127.0.0.1:2380"
    assert isinstance(error_from_wire(Compacted(compact_revision=4).to_dict()), Compacted)


def test_error_details_msgpack_cannot_carry_still_give_a_response() -> None:
    response = decode_response(encode_error_response(1, Timeout("slow", culprit=object())))
    remote = error_from_wire(response.body)
    assert isinstance(remote, Timeout) and remote.message == "slow"


def test_hostile_error_details_become_a_protocol_error() -> None:
    for details in ({"remote": 1}, {"message": "x"}, {"args": 5}):
        err = error_from_wire({"code": "timeout", "message": "m", "details": details})
        assert isinstance(err, QuorumKVError)


# -- malformed requests ---------------------------------------------------------------

PUT = encode_command(Put(key=b"k", value=b"v"))
MALFORMED: list[tuple[Any, int | None, str]] = [
    ("not an array", None, "array"),
    ([], None, "array"),
    ([1, "status"], 1, "array"),
    ([1, "status", {}, "token", "extra"], 1, "array"),
    ([1, "status", {}, 5], 1, "token"),
    ([1, "status", {}, ""], 1, "token"),
    ([1, "status", {}, "t" * 1025], 1, "token"),
    (["1", "status", {}], None, "request_id"),
    ([-1, "status", {}], None, "request_id"),
    ([1 << 63, "status", {}], None, "request_id"),
    ([True, "status", {}], None, "request_id"),
    ([1, b"status", {}], 1, "op must be a string"),
    ([1, "frobnicate", {}], 1, "unknown command"),
    ([1, "status", []], 1, "must be a map"),
    ([1, "status", {"verbose": True}], 1, "unknown field"),
    ([1, "write", {}], 1, "missing field 'cmd'"),
    ([1, "write", {"cmd": "text"}], 1, "'cmd' must be binary"),
    ([1, "write", {"cmd": b"\xc1"}], 1, "malformed command"),
    ([1, "write", {"cmd": PUT, "consistency": "session"}], 1, "consistency"),
    ([1, "write", {"cmd": PUT, "consistency": 1}], 1, "consistency"),
    ([1, "write", {"cmd": PUT, "seq": -1}], 1, "'seq'"),
    ([1, "write", {"cmd": PUT, "client_id": 1.5}], 1, "'client_id'"),
    ([1, "write", {"cmd": PUT, "client_id": False}], 1, "'client_id'"),
    ([1, "write", {"cmd": PUT, "sequence": 1}], 1, "unknown field"),
    ([1, "range", {}], 1, "missing field 'key'"),
    ([1, "range", {"key": "text"}], 1, "'key' must be binary"),
    ([1, "range", {"key": b""}], 1, "empty"),
    ([1, "range", {"key": b"b", "range_end": b"a"}], 1, "range_end"),
    ([1, "range", {"key": b"a", "range_end": 5}], 1, "range_end"),
    ([1, "range", {"key": b"a", "limit": "10"}], 1, "'limit'"),
    ([1, "range", {"key": b"a", "keys_only": 1}], 1, "'keys_only'"),
    ([1, "range", {"key": b"a", "consistency": "eventual"}], 1, "consistency"),
    ([1, "range", {"key": b"a", "min_revision": 1 << 63}], 1, "'min_revision'"),
    ([1, "status", {"local": 1}], 1, "'local' must be a boolean"),
    ([1, "status", {"local": None}], 1, "'local' must be a boolean"),
    ([1, "member_list", {"name": "n1"}], 1, "unknown field"),
    ([1, "member_list", []], 1, "must be a map"),
    ([1, "member_add", {}], 1, "missing field 'name'"),
    ([1, "member_add", {"name": "n4"}], 1, "missing field 'peer_address'"),
    ([1, "member_add", {"name": b"n4", "peer_address": "h:1"}], 1, "'name' must be a string"),
    ([1, "member_add", {"name": None, "peer_address": "h:1"}], 1, "'name' must be a string"),
    ([1, "member_add", {"name": "n4", "peer_address": 7004}], 1, "'peer_address' must be a"),
    ([1, "member_add", {"name": "n4", "peer_address": "h:1", "client_address": 7}], 1,
     "'client_address' must be a string or nil"),
    ([1, "member_add", {"name": "n4", "peer_address": "h:1", "learner": "yes"}], 1,
     "'learner' must be a boolean"),
    ([1, "member_add", {"name": "n4", "peer_address": "h:1", "token": None}], 1,
     "'token' must be a string"),
    ([1, "member_add", {"name": "n4", "peer_address": "h:1", "voter": True}], 1,
     "unknown field"),
    ([1, "member_add", {"name": "n" * 65, "peer_address": "h:1"}], 1,
     "'name' must be at most 64 characters"),
    ([1, "member_add", {"name": "n4", "peer_address": "h" * 301}], 1,
     "'peer_address' must be at most 300 characters"),
    ([1, "member_add", {"name": "n4", "peer_address": "h:1", "client_address": "h" * 301}], 1,
     "'client_address' must be at most 300 characters"),
    ([1, "member_add", {"name": "n4", "peer_address": "h:1", "token": "t" * 1025}], 1,
     "'token' must be at most 1024 characters"),
    ([1, "member_remove", {}], 1, "missing field 'name'"),
    ([1, "member_remove", {"name": 4}], 1, "'name' must be a string"),
    ([1, "member_remove", {"name": "n" * 65}], 1, "'name' must be at most"),
    ([1, "member_remove", {"name": "n4", "token": b"t"}], 1, "'token' must be a string"),
    ([1, "member_remove", {"name": "n4", "force": True}], 1, "unknown field"),
    ([1, "member_promote", {}], 1, "missing field 'name'"),
    ([1, "member_promote", {"name": "n" * 65}], 1, "'name' must be at most"),
    ([1, "member_promote", {"name": "n4", "token": "t" * 1025}], 1, "'token' must be at most"),
    ([1, "member_promote", {"name": "n4", "learner": False}], 1, "unknown field"),
    ([1, "leave", {"name": "n1"}], 1, "unknown field"),
    ([1, "leave", {"token": 1}], 1, "'token' must be a string"),
    ([1, "leave", {"token": "t" * 1025}], 1, "'token' must be at most"),
    ([1, "digest", {"revision": 3}], 1, "unknown field"),
]


@pytest.mark.parametrize(("obj", "request_id", "message"), MALFORMED)
def test_malformed_request_is_invalid_argument(obj: Any, request_id: int | None,
                                               message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        decode_request(pack(obj))
    assert request_id_of(obj) == request_id


@pytest.mark.parametrize("data", [b"", b"\xc1", pack([1, "status", {}]) + b"\x00",
                                  b"\x92\x01"])
def test_undecodable_bytes_are_invalid_argument(data: bytes) -> None:
    with pytest.raises(InvalidArgument):
        decode_request(data)


def test_string_map_keys_are_required() -> None:
    with pytest.raises(InvalidArgument):
        decode_request(pack([1, "range", {b"key": b"k"}]))


# -- fuzzing: only our own errors, whatever arrives ------------------------------------

scalars = (st.none() | st.booleans() | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
           | st.floats(allow_nan=False) | st.text(max_size=6) | st.binary(max_size=6))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
FIELDS = ["cmd", "consistency", "client_id", "seq", "key", "range_end", "limit", "revision",
          "keys_only", "count_only", "min_revision", "type", "header", "local", "name",
          "peer_address", "client_address", "learner", "token", "index"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_raise_only_invalid_argument(data: bytes) -> None:
    with contextlib.suppress(InvalidArgument):
        decode_request(data)


@settings(max_examples=300, deadline=None)
@given(values)
def test_random_objects_raise_only_invalid_argument(obj: Any) -> None:
    with contextlib.suppress(InvalidArgument):
        parse_request(obj)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10), st.sampled_from(OPS),
       st.dictionaries(st.sampled_from(FIELDS), values | st.just(PUT), max_size=5))
def test_random_args_raise_only_invalid_argument(request_id: int, op: str,
                                                 args: dict[str, Any]) -> None:
    with contextlib.suppress(InvalidArgument):
        parse_request([request_id, op, args])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | values.map(pack))
def test_random_responses_raise_only_protocol_error(data: bytes) -> None:
    try:
        response = decode_response(data)
    except ProtocolError:
        return
    with contextlib.suppress(ProtocolError):
        write_result_from_wire(response.body)
    try:
        err = error_from_wire(response.body)
    except ProtocolError:
        return
    assert isinstance(err, QuorumKVError) and err.remote


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "revision", "kvs", "count", "more", "prev_kv",
                                        "prev_kvs", "deleted", "succeeded", "responses",
                                        "header", "index"]),
                       values | st.sampled_from(["put", "delete", "txn", "range", "compact",
                                                 "durable"]), max_size=6))
def test_random_result_maps_raise_only_protocol_error(obj: dict[str, Any]) -> None:
    for decode in (write_result_from_wire, range_result_from_wire, result_from_wire):
        with contextlib.suppress(ProtocolError):
            decode(obj)


def test_members_ask_each_other_to_wait_for_an_index() -> None:
    assert decode_request(encode_request(7, WaitAppliedRequest(index=42))) == (
        7, WaitAppliedRequest(index=42))
    read = ReadRequest(range=RangeRequest(key=b"k"), consistency="one", min_index=9)
    assert decode_request(encode_request(8, read)) == (8, read)
    with pytest.raises(InvalidArgument):
        decode_request(encode_request(9, WaitAppliedRequest(index=-1)))


# -- membership ops -------------------------------------------------------------------


def test_membership_requests_have_the_documented_wire_shape() -> None:
    add = MemberAddRequest(name="n4", peer_address="h:7004", learner=True, token="t")
    assert msgpack.unpackb(encode_request(1, add)) == [
        1, "member_add", {"name": "n4", "peer_address": "h:7004", "client_address": None,
                          "learner": True, "token": "t"}]
    assert msgpack.unpackb(encode_request(2, MemberRemoveRequest(name="n4"))) == [
        2, "member_remove", {"name": "n4", "token": ""}]
    assert msgpack.unpackb(encode_request(3, MemberPromoteRequest(name="n4", token="t"))) == [
        3, "member_promote", {"name": "n4", "token": "t"}]
    assert msgpack.unpackb(encode_request(4, LeaveRequest(token="t"))) == [
        4, "leave", {"token": "t"}]
    assert msgpack.unpackb(encode_request(5, MemberListRequest())) == [5, "member_list", {}]
    assert msgpack.unpackb(encode_request(6, DigestRequest())) == [6, "digest", {}]


def test_optional_membership_fields_take_their_defaults() -> None:
    assert decode_request(pack([1, "member_add", {"name": "n4", "peer_address": "h:1"}])) == (
        1, MemberAddRequest(name="n4", peer_address="h:1", client_address=None, learner=False,
                            token=""))
    assert decode_request(pack([2, "member_add", {"name": "n4", "peer_address": "h:1",
                                                  "client_address": None}]))[1] == (
        MemberAddRequest(name="n4", peer_address="h:1"))
    assert decode_request(pack([3, "member_remove", {"name": "n4"}])) == (
        3, MemberRemoveRequest(name="n4", token=""))
    assert decode_request(pack([4, "member_promote", {"name": "n4"}])) == (
        4, MemberPromoteRequest(name="n4", token=""))
    assert decode_request(pack([5, "leave", {}])) == (5, LeaveRequest(token=""))


def test_strings_at_their_length_limits_are_accepted() -> None:
    # The node validates the name and address formats; the protocol bounds only the length.
    name, address, token = ("n" * MAX_NAME_LENGTH, "a" * MAX_ADDRESS_LENGTH,
                            "t" * MAX_TOKEN_LENGTH)
    req = MemberAddRequest(name=name, peer_address=address, client_address=address, token=token)
    assert decode_request(encode_request(1, req)) == (1, req)
    assert decode_request(encode_request(2, LeaveRequest(token=token))) == (
        2, LeaveRequest(token=token))
    # Characters, not bytes: a name of 64 non-ASCII characters fits.
    wide = MemberRemoveRequest(name="é" * MAX_NAME_LENGTH)
    assert decode_request(encode_request(3, wide)) == (3, wide)


def test_an_oversized_token_is_refused_without_being_echoed() -> None:
    token = "hunter2" * 200
    with pytest.raises(InvalidArgument) as caught:
        decode_request(pack([1, "leave", {"token": token}]))
    assert "hunter2" not in str(caught.value)


def test_tokens_stay_out_of_reprs() -> None:
    for req in (MemberAddRequest(name="n", peer_address="h:1", token="hunter2"),
                MemberRemoveRequest(name="n", token="hunter2"),
                MemberPromoteRequest(name="n", token="hunter2"), LeaveRequest(token="hunter2")):
        assert "hunter2" not in repr(req)


def test_status_with_and_without_local() -> None:
    assert decode_request(pack([1, "status", {}])) == (1, StatusRequest(local=False))
    assert decode_request(pack([2, "status", {"local": False}])) == (2, StatusRequest())
    assert decode_request(pack([3, "status", {"local": True}])) == (3, StatusRequest(local=True))
    # The default stays off the wire, so a node that predates "local" still answers.
    assert msgpack.unpackb(encode_request(4, StatusRequest())) == [4, "status", {}]
    assert msgpack.unpackb(encode_request(5, StatusRequest(local=True))) == [
        5, "status", {"local": True}]


def test_a_request_may_carry_a_token_of_its_own() -> None:
    data = encode_request(3, StatusRequest(), token="qkv1.x.y")
    assert msgpack.unpackb(data) == [3, "status", {}, "qkv1.x.y"]
    assert decode_request(data) == (3, StatusRequest())
    assert request_token(msgpack.unpackb(data)) == "qkv1.x.y"
    assert request_token(msgpack.unpackb(encode_request(3, StatusRequest()))) is None


def test_passwords_and_tokens_stay_out_of_reprs() -> None:
    for req in (AuthenticateRequest(name="alice", password="hunter2"),
                AuthTokenRequest(token="hunter2"),
                AuthRequest(action="user_add", name="alice", password="hunter2")):
        assert "hunter2" not in repr(req)


def test_every_op_has_a_request_in_the_round_trip_list() -> None:
    ops = {msgpack.unpackb(encode_request(1, req))[1] for req in REQUESTS}
    assert ops | {"wait_applied"} == set(OPS)


@pytest.mark.parametrize(("op", "args"), [
    ("watch", {"key": b""}),
    ("watch", {"key": b"b", "range_end": b"a"}),
    ("watch", {"key": "text"}),
    ("watch", {"key": b"k", "start_revision": -1}),
    ("watch", {"key": b"k", "filters": []}),
    ("watch_cancel", {}),
    ("lease_keepalive", {"id": 0}),
    ("lease_ttl", {"id": True}),
    ("lease_list", {"id": 1}),
])
def test_coordination_requests_are_checked_strictly(op: str, args: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        parse_request([1, op, args])
