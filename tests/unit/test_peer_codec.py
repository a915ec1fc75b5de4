"""The peer codec round-trips every message and refuses hostile bytes with ProtocolError."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorumkv.errors import ProtocolError
from quorumkv.raft.entries import ConfState, Entry, EntryType, SnapshotMeta
from quorumkv.raft.messages import (
    AppendRequest,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from quorumkv.transport.framing import FrameDecoder, FrameTooLarge, encode_frame
from quorumkv.transport.peer_codec import decode_message, encode_message

u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
small = st.integers(min_value=0, max_value=1000)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    h = {"group": draw(small), "src": draw(small), "dst": draw(small), "term": draw(u64)}
    kind = draw(st.integers(min_value=0, max_value=9))
    if kind == 0:
        return VoteRequest(**h, last_log_index=draw(u64), last_log_term=draw(u64),
                           pre_vote=draw(st.booleans()), transfer=draw(st.booleans()))
    if kind == 1:
        return VoteResponse(**h, granted=draw(st.booleans()), pre_vote=draw(st.booleans()))
    if kind == 2:
        prev = draw(st.integers(min_value=0, max_value=1 << 40))
        n = draw(st.integers(min_value=0, max_value=5))
        entries = tuple(Entry(term=draw(small), index=prev + 1 + i,
                              type=draw(st.sampled_from(EntryType)),
                              data=draw(st.binary(max_size=64))) for i in range(n))
        return AppendRequest(**h, prev_index=prev, prev_term=draw(u64), entries=entries,
                             commit=draw(u64))
    if kind == 3:
        return AppendResponse(**h, index=draw(u64), reject=draw(st.booleans()),
                              hint_index=draw(u64), hint_term=draw(u64))
    if kind == 4:
        return Heartbeat(**h, commit=draw(u64), context=draw(st.binary(max_size=16)))
    if kind == 5:
        return HeartbeatResponse(**h, context=draw(st.binary(max_size=16)))
    if kind == 6:
        voters = draw(st.frozensets(small, max_size=5))
        learners = draw(st.frozensets(small, max_size=3)) - voters
        return InstallSnapshot(**h, snapshot=SnapshotMeta(
            index=draw(u64), term=draw(u64), conf=ConfState(voters=voters, learners=learners)))
    if kind == 7:
        return TimeoutNow(**h)
    if kind == 8:
        return ReadIndexRequest(**h, context=draw(st.binary(max_size=16)))
    return ReadIndexResponse(**h, context=draw(st.binary(max_size=16)), index=draw(u64))


@given(messages())
def test_every_message_round_trips(m: Message) -> None:
    assert decode_message(encode_message(m)) == m


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_are_refused_with_protocol_error_only(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_message(data)


@settings(max_examples=200)
@given(messages(), st.data())
def test_truncated_or_corrupted_messages_never_crash(m: Message, data: st.DataObject) -> None:
    raw = bytearray(encode_message(m))
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    for candidate in (bytes(raw[:cut]),):
        with contextlib.suppress(ProtocolError):
            decode_message(candidate)
    if raw:
        pos = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw[pos] ^= data.draw(st.integers(min_value=1, max_value=255))
        with contextlib.suppress(ProtocolError):
            decode_message(bytes(raw))


@pytest.mark.parametrize("obj", [
    {"a": 1},
    [3, 1, 0, 1, 2, 5, 0, 0, [[1, 7, 0, b"x"]], 0],   # entry index does not follow prev_index
    [1, 1, 0, 1, 2, 5, 1, 1, "yes", False],            # a string where a boolean belongs
    [2, 9, 0, 1, 2, 5, True, False],                    # an unknown protocol version
    [42, 1, 0, 1, 2, 5],                                # an unknown kind
    [5, 1, 0, 1, 2, -1, 0, b""],                        # a negative term
    [7, 1, 0, 1, 2, 5, [10, 2, [1], [1]]],              # voter and learner at once
    [3, 1, 0, 1, 2, 5, 0, 0, [[1, 1, 9, b"x"]], 0],    # an unknown entry type
])
def test_wrong_shapes_and_types_are_named(obj: object) -> None:
    with pytest.raises(ProtocolError):
        decode_message(msgpack.packb(obj, use_bin_type=True))


def test_frames_split_across_reads_are_reassembled() -> None:
    payloads = [b"a", b"", b"x" * 1000, b"tail"]
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder()
    got: list[bytes] = []
    for i in range(0, len(stream), 7):
        got.extend(decoder.feed(stream[i:i + 7]))
    assert got == payloads
    assert decoder.pending == 0


def test_an_oversized_frame_is_refused_before_its_body_arrives() -> None:
    decoder = FrameDecoder(max_frame=1024)
    with pytest.raises(FrameTooLarge):
        decoder.feed((1 << 30).to_bytes(4, "big"))
    with pytest.raises(FrameTooLarge):
        encode_frame(b"x" * 2048, max_frame=1024)
