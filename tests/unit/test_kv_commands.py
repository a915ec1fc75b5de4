"""Commands: their log encoding, what decoding refuses, and validation before proposal."""

from __future__ import annotations

from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorumkv.errors import InvalidArgument, KeyTooLarge, QuorumKVError, ValueTooLarge
from quorumkv.kv import (
    ALL_KEYS,
    Command,
    Compact,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    Limits,
    Put,
    RangeRequest,
    Txn,
    check_command,
    decode_command,
    encode_command,
    prefix_end,
    validate,
)


def pack(obj: Any) -> bytes:
    data = msgpack.packb(obj, use_bin_type=True)
    assert isinstance(data, bytes)
    return data


# -- codec -------------------------------------------------------------------

keys = st.binary(min_size=1, max_size=8)
ints = st.integers(0, 2**63 - 1)


@st.composite
def ranges(draw: st.DrawFn) -> tuple[bytes, bytes | None]:
    key = draw(keys)
    end = draw(st.one_of(st.none(), st.just(ALL_KEYS), keys))
    if end is not None and end != ALL_KEYS and end < key:
        key, end = end, key
    return key, end


puts = st.builds(Put, key=keys, value=st.binary(max_size=8), lease=ints, prev_kv=st.booleans(),
                 timestamp=ints)
deletes = ranges().flatmap(lambda r: st.builds(DeleteRange, key=st.just(r[0]),
                                               range_end=st.just(r[1]), prev_kv=st.booleans(),
                                               timestamp=ints))
reads = ranges().flatmap(lambda r: st.builds(
    RangeRequest, key=st.just(r[0]), range_end=st.just(r[1]), limit=ints, revision=ints,
    keys_only=st.booleans(), count_only=st.booleans()))


@st.composite
def compares(draw: st.DrawFn) -> Compare:
    key, end = draw(ranges())
    target = draw(st.sampled_from(CompareTarget))
    value = draw(st.binary(max_size=4)) if target is CompareTarget.VALUE else draw(ints)
    return Compare(key=key, range_end=end, target=target, op=draw(st.sampled_from(CompareOp)),
                   value=value)


def well_formed(cmd: Command) -> bool:
    try:
        check_command(cmd)
    except InvalidArgument:
        return False
    return True


txn_ops = st.one_of(puts.map(lambda p: Put(key=p.key, value=p.value, lease=p.lease,
                                           prev_kv=p.prev_kv)),
                    deletes.map(lambda d: DeleteRange(key=d.key, range_end=d.range_end,
                                                      prev_kv=d.prev_kv)),
                    reads)
txns = st.builds(lambda c, s, f, t: Txn(compares=tuple(c), success=tuple(s), failure=tuple(f),
                                        timestamp=t),
                 st.lists(compares(), max_size=3), st.lists(txn_ops, max_size=3),
                 st.lists(txn_ops, max_size=3), ints).filter(well_formed)
commands = st.one_of(puts, deletes, txns, st.builds(Compact, revision=ints, timestamp=ints))


@settings(max_examples=150)
@given(commands)
def test_encoding_round_trips(cmd: Command) -> None:
    data = encode_command(cmd)
    assert decode_command(data) == cmd
    assert encode_command(decode_command(data)) == data


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=64),
                 commands.map(encode_command).flatmap(
                     lambda d: st.tuples(st.just(d), st.integers(0, len(d)), st.binary(max_size=3))
                 ).map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + len(t[2]):])))
def test_decoding_any_bytes_gives_a_command_or_invalid_argument(data: bytes) -> None:
    try:
        cmd = decode_command(data)
    except InvalidArgument:
        return
    check_command(cmd)


@pytest.mark.parametrize("data", [
    b"",
    b"\xc1",                                   # never-used msgpack byte
    pack([1, b"k", b"v", 0, False, 0]) + b"\x00",  # trailing bytes
    pack([1, b"k", b"v", 0, False]),           # short put
    pack([1, "k", b"v", 0, False, 0]),         # key as str
    pack([1, b"", b"v", 0, False, 0]),         # empty key
    pack([1, b"k", b"v", -1, False, 0]),       # negative lease
    pack([1, b"k", b"v", 2**63, False, 0]),    # lease past int64
    pack([1, b"k", b"v", True, False, 0]),     # bool as int
    pack([1, b"k", b"v", 0, 1, 0]),            # int as bool
    pack([1, b"k", b"v", 0, False, 1.5]),      # float timestamp
    pack([2, b"b", b"a", False, 0]),           # range_end before key
    pack([9, b"k"]),                           # unknown tag
    pack([True, b"k", b"v", 0, False, 0]),     # bool tag
    pack([5, b"k", None, 0, 0, False, False]),  # a read is not a command
    pack([4, 1]),                              # short compact
    pack([3, [], [[4, 1, 0]], [], 0]),         # compact inside a txn
    pack([3, [], [[3, [], [], [], 0]], [], 0]),  # nested txn
    pack([3, [[b"k", None, 9, 0, 0]], [], [], 0]),  # unknown compare target
    pack([3, [[b"k", None, 1.0, 0, 0]], [], [], 0]),  # float compare target
    pack([3, [[b"k", None, 3, 0, 5]], [], [], 0]),  # VALUE compare with an int
    pack([3, [[b"k", None, 0, 0, b"x"]], [], [], 0]),  # VERSION compare with bytes
    pack([3, {}, [], [], 0]),                  # map for a list
    pack([3, [], [[1, b"k", b"v", 0, False, 0], [1, b"k", b"w", 0, False, 0]], [], 0]),
    pack([3, [], [[1, b"k", b"v", 0, False, 5]], [], 0]),  # op with its own timestamp
    pack({"put": b"k"}),
    pack(msgpack.ExtType(1, b"x")),
    pack([1, b"k", msgpack.ExtType(1, b"x"), 0, False, 0]),
    b"\x91" * 5000 + b"\x01",                  # deeply nested arrays
])
def test_malformed_commands_are_invalid_arguments(data: bytes) -> None:
    with pytest.raises(InvalidArgument):
        decode_command(data)


def test_decoding_refuses_what_is_not_bytes() -> None:
    with pytest.raises(InvalidArgument):
        decode_command("text")  # type: ignore[arg-type]


def test_encoding_refuses_malformed_commands() -> None:
    with pytest.raises(InvalidArgument):
        encode_command(Put(key=b"", value=b""))


# -- validation --------------------------------------------------------------


def test_well_formed_commands_pass() -> None:
    validate(Put(key=b"k", value=b"v"))
    validate(DeleteRange(key=b"k", range_end=ALL_KEYS))
    validate(DeleteRange(key=b"k", range_end=b"k"))   # an empty range is fine
    validate(Compact(revision=1))
    validate(Txn())


@pytest.mark.parametrize("cmd", [
    Put(key=b"", value=b""),
    Put(key="k", value=b""),  # type: ignore[arg-type]
    Put(key=bytearray(b"k"), value=b""),  # type: ignore[arg-type]
    Put(key=b"k", value="v"),  # type: ignore[arg-type]
    Put(key=b"k", value=b"", lease=-1),
    Put(key=b"k", value=b"", prev_kv=1),  # type: ignore[arg-type]
    DeleteRange(key=b"b", range_end=b"a"),
    DeleteRange(key=b"b", range_end=b""),
    Compact(revision=True),
    Txn(compares=[]),  # type: ignore[arg-type]
    Txn(success=(Compact(revision=1),)),  # type: ignore[arg-type]
    Txn(compares=(Compare(key=b"k", target=CompareTarget.VALUE, op=CompareOp.EQUAL,
                          value=1),)),
    Txn(compares=(Compare(key=b"k", target=3, op=CompareOp.EQUAL,  # type: ignore[arg-type]
                          value=b""),)),
    Txn(success=(Put(key=b"k", value=b"", timestamp=3),)),
    Txn(success=(RangeRequest(key=b"k", limit=-1),)),
    "put k v",
])
def test_malformed_commands_fail_validation(cmd: Command) -> None:
    with pytest.raises(InvalidArgument):
        validate(cmd)


def test_a_txn_branch_may_not_write_a_key_twice() -> None:
    put_a = Put(key=b"a", value=b"")
    with pytest.raises(InvalidArgument, match="duplicate key"):
        validate(Txn(success=(put_a, Put(key=b"a", value=b"x"))))
    with pytest.raises(InvalidArgument, match="duplicate key"):
        validate(Txn(failure=(DeleteRange(key=b"\x00", range_end=ALL_KEYS), put_a)))
    with pytest.raises(InvalidArgument, match="duplicate key"):
        validate(Txn(success=(put_a, DeleteRange(key=b"a", range_end=b"b"))))
    # Different branches, overlapping deletes, and reads are all fine.
    validate(Txn(success=(put_a,), failure=(put_a,)))
    validate(Txn(success=(DeleteRange(key=b"a", range_end=b"c"), DeleteRange(key=b"b"))))
    validate(Txn(success=(put_a, RangeRequest(key=b"a"), DeleteRange(key=b"b"))))


def test_size_limits() -> None:
    limits = Limits(max_key_size=4, max_value_size=8, max_txn_ops=2)
    validate(Put(key=b"kkkk", value=b"v" * 8), limits)
    with pytest.raises(KeyTooLarge):
        validate(Put(key=b"kkkkk", value=b""), limits)
    with pytest.raises(ValueTooLarge):
        validate(Put(key=b"k", value=b"v" * 9), limits)
    with pytest.raises(KeyTooLarge):
        validate(DeleteRange(key=b"k", range_end=b"zzzzz"), limits)
    validate(DeleteRange(key=b"kkkk", range_end=ALL_KEYS), limits)
    with pytest.raises(KeyTooLarge):
        validate(Txn(success=(RangeRequest(key=b"kkkkk"),)), limits)
    with pytest.raises(ValueTooLarge):
        validate(Txn(failure=(Put(key=b"k", value=b"v" * 9),)), limits)
    with pytest.raises(ValueTooLarge):
        validate(Txn(compares=(Compare(key=b"k", target=CompareTarget.VALUE,
                                       op=CompareOp.EQUAL, value=b"v" * 9),)), limits)
    three = tuple(Put(key=bytes([i]), value=b"") for i in range(1, 4))
    with pytest.raises(InvalidArgument, match="too many"):
        validate(Txn(success=three), limits)
    with pytest.raises(InvalidArgument, match="too many"):
        validate(Txn(compares=tuple(Compare(key=b"k", target=CompareTarget.VERSION,
                                            op=CompareOp.EQUAL, value=0)
                                    for _ in range(3))), limits)
    validate(Txn(success=three[:2], failure=three[1:]), limits)


def test_default_limits_match_etcd() -> None:
    validate(Put(key=b"k" * 4096, value=b"v" * (1536 * 1024)))
    with pytest.raises(KeyTooLarge):
        validate(Put(key=b"k" * 4097, value=b""))
    with pytest.raises(ValueTooLarge):
        validate(Put(key=b"k", value=b"v" * (1536 * 1024 + 1)))
    assert issubclass(KeyTooLarge, QuorumKVError)


def test_prefix_helpers() -> None:
    assert prefix_end(b"a") == b"b"
    assert prefix_end(b"ab") == b"ac"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"a\xff\xff") == b"b"
    assert prefix_end(b"\xff") == ALL_KEYS
    assert prefix_end(b"") == ALL_KEYS
    assert DeleteRange.prefix(b"app") == DeleteRange(key=b"app", range_end=b"apq")
    assert RangeRequest.prefix(b"x", limit=2) == RangeRequest(key=b"x", range_end=b"y", limit=2)
