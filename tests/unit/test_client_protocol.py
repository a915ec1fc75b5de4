"""The client wire protocol: round trips, and strict refusal of every malformed message."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorumkv.client.protocol import (
    OPS,
    Durable,
    Header,
    HelloRequest,
    ReadRequest,
    Request,
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
    HelloRequest(),
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
    ([1, "status", {}, "extra"], 1, "array"),
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
          "keys_only", "count_only", "min_revision", "type", "header"]


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
